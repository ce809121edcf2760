//! Chain watcher: follows blocks, derives windows, keeps the metagraph, dials peers it names.
//!
//! It is the node's clock. Each block updates the status and is broadcast; the first block of
//! a new window broadcasts [`NodeEvent::WindowStarted`]. Every `metagraph_refresh_blocks` it
//! re-reads the metagraph, and also as soon as the subnet's uid count changes (a registration;
//! one cheap read per block) or when gossip arrives from a hotkey it does not know (at most once
//! per block, so a flood of unknown senders costs one read). Peers whose on-chain record names
//! a libp2p address and who are not connected are dialed, so a node needs no hand-written
//! bootstrap list. The last seen block is persisted in the store. The hash of each window's
//! first block is remembered in the context ([`NodeContext::window_seed`]): it seeds the
//! window's sync slices.
//!
//! Blocks arrive in order (the subtensor follower replays what it missed while reconnecting).
//! A block the watcher has already seen (same number and hash) is dropped; a gap is counted in
//! `blocks_missed`; a head *lower* than the last one with a hash the watcher has not seen (a
//! reorg, or a dev chain restarted from genesis) is followed rather than ignored — a watcher
//! that ignored it would stall until the new chain passed the old height — and counted in
//! `chain_rewinds`.

use crate::context::{NodeContext, NodeEvent};
use crate::handle::Slot;
use crate::ActorError;
use apiary_chain::{window_of, BlockInfo};
use apiary_storage::Column;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Recent blocks remembered to tell a repeated block from a rewind.
const RECENT_BLOCKS: usize = 64;

/// Messages of the chain watcher.
#[derive(Debug)]
pub enum ChainWatcherMsg {
    /// A block from the chain's stream.
    Block(BlockInfo),
    /// Re-read the metagraph now.
    RefreshMetagraph,
    /// Re-read the metagraph now and answer once it is read (gossip from an unknown hotkey:
    /// the gossip peer asks at most once per block).
    RefreshWait(RpcReplyPort<()>),
    /// Query: latest block seen.
    LatestBlock(RpcReplyPort<Option<BlockInfo>>),
}

/// The actor.
pub struct ChainWatcher;

/// Its state.
pub struct ChainWatcherState {
    ctx: Arc<NodeContext>,
    last_window: Option<u64>,
    /// The last [`RECENT_BLOCKS`] blocks seen, oldest first (the back is the latest).
    recent: VecDeque<BlockInfo>,
    /// Uid count at the last metagraph read.
    neurons: Option<u16>,
}

impl ChainWatcherState {
    fn latest(&self) -> Option<BlockInfo> {
        self.recent.back().copied()
    }
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
        let best = ctx.chain.best_block().await?;
        let me = myself.clone();
        tokio::spawn(async move {
            // Blocks buffered before `best` was read are older than it, not a rewind.
            let mut primed = false;
            loop {
                let b = match rx.recv().await {
                    Ok(b) => b,
                    // The receiver skips to the oldest block still buffered: blocks stay in
                    // order, the skipped ones show as a gap.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "chain watcher lagged behind the block stream");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if !primed {
                    if b.number <= best.number {
                        continue;
                    }
                    primed = true;
                }
                if me.cast(ChainWatcherMsg::Block(b)).is_err() {
                    break;
                }
            }
        });
        let mut st = ChainWatcherState {
            ctx,
            last_window: None,
            recent: VecDeque::with_capacity(RECENT_BLOCKS),
            neurons: None,
        };
        refresh(&mut st).await;
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
                if let Some(l) = st.latest() {
                    if st
                        .recent
                        .iter()
                        .any(|r| r.number == b.number && r.hash == b.hash)
                    {
                        return Ok(());
                    }
                    if b.number <= l.number {
                        tracing::warn!(
                            from = l.number,
                            to = b.number,
                            "the chain head went backwards (a reorg or a restarted chain); following it"
                        );
                        st.ctx.metrics.chain_rewinds.fetch_add(1, Ordering::Relaxed);
                        st.recent.retain(|r| r.number < b.number);
                        st.ctx.forget_window_seeds_from(window_of(
                            b.number,
                            st.ctx.cfg.chain.blocks_per_window,
                        ));
                    } else if b.number > l.number + 1 {
                        let missed = b.number - l.number - 1;
                        tracing::warn!(last = l.number, now = b.number, missed, "blocks missed");
                        st.ctx
                            .metrics
                            .blocks_missed
                            .fetch_add(missed, Ordering::Relaxed);
                    }
                }
                let due = b.number % st.ctx.cfg.chain.metagraph_refresh_blocks == 0;
                let registered = match st.ctx.chain.neuron_count(st.ctx.cfg.chain.netuid).await {
                    Ok(n) => st.neurons.is_some_and(|old| old != n),
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the uid count failed");
                        false
                    }
                };
                if due || registered {
                    refresh(st).await;
                }
                on_block(st, b).await;
            }
            ChainWatcherMsg::RefreshMetagraph => {
                refresh(st).await;
            }
            ChainWatcherMsg::RefreshWait(reply) => {
                refresh(st).await;
                let _ = reply.send(());
            }
            ChainWatcherMsg::LatestBlock(reply) => {
                let _ = reply.send(st.latest());
            }
        }
        Ok(())
    }
}

