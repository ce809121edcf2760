//! `apiary` as a service: the systemd unit in `config/systemd/` verifies, and `apiary run`
//! stops cleanly on SIGTERM (actors stopped, store flushed and released, admin socket removed)
//! with JSON log lines.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit is not verified on this machine");
        return;
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/systemd/apiary.service"
    ))
    .expect("config/systemd/apiary.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/apiary run"));
    // The unit as installed, with the binary this test built standing in for /usr/local/bin.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("apiary.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/apiary", env!("CARGO_BIN_EXE_apiary")),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("apiary.service:"),
        "systemd-analyze complains about the unit:\n{stderr}"
    );
}

/// Sends one admin request line and reads the reply line.
fn admin(socket: &std::path::Path, cmd: &str) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    writeln!(s, "{{\"cmd\":\"{cmd}\"}}").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

#[test]
fn sigterm_stops_the_node_cleanly_with_json_logs() {
    let dir = tempfile::tempdir().expect("tmp");
    let data_dir = dir.path().join("node");
    let config = dir.path().join("node.toml");
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"svc\"\ndata_dir = \"{}\"\n\
             [chain]\nblock_time_ms = 100\nblocks_per_window = 2\n\
             [net]\nlisten = \"/ip4/127.0.0.1/tcp/0\"\n\
             [model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nd_ff = 64\nseq_len = 32\n\
             [train]\ndata = \"{corpus}\"\npages_per_window = 2\nbatch_pages = 2\nlocal_steps = 1\n",
            data_dir.display()
        ),
    )
    .expect("config");
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args(["run", "--log", "info", "--log-format", "json", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("apiary run");

    // Up: the admin socket answers and the chain has moved past the first windows (the node is
    // training; a lone miner has no validator whose records it could apply).
    let socket = data_dir.join("admin.sock");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(reply) = admin(&socket, "status") {
            if reply["result"]["block"].as_u64() >= Some(6) {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "apiary run exited early ({status}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the node never came up:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "apiary did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let logs = std::fs::read_to_string(&log_path).expect("log");
    assert!(status.success(), "exit {status} after SIGTERM:\n{logs}");

    // Every line is a JSON object; the stop is logged with its signal, then completion.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_string();
    let stop = lines
        .iter()
        .position(|l| l["fields"]["signal"] == "SIGTERM")
        .unwrap_or_else(|| panic!("no SIGTERM line:\n{logs}"));
    let done = lines
        .iter()
        .position(|l| message(l) == "shutdown complete")
        .unwrap_or_else(|| panic!("no completion line:\n{logs}"));
    assert!(stop < done);
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));

    // The admin socket is gone and the store is released (RocksDB opens it again).
    assert!(!socket.exists(), "admin socket left behind");
    apiary_storage::Store::open(&data_dir.join("db")).expect("the store reopens after SIGTERM");
}

/// `apiary run` at the default log level, started outside the checkout with the default
/// `train.data`: it says who it is and where to reach it, prints status lines, and a validator
/// without a permit (no stake on the embedded chain) says so with the fix.
#[test]
fn run_says_what_it_is_doing_from_any_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[node]\nname = \"talk\"\ndata_dir = \"node\"\n\
         [chain]\nblock_time_ms = 100\nblocks_per_window = 2\n\
         [net]\nlisten = \"/ip4/127.0.0.1/tcp/0\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\ndashboard = true\n\
         [model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nd_ff = 64\nseq_len = 32\n\
         [train]\npages_per_window = 2\nbatch_pages = 2\nlocal_steps = 1\n",
    )
    .expect("config");
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args(["run", "--role", "validator", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("log"))
        .spawn()
        .expect("apiary run");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let has = |seen: &[String], f: &dyn Fn(&str) -> bool| seen.iter().any(|l| f(l));
    let deadline = Instant::now() + WAIT;
    loop {
        let done = has(&seen, &|l| l.contains("peer id"))
            && has(&seen, &|l| l.contains("admin socket"))
            && has(&seen, &|l| l.contains("metrics      http://127.0.0.1:"))
            && has(&seen, &|l| l.contains("dashboard    http://127.0.0.1:"))
            && has(&seen, &|l| {
                l.starts_with("warning: this validator") && l.contains("no validator permit")
            })
            && has(&seen, &|l| {
                l.starts_with("window ") && l.contains("no validator permit")
            });
        if done {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "missing lines after {WAIT:?}; stdout:\n{}\nstderr:\n{}",
                seen.join("\n"),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            ),
        }
    }
    assert!(
        seen[0].starts_with("apiary ") && seen[0].contains("node \"talk\", validator"),
        "{}",
        seen.join("\n")
    );
    // The built-in corpus stood in for data/tinyshakespeare.txt, inside the data dir.
    assert!(dir.path().join("node/tinyshakespeare.txt").exists());

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit {status}");
}

/// A node that cannot start (here: its data is missing) leaves no data dir behind.
#[test]
fn a_failed_start_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args([
            "run",
            "--data-dir",
            "fresh",
            "--data",
            "missing.txt",
            "--listen",
        ])
        .arg("/ip4/127.0.0.1/tcp/0")
        .current_dir(dir.path())
        .output()
        .expect("apiary run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.txt"), "{err}");
    assert!(!dir.path().join("fresh").exists(), "data dir left behind");
}
