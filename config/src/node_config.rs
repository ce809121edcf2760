//! [`NodeConfig`]: the whole configuration, loading, derived paths and the checks that span
//! sections.

use crate::error::{invalid, ConfigError};
use crate::{
    ChainBackend, ChainConfig, CheckpointConfig, CompetitionConfig, CompressionConfig,
    MetricsConfig, ModelConfig, NetConfig, NodeSection, SupervisorConfig, TrainConfig,
    ValidatorConfig,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole node configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Identity and role.
    pub node: NodeSection,
    /// Chain backend and timing.
    pub chain: ChainConfig,
    /// libp2p networking.
    pub net: NetConfig,
    /// Model architecture.
    pub model: ModelConfig,
    /// Training data and update rule.
    pub train: TrainConfig,
    /// Validator scoring and weights.
    pub validator: ValidatorConfig,
    /// How updates are compressed on the wire.
    pub compression: CompressionConfig,
    /// Which model checkpoints are kept.
    pub checkpoint: CheckpointConfig,
    /// Supervision of the node's actors.
    pub supervisor: SupervisorConfig,
    /// The opt-in Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Model competitions this node takes part in (`[[competition]]`, any number).
    #[serde(rename = "competition", skip_serializing_if = "Vec::is_empty")]
    pub competitions: Vec<CompetitionConfig>,
}

