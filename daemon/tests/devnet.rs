//! `apiary devnet` runs to the end as a real process and reports a lower loss.

use std::process::Command;

#[test]
fn devnet_short_run_lowers_the_loss() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args([
            "devnet",
            "--windows",
            "4",
            "--block-ms",
            "150",
            "--lazy",
            "1",
            "--json",
            "--data",
            data,
            "--dir",
        ])
        .arg(dir.path().join("net"))
        .output()
        .expect("run apiary devnet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "devnet failed: {stderr}\n{stdout}");
    // At the default log level the expected start-up and shutdown events stay quiet.
    let loud: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        loud.is_empty(),
        "devnet warned at the default log level:\n{}",
        loud.join("\n")
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let windows: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("window").is_some()).collect();
    assert_eq!(windows.len(), 4, "{stdout}");
    for w in &windows {
        assert!(w["held_out_loss"].as_f64().is_some());
        assert_eq!(w["miners"].as_array().expect("miners").len(), 4);
    }
    let done = lines.last().expect("summary");
    assert_eq!(done["event"], "done");
    let (a, b) = (
        done["initial_loss"].as_f64().expect("initial"),
        done["final_loss"].as_f64().expect("final"),
    );
    assert!(b < a, "loss did not drop: {a} -> {b}");

    // The validator's trained model exports as a Hugging Face directory, and `apiary model
    // eval` scores it on the text: better than the untrained model's held-out loss.
    let hf = dir.path().join("hf");
    let out = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args(["model", "export", "--data-dir"])
        .arg(dir.path().join("net/validator-0"))
        .arg("--out")
        .arg(&hf)
        .output()
        .expect("run apiary model export");
    assert!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["model.safetensors", "config.json"] {
        assert!(hf.join(f).is_file(), "export wrote no {f}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args([
            "model",
            "eval",
            "--json",
            "--max-pages",
            "64",
            "--data",
            data,
            "--model",
        ])
        .arg(&hf)
        .output()
        .expect("run apiary model eval");
    assert!(
        out.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval json");
    let loss = r["loss"].as_f64().expect("loss");
    assert_eq!(r["pages"], 64);
    assert!(
        loss.is_finite() && loss < a,
        "exported model loss {loss} vs initial {a}"
    );
}

#[test]
fn model_eval_refuses_a_directory_without_a_model() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args(["model", "eval", "--data", "nowhere.txt", "--model"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn invalid_config_file_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[net]\nlisten = \"127.0.0.1:4000\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .arg("check-config")
        .arg(&f)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("net.listen"), "{err}");
}
