//! A local subtensor runtime for tests: chopsticks serving `tests/fixtures/chain/subtensor-spec218.json`
//! with `tests/fixtures/chain/dev-storage.json` on 127.0.0.1 (free port, instant block mode).
//!
//! The binary is `<repo>/target/node-venv/bin/chopsticks`, which `.ci/setup.sh` writes: chopsticks
//! from `node_modules/` under the node 24 it installs from PyPI (chopsticks needs node >= 22), or
//! the path in `APIARY_CHOPSTICKS`. Its state lives in a sqlite file in a temp dir, so
//! [`Chopsticks::restart`] brings the same chain back (`--resume`) on the same port. The whole
//! process group is killed on drop.

use apiary_subtensor::{RpcBackend, SubtensorChain, SubtensorOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The chopsticks binary, or a message saying how to get it.
pub fn chopsticks_bin() -> Result<PathBuf, String> {
    let p = std::env::var_os("APIARY_CHOPSTICKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/node-venv/bin/chopsticks"));
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "chopsticks not found at {}: run `bash .ci/setup.sh` (installs node 24 and @acala-network/chopsticks@1.5.1, and writes this launcher) or set APIARY_CHOPSTICKS",
            p.display()
        ))
    }
}

/// A running chopsticks.
pub struct Chopsticks {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl Chopsticks {
    /// Starts chopsticks on a free port and waits until it answers RPC.
    pub async fn start() -> Chopsticks {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Chopsticks {
            port: free_port(),
            dir,
            child: None,
        };
        c.spawn(false);
        c.wait_ready().await;
        c
    }

    /// The websocket URL.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self, resume: bool) {
        let bin = chopsticks_bin().unwrap_or_else(|e| panic!("{e}"));
        let shared = repo_root().join("tests/fixtures/chain");
        let mut cmd = Command::new(bin);
        cmd.arg(format!(
            "--genesis={}",
            shared.join("subtensor-spec218.json").display()
        ))
        .arg(format!(
            "--import-storage={}",
            shared.join("dev-storage.json").display()
        ))
        .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
        .args(["--build-block-mode", "Instant"])
        .arg(format!(
            "--db={}",
            self.dir.path().join("db.sqlite").display()
        ));
        if resume {
            // `--resume` on the command line does not parse in chopsticks 1.5.1 (its value
            // reaches the schema as a string); a config file carries the boolean.
            let cfg = self.dir.path().join("resume.yml");
            std::fs::write(&cfg, "resume: true\n").expect("chopsticks config");
            cmd.arg("-c").arg(cfg);
        }
        let log = std::fs::File::create(self.dir.path().join("chopsticks.log")).expect("log file");
        let log2 = log.try_clone().expect("log file");
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log2));
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        self.child = Some(cmd.spawn().expect("chopsticks starts"));
    }

    /// The log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chopsticks.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "chopsticks exited ({st}) before serving RPC:\n{}",
                        self.log()
                    );
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chopsticks did not open port {} within 120 s:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connects a client (legacy RPC backend, as chopsticks needs), retrying until it answers.
    pub async fn client(&self) -> Arc<SubtensorChain> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let mut opts = SubtensorOptions::new(self.url(), RpcBackend::Legacy);
            opts.ping_every = Duration::from_millis(500);
            match SubtensorChain::connect(opts).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot connect to chopsticks: {e}\n{}",
                        self.log()
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Kills chopsticks (its whole process group) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            #[cfg(unix)]
            {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", c.id())])
                    .status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts chopsticks again on the same port, resuming its stored chain.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn(true);
        self.wait_ready().await;
    }
}

impl Drop for Chopsticks {
    fn drop(&mut self) {
        self.stop();
    }
}
