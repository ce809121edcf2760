//! `[chain]`: the chain clock and subnet ([`ChainConfig`], [`ChainBackend`], [`ChainRpc`]).

use crate::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which chain backend the chain watcher talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChainBackend {
    /// The embedded local chain (state in RocksDB, blocks on a timer).
    #[default]
    Local,
    /// A subtensor (Bittensor) node at `chain.endpoint`, signing with the btcli wallet hotkey
    /// `chain.wallet` / `chain.hotkey`.
    Subtensor,
}

/// Which subxt RPC backend talks to a subtensor endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChainRpc {
    /// Chosen by the endpoint ([`ChainRpc::resolve`]): legacy on a loopback endpoint (a local
    /// dev chain: chopsticks needs it, and a local subtensor node serves it too), subxt's
    /// chainHead backend on every other.
    #[default]
    Auto,
    /// subxt's chainHead backend: real nodes.
    Default,
    /// The legacy RPC methods: chopsticks (whose new-head subscriptions the default backend
    /// does not see).
    Legacy,
}

impl ChainRpc {
    /// The backend to use for `endpoint`: [`ChainRpc::Auto`] becomes [`ChainRpc::Legacy`] on a
    /// loopback endpoint and [`ChainRpc::Default`] elsewhere; the others stay as they are.
    pub fn resolve(self, endpoint: &str) -> ChainRpc {
        match self {
            ChainRpc::Auto if is_loopback_endpoint(endpoint) => ChainRpc::Legacy,
            ChainRpc::Auto => ChainRpc::Default,
            other => other,
        }
    }
}

/// Whether a subtensor endpoint is on this machine: `local`, or a ws(s) URL whose host is
/// `localhost`, an address in 127.0.0.0/8 or `[::1]`.
pub fn is_loopback_endpoint(endpoint: &str) -> bool {
    if endpoint == "local" {
        return true;
    }
    let Some(rest) = endpoint
        .strip_prefix("ws://")
        .or_else(|| endpoint.strip_prefix("wss://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `[chain]`: the chain clock and subnet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// Backend; `local` is the embedded chain.
    pub backend: ChainBackend,
    /// Subnet id.
    pub netuid: u16,
    /// Blocks per training window (`window = block / blocks_per_window`).
    pub blocks_per_window: u64,
    /// Embedded chain: milliseconds between blocks.
    pub block_time_ms: u64,
    /// Embedded chain: directory of its RocksDB (defaults to `<data_dir>/chain`).
    pub local_path: Option<PathBuf>,
    /// Refresh the metagraph every this many blocks.
    pub metagraph_refresh_blocks: u64,
    /// Register this node's hotkey on start if it is not registered. Embedded chain only: on
    /// subtensor registration burns TAO, so the node only checks and the operator registers
    /// with `apiary chain register`.
    pub auto_register: bool,
    /// Subtensor: `finney`, `test`, `local` (ws://127.0.0.1:9944) or a `ws://` / `wss://` URL.
    pub endpoint: String,
    /// Subtensor: RPC backend, `auto` (legacy on a loopback endpoint, chainHead elsewhere),
    /// `default` (subxt's chainHead: real nodes) or `legacy` (chopsticks).
    pub rpc: ChainRpc,
    /// Subtensor: btcli wallet name (`~/.bittensor/wallets/<wallet>`).
    pub wallet: String,
    /// Subtensor: hotkey name in the wallet (`hotkeys/<hotkey>`).
    pub hotkey: String,
    /// Subtensor: wallets directory (default `~/.bittensor/wallets`).
    pub wallet_path: Option<PathBuf>,
    /// Subtensor: the subnet's incentive mechanism this validator's weights are for (0, the
    /// main one, by default). On a runtime with mechanism-aware calls any id is sent with
    /// `set_mechanism_weights`; on older runtimes only 0 exists.
    pub mechanism: u8,
    /// Subtensor: the chain's block time in milliseconds (12 000 on finney and testnet; a
    /// fast-block localnet has 250). Commit-reveal v4 encrypts weights to the drand round of
    /// their reveal, which this turns blocks into.
    pub subtensor_block_ms: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            backend: ChainBackend::Local,
            netuid: 1,
            blocks_per_window: 4,
            block_time_ms: 500,
            local_path: None,
            metagraph_refresh_blocks: 1,
            auto_register: true,
            endpoint: "local".into(),
            rpc: ChainRpc::Auto,
            wallet: "default".into(),
            hotkey: "default".into(),
            wallet_path: None,
            mechanism: 0,
            subtensor_block_ms: 12_000,
        }
    }
}

