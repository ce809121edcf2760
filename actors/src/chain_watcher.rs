//! Chain watcher: follows blocks, derives windows, keeps the metagraph, dials peers it names.
//!
//! It is the node's clock. Each block updates the status and is broadcast; the first block of
//! a new window broadcasts [`NodeEvent::WindowStarted`]. Every `metagraph_refresh_blocks` it
//! re-reads the metagraph; peers whose on-chain record names a libp2p address and who are not
//! connected are dialed, so a node needs no hand-written bootstrap list. A lagging block stream
//! is resynchronised from `best_block`; the last seen block is persisted in the store.

use crate::context::{NodeContext, NodeEvent};
use crate::ActorError;
use apiary_chain::{window_of, BlockInfo};
use apiary_storage::Column;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Messages of the chain watcher.
#[derive(Debug)]
pub enum ChainWatcherMsg {
    /// A block from the chain's stream.
    Block(BlockInfo),
    /// Re-read the metagraph now.
    RefreshMetagraph,
    /// Query: latest block seen.
    LatestBlock(RpcReplyPort<Option<BlockInfo>>),
}

/// The actor.
pub struct ChainWatcher;

/// Its state.
pub struct ChainWatcherState {
    ctx: Arc<NodeContext>,
    latest: Option<BlockInfo>,
    last_window: Option<u64>,
}

impl Actor for ChainWatcher {
    type Msg = ChainWatcherMsg;
    type State = ChainWatcherState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut rx = ctx.chain.subscribe_blocks();
        let chain = Arc::clone(&ctx.chain);
        let me = myself.clone();
        tokio::spawn(async move {
            loop {
                let b = match rx.recv().await {
                    Ok(b) => b,
                    Err(broadcast::error::RecvError::Lagged(_)) => match chain.best_block().await {
                        Ok(b) => b,
                        Err(_) => continue,
                    },
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if me.cast(ChainWatcherMsg::Block(b)).is_err() {
                    break;
                }
            }
        });
        let best = ctx.chain.best_block().await?;
        let mut st = ChainWatcherState {
            ctx,
            latest: None,
            last_window: None,
        };
        refresh_metagraph(&st.ctx).await;
        on_block(&mut st, best).await;
        Ok(st)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChainWatcherMsg::Block(b) => {
                if st.latest.is_some_and(|l| b.number <= l.number) {
                    return Ok(());
                }
                if b.number % st.ctx.cfg.chain.metagraph_refresh_blocks == 0 {
                    refresh_metagraph(&st.ctx).await;
                }
                on_block(st, b).await;
            }
            ChainWatcherMsg::RefreshMetagraph => refresh_metagraph(&st.ctx).await,
            ChainWatcherMsg::LatestBlock(reply) => {
                let _ = reply.send(st.latest);
            }
        }
        Ok(())
    }
}

async fn on_block(st: &mut ChainWatcherState, b: BlockInfo) {
    let ctx = &st.ctx;
    st.latest = Some(b);
    let window = window_of(b.number, ctx.cfg.chain.blocks_per_window);
    ctx.update_status(|s| {
        s.block = b.number;
        s.window = window;
    });
    if let Err(e) = ctx.store.put(Column::ChainView, b"latest_block", &b) {
        tracing::warn!(error = %e, "could not persist the latest block");
    }
    ctx.emit(NodeEvent::Block(b));
    if st.last_window != Some(window) {
        st.last_window = Some(window);
        tracing::debug!(window, block = b.number, "window started");
        ctx.emit(NodeEvent::WindowStarted {
            window,
            block: b.number,
        });
    }
}

async fn refresh_metagraph(ctx: &Arc<NodeContext>) {
    let netuid = ctx.cfg.chain.netuid;
    let mg = match ctx.chain.metagraph(netuid).await {
        Ok(mg) => Arc::new(mg),
        Err(e) => {
            tracing::warn!(error = %e, "metagraph refresh failed");
            return;
        }
    };
    let me = ctx.hotkey.id();
    let uid = mg.by_hotkey(&me).map(|n| n.uid);
    ctx.update_status(|s| {
        s.metagraph = Some(Arc::clone(&mg));
        s.uid = uid;
    });
    if let Err(e) = ctx.store.put(Column::ChainView, b"metagraph", &*mg) {
        tracing::warn!(error = %e, "could not persist the metagraph");
    }
    // Dial registered peers found on chain that we are not connected to.
    let connected = ctx.net.connected_peers().await;
    let local = ctx.net.local_peer_id();
    for n in &mg.neurons {
        let Some(rec) = &n.peer else { continue };
        let Ok(peer) = rec.peer_id.parse::<apiary_net::PeerId>() else {
            continue;
        };
        if peer == local || connected.contains(&peer) {
            continue;
        }
        for a in &rec.addrs {
            if let Ok(addr) = a.parse::<apiary_net::Multiaddr>() {
                if let Err(e) = ctx.net.add_peer_address(peer, addr).await {
                    tracing::debug!(%peer, error = %e, "dialing a peer from the chain failed");
                }
            }
        }
    }
    ctx.emit(NodeEvent::MetagraphUpdated(mg));
}

/// Typed front of the chain watcher.
#[derive(Clone)]
pub struct ChainWatcherHandle(pub Arc<NodeContext>);

impl ChainWatcherHandle {
    fn actor(&self) -> Result<ActorRef<ChainWatcherMsg>, ActorError> {
        crate::context::slot_get(&self.0.actors.chain_watcher)
            .ok_or(ActorError::NotRunning("chain watcher"))
    }
    /// The latest block the watcher has seen.
    pub async fn latest_block(&self) -> Result<Option<BlockInfo>, ActorError> {
        ractor::call_t!(self.actor()?, ChainWatcherMsg::LatestBlock, 5_000).map_err(|e| {
            ActorError::Call {
                actor: "chain watcher",
                message: e.to_string(),
            }
        })
    }
    /// Forces a metagraph refresh.
    pub fn refresh(&self) -> Result<(), ActorError> {
        self.actor()?
            .cast(ChainWatcherMsg::RefreshMetagraph)
            .map_err(|e| ActorError::Call {
                actor: "chain watcher",
                message: e.to_string(),
            })
    }
}
