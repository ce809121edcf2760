//! # apiary-chain
//!
//! The chain interface every node speaks, and its first backend, the embedded [`local`] chain.
//!
//! A chain gives a node four things: a **clock** (a stream of blocks; windows are derived from
//! block numbers with [`window_of`]), a **metagraph** (uid ↔ hotkey, stake, validator permit,
//! the peer record each node committed, last weight update), **weights** (`set_weights` with u16
//! values, rate-limited per validator) and **commitments** (small raw bytes per hotkey; apiary
//! stores its libp2p peer record there so nodes find each other through the chain).
//!
//! [`ChainClient`] is shaped after subtensor so a subxt backend fits behind it: calls are signed
//! by a [`keys::Hotkey`] and carry the netuid; the block stream is a broadcast receiver fed by a
//! background task. Errors are [`ChainError`]s that say what the operator should do.

pub mod keys;
pub mod local;

use keys::{Hotkey, HotkeyId};
use serde::{Deserialize, Serialize};

/// A produced block, as seen by nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Height.
    pub number: u64,
    /// blake3 over the parent hash, height, timestamp and included extrinsics.
    pub hash: [u8; 32],
    /// Unix time in milliseconds when it was produced.
    pub timestamp_ms: u64,
}

/// The window a block belongs to.
pub fn window_of(block: u64, blocks_per_window: u64) -> u64 {
    block / blocks_per_window.max(1)
}

/// Where a node can be reached on libp2p, and the models it entered in competitions; kept in
/// its on-chain commitment (one per hotkey and subnet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// libp2p peer id (base58).
    pub peer_id: String,
    /// Multiaddrs without the `/p2p` suffix.
    pub addrs: Vec<String>,
    /// Models committed to competitions, at most one per competition (absent from the JSON
    /// when empty, so a plain peer record reads and encodes as before).
    #[serde(default, rename = "m", skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelCommit>,
}

/// A model entered in a competition, as committed on chain.
///
/// Why both ids: `model` names the model's manifest (what validators fetch); `digest` is
/// `blake3(model ‖ hotkey)` as SN9 commits it, binding the entry to the committing hotkey so
/// that a record copied from another miner's commitment is visibly not its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCommit {
    /// The competition's id (`[[competition]] id`).
    #[serde(rename = "c")]
    pub competition: String,
    /// blake3 of the model's manifest, hex.
    #[serde(rename = "i")]
    pub model: String,
    /// `blake3(model id ‖ hotkey)`, hex.
    #[serde(rename = "d")]
    pub digest: String,
}

impl PeerRecord {
    /// Compact encoding for a commitment (JSON, well under the 3 kB limit for a few addresses).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    /// Decodes a commitment; `None` if it is not a peer record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// One registered uid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neuron {
    /// Uid in the subnet.
    pub uid: u16,
    /// Its hotkey.
    pub hotkey: HotkeyId,
    /// Stake (rao).
    pub stake: u64,
    /// Whether it may set weights.
    pub validator_permit: bool,
    /// Its commitment decoded as a peer record, if any.
    pub peer: Option<PeerRecord>,
    /// Block its commitment was last changed at, where the backend says.
    #[serde(default)]
    pub commit_block: Option<u64>,
    /// Block of its last weight submission (its registration block before that).
    pub last_update: u64,
    /// Block it registered at.
    pub registered_at: u64,
}

/// The subnet's registered uids at a block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metagraph {
    /// Subnet id.
    pub netuid: u16,
    /// Block it was read at.
    pub block: u64,
    /// Neurons ordered by uid.
    pub neurons: Vec<Neuron>,
}

impl Metagraph {
    /// The neuron of a hotkey.
    pub fn by_hotkey(&self, hotkey: &HotkeyId) -> Option<&Neuron> {
        self.neurons.iter().find(|n| &n.hotkey == hotkey)
    }
    /// The neuron with a uid.
    pub fn by_uid(&self, uid: u16) -> Option<&Neuron> {
        self.neurons.iter().find(|n| n.uid == uid)
    }
    /// The validator whose window records everyone follows: among permitted validators that
    /// publish an apiary peer record, the one with the most stake, ties broken by the lower uid.
    /// A neuron without a peer record (a subnet owner's key, a validator running other
    /// software) cannot publish records, so it never leads, whatever its stake.
    pub fn lead_validator(&self) -> Option<&Neuron> {
        self.neurons
            .iter()
            .filter(|n| n.validator_permit && n.peer.is_some())
            .max_by(|a, b| a.stake.cmp(&b.stake).then(b.uid.cmp(&a.uid)))
    }
}

/// What a submitted transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxReceipt {
    /// Block it was included in.
    pub block: u64,
    /// Transaction hash (hex).
    pub tx_hash: String,
}

