//! Where the chain is and how to talk to it: the well-known endpoints, [`resolve_endpoint`],
//! the RPC backend choice and the connection and call limits ([`SubtensorOptions`]).

use std::time::Duration;

/// Well-known endpoints.
pub const FINNEY: &str = "wss://entrypoint-finney.opentensor.ai:443";
/// The public test network.
pub const TESTNET: &str = "wss://test.finney.opentensor.ai:443";
/// A node (or chopsticks) on this machine.
pub const LOCAL: &str = "ws://127.0.0.1:9944";

/// Resolves `finney`, `test`, `local` or a `ws://` / `wss://` URL.
pub fn resolve_endpoint(endpoint: &str) -> std::result::Result<String, String> {
    match endpoint {
        "finney" => Ok(FINNEY.into()),
        "test" | "testnet" => Ok(TESTNET.into()),
        "local" => Ok(LOCAL.into()),
        u if u.starts_with("ws://") || u.starts_with("wss://") => Ok(u.to_string()),
        other => Err(format!(
            "unknown endpoint `{other}`: use finney, test, local or a ws:// / wss:// URL"
        )),
    }
}

/// Which subxt RPC backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcBackend {
    /// The legacy RPC methods (`chain_*`, `state_*`, `author_*`): what chopsticks serves well.
    Legacy,
    /// subxt's default backend (the new `chainHead` methods with a legacy fallback): real nodes.
    Default,
}

/// How to reach the chain.
#[derive(Debug, Clone)]
pub struct SubtensorOptions {
    /// `ws://` or `wss://` URL (see [`resolve_endpoint`]).
    pub url: String,
    /// RPC backend.
    pub rpc: RpcBackend,
    /// Limit for one connection attempt.
    pub connect_timeout: Duration,
    /// Limit for one call (a read, or a submission until its inclusion).
    pub call_timeout: Duration,
    /// How often the follower pings the node to detect a dead connection.
    pub ping_every: Duration,
    /// The subnet's incentive mechanism this node's weights are for (`chain.mechanism`; 0 is
    /// the main one, and the only one on runtimes without mechanism-aware calls).
    pub mechanism: u8,
    /// The chain's block time: turns the blocks until a timelocked commit's reveal into the
    /// drand round it is encrypted to (12 s on finney and testnet).
    pub block_time: Duration,
}

impl SubtensorOptions {
    /// Options for `url` with default timeouts.
    pub fn new(url: impl Into<String>, rpc: RpcBackend) -> Self {
        Self {
            url: url.into(),
            rpc,
            connect_timeout: Duration::from_secs(15),
            call_timeout: Duration::from_secs(90),
            ping_every: Duration::from_secs(3),
            mechanism: 0,
            block_time: Duration::from_secs(12),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve() {
        assert_eq!(resolve_endpoint("finney").as_deref(), Ok(FINNEY));
        assert_eq!(resolve_endpoint("local").as_deref(), Ok(LOCAL));
        assert_eq!(
            resolve_endpoint("ws://127.0.0.1:1234").as_deref(),
            Ok("ws://127.0.0.1:1234")
        );
        assert!(resolve_endpoint("http://x").is_err());
    }
}
