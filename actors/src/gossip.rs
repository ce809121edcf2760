//! Gossip peer: admits signed gossip from registered hotkeys and routes it.
//!
//! The net layer has already checked size and signature. Here a payload must decode, its
//! hotkey must be registered on the subnet, an update's uid must belong to that hotkey and
//! name this subnet, and a window record must come from the lead validator. What passes goes
//! to the node core ([`crate::node_core`]), whose window machine applies the window rules
//! (open window, first announcement per `(window, uid)`, records in order). Everything else is
//! counted in [`crate::Metrics`] and logged, and nothing of it is stored.

use crate::chain_watcher::ChainWatcherHandle;
use crate::context::{Metrics, NodeContext};
use crate::handle::CoreHandle;
use crate::protocol::GossipMsg;
use crate::window::Event;
use apiary_net::{NetEvent, PeerId};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Network events the gossip peer may hold at once (in its mailbox or being handled).
///
/// Why a bound here: the net layer's channel is bounded and drops when full (counted), but a
/// ractor mailbox is not; a forwarder that cast every event at once would move the backlog of a
/// flood into unbounded memory. With this bound, a slow gossip peer makes the forwarder wait,
/// the net channel fills, and the swarm drops and counts — never blocks, never grows.
pub const GOSSIP_QUEUE: usize = 256;

/// Messages of the gossip peer.
#[derive(Debug)]
pub enum GossipMsgIn {
    /// An event from the network, with its slot in the bounded queue ([`GOSSIP_QUEUE`]),
    /// released when the handler is done with it.
    Net(NetEvent, QueueSlot),
}

/// A slot of a bounded queue: held by a message until it is handled, then dropped.
#[derive(Debug)]
pub struct QueueSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// Moves events from `rx` to `send`, at most `cap` of them in hand downstream at once.
///
/// Each event goes with a [`QueueSlot`]; the consumer releases it by dropping it. When all
/// slots are taken, `on_full` is called once and the forwarder waits. Returns when `rx` closes
/// or `send` refuses (the consumer is gone), giving `rx` back to its owner by drop.
pub async fn forward_bounded<T>(
    rx: &mut mpsc::Receiver<T>,
    cap: usize,
    mut send: impl FnMut(T, QueueSlot) -> bool,
    mut on_full: impl FnMut(),
) {
    let slots = Arc::new(Semaphore::new(cap.max(1)));
    while let Some(ev) = rx.recv().await {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                on_full();
                match Arc::clone(&slots).acquire_owned().await {
                    Ok(p) => p,
                    // The semaphore is never closed; stop rather than panic if it were.
                    Err(_) => return,
                }
            }
        };
        if !send(ev, QueueSlot(permit)) {
            return;
        }
    }
}

/// The actor.
pub struct GossipPeer;

/// What the gossip peer is started with.
pub struct GossipArgs {
    /// The node.
    pub ctx: Arc<NodeContext>,
    /// Where admitted messages go.
    pub core: CoreHandle,
    /// Who re-reads the metagraph.
    pub chain_watcher: ChainWatcherHandle,
}

/// Its state.
pub struct GossipState {
    ctx: Arc<NodeContext>,
    core: CoreHandle,
    chain_watcher: ChainWatcherHandle,
    /// Block at which an unknown hotkey last made us re-read the metagraph.
    refreshed_at: Option<u64>,
}

impl Actor for GossipPeer {
    type Msg = GossipMsgIn;
    type State = GossipState;
    type Arguments = GossipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        GossipArgs {
            ctx,
            core,
            chain_watcher,
        }: GossipArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx2 = Arc::clone(&ctx);
        tokio::spawn(async move {
            // Only one gossip peer holds the receiver at a time; a restarted one waits for the
            // previous forwarder to notice its actor is gone and release it.
            let mut rx = ctx2.net_events.lock().await;
            forward_bounded(
                &mut rx,
                GOSSIP_QUEUE,
                |ev, slot| myself.cast(GossipMsgIn::Net(ev, slot)).is_ok(),
                || Metrics::inc(&ctx2.metrics.gossip_queue_full),
            )
            .await;
        });
        Ok(GossipState {
            ctx,
            core,
            chain_watcher,
            refreshed_at: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GossipMsgIn::Net(
                NetEvent::Gossip {
                    from,
                    hotkey,
                    payload,
                    admitted,
                },
                _slot,
            ) => {
                // The gate ([`crate::admission`]) admitted it, or did not know the hotkey: one
                // that registered after our last metagraph read. The chain watcher (the
                // metagraph's owner) re-reads it, at most once per block, before we decide.
                let known = admitted
                    || st
                        .ctx
                        .metagraph()
                        .is_some_and(|m| m.by_hotkey(&hotkey).is_some());
                let block = st.ctx.status().block;
                if !known && st.refreshed_at != Some(block) {
                    st.refreshed_at = Some(block);
                    if let Err(e) = st.chain_watcher.refresh_wait().await {
                        tracing::debug!(error = %e, "metagraph refresh for an unknown hotkey failed");
                    }
                }
                on_gossip(st, from, hotkey, &payload)
            }
            GossipMsgIn::Net(NetEvent::PeerConnected(p), _slot) => {
                tracing::debug!(peer = %p, "peer connected");
            }
            GossipMsgIn::Net(NetEvent::PeerDisconnected(p), _slot) => {
                tracing::debug!(peer = %p, "peer disconnected");
            }
        }
        Ok(())
    }
}