/// Chain errors. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The hotkey has no uid on the subnet.
    #[error(
        "hotkey {0} is not registered on subnet {1}; register it first (`apiary chain register`)"
    )]
    NotRegistered(HotkeyId, u16),
    /// The subnet does not exist.
    #[error("subnet {0} does not exist on this chain; check chain.netuid")]
    UnknownSubnet(u16),
    /// The subnet has no free uid.
    #[error("subnet {0} is full ({1} uids)")]
    SubnetFull(u16, u16),
    /// Only validators with a permit may set weights.
    #[error("hotkey {0} has no validator permit on subnet {1}; it needs more stake")]
    NoValidatorPermit(HotkeyId, u16),
    /// Weights were set too recently.
    #[error("weights rate limited: wait {blocks_left} more blocks (limit {limit} blocks since the last update)")]
    RateLimited {
        /// Blocks to wait.
        blocks_left: u64,
        /// The subnet's limit.
        limit: u64,
    },
    /// Weight vectors are malformed.
    #[error("invalid weights: {0}")]
    InvalidWeights(String),
    /// The commitment is too large.
    #[error("commitment of {0} bytes exceeds the {1}-byte limit")]
    CommitmentTooLarge(usize, usize),
    /// The extrinsic's signature does not verify or its nonce is stale.
    #[error("transaction rejected: {0}")]
    BadTransaction(String),
    /// Storage of the embedded chain failed.
    #[error("embedded chain storage: {0}")]
    Store(#[from] apiary_storage::StoreError),
    /// The chain backend is gone.
    #[error("chain backend unavailable: {0}; check the endpoint and restart the node")]
    Unavailable(String),
    /// The paying account cannot cover a fee, burn, lock or transfer.
    #[error("insufficient balance: {0}; transfer TAO to that account and retry")]
    InsufficientBalance(String),
    /// The connected runtime lacks a pallet, call or storage entry apiary needs.
    #[error(
        "the chain's runtime has no {0}; this runtime version is not supported, check the endpoint"
    )]
    MissingCall(String),
    /// The runtime refused an axon (ip, port) for serving.
    #[error("axon rejected by the runtime: {0}")]
    InvalidAxon(String),
    /// The runtime refused a transaction for a reason without a variant of its own.
    #[error("the chain rejected the transaction: {0}")]
    Runtime(String),
}

impl ChainError {
    /// Whether retrying the same call later may succeed without anyone changing anything: the
    /// endpoint was unreachable or the transaction was dropped (stale nonce, pool full).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ChainError::Unavailable(_) | ChainError::BadTransaction(_)
        )
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ChainError>;

/// The operations a node needs from a chain. Implemented by [`local::LocalChain`]; a subtensor
/// backend implements the same calls through subxt.
#[async_trait::async_trait]
pub trait ChainClient: Send + Sync + 'static {
    /// Backend name for logs and the admin socket.
    fn backend_name(&self) -> &'static str;
    /// The latest block.
    async fn best_block(&self) -> Result<BlockInfo>;
    /// A stream of new blocks (bounded; a slow reader sees `Lagged` and should resync).
    fn subscribe_blocks(&self) -> tokio::sync::broadcast::Receiver<BlockInfo>;
    /// The hash of block `number` on the chain's best fork, or `None` if the chain has no such
    /// block (yet). Nodes seed window-dependent randomness (sync slices) with the hash of a
    /// window's first block and ask for it here when their block stream skipped that block.
    async fn block_hash(&self, number: u64) -> Result<Option<[u8; 32]>>;
    /// The subnet's metagraph now.
    async fn metagraph(&self, netuid: u16) -> Result<Metagraph>;
    /// How many uids the subnet has (cheap: the watcher reads it every block and re-reads the
    /// whole metagraph when it changes, i.e. on registrations).
    async fn neuron_count(&self, netuid: u16) -> Result<u16>;
    /// Registers `hotkey` on the subnet (burned registration); returns its uid. Idempotent.
    async fn register(&self, netuid: u16, hotkey: &Hotkey) -> Result<u16>;
    /// Publishes a commitment for `hotkey` (apiary puts its [`PeerRecord`] there).
    async fn set_commitment(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        data: Vec<u8>,
    ) -> Result<TxReceipt>;
    /// Submits weights. `uids` and `weights` have equal length.
    async fn set_weights(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<TxReceipt>;
    /// The weights a uid has on chain, as `(dest uid, weight)`.
    async fn weights(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>>;
    /// Reveals `hotkey`'s pending commit-reveal weight commits that the chain accepts now;
    /// returns how many were revealed (commits still too early stay pending). Backends without
    /// commit-reveal have nothing pending.
    async fn reveal_pending(&self, _hotkey: &Hotkey) -> Result<usize> {
        Ok(0)
    }
    /// How many weight commits of `hotkey` await their reveal.
    fn pending_reveals(&self, _hotkey: &HotkeyId) -> usize {
        0
    }
    /// Connection health for the admin socket (connected, reconnects, latest head and how long
    /// ago it was seen); `None` for backends without a remote connection.
    fn connection_health(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Normalizes non-negative scores to u16 weights the way Bittensor does: the largest becomes
/// `u16::MAX`, the others proportionally; all-zero scores give no weights.
pub fn normalize_weights(scores: &[(u16, f64)]) -> (Vec<u16>, Vec<u16>) {
    let max = scores
        .iter()
        .map(|(_, s)| if s.is_finite() { s.max(0.0) } else { 0.0 })
        .fold(0.0f64, f64::max);
    if max <= 0.0 {
        return (Vec::new(), Vec::new());
    }
    let mut uids = Vec::new();
    let mut ws = Vec::new();
    for (uid, s) in scores {
        let s = if s.is_finite() { s.max(0.0) } else { 0.0 };
        let w = ((s / max) * u16::MAX as f64).round() as u16;
        if w > 0 {
            uids.push(*uid);
            ws.push(w);
        }
    }
    (uids, ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_weights() {
        assert_eq!(window_of(0, 4), 0);
        assert_eq!(window_of(7, 4), 1);
        assert_eq!(window_of(8, 4), 2);
        let (u, w) = normalize_weights(&[(0, 0.5), (1, 1.0), (2, -0.2), (3, f64::NAN)]);
        assert_eq!(u, vec![0, 1]);
        assert_eq!(w, vec![32768, 65535]);
        assert!(normalize_weights(&[(0, 0.0)]).0.is_empty());
    }
}
