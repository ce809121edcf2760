//! Every example config in `config/examples/` loads and validates, and the data it names is in
//! the repository (a clone alone runs them).

use apiary_config::NodeConfig;
use std::path::Path;

#[test]
fn examples_load_validate_and_name_files_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root");
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("config/examples")).expect("config/examples") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        let cfg = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let data = root.join(&cfg.train.data);
        let data = data
            .canonicalize()
            .unwrap_or_else(|e| panic!("{}: train.data {}: {e}", path.display(), data.display()));
        assert!(
            data.starts_with(&root),
            "{} names train.data outside the repository: {}",
            path.display(),
            data.display()
        );
    }
    assert!(seen >= 2, "expected the miner and validator examples");
}
