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

/// Started outside the checkout with no `--data` (the built-in corpus stands in) and a config
/// turning metrics and the dashboard on: the banner names every node's URLs; Ctrl-C ends it
/// like its last window (summary printed, exit 0, no admin socket left behind).
#[test]
fn devnet_anywhere_prints_urls_and_stops_cleanly_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().join("base.toml");
    std::fs::write(
        &base,
        "[metrics]\nlisten = \"127.0.0.1:0\"\ndashboard = true\n\
         [model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nd_ff = 64\nseq_len = 32\n\
         [train]\npages_per_window = 2\nbatch_pages = 2\nlocal_steps = 1\n",
    )
    .expect("config");
    let net = dir.path().join("net");
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args([
            "devnet",
            "--windows",
            "1000",
            "--block-ms",
            "100",
            "--miners",
            "2",
        ])
        .arg("--config")
        .arg(&base)
        .arg("--dir")
        .arg(&net)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("apiary devnet");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait = std::time::Duration::from_secs(120);
    let mut seen = Vec::new();
    // Up to the first window line: the banner is all there.
    while !seen.iter().any(|l: &String| l.starts_with("window ")) {
        match rx.recv_timeout(wait) {
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "no window line:\n{}\n{}",
                    seen.join("\n"),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    let nodes: Vec<&String> = seen.iter().filter(|l| l.contains("admin socket")).collect();
    assert_eq!(nodes.len(), 3, "{}", seen.join("\n"));
    let mut urls = std::collections::BTreeSet::new();
    for l in &nodes {
        let m = l
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:") && w.ends_with("/metrics"))
            .unwrap_or_else(|| panic!("no metrics URL in `{l}`"));
        assert!(l.contains("dashboard http://127.0.0.1:"), "{l}");
        urls.insert(m.to_string());
    }
    assert_eq!(urls.len(), 3, "one port per node: {urls:?}");

    let sigint = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sigint.success());
    let mut rest = Vec::new();
    while let Ok(l) = rx.recv_timeout(wait) {
        rest.push(l);
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit {status}:\n{}", rest.join("\n"));
    assert!(
        rest.iter()
            .any(|l| l.starts_with("stopped by SIGINT: held-out loss")),
        "no summary:\n{}",
        rest.join("\n")
    );
    for node in ["validator-0", "miner-1", "miner-2"] {
        assert!(
            !net.join(node).join("admin.sock").exists(),
            "{node}'s admin socket left behind"
        );
    }
    // The built-in corpus, written into the devnet's dir.
    assert!(net.join("tinyshakespeare.txt").is_file());
}
