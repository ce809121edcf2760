//! `[net]`: libp2p settings ([`NetConfig`]).

use crate::error::{check_seed, invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// `[net]`: libp2p settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// Listen multiaddr; port 0 picks a free port.
    pub listen: String,
    /// Multiaddrs (with `/p2p/<peer id>`) dialed at start.
    pub bootstrap: Vec<String>,
    /// Largest gossip message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest blob served or fetched, in bytes.
    pub max_blob_bytes: usize,
    /// Gossipsub heartbeat in milliseconds.
    pub heartbeat_ms: u64,
    /// Timeout of one blob request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Hex 32-byte seed of the libp2p ed25519 key; generated and kept in
    /// `<data_dir>/p2p_key` if unset.
    pub p2p_key_seed: Option<String>,
    /// Gossipsub peer scoring and the node's own strikes and bans (off only to study bad
    /// input one message at a time).
    pub peer_scoring: bool,
    /// Strikes at which a peer is banned (a rejected gossip message is 1, a broken one 2,
    /// serving bytes that do not match their id bans at once; strikes halve every minute).
    pub ban_after_strikes: f64,
    /// How long a ban lasts, in seconds.
    pub ban_secs: u64,
    /// Blob requests one peer may make per second (refill of its meter).
    pub serve_requests_per_sec: f64,
    /// Blob requests one peer may make in a burst.
    pub serve_burst: f64,
    /// Blob lookups served at once, all peers together.
    pub max_concurrent_serves: usize,
    /// Share of those that peers not known as subnet members may take (0–1); the rest is kept
    /// for peers that published admitted gossip in the last hour (registered peers first).
    pub serve_unregistered_share: f64,
    /// Relays (multiaddrs ending in `/p2p/<relay peer id>`) this node reserves a slot at and
    /// listens through: for a node behind NAT or a firewall that peers cannot dial.
    pub relays: Vec<String>,
    /// Run the circuit relay v2 service for peers that cannot be dialed (only on a node whose
    /// `net.listen` address is reachable from the internet).
    pub relay_server: bool,
    /// Try to replace relayed connections with direct ones by hole punching (DCUtR).
    pub hole_punching: bool,
    /// Probe whether this node can be dialed from outside (AutoNAT); `apiary admin status`
    /// shows the answer.
    pub autonat: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            bootstrap: Vec::new(),
            max_message_bytes: 64 * 1024,
            max_blob_bytes: 256 * 1024 * 1024,
            heartbeat_ms: 500,
            request_timeout_ms: 30_000,
            p2p_key_seed: None,
            peer_scoring: true,
            ban_after_strikes: 20.0,
            ban_secs: 600,
            serve_requests_per_sec: 16.0,
            serve_burst: 64.0,
            max_concurrent_serves: 32,
            serve_unregistered_share: 0.5,
            relays: Vec::new(),
            relay_server: false,
            hole_punching: false,
            autonat: false,
        }
    }
}

impl NetConfig {
    /// Checks the `[net]` keys on their own; the error names the key (`net.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.ban_after_strikes.is_finite() && self.ban_after_strikes >= 1.0) {
            return invalid(
                "net.ban_after_strikes",
                "must be at least 1 (20 is the default)",
            );
        }
        if self.ban_secs == 0 || self.ban_secs > 30 * 24 * 3600 {
            return invalid("net.ban_secs", "must be between 1 s and 30 days");
        }
        if !(self.serve_requests_per_sec.is_finite() && self.serve_requests_per_sec > 0.0) {
            return invalid("net.serve_requests_per_sec", "must be > 0");
        }
        if !(self.serve_burst.is_finite() && self.serve_burst >= 1.0) {
            return invalid("net.serve_burst", "must be at least 1");
        }
        if self.max_concurrent_serves == 0 {
            return invalid("net.max_concurrent_serves", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.serve_unregistered_share) {
            return invalid(
                "net.serve_unregistered_share",
                "must be between 0 (members only) and 1 (no reserve); 0.5 is the default",
            );
        }
        if !self.listen.starts_with('/') {
            return invalid(
                "net.listen",
                format!(
                    "`{}` is not a multiaddr; use e.g. /ip4/127.0.0.1/tcp/0",
                    self.listen
                ),
            );
        }
        if let Some(b) = self.bootstrap.iter().find(|b| !b.starts_with('/')) {
            return invalid(
                "net.bootstrap",
                format!("`{b}` is not a multiaddr; use /ip4/IP/tcp/PORT/p2p/PEER_ID"),
            );
        }
        if let Some(r) = self
            .relays
            .iter()
            .find(|r| !r.starts_with('/') || !r.contains("/p2p/"))
        {
            return invalid(
                "net.relays",
                format!("`{r}` is not a relay multiaddr; use /ip4/IP/tcp/PORT/p2p/RELAY_PEER_ID"),
            );
        }
        if self.max_message_bytes < 1024 || self.max_message_bytes > 16 * 1024 * 1024 {
            return invalid("net.max_message_bytes", "must be between 1 KiB and 16 MiB");
        }
        if self.max_blob_bytes < 1024 {
            return invalid("net.max_blob_bytes", "must be at least 1 KiB");
        }
        if self.heartbeat_ms < 10 {
            return invalid("net.heartbeat_ms", "must be at least 10 ms");
        }
        if self.request_timeout_ms < 100 {
            return invalid("net.request_timeout_ms", "must be at least 100 ms");
        }
        check_seed("net.p2p_key_seed", self.p2p_key_seed.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::{assert_invalid, Case};

    #[test]
    fn bad_net_values_name_their_key() {
        NetConfig::default().validate().expect("defaults valid");
        let cases: [Case<NetConfig>; 8] = [
            ("net.relays", |n| {
                n.relays = vec!["/ip4/1.2.3.4/tcp/4001".into()]
            }),
            ("net.listen", |n| n.listen = "127.0.0.1:4000".into()),
            ("net.bootstrap", |n| n.bootstrap = vec!["peer:1".into()]),
            ("net.max_message_bytes", |n| {
                n.max_message_bytes = 17 * 1024 * 1024
            }),
            ("net.max_blob_bytes", |n| n.max_blob_bytes = 1023),
            ("net.heartbeat_ms", |n| n.heartbeat_ms = 9),
            ("net.request_timeout_ms", |n| n.request_timeout_ms = 99),
            ("net.p2p_key_seed", |n| n.p2p_key_seed = Some("zz".into())),
        ];
        for (key, spoil) in cases {
            let mut n = NetConfig::default();
            spoil(&mut n);
            assert_invalid(n.validate(), key);
        }
    }
}