impl NodeConfig {
    /// Parses TOML text (no validation).
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::from_toml_str(&text, path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The admin socket path.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.node
            .admin_socket
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("admin.sock"))
    }

    /// Directory of the tokenized page cache.
    pub fn data_cache_path(&self) -> PathBuf {
        self.train
            .data_cache
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("dataset"))
    }

    /// Directory of the embedded chain's database.
    pub fn local_chain_path(&self) -> PathBuf {
        self.chain
            .local_path
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("chain"))
    }

    /// Checks every rule that serde cannot: each section's own `validate` (in file order), then
    /// the rules that span sections. The first problem found is returned, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node.validate()?;
        self.chain.validate()?;
        self.net.validate()?;
        self.model.validate()?;
        self.train.validate()?;
        self.validator.validate()?;
        self.compression.validate()?;
        self.checkpoint.validate()?;
        self.supervisor.validate()?;
        self.metrics.validate()?;
        for c in &self.competitions {
            c.validate()?;
        }
        self.validate_across_sections()
    }

    /// The rules that involve more than one section.
    fn validate_across_sections(&self) -> Result<(), ConfigError> {
        if self.chain.backend == ChainBackend::Subtensor && self.node.hotkey_seed.is_some() {
            return invalid(
                "node.hotkey_seed",
                "the subtensor backend signs with the wallet hotkey (chain.wallet / chain.hotkey); remove node.hotkey_seed",
            );
        }
        let mut ids = std::collections::BTreeSet::new();
        for c in &self.competitions {
            if !ids.insert(c.id.as_str()) {
                return invalid("competition.id", format!("`{}` appears twice", c.id));
            }
            if c.piece_bytes > self.net.max_blob_bytes {
                return invalid(
                    "competition.piece_bytes",
                    format!(
                        "competition `{}`: {} is larger than net.max_blob_bytes ({}); pieces travel as blobs",
                        c.id, c.piece_bytes, self.net.max_blob_bytes
                    ),
                );
            }
        }
        let shares: f64 = self.competitions.iter().map(|c| c.share).sum();
        if shares > 1.0 + 1e-9 {
            return invalid(
                "competition.share",
                format!("the competitions' shares add up to {shares:.3}; at most 1 (training gets the rest)"),
            );
        }
        if self.node.role == crate::Role::Validator {
            if let Some(k) = self.train.adversary {
                return invalid(
                    "train.adversary",
                    format!("`{k}` is a miner's cheat; remove it from a validator's config"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::{assert_invalid, Case};
    use crate::ChainRpc;

    #[test]
    fn defaults_are_valid() {
        NodeConfig::default().validate().expect("defaults valid");
    }

    #[test]
    fn subtensor_chain_keys_are_checked() {
        let text = "[chain]\nbackend = \"subtensor\"\nendpoint = \"test\"\nrpc = \"legacy\"\nwallet = \"w\"\nhotkey = \"h\"\n";
        let cfg = NodeConfig::from_toml_str(text, Path::new("x.toml")).expect("parses");
        cfg.validate().expect("valid");
        assert_eq!(cfg.chain.rpc, ChainRpc::Legacy);
        let mut bad = cfg.clone();
        bad.chain.endpoint = "http://x".into();
        assert!(bad
            .validate()
            .expect_err("bad endpoint")
            .to_string()
            .contains("chain.endpoint"));
        let mut bad = cfg.clone();
        bad.chain.hotkey = "../h".into();
        assert!(bad
            .validate()
            .expect_err("bad name")
            .to_string()
            .contains("chain.hotkey"));
        let mut bad = cfg;
        bad.node.hotkey_seed = Some("00".repeat(32));
        assert!(bad
            .validate()
            .expect_err("seed")
            .to_string()
            .contains("node.hotkey_seed"));
    }

    #[test]
    fn examples_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("examples dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                NodeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "expected example configs in {}", dir.display());
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = NodeConfig::from_toml_str("[model]\nd_modle = 3\n", Path::new("x.toml"))
            .expect_err("typo must fail");
        assert!(err.to_string().contains("d_modle"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let mut c = NodeConfig::default();
        c.model.n_heads = 3;
        let err = c.validate().expect_err("3 does not divide 64");
        assert!(err.to_string().contains("model.n_heads"), "{err}");
        let mut c = NodeConfig::default();
        c.node.hotkey_seed = Some("zz".into());
        assert!(c.validate().is_err());
        for f in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            let mut c = NodeConfig::default();
            c.train.sync_slice_fraction = f;
            let err = c.validate().expect_err("fraction out of (0, 1]");
            assert!(
                err.to_string().contains("train.sync_slice_fraction"),
                "{err}"
            );
        }
        let mut c = NodeConfig::default();
        c.train.sync_slice_fraction = 1.0;
        c.validate()
            .expect("the whole model is a valid (if large) proof");
        let mut c = NodeConfig::default();
        c.net.listen = "127.0.0.1:4000".into();
        assert!(c
            .validate()
            .expect_err("not multiaddr")
            .to_string()
            .contains("net.listen"));
    }

    /// A bad value in any section reaches the caller of `NodeConfig::validate` with its key.
    #[test]
    fn every_section_reports_its_key_through_node_config() {
        let cases: [Case<NodeConfig>; 10] = [
            ("node.hotkey_seed", |c| {
                c.node.hotkey_seed = Some("zz".into())
            }),
            ("chain.blocks_per_window", |c| c.chain.blocks_per_window = 0),
            ("net.heartbeat_ms", |c| c.net.heartbeat_ms = 0),
            ("model.n_layers", |c| c.model.n_layers = 0),
            ("train.batch_pages", |c| c.train.batch_pages = 0),
            ("validator.min_score", |c| c.validator.min_score = -2.0),
            ("compression.topk", |c| {
                c.compression.enabled = true;
                c.compression.topk = 0;
            }),
            ("checkpoint.keep_recent", |c| c.checkpoint.keep_recent = 0),
            ("supervisor.restart_window_secs", |c| {
                c.supervisor.restart_window_secs = 0
            }),
            ("metrics.listen", |c| {
                c.metrics.listen = "0.0.0.0:9615".into()
            }),
        ];
        for (key, spoil) in cases {
            let mut c = NodeConfig::default();
            spoil(&mut c);
            assert_invalid(c.validate(), key);
        }
    }

    #[test]
    fn a_bad_value_in_a_file_names_its_key() {
        let err = NodeConfig::from_toml_str("[validator]\nema_alpha = 2.0\n", Path::new("x.toml"))
            .expect("parses")
            .validate()
            .expect_err("out of (0, 1]");
        assert_eq!(err.key(), Some("validator.ema_alpha"));
        assert_eq!(
            err.to_string(),
            "invalid config value `validator.ema_alpha`: must be in (0, 1]"
        );
    }

    #[test]
    fn the_hotkey_seed_conflicts_with_the_subtensor_wallet() {
        let mut c = NodeConfig::default();
        c.node.hotkey_seed = Some("00".repeat(32));
        c.validate().expect("a seed is fine on the local chain");
        c.node.validate().expect("valid on its own");
        c.chain.backend = ChainBackend::Subtensor;
        c.chain.validate().expect("valid on its own");
        let err = c.validate().expect_err("conflict");
        assert_eq!(err.key(), Some("node.hotkey_seed"));
        assert!(err.to_string().contains("remove node.hotkey_seed"), "{err}");
    }

    #[test]
    fn read_and_parse_errors_have_no_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.toml");
        let err = NodeConfig::load(&missing).expect_err("missing");
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert_eq!(err.key(), None);
        let err = NodeConfig::from_toml_str("[node", Path::new("x.toml")).expect_err("bad toml");
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert_eq!(err.key(), None);
    }
}
