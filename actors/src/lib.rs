//! # apiary-actors
//!
//! The supervised actors that make a node (ractor), and the protocol they speak on gossip.
//!
//! ```text
//!                         NodeSupervisor  (a table of children; restart budget)
//!   ┌───────────┬──────────────┬───────────┬──────────┬────────────┬──────────────┐
//! NodeCore   Trainer        ChainWatcher   GossipPeer  Evaluator*   WeightSetter*
//! the window the model      blocks,        signed      mechanism    scores → u16
//! machine:   keeper: trains metagraph,     gossip →    checks,      → set_weights
//! decides    (miner), holds dial peers     admitted?   score, close (*validators)
//! when       the model,                    → core      aggregate
//!            applies records
//! ```
//!
//! **Who decides, who does.** All window rules live in one pure type, [`window::WindowMachine`]
//! (no tokio, no I/O; unit and property tests drive it with events). The [`node_core`] actor
//! owns it: the other actors report what happened (a block, an admitted announcement, an
//! evaluation, a record applied, a failed weight submission) and carry out the actions it
//! returns (train window w, evaluate update u, close window w, aggregate, apply record r, submit
//! weights). **What is scored and how** is the incentive mechanism's ([`mechanism::Mechanism`];
//! windowed training, [`windowed::Windowed`], is the first).
//!
//! **Who owns what.** The metagraph is the chain watcher's; the model is the trainer's (the
//! evaluator asks it through [`trainer::TrainerHandle`]); scores are the evaluator's; the weight
//! history is the weight setter's; the `announcements` column is the core's. [`NodeContext`]
//! holds resources only (store, chain client, net handle, keys, dataset) plus the event bus,
//! the status board and counters. Actors never hold a registry: the supervisor passes each one
//! the handles it needs ([`supervisor::Handles`], [`handle::Slot`]); module dependencies point
//! one way (`window`, `protocol`, `mechanism`, `handle` are leaves; `node_core` and
//! `supervisor` sit on top).
//!
//! Heavy work (training, evaluation, aggregation, hashing, RocksDB batches) runs in
//! `spawn_blocking`; its result comes back to the actor as a message, so mailboxes keep moving.
//!
//! ## A window, end to end
//! 1. The chain watcher sees the first block of window `w`, remembers its hash (the seed of
//!    `w`'s sync proofs) and broadcasts the block; the core's machine sees window `w` start.
//! 2. The core has the lead validator's evaluator close `w-1` once its in-flight evaluations
//!    are done (or their grace elapsed), then aggregate it; it keeps the
//!    updates whose score passes `min_score`, aggregates them (median-norm clipping, mean,
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

pub mod admission;
#[cfg(feature = "adversary")]
mod adversary;
pub mod blobs;
pub mod chain_watcher;
pub mod competition;
pub mod context;
pub mod evaluator;
pub mod gossip;
pub mod handle;
pub mod mechanism;
pub mod node_core;
pub mod protocol;
pub mod retention;
pub mod supervisor;
pub mod sync;
pub mod trainer;
pub mod updates;
pub mod weights;
pub mod window;
pub mod windowed;

pub use context::{Metrics, NodeContext, NodeEvent, NodeStatus};
pub use supervisor::{spawn_supervisor, Handles, SupervisorHandle};

/// Errors an actor handle returns to its caller.
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    /// The actor is not running (it is being restarted, or the node is stopping).
    #[error("{0} is not running (restarting or stopped); retry shortly")]
    NotRunning(&'static str),
    /// The node's actors could not be started.
    #[error("could not start the node's actors: {0}")]
    Start(String),
    /// The call did not complete.
    #[error("call to {actor} failed: {message}")]
    Call {
        /// Which actor.
        actor: &'static str,
        /// What happened.
        message: String,
    },
}

/// Whether this build carries the adversary kit (cargo feature `adversary`), which plays the
/// cheats of `train.adversary`.
pub const ADVERSARY_KIT: bool = cfg!(feature = "adversary");

/// A node whose config names a cheat (`train.adversary`) cannot run in a build without the
/// adversary kit.
#[derive(Debug, thiserror::Error)]
#[error(
    "train.adversary = \"{0}\", but this build has no adversary kit; build with --features \
     adversary (tests and devnets only), or remove train.adversary"
)]
pub struct NoAdversaryKit(pub apiary_config::AdversaryKind);

/// Refuses a config that names a cheat when this build has no adversary kit.
pub fn check_adversary_kit(cfg: &apiary_config::NodeConfig) -> Result<(), NoAdversaryKit> {
    match cfg.train.adversary {
        Some(kind) if !ADVERSARY_KIT => Err(NoAdversaryKit(kind)),
        _ => Ok(()),
    }
}

/// Why work an actor asked for failed: training, applying a record, aggregating, fetching a
/// blob. It travels between actors in their result messages.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// A blob could not be had from the store or from any peer.
    #[error("{0}")]
    Fetch(String),
    /// The store refused a read or a write.
    #[error("store: {0}")]
    Store(#[from] apiary_storage::StoreError),
    /// The model, data or update code refused its input (shapes, NaN, pages, hashes).
    #[error("{0}")]
    Compute(String),
    /// The blocking task panicked or was cancelled.
    #[error("{0}")]
    Join(&'static str),
}

impl From<String> for WorkError {
    fn from(e: String) -> Self {
        WorkError::Compute(e)
    }
}

/// Heavy work that failed or panicked inside `spawn_blocking`.
pub(crate) fn join_err(e: tokio::task::JoinError) -> WorkError {
    WorkError::Join(if e.is_panic() {
        "blocking task panicked"
    } else {
        "blocking task cancelled"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cheat_needs_the_adversary_kit() {
        let mut cfg = apiary_config::NodeConfig::default();
        check_adversary_kit(&cfg).expect("no cheat, no kit needed");
        cfg.train.adversary = Some(apiary_config::AdversaryKind::Copier);
        let res = check_adversary_kit(&cfg);
        assert_eq!(res.is_ok(), ADVERSARY_KIT, "{res:?}");
        if let Err(e) = res {
            let m = e.to_string();
            assert!(m.contains("no adversary kit") && m.contains("--features adversary"));
        }
    }
}
