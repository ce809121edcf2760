//! [`SubtensorChain`]: the subtensor backend of [`ChainClient`], over subxt's dynamic API.
//!
//! ## Connection
//! One websocket per `SubtensorChain`, held in a slot that a background **follower** task owns:
//! it subscribes to new heads (`chain_subscribeNewHeads`), forwards each as a [`BlockInfo`] on a
//! bounded broadcast channel, and pings the node every few seconds. When the subscription ends,
//! a ping fails or the socket drops, it empties the slot and reconnects with exponential backoff
//! (250 ms doubling to 10 s), then resumes. Blocks produced while it was away (or heads the
//! subscription skipped) are **replayed** in order before the new head — up to
//! [`MAX_REPLAY`] blocks, so no window boundary is lost to a dropped socket; a longer outage
//! is skipped with a warning and counted in [`ChainHealth::skipped`]. A head with a lower
//! number than the last one (a restarted dev chain, a reorg) is forwarded as it is: the chain
//! watcher decides what it means. Calls made while disconnected try one reconnect themselves
//! and otherwise fail with [`ChainError::Unavailable`].
//!
//! ## Calls
//! Every call and storage entry is looked up by name in the runtime's metadata at the current
//! block (no generated code), so argument lists follow the runtime (`register_network` with or
//! without `mechid`). Submissions are serialized per signer (nonces), signed with sr25519 from
//! the hotkey's seed, and awaited until included in a block; failures become [`ChainError`]s
//! via [`crate::errors`].
//!
//! ## Weights
//! `set_weights` reads `WeightsSetRateLimit`, `LastUpdate`, `ValidatorPermit`,
//! `WeightsVersionKey` and `CommitRevealWeightsEnabled` first and refuses locally
//! (`RateLimited { blocks_left, limit }`, `NoValidatorPermit`, `NotRegistered`) rather than
//! paying for a doomed transaction. It also remembers its own last submission per hotkey so it
//! never submits twice inside one limit even if the chain view lags. With commit-reveal on, it
//! commits `blake2_256(SCALE(hotkey, netuid, uids, values, salt, version_key))` (the hash
//! pallet-subtensor's own tests use) and reveals pending commits on later calls
//! ([`SubtensorChain::reveal_pending`]).
//!
//! ## Modules
//! Each depends only on the ones listed before it (this file only re-exports):
//! - `options`: endpoints, [`resolve_endpoint`], [`RpcBackend`], [`SubtensorOptions`].
//! - `sync`, `rpc`: the poison-tolerant mutex lock; JSON-RPC helpers (params, headers, heads).
//! - `connection`: the connection slot, on-demand (re)connect, call timeouts, [`ChainHealth`].
//! - `follower`: the background head follower with reconnect and replay ([`MAX_REPLAY`]).
//! - `ledger`: per-signer locks, our last weights block, commits awaiting reveal.
//! - `chain`: the [`SubtensorChain`] type, construction, raw RPC, a client at the latest block.
//! - `storage`: storage reads by name, uids, all weights, the metagraph.
//! - `extrinsics`: [`signer`], signing and submitting, [`fit_commitment`].
//! - `weights`: weight-rule checks, [`commit_hash`], commit-reveal and its reveals.
//! - `chain_client`: `impl ChainClient for SubtensorChain`.
//!
//! [`BlockInfo`]: apiary_chain::BlockInfo
//! [`ChainClient`]: apiary_chain::ChainClient
//! [`ChainError`]: apiary_chain::ChainError
//! [`ChainError::Unavailable`]: apiary_chain::ChainError::Unavailable

mod calls;
mod chain;
mod chain_client;
mod connection;
mod extrinsics;
mod follower;
mod ledger;
mod options;
mod rpc;
mod storage;
mod sync;
mod weights;

pub use calls::{choose_weight_call, WeightCall, WeightCalls, WEIGHT_CALL_NAMES};
pub use chain::SubtensorChain;
pub use connection::ChainHealth;
pub use extrinsics::{fit_commitment, signer, MAX_COMMITMENT_BYTES};
pub use follower::MAX_REPLAY;
pub use options::{resolve_endpoint, RpcBackend, SubtensorOptions, FINNEY, LOCAL, TESTNET};
pub(crate) use storage::account;
pub use weights::commit_hash;
