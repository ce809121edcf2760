//! The Python packages the oracle tests check apiary against (`bittensor`, `bittensor-drand`,
//! pinned and installed from PyPI into `<repo>/target/bittensor-venv` by `.ci/setup.sh`, or
//! the Python named in `APIARY_BITTENSOR_PYTHON`).

use crate::chopsticks::repo_root;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The Python with the oracle packages, or a panic saying how to get it.
pub fn python() -> PathBuf {
    let p = std::env::var_os("APIARY_BITTENSOR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/bittensor-venv/bin/python"));
    assert!(
        p.exists(),
        "the Bittensor packages are not installed at {}: run `bash .ci/setup.sh` (installs the pinned bittensor and bittensor-drand from PyPI into target/bittensor-venv), or set APIARY_BITTENSOR_PYTHON to a python that has them",
        p.display()
    );
    p
}

/// Runs `script` in the oracle's Python with `args` and `env` (no stdin: a prompt fails
/// instead of hanging) and parses the JSON it prints last; panics with its output otherwise.
pub fn run_json(script: &str, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script).args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the oracle's python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the oracle script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("oracle output is not JSON ({e}): {stdout}\n{stderr}"))
}

/// The string `k` of an oracle's JSON output.
pub fn field<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("oracle output has no string `{k}`: {v}"))
}