fn on_gossip(st: &GossipState, from: PeerId, hotkey: apiary_chain::keys::HotkeyId, payload: &[u8]) {
    let ctx = &st.ctx;
    let m = &ctx.metrics;
    let msg = match GossipMsg::decode(payload, ctx.cfg.net.max_message_bytes) {
        Ok(msg) => msg,
        Err(e) => {
            Metrics::inc(&m.gossip_malformed);
            tracing::warn!(peer = %from, %hotkey, error = %e, "dropping malformed gossip");
            return;
        }
    };
    let Some(mg) = ctx.metagraph() else {
        Metrics::inc(&m.gossip_unregistered);
        // Start-up: counted, and expected until the first metagraph is read.
        tracing::info!(peer = %from, %hotkey, "dropping gossip: no metagraph yet");
        return;
    };
    let Some(neuron) = mg.by_hotkey(&hotkey) else {
        Metrics::inc(&m.gossip_unregistered);
        // Counted (`gossip_unregistered`; the network layer strikes the sender): expected while
        // a peer's registration is not yet in the metagraph this node read.
        tracing::info!(peer = %from, %hotkey, "dropping gossip from a hotkey not registered on the subnet");
        return;
    };
    let netuid = ctx.cfg.chain.netuid;
    match msg {
        GossipMsg::Update(ann) => {
            if ann.uid != neuron.uid {
                Metrics::inc(&m.gossip_impersonation);
                tracing::warn!(peer = %from, %hotkey, claimed = ann.uid, actual = neuron.uid, "dropping update: uid does not belong to the signer");
                return;
            }
            if ann.netuid != netuid {
                Metrics::inc(&m.gossip_stale);
                tracing::warn!(peer = %from, uid = ann.uid, netuid = ann.netuid, "dropping update for another subnet");
                return;
            }
            // The window rules (open window, first per (window, uid)) are the core's.
            st.core.report(Event::Announced { ann, from });
        }
        GossipMsg::Record(rec) => {
            let lead = mg.lead_validator().map(|n| n.hotkey);
            if lead != Some(hotkey) || rec.netuid != netuid {
                Metrics::inc(&m.gossip_impersonation);
                tracing::warn!(peer = %from, %hotkey, "dropping window record not signed by the lead validator");
                return;
            }
            st.core.report(Event::RecordReceived {
                rec,
                from: Some(from),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A consumer that never handles anything holds at most `cap` events; the rest stay in the
    /// bounded channel, whose sender then sees it full (what the net layer drops and counts).
    #[tokio::test]
    async fn a_stalled_consumer_holds_at_most_cap_events_and_the_channel_fills() {
        let (tx, mut rx) = mpsc::channel::<u32>(8);
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let full = Arc::new(AtomicUsize::new(0));
        let (h, f) = (Arc::clone(&held), Arc::clone(&full));
        tokio::spawn(async move {
            forward_bounded(
                &mut rx,
                4,
                move |ev, slot| {
                    h.lock().expect("lock").push((ev, slot));
                    true
                },
                move || {
                    f.fetch_add(1, Ordering::Relaxed);
                },
            )
            .await;
        });
        let mut sent = 0u32;
        let mut refused = 0u32;
        for i in 0..100 {
            match tx.try_send(i) {
                Ok(()) => sent += 1,
                Err(_) => refused += 1,
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            held.lock().expect("lock").len(),
            4,
            "never more than cap in hand"
        );
        assert_eq!(full.load(Ordering::Relaxed), 1, "one wait, counted");
        // 4 handed over, 1 taken by the waiting forwarder, 8 queued: the channel holds the rest.
        assert_eq!(sent, 4 + 1 + 8);
        assert_eq!(refused, 100 - sent);
        // Handling (dropping) two slots lets two more through, in order.
        drop(held.lock().expect("lock").drain(..2).collect::<Vec<_>>());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let now: Vec<u32> = held.lock().expect("lock").iter().map(|(e, _)| *e).collect();
        assert_eq!(now, vec![2, 3, 4, 5]);
    }

    /// The forwarder stops when the consumer is gone, releasing the receiver.
    #[tokio::test]
    async fn stops_when_the_consumer_refuses() {
        let (tx, mut rx) = mpsc::channel::<u32>(8);
        tx.send(1).await.expect("send");
        forward_bounded(&mut rx, 4, |_, _| false, || {}).await;
        drop(rx);
        assert!(tx.is_closed());
    }
}
