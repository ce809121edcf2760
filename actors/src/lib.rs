//! # apiary-actors
//!
//! The supervised actors that make a node (ractor), and the protocol they speak on gossip.
//!
//! ```text
//!                    NodeSupervisor  (restart budget: max_restarts in restart_window)
//!      ┌──────────────┬──────────┴──────┬───────────────┬────────────────┐
//!  ChainWatcher   GossipPeer        Trainer        Evaluator*      WeightSetter*
//!  blocks, windows  signed gossip   owns the model  re-computes     scores → u16 →
//!  metagraph, dial  → registered?   trains (miner)  miners' updates  set_weights
//!                   → route         applies records cosine, EMA,     (*validators)
//!                                                   window records
//! ```
//!
//! Actors never hold each other's `ActorRef`s. They meet through [`context::NodeContext`]:
//! shared resources (store, chain client, net handle, keys, dataset), a bounded broadcast of
//! [`context::NodeEvent`]s, and *slots* that the supervisor fills with the current `ActorRef` of
//! each child, so a restarted child is found by everyone at once. In front of every actor is a
//! handle with typed async methods ([`trainer::TrainerHandle`], ...).
//!
//! Heavy work (training, evaluation, aggregation, hashing, RocksDB batches) runs in
//! `spawn_blocking`; its result comes back to the actor as a message, so mailboxes keep moving.
//!
//! ## A window, end to end
//! 1. The chain watcher sees the first block of window `w` and broadcasts `WindowStarted(w)`
//!    with that block's hash (the seed of `w`'s sync proofs).
//! 2. The lead validator's evaluator closes `w-1`: it waits for in-flight evaluations, keeps the
//!    updates whose cosine score passes `min_score`, aggregates them (median-norm clipping, mean,
//!    outer lr) into the next model, stores that checkpoint blob and gossips a signed
//!    [`protocol::WindowRecord`] naming the accepted update ids and the resulting model id.
//! 3. Every trainer applies the record: it fetches missing update blobs from peers (verified
//!    against their blake3 ids), aggregates in uid order and checks that the result hashes to the
//!    record's model id. A node that cannot (it missed a window, restarted) fetches the model
//!    checkpoint itself by id — catch-up is one content-addressed download.
//! 4. Miners train on their deterministic pages for `w` starting from that model and announce the
//!    update blob with a [`sync`] proof (a slice of that model seeded by the hash of `w`'s first
//!    block); the validator checks the proof against its own model, then fetches and scores the
//!    update while the window is open.

pub mod chain_watcher;
pub mod context;
pub mod evaluator;
pub mod gossip;
pub mod protocol;
pub mod supervisor;
pub mod sync;
pub mod trainer;
pub mod updates;
pub mod weights;

pub use context::{Metrics, NodeContext, NodeEvent, NodeStatus};
pub use supervisor::{spawn_supervisor, SupervisorHandle};

/// Errors an actor handle returns to its caller.
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    /// The actor is not running (it is being restarted, or the node is stopping).
    #[error("{0} is not running (restarting or stopped); retry shortly")]
    NotRunning(&'static str),
    /// The call did not complete.
    #[error("call to {actor} failed: {message}")]
    Call {
        /// Which actor.
        actor: &'static str,
        /// What happened.
        message: String,
    },
}

/// Heavy work that failed or panicked inside `spawn_blocking`.
pub(crate) fn join_err(e: tokio::task::JoinError) -> String {
    if e.is_panic() {
        "blocking task panicked".to_string()
    } else {
        "blocking task cancelled".to_string()
    }
}
