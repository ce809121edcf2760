//! The default training corpus, shipped inside the binary.
//!
//! `train.data` defaults to `data/tinyshakespeare.txt`, a path that exists only in a checkout of
//! this repository. So that `apiary run`, `apiary devnet` and `apiary doctor` work from any
//! directory on a fresh install, that one path falls back to a copy compiled into the binary,
//! written once into the node's data dir. Any other path is used as given: a subnet's data is
//! whatever its operators point every node at, and a missing file stays an error.

use std::path::{Path, PathBuf};

/// The default `train.data` (relative: found in a checkout's root).
pub const DEFAULT_PATH: &str = "data/tinyshakespeare.txt";

/// The corpus's bytes (1.1 MB of text).
const TEXT: &[u8] = include_bytes!("../../data/tinyshakespeare.txt");

/// Where the built-in copy is written inside a data dir.
pub fn builtin_path(dir: &Path) -> PathBuf {
    dir.join("tinyshakespeare.txt")
}

/// Whether `data` is the default path and does not exist here (the built-in copy stands in).
pub fn uses_builtin(data: &Path) -> bool {
    data == Path::new(DEFAULT_PATH) && !data.exists()
}

/// The path to train on: `data` itself, or for the default path where it does not exist, the
/// built-in copy written to `dir` (once; rewritten if its size differs). Errors name the
/// directory that could not be written.
pub fn resolve(data: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    if !uses_builtin(data) {
        return Ok(data.to_path_buf());
    }
    let path = builtin_path(dir);
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(TEXT.len() as u64) {
        std::fs::create_dir_all(dir)?;
        // Written whole then renamed: a node killed mid-write never trains on half a corpus.
        let tmp = dir.join(".tinyshakespeare.txt.tmp");
        std::fs::write(&tmp, TEXT)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_path_works_outside_a_checkout_and_other_paths_stay_as_given() {
        let dir = tempfile::tempdir().expect("tmp");
        // Tests run in the crate directory, where `data/` does not exist.
        assert!(uses_builtin(Path::new(DEFAULT_PATH)));
        let p = resolve(Path::new(DEFAULT_PATH), dir.path()).expect("resolve");
        assert_eq!(p, builtin_path(dir.path()));
        let on_disk = std::fs::read(&p).expect("written");
        let checkout = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/tinyshakespeare.txt"
        ))
        .expect("the checkout's copy");
        assert_eq!(on_disk, checkout);
        // A second resolve leaves it alone; a truncated copy is rewritten.
        std::fs::write(&p, b"half").expect("truncate");
        resolve(Path::new(DEFAULT_PATH), dir.path()).expect("again");
        assert_eq!(std::fs::read(&p).expect("read").len(), checkout.len());
        // Anything else is the operator's path, missing or not.
        let other = dir.path().join("mine.txt");
        assert_eq!(resolve(&other, dir.path()).expect("as given"), other);
    }
}
