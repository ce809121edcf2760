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

/// Messages of the gossip peer.
#[derive(Debug)]
pub enum GossipMsgIn {
    /// An event from the network.
    Net(NetEvent),
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
            while let Some(ev) = rx.recv().await {
                if myself.cast(GossipMsgIn::Net(ev)).is_err() {
                    break;
                }
            }
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
            GossipMsgIn::Net(NetEvent::Gossip {
                from,
                hotkey,
                payload,
                admitted,
            }) => {
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
        tracing::warn!(peer = %from, %hotkey, "dropping gossip: no metagraph yet");
        return;
    };
    let Some(neuron) = mg.by_hotkey(&hotkey) else {
        Metrics::inc(&m.gossip_unregistered);
        tracing::warn!(peer = %from, %hotkey, "dropping gossip from a hotkey not registered on the subnet");
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
