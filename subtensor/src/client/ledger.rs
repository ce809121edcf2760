//! What the client remembers about its own submissions: one lock per signer (so its nonces are
//! taken one submission at a time), its last `set_weights` inclusion block per (netuid, hotkey)
//! (so it never submits twice inside one rate limit even if the chain view lags), and the
//! commit-reveal commits still waiting for their reveal.

use super::sync::lock;
use apiary_chain::keys::HotkeyId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A commit whose reveal is pending.
#[derive(Debug, Clone)]
pub(crate) struct PendingCommit {
    /// The subnet the weights are for.
    pub(crate) netuid: u16,
    /// Destination uids.
    pub(crate) uids: Vec<u16>,
    /// Weights, one per uid.
    pub(crate) values: Vec<u16>,
    /// The salt hashed into the commit.
    pub(crate) salt: Vec<u16>,
    /// The version key hashed into the commit.
    pub(crate) version_key: u64,
}

/// The per-client submission bookkeeping.
#[derive(Default)]
pub(crate) struct Ledger {
    signer_locks: Mutex<HashMap<HotkeyId, Arc<tokio::sync::Mutex<()>>>>,
    /// Our own last `set_weights` inclusion block per (netuid, hotkey).
    last_weights: Mutex<HashMap<(u16, HotkeyId), u64>>,
    pending_commits: Mutex<HashMap<HotkeyId, Vec<PendingCommit>>>,
}

impl Ledger {
    /// Waits for `who`'s turn to submit; the turn lasts while the guard lives.
    pub(crate) async fn signer_lock(&self, who: HotkeyId) -> tokio::sync::OwnedMutexGuard<()> {
        let l = Arc::clone(
            lock(&self.signer_locks)
                .entry(who)
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(()))),
        );
        l.lock_owned().await
    }

    /// The block our last `set_weights` by `who` on `netuid` landed in (0 if none).
    pub(crate) fn last_weights(&self, netuid: u16, who: &HotkeyId) -> u64 {
        lock(&self.last_weights)
            .get(&(netuid, *who))
            .copied()
            .unwrap_or(0)
    }

    /// Records that a `set_weights` (or commit) by `who` on `netuid` landed in `block`.
    pub(crate) fn set_last_weights(&self, netuid: u16, who: HotkeyId, block: u64) {
        lock(&self.last_weights).insert((netuid, who), block);
    }

    /// `who`'s commits awaiting reveal.
    pub(crate) fn pending(&self, who: &HotkeyId) -> Vec<PendingCommit> {
        lock(&self.pending_commits)
            .get(who)
            .cloned()
            .unwrap_or_default()
    }

    /// How many commits of `who` await reveal.
    pub(crate) fn pending_count(&self, who: &HotkeyId) -> usize {
        lock(&self.pending_commits).get(who).map_or(0, Vec::len)
    }

    /// Replaces `who`'s pending commits with `commits`.
    pub(crate) fn set_pending(&self, who: HotkeyId, commits: Vec<PendingCommit>) {
        lock(&self.pending_commits).insert(who, commits);
    }

    /// Adds a commit of `who` to reveal later.
    pub(crate) fn push_pending(&self, who: HotkeyId, commit: PendingCommit) {
        lock(&self.pending_commits)
            .entry(who)
            .or_default()
            .push(commit);
    }
}
