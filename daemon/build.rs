//! Records the commit the binary is built from (`APIARY_COMMIT`): `--version`, the start-up line
//! of `apiary run` and the `apiary_build_info` metric show it, so an operator's report names the
//! exact code. Outside a git checkout (a source tarball, `cargo install` from a registry) it is
//! `unknown`. Uncommitted changes are not marked: the script reruns
//! only when HEAD moves, not on every edit.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short=10", "HEAD"]);
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        // A new commit or checkout moves HEAD or the branch it points at.
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{r}");
        }
        println!("cargo:rerun-if-changed={dir}/packed-refs");
    }
    let value = commit.unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=APIARY_COMMIT={value}");
}