async fn on_block(st: &mut ChainWatcherState, b: BlockInfo) {
    let ctx = &st.ctx;
    if st.recent.len() == RECENT_BLOCKS {
        st.recent.pop_front();
    }
    st.recent.push_back(b);
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
        // The window's sync-slice seed: the hash of its first block, which is this block
        // unless the stream skipped it (then the chain is asked).
        let first_block_hash = if b.number == window * ctx.cfg.chain.blocks_per_window.max(1) {
            ctx.remember_window_seed(window, b.hash);
            Some(b.hash)
        } else {
            match ctx.window_seed(window).await {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(window, error = %e, "the window's first block hash is unknown; its sync proofs cannot be made or checked yet");
                    None
                }
            }
        };
        tracing::debug!(window, block = b.number, "window started");
        ctx.emit(NodeEvent::WindowStarted {
            window,
            block: b.number,
            first_block_hash,
        });
    }
}

/// Re-reads the metagraph (noting the uid count) and dials new peers.
async fn refresh(st: &mut ChainWatcherState) {
    if let Some(n) = refresh_metagraph(&st.ctx).await {
        st.neurons = Some(n);
    }
}

async fn refresh_metagraph(ctx: &Arc<NodeContext>) -> Option<u16> {
    let netuid = ctx.cfg.chain.netuid;
    let mg = match ctx.chain.metagraph(netuid).await {
        Ok(mg) => Arc::new(mg),
        Err(e) => {
            tracing::warn!(error = %e, "metagraph refresh failed");
            return None;
        }
    };
    let count = mg.neurons.len() as u16;
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
    Some(count)
}

/// Typed front of the chain watcher.
#[derive(Clone)]
pub struct ChainWatcherHandle(pub Slot<ChainWatcherMsg>);

impl ChainWatcherHandle {
    /// The latest block the watcher has seen.
    pub async fn latest_block(&self) -> Result<Option<BlockInfo>, ActorError> {
        ractor::call_t!(self.0.get()?, ChainWatcherMsg::LatestBlock, 5_000)
            .map_err(|e| self.0.call_err(e))
    }
    /// Forces a metagraph refresh.
    pub fn refresh(&self) -> Result<(), ActorError> {
        self.0.cast(ChainWatcherMsg::RefreshMetagraph)
    }
    /// Re-reads the metagraph and waits until it is read.
    pub async fn refresh_wait(&self) -> Result<(), ActorError> {
        ractor::call_t!(self.0.get()?, ChainWatcherMsg::RefreshWait, 10_000)
            .map_err(|e| self.0.call_err(e))
    }
}
