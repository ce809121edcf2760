//! Gossip admission on the network loop: what this node relays.
//!
//! gossipsub asks for a verdict on every message before forwarding it
//! ([`apiary_net::Admit`]). The gate answers from snapshots only (the metagraph and the
//! current window in [`NodeContext`]), never waiting on an actor, with the same rules the
//! gossip peer and the node core apply afterwards — so a message this node would drop is
//! never relayed, and the peer that sent it is penalised:
//! - not a gossip message → `Reject` (`gossip_malformed`);
//! - signed by a hotkey not in the metagraph → `Unknown` (not relayed; the gossip peer
//!   re-reads the metagraph, at most once per block, and decides);
//! - an update whose uid is not the signer's, or a record not from the lead validator →
//!   `Reject` (`gossip_impersonation`);
//! - another subnet, or a window more than [`ABSURD_WINDOWS`] away from the current one
//!   (checked arithmetic: `u64::MAX` is just far away) → `Reject` (`gossip_stale`);
//! - a window more than [`WINDOW_SLACK`] away (an honest node can lag behind the chain for a
//!   moment, so no penalty) → `Ignore` (`gossip_stale`);
//! - the same payload seen before in this window or the last two (a replay after gossipsub's
//!   duplicate cache expired) → `Ignore` (`gossip_replayed`).
//!
//! Windows one step away are admitted: the node core's window machine decides whether the
//! window is open (and counts late ones).

use crate::context::{Metrics, NodeContext};
use crate::protocol::GossipMsg;
use apiary_chain::keys::HotkeyId;
use apiary_net::{Admission, Admit, PeerId};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Windows away from the current one that the gate still relays (the core decides within).
pub const WINDOW_SLACK: u64 = 2;
/// Windows away from the current one that no honest node, however far behind, can be.
pub const ABSURD_WINDOWS: u64 = 1024;
/// Payload hashes remembered per window for replay detection (beyond it, none are added).
const SEEN_PER_WINDOW: usize = 1 << 16;

/// The node's gate: bound to its context once the context exists (the network starts first);
/// until then every message is ignored.
#[derive(Default)]
pub struct Gate {
    ctx: OnceLock<Weak<NodeContext>>,
    seen: Mutex<BTreeMap<u64, HashSet<[u8; 32]>>>,
}

impl Gate {
    /// A gate not yet bound.
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// Binds the gate to the node (once; later calls are ignored).
    pub fn bind(&self, ctx: &Arc<NodeContext>) {
        let _ = self.ctx.set(Arc::downgrade(ctx));
    }

    /// Whether `payload` was seen before in `window` (and remembers it).
    fn replayed(&self, current: u64, window: u64, payload: &[u8]) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        seen.retain(|w, _| w.saturating_add(WINDOW_SLACK) >= current);
        let ids = seen.entry(window).or_default();
        let id = *blake3::hash(payload).as_bytes();
        if ids.contains(&id) {
            return true;
        }
        if ids.len() < SEEN_PER_WINDOW {
            ids.insert(id);
        }
        false
    }
}

impl Admit for Gate {
    fn admit(&self, from: &PeerId, hotkey: &HotkeyId, payload: &[u8]) -> Admission {
        let Some(ctx) = self.ctx.get().and_then(Weak::upgrade) else {
            return Admission::Ignore("the node is starting");
        };
        let m = &ctx.metrics;
        let msg = match GossipMsg::decode(payload, ctx.cfg.net.max_message_bytes) {
            Ok(msg) => msg,
            Err(e) => {
                Metrics::inc(&m.gossip_malformed);
                tracing::warn!(peer = %from, %hotkey, error = %e, "refusing malformed gossip");
                return Admission::Reject("malformed");
            }
        };
        let Some(mg) = ctx.metagraph() else {
            return Admission::Unknown;
        };
        let Some(neuron) = mg.by_hotkey(hotkey) else {
            return Admission::Unknown;
        };
        let netuid = ctx.cfg.chain.netuid;
        let current = ctx.window();
        let far = |w: u64| w.abs_diff(current) > WINDOW_SLACK;
        let absurd = |w: u64| w.abs_diff(current) > ABSURD_WINDOWS;
        let window = match &msg {
            GossipMsg::Update(ann) => {
                if ann.uid != neuron.uid {
                    Metrics::inc(&m.gossip_impersonation);
                    tracing::warn!(peer = %from, %hotkey, claimed = ann.uid, actual = neuron.uid, "refusing update: uid does not belong to the signer");
                    return Admission::Reject("impersonation");
                }
                if ann.netuid != netuid || absurd(ann.window) {
                    Metrics::inc(&m.gossip_stale);
                    tracing::warn!(peer = %from, uid = ann.uid, netuid = ann.netuid, window = ann.window, current, "refusing update for another subnet or an absurd window");
                    return Admission::Reject("stale");
                }
                if far(ann.window) {
                    Metrics::inc(&m.gossip_stale);
                    tracing::info!(peer = %from, uid = ann.uid, window = ann.window, current, "not relaying an update for a window far from the current one");
                    return Admission::Ignore("stale");
                }
                ann.window
            }
            GossipMsg::Record(rec) => {
                let lead = mg.lead_validator().map(|n| n.hotkey);
                if lead != Some(*hotkey) || rec.netuid != netuid {
                    Metrics::inc(&m.gossip_impersonation);
                    tracing::warn!(peer = %from, %hotkey, "refusing window record not signed by the lead validator");
                    return Admission::Reject("impersonation");
                }
                if rec.window > current.saturating_add(ABSURD_WINDOWS) {
                    Metrics::inc(&m.gossip_stale);
                    tracing::warn!(peer = %from, window = rec.window, current, "refusing a record of a window far in the future");
                    return Admission::Reject("stale");
                }
                // Old records are answered by the core (applied already, or catch-up).
                rec.window
            }
        };
        if self.replayed(current, window, payload) {
            Metrics::inc(&m.gossip_replayed);
            tracing::debug!(peer = %from, %hotkey, window, "ignoring a replayed gossip message");
            return Admission::Ignore("replayed");
        }
        Admission::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_recognised_per_window_and_forgotten_later() {
        let g = Gate::default();
        assert!(!g.replayed(10, 10, b"a"));
        assert!(g.replayed(10, 10, b"a"), "the same payload again");
        assert!(!g.replayed(10, 11, b"a"), "another window");
        assert!(!g.replayed(10, 10, b"b"));
        // Two windows later the old window's set is dropped.
        assert!(!g.replayed(13, 13, b"c"));
        assert!(g.seen.lock().expect("lock").keys().all(|w| *w >= 11));
    }
}
