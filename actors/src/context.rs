//! What a node's actors share: resources (store, chain client, net handle, keys, dataset), the
//! event bus, the status board and counters. It imports no actor: actors reach each other
//! through the handles the supervisor passes them ([`crate::handle`]).

use apiary_chain::keys::Hotkey;
use apiary_chain::{BlockInfo, ChainClient, Metagraph};
use apiary_config::NodeConfig;
use apiary_data::Dataset;
use apiary_net::{NetEvent, NetHandle};
use apiary_storage::{ContentId, Store};
use ractor::ActorRef;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use tokio::sync::{broadcast, mpsc, Mutex};

/// Events broadcast to every actor of a node (and to observers such as `apiary devnet`).
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A new block was seen.
    Block(BlockInfo),
    /// The first block of a window was seen.
    WindowStarted {
        /// The window.
        window: u64,
        /// Its first block seen.
        block: u64,
        /// Hash of the window's first block (`window * blocks_per_window`), the seed of the
        /// window's sync slices; `None` when the watcher skipped that block and the chain could
        /// not tell it (see [`NodeContext::window_seed`]).
        first_block_hash: Option<[u8; 32]>,
    },
    /// The metagraph was refreshed.
    MetagraphUpdated(Arc<Metagraph>),
    /// The node's model moved to a new checkpoint.
    ModelAdvanced {
        /// The window whose record produced it.
        window: u64,
        /// Checkpoint id (= model hash).
        model: ContentId,
        /// Mean loss on the held-out pages.
        held_out_loss: f32,
        /// True when the node downloaded the checkpoint instead of aggregating.
        caught_up: bool,
    },
    /// This miner published its update.
    UpdatePublished {
        /// Window.
        window: u64,
        /// Update blob id.
        update: ContentId,
        /// Training loss.
        loss: f32,
    },
    /// This validator closed a window.
    WindowClosed {
        /// The window.
        window: u64,
        /// `(uid, this window's score, smoothed score)` for every miner uid.
        scores: Vec<(u16, f32, f64)>,
        /// Accepted update count.
        accepted: usize,
    },
    /// This validator submitted weights.
    WeightsSubmitted {
        /// Window that triggered it.
        window: u64,
        /// `(uid, weight)`.
        weights: Vec<(u16, u16)>,
        /// Block of inclusion, or the error.
        outcome: Result<u64, String>,
    },
    /// The node is stopping because of an unrecoverable error.
    Fatal(String),
}

/// Live status for the admin socket.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStatus {
    /// Latest block.
    pub block: u64,
    /// Current window.
    pub window: u64,
    /// This node's uid, once registered.
    pub uid: Option<u16>,
    /// Current model checkpoint id (hex).
    pub model_hash: Option<String>,
    /// Window whose record produced the model (None: genesis).
    pub model_window: Option<u64>,
    /// Last training loss (miners).
    pub last_loss: Option<f32>,
    /// Last held-out loss.
    pub held_out_loss: Option<f32>,
    /// Latest metagraph.
    #[serde(skip)]
    pub metagraph: Option<Arc<Metagraph>>,
    /// Why the node stopped, if it did.
    pub fatal: Option<String>,
    /// The last weight submission the chain included (validators): its window, block and
    /// `(uid, weight)` pairs. Kept across refusals, so a failing validator still shows what
    /// the chain holds from it.
    pub weights_set: Option<WeightsSet>,
}

/// A weight submission the chain included.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct WeightsSet {
    /// The window that triggered it.
    pub window: u64,
    /// Its inclusion block.
    pub block: u64,
    /// `(uid, weight)` as submitted (weights sum to about 65535).
    pub weights: Vec<(u16, u16)>,
}