impl ChainConfig {
    /// Checks the `[chain]` keys on their own (the subtensor keys only with
    /// `backend = "subtensor"`); the error names the key (`chain.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.blocks_per_window == 0 {
            return invalid("chain.blocks_per_window", "must be at least 1");
        }
        if self.block_time_ms < 10 {
            return invalid("chain.block_time_ms", "must be at least 10 ms");
        }
        if self.metagraph_refresh_blocks == 0 {
            return invalid("chain.metagraph_refresh_blocks", "must be at least 1");
        }
        if self.backend == ChainBackend::Subtensor {
            if !(100..=600_000).contains(&self.subtensor_block_ms) {
                return invalid(
                    "chain.subtensor_block_ms",
                    "must be between 100 and 600000 (12000 on finney and testnet)",
                );
            }
            let e = self.endpoint.as_str();
            if !(matches!(e, "finney" | "test" | "local")
                || e.starts_with("ws://")
                || e.starts_with("wss://"))
            {
                return invalid(
                    "chain.endpoint",
                    format!("`{e}` is not finney, test, local or a ws:// / wss:// URL"),
                );
            }
            for (key, name) in [
                ("chain.wallet", &self.wallet),
                ("chain.hotkey", &self.hotkey),
            ] {
                if !is_wallet_name(name) {
                    return invalid(
                        key,
                        format!(
                            "`{name}` is not a btcli wallet/hotkey name (letters, digits, - and _)"
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

/// A btcli wallet or hotkey name: non-empty, no leading dot, letters, digits, `-`, `_`, `.`
/// (so it cannot leave the wallets directory).
fn is_wallet_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::{assert_invalid, Case};

    #[test]
    fn auto_rpc_is_legacy_only_on_this_machine() {
        for e in [
            "local",
            "ws://127.0.0.1:9944",
            "ws://127.3.2.1",
            "wss://localhost:443/rpc",
            "ws://[::1]:9944",
        ] {
            assert_eq!(ChainRpc::Auto.resolve(e), ChainRpc::Legacy, "{e}");
            assert_eq!(ChainRpc::Default.resolve(e), ChainRpc::Default, "{e}");
        }
        for e in [
            "finney",
            "test",
            "wss://entrypoint.example:443",
            "ws://128.0.0.1:9944",
            "ws://127.0.0.1.example:9944",
            "ws://[::2]:9944",
        ] {
            assert_eq!(ChainRpc::Auto.resolve(e), ChainRpc::Default, "{e}");
            assert_eq!(ChainRpc::Legacy.resolve(e), ChainRpc::Legacy, "{e}");
        }
    }

    fn subtensor() -> ChainConfig {
        ChainConfig {
            backend: ChainBackend::Subtensor,
            endpoint: "wss://entrypoint-finney.opentensor.ai:443".into(),
            ..ChainConfig::default()
        }
    }

    #[test]
    fn bad_chain_values_name_their_key() {
        ChainConfig::default().validate().expect("defaults valid");
        subtensor().validate().expect("a wss:// endpoint is valid");
        let cases: [Case<ChainConfig>; 6] = [
            ("chain.blocks_per_window", |c| c.blocks_per_window = 0),
            ("chain.block_time_ms", |c| c.block_time_ms = 9),
            ("chain.metagraph_refresh_blocks", |c| {
                c.metagraph_refresh_blocks = 0
            }),
            ("chain.endpoint", |c| c.endpoint = "http://x".into()),
            ("chain.wallet", |c| c.wallet = String::new()),
            ("chain.hotkey", |c| c.hotkey = "a/b".into()),
        ];
        for (key, spoil) in cases {
            let mut c = subtensor();
            spoil(&mut c);
            assert_invalid(c.validate(), key);
        }
    }

    #[test]
    fn subtensor_keys_are_ignored_on_the_local_chain() {
        let c = ChainConfig {
            endpoint: "http://x".into(),
            hotkey: "../h".into(),
            ..ChainConfig::default()
        };
        c.validate().expect("the local chain does not use them");
    }
}
