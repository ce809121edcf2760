//! `[node]`: who this node is ([`NodeSection`], [`Role`]).

use crate::error::{check_seed, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a node does in the subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Trains on its assigned pages and publishes updates.
    #[default]
    Miner,
    /// Scores miners' updates, publishes the window record and sets weights.
    Validator,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Miner => f.write_str("miner"),
            Role::Validator => f.write_str("validator"),
        }
    }
}

/// `[node]`: who this node is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Human-readable name used in logs.
    pub name: String,
    /// Miner or validator.
    pub role: Role,
    /// Where the node keeps its store, keys and admin socket.
    pub data_dir: PathBuf,
    /// Hex 32-byte seed for the sr25519 hotkey. If unset, a key is generated on first start
    /// and kept in `<data_dir>/hotkey` (mode 0600).
    pub hotkey_seed: Option<String>,
    /// Admin socket path; defaults to `<data_dir>/admin.sock`.
    pub admin_socket: Option<PathBuf>,
    /// Disk budget of the store in MiB (0: none). Past it the node logs an error, counts
    /// `disk_over_budget`, and sweeps unreferenced blobs after every applied window.
    pub disk_budget_mb: u64,
    /// Sweep unreferenced blobs after every this many applied windows (0: never, except when
    /// over `disk_budget_mb`).
    pub gc_every_windows: u64,
    /// Bytes of freed large blocks the allocator keeps for reuse, in MiB (apiary's binary only;
    /// the cache is trimmed after each applied window and aggregation).
    pub alloc_cache_mb: u64,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: "apiary".into(),
            role: Role::Miner,
            data_dir: PathBuf::from("./apiary-data"),
            hotkey_seed: None,
            admin_socket: None,
            disk_budget_mb: 0,
            gc_every_windows: 1,
            alloc_cache_mb: 256,
        }
    }
}

impl NodeSection {
    /// Checks the `[node]` keys on their own; the error names the key (`node.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_seed("node.hotkey_seed", self.hotkey_seed.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::assert_invalid;

    #[test]
    fn a_bad_hotkey_seed_names_its_key() {
        NodeSection::default().validate().expect("defaults valid");
        for seed in ["zz", "00", &"00".repeat(33)] {
            let n = NodeSection {
                hotkey_seed: Some(seed.to_string()),
                ..NodeSection::default()
            };
            assert_invalid(n.validate(), "node.hotkey_seed");
        }
        let n = NodeSection {
            hotkey_seed: Some("ab".repeat(32)),
            ..NodeSection::default()
        };
        n.validate().expect("a 32-byte hex seed is valid");
    }
}