macro_rules! metrics {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of a node, exposed on the admin socket.
        #[derive(Debug, Default)]
        pub struct Metrics { $($(#[$doc])* pub $name: AtomicU64,)* }
        impl Metrics {
            /// Name → value.
            pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
                let mut m = BTreeMap::new();
                $(m.insert(stringify!($name), self.$name.load(Ordering::Relaxed));)*
                m
            }
        }
    };
}

metrics! {
    /// Gossip payloads that did not decode.
    gossip_malformed,
    /// Gossip from hotkeys not registered on the subnet.
    gossip_unregistered,
    /// Announcements whose uid does not belong to the signing hotkey, or records not from the lead validator.
    gossip_impersonation,
    /// Announcements for another subnet or a window that is not open.
    gossip_stale,
    /// Gossip payloads seen before in the same window (replays after gossipsub's duplicate
    /// cache expired); ignored.
    gossip_replayed,
    /// Times the network's events waited because the gossip peer had
    /// [`crate::gossip::GOSSIP_QUEUE`] events in hand: the network's own bounded channel then
    /// fills and drops, counted in the net layer's `events_dropped`.
    gossip_queue_full,
    /// Update announcements accepted for evaluation.
    updates_received,
    /// Updates scored.
    updates_evaluated,
    /// Updates that passed the cheap checks but were not recomputed: the window's recompute
    /// budget (`validator.max_recomputes_per_window`) went to others.
    updates_sampled_out,
    /// Updates rejected as malformed (bad shapes, NaN/Inf, undecodable).
    updates_bad,
    /// Updates computed on another base model.
    updates_wrong_base,
    /// Updates whose id another uid announced first in the same window (copies).
    updates_copied,
    /// Windows closed at the end of their grace with scoring still in flight (the validator
    /// could not keep up; the first one after start, while the evaluator warms up, is logged
    /// at info, later ones at warn).
    windows_forced_close,
    /// Updates rejected because the miner's sync proof (a slice of its base model) was missing,
    /// malformed or did not match this validator's model.
    updates_out_of_sync,
    /// Blob downloads that failed (no provider, timeout, hash mismatch).
    blob_fetch_failed,
    /// Blobs downloaded and verified.
    blobs_fetched,
    /// Window records applied by aggregation.
    records_applied,
    /// Window records rejected.
    records_rejected,
    /// Checkpoints downloaded to catch up.
    catchups,
    /// Actor restarts by the supervisor.
    restarts,
    /// Events dropped because an actor lagged.
    events_lagged,
    /// Updates this miner published.
    updates_published,
    /// Window records whose dataset manifest differs from this node's data.
    dataset_mismatch,
    /// Block numbers the chain watcher never saw (a gap in the block stream).
    blocks_missed,
    /// Times the chain head went backwards (a reorg or a restarted chain).
    chain_rewinds,
    /// Blob sweeps run (`node.gc_every_windows`).
    gc_sweeps,
    /// Unreferenced blobs deleted by sweeps.
    blobs_swept,
    /// Applied windows after which the store was over `node.disk_budget_mb`.
    disk_over_budget,
    /// Competition models refused (any reason; per reason on `apiary compete leaderboard`).
    competition_refused,
    /// Competition evaluation rounds run.
    competition_rounds,
    /// Weight submissions the chain included.
    weights_set,
    /// Weight submissions the chain refused or that failed (each attempt counts).
    weights_failed,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Submissions refused by a mechanism's checks, counted per check name
/// ([`crate::mechanism::Rejection::check`]); shown by `apiary admin metrics` as `rejected`.
#[derive(Debug, Default)]
pub struct Rejections(StdMutex<BTreeMap<&'static str, u64>>);

impl Rejections {
    /// Lists `check` with 0 refusals unless it is listed already.
    pub fn register(&self, check: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(check)
            .or_default();
    }
    /// Counts one refusal by `check`.
    pub fn count(&self, check: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(check)
            .or_default() += 1;
    }
    /// Check name → refusals.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Supervisor restarts counted per actor (the children's names, [`crate::supervisor::children`]).
/// Every child the supervisor starts is registered with 0 restarts, so each actor's series
/// exists from the start; the total is also in [`Metrics::restarts`].
#[derive(Debug, Default)]
pub struct ActorRestarts(StdMutex<BTreeMap<&'static str, u64>>);

impl ActorRestarts {
    /// Lists `actor` with 0 restarts unless it is listed already.
    pub fn register(&self, actor: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(actor)
            .or_default();
    }
    /// Counts one restart of `actor`.
    pub fn count(&self, actor: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(actor)
            .or_default() += 1;
    }
    /// Actor name → restarts.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// This node's peer record as its swarm sees it now: peer id and listen addresses, no
/// competition entries.
pub async fn local_peer_record(net: &NetHandle) -> apiary_chain::PeerRecord {
    apiary_chain::PeerRecord {
        peer_id: net.local_peer_id().to_string(),
        addrs: net
            .listen_addrs()
            .await
            .iter()
            .map(|a| a.to_string())
            .collect(),
        models: Vec::new(),
    }
}

/// Mixed into the page seed of a window's control pages ([`NodeContext::control_pages`]).
const CONTROL_SEED: u64 = 0xC0_4E_70_01_5E_ED_00_01;

/// Everything a node's actors share.
pub struct NodeContext {
    /// Validated configuration.
    pub cfg: NodeConfig,
    /// The node's RocksDB store.
    pub store: Store,
    /// The chain backend.
    pub chain: Arc<dyn ChainClient>,
    /// The libp2p handle.
    pub net: NetHandle,
    /// Inbound network events; the gossip peer (re)takes the receiver when it starts.
    pub net_events: Mutex<mpsc::Receiver<NetEvent>>,
    /// The signing hotkey.
    pub hotkey: Hotkey,
    /// The training data.
    pub dataset: Arc<Dataset>,
    /// Event bus (bounded).
    pub events: broadcast::Sender<NodeEvent>,
    /// Status for the admin socket.
    pub status: RwLock<NodeStatus>,
    /// Counters.
    pub metrics: Metrics,
    /// Refusals per admission check.
    pub rejections: Rejections,
    /// Supervisor restarts per actor.
    pub actor_restarts: ActorRestarts,
    /// Hashes of recent windows' first blocks by window (the seeds of sync slices), filled by
    /// the chain watcher and by [`NodeContext::window_seed`]; at most [`WINDOW_SEEDS_KEPT`].
    window_seeds: RwLock<BTreeMap<u64, [u8; 32]>>,
    /// Blobs this node keeps from the sweep for as long as it runs (the models it entered in
    /// competitions, which it serves).
    pub pinned: StdMutex<Vec<apiary_storage::Pin>>,
    /// The metrics endpoint's bound address (`metrics.listen`, its port picked when it was 0),
    /// set once the endpoint listens: `apiary admin status` shows its URLs.
    pub metrics_addr: std::sync::OnceLock<std::net::SocketAddr>,
}

/// Recent window seeds a node remembers.
pub const WINDOW_SEEDS_KEPT: usize = 64;

impl NodeContext {
    /// Builds the context; `events` capacity bounds the bus.
    pub fn new(
        cfg: NodeConfig,
        store: Store,
        chain: Arc<dyn ChainClient>,
        net: NetHandle,
        net_events: mpsc::Receiver<NetEvent>,
        hotkey: Hotkey,
        dataset: Arc<Dataset>,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(NodeContext {
            cfg,
            store,
            chain,
            net,
            net_events: Mutex::new(net_events),
            hotkey,
            dataset,
            events,
            status: RwLock::new(NodeStatus::default()),
            metrics: Metrics::default(),
            rejections: Rejections::default(),
            actor_restarts: ActorRestarts::default(),
            window_seeds: RwLock::new(BTreeMap::new()),
            pinned: StdMutex::new(Vec::new()),
            metrics_addr: std::sync::OnceLock::new(),
        })
    }

    /// The training pages assigned to `uid` in `window` (`train.pages_per_window` of them,
    /// drawn by [`apiary_model::assign_pages`] from `(uid, window, train.data_seed)` mixed with
    /// `window_hash`, the hash of the window's first block): what a miner trains on and what a
    /// validator recomputes. Nobody knows that hash before the window starts, so no miner can
    /// compute (or buy, or reuse) its work for a window ahead of time.
    pub fn window_pages(
        &self,
        uid: u16,
        window: u64,
        window_hash: &[u8; 32],
    ) -> Result<Vec<Vec<u32>>, String> {
        self.pages_from(uid, window, window_hash, 0)
    }

    /// The window's **control pages**: drawn like a miner's from the window's first block hash,
    /// but from a stream no uid is assigned (a different seed), so no miner trains on them.
    /// A validator recomputes on them once per window; work that resembles this control as much
    /// as the miner's own recompute was not done on the miner's pages.
    pub fn control_pages(
        &self,
        window: u64,
        window_hash: &[u8; 32],
    ) -> Result<Vec<Vec<u32>>, String> {
        self.pages_from(0, window, window_hash, CONTROL_SEED)
    }

    /// `train.pages_per_window` pages for `uid` in `window`, from `train.data_seed` mixed with
    /// the window hash's first 8 bytes and `stream` (0: the miners' stream).
    fn pages_from(
        &self,
        uid: u16,
        window: u64,
        window_hash: &[u8; 32],
        stream: u64,
    ) -> Result<Vec<Vec<u32>>, String> {
        let t = &self.cfg.train;
        let mut head = [0u8; 8];
        head.copy_from_slice(&window_hash[..8]);
        apiary_model::assign_pages(
            uid,
            window,
            t.data_seed ^ u64::from_le_bytes(head) ^ stream,
            self.dataset.train_pages(),
            t.pages_per_window,
        )
        .into_iter()
        .map(|i| self.dataset.page(i).map_err(|e| e.to_string()))
        .collect()
    }

    /// The held-out pages the node reports its loss on (`train.held_out_pages` of them).
    pub fn held_out_pages(&self) -> Result<Vec<Vec<u32>>, String> {
        self.dataset
            .held_out(self.cfg.train.held_out_pages)
            .map_err(|e| e.to_string())
    }

    /// The seed of window `window`'s sync slices: the hash of its first block
    /// (`window * chain.blocks_per_window`). Nobody knows it before the window starts, so a
    /// miner cannot prepare a sync proof for a model it does not hold. Remembered from the chain
    /// watcher, else asked of the chain (the watcher skipped the block, the node started
    /// mid-window); an error when the chain does not have that block (yet).
    pub async fn window_seed(&self, window: u64) -> Result<[u8; 32], String> {
        if let Some(h) = self
            .window_seeds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&window)
        {
            return Ok(*h);
        }
        let first = window
            .checked_mul(self.cfg.chain.blocks_per_window)
            .ok_or_else(|| format!("window {window} is beyond the last block number"))?;
        match self.chain.block_hash(first).await {
            Ok(Some(h)) => {
                self.remember_window_seed(window, h);
                Ok(h)
            }
            Ok(None) => Err(format!(
                "block {first} (the first of window {window}) is not on the chain yet"
            )),
            Err(e) => Err(format!(
                "cannot read block {first} (the first of window {window}): {e}"
            )),
        }
    }

    /// Remembers the hash of `window`'s first block (replacing an older one, e.g. after a
    /// rewind), keeping the latest [`WINDOW_SEEDS_KEPT`] windows.
    pub fn remember_window_seed(&self, window: u64, hash: [u8; 32]) {
        let mut m = self.window_seeds.write().unwrap_or_else(|p| p.into_inner());
        m.insert(window, hash);
        while m.len() > WINDOW_SEEDS_KEPT {
            m.pop_first();
        }
    }

    /// Forgets the seeds of `window` and later windows (the chain went backwards: their first
    /// blocks may be replaced).
    pub fn forget_window_seeds_from(&self, window: u64) {
        self.window_seeds
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w, _| *w < window);
    }

    /// The node's name for logs.
    pub fn name(&self) -> &str {
        &self.cfg.node.name
    }

    /// Publishes an event (no receivers is fine).
    pub fn emit(&self, ev: NodeEvent) {
        let _ = self.events.send(ev);
    }

    /// Reads the status.
    pub fn status(&self) -> NodeStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Updates the status.
    pub fn update_status(&self, f: impl FnOnce(&mut NodeStatus)) {
        f(&mut self.status.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// The latest metagraph, if one was read.
    pub fn metagraph(&self) -> Option<Arc<Metagraph>> {
        self.status().metagraph
    }

    /// This node's uid from the latest metagraph.
    pub fn uid(&self) -> Option<u16> {
        self.status().uid
    }

    /// The current window.
    pub fn window(&self) -> u64 {
        self.status().window
    }
}

/// Forwards node events into an actor's mailbox until the actor is gone. `pick` selects and
/// converts the events the actor cares about.
pub(crate) fn forward_events<M: ractor::Message>(
    ctx: &Arc<NodeContext>,
    myself: ActorRef<M>,
    pick: impl Fn(NodeEvent) -> Option<M> + Send + 'static,
) {
    let mut rx = ctx.events.subscribe();
    // Weak: the task must not keep the context (and its database) alive after the node stops.
    let weak = Arc::downgrade(ctx);
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if let Some(m) = pick(ev) {
                        if myself.cast(m).is_err() {
                            break;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => match weak.upgrade() {
                    Some(ctx) => {
                        ctx.metrics.events_lagged.fetch_add(n, Ordering::Relaxed);
                    }
                    None => break,
                },
                Err(broadcast::error::RecvError::Closed) => break,
            }
            if myself.get_status() == ractor::ActorStatus::Stopped {
                break;
            }
        }
    });
}
