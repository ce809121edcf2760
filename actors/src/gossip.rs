//! Gossip peer: admits signed gossip from registered hotkeys and routes it.
//!
//! The net layer has already checked size and signature. Here a payload must decode, its
//! hotkey must be registered on the subnet, an update's uid must belong to that hotkey, and a
//! window record must come from the lead validator. What passes is stored (announcements, first
//! one per `(window, uid)` wins) and routed: updates to the evaluator, records to the trainer.
//! Everything else is counted in [`crate::Metrics`] and logged, and nothing of it is stored.

use crate::context::{slot_get, Metrics, NodeContext};
use crate::evaluator::EvaluatorHandle;
use crate::protocol::GossipMsg;
use crate::trainer::TrainerHandle;
use apiary_net::{NetEvent, PeerId};
use apiary_storage::{window_uid_key, Column};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;

/// Messages of the gossip peer.
#[derive(Debug)]
pub enum GossipMsgIn {
    /// An event from the network.
    Net(NetEvent),
}

/// The actor.
pub struct GossipPeer;

/// Its state.
pub struct GossipState {
    ctx: Arc<NodeContext>,
    /// Block at which an unknown hotkey last made us re-read the metagraph.
    refreshed_at: Option<u64>,
}

impl Actor for GossipPeer {
    type Msg = GossipMsgIn;
    type State = GossipState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx2 = Arc::clone(&ctx);
        tokio::spawn(async move {
            // Only one gossip peer holds the receiver at a time; a restarted one waits for the
            // previous forwarder to notice its actor is gone and release it.
            let mut rx = ctx2.net_events.lock().await;
            while let Some(ev) = rx.recv().await {
                if myself.cast(GossipMsgIn::Net(ev)).is_err() {
                    break;
                }
            }
        });
        Ok(GossipState {
            ctx,
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
            GossipMsgIn::Net(NetEvent::Gossip {
                from,
                hotkey,
                payload,
            }) => {
                // A hotkey that registered after our last metagraph read: re-read once per block.
                let known = st
                    .ctx
                    .metagraph()
                    .is_some_and(|m| m.by_hotkey(&hotkey).is_some());
                let block = st.ctx.status().block;
                if !known && st.refreshed_at != Some(block) {
                    st.refreshed_at = Some(block);
                    if let Ok(mg) = st.ctx.chain.metagraph(st.ctx.cfg.chain.netuid).await {
                        let uid = mg.by_hotkey(&st.ctx.hotkey.id()).map(|n| n.uid);
                        st.ctx.update_status(|s| {
                            s.metagraph = Some(Arc::new(mg));
                            s.uid = uid;
                        });
                    }
                }
                on_gossip(&st.ctx, from, hotkey, &payload)
            }
            GossipMsgIn::Net(NetEvent::PeerConnected(p)) => {
                tracing::debug!(peer = %p, "peer connected");
            }
            GossipMsgIn::Net(NetEvent::PeerDisconnected(p)) => {
                tracing::debug!(peer = %p, "peer disconnected");
            }
        }
        Ok(())
    }
}

fn on_gossip(
    ctx: &Arc<NodeContext>,
    from: PeerId,
    hotkey: apiary_chain::keys::HotkeyId,
    payload: &[u8],
) {
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
        tracing::warn!(peer = %from, %hotkey, "dropping gossip: no metagraph yet");
        return;
    };
    let Some(neuron) = mg.by_hotkey(&hotkey) else {
        Metrics::inc(&m.gossip_unregistered);
        tracing::warn!(peer = %from, %hotkey, "dropping gossip from a hotkey not registered on the subnet");
        // It may have registered since the last read: the watcher re-reads (once per block).
        let _ = crate::chain_watcher::ChainWatcherHandle(Arc::clone(ctx)).refresh_unless_fresh();
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
            let window = ctx.window();
            if ann.netuid != netuid || ann.window + 1 < window || ann.window > window + 1 {
                Metrics::inc(&m.gossip_stale);
                tracing::warn!(peer = %from, uid = ann.uid, window = ann.window, current = window, "dropping update for a window that is not open");
                return;
            }
            let key = window_uid_key(ann.window, ann.uid);
            match ctx
                .store
                .get::<crate::protocol::UpdateAnnouncement>(Column::Announcements, &key)
            {
                Ok(Some(_)) => return, // first announcement per (window, uid) wins
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "announcement lookup failed"),
            }
            if let Err(e) = ctx.store.put(Column::Announcements, &key, &ann) {
                tracing::warn!(error = %e, "could not store an announcement");
            }
            if ctx.cfg.node.role == apiary_config::Role::Validator {
                Metrics::inc(&m.updates_received);
                if let Err(e) = EvaluatorHandle(Arc::clone(ctx)).announce(ann, from) {
                    tracing::warn!(error = %e, "evaluator unavailable; update not scored");
                }
            }
        }
        GossipMsg::Record(rec) => {
            let lead = mg.lead_validator().map(|n| n.hotkey);
            if lead != Some(hotkey) || rec.netuid != netuid {
                Metrics::inc(&m.gossip_impersonation);
                tracing::warn!(peer = %from, %hotkey, "dropping window record not signed by the lead validator");
                return;
            }
            if slot_get(&ctx.actors.trainer).is_none() {
                tracing::warn!("trainer not running; window record will be caught up later");
            }
            if let Err(e) = TrainerHandle(Arc::clone(ctx)).apply_record(rec, Some(from)) {
                tracing::warn!(error = %e, "could not hand the record to the trainer");
            }
        }
    }
}
