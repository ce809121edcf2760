//! Evaluator (validators): scores each miner's update and closes windows.
//!
//! For every announced update of the open window the evaluator fetches the blob (verified by
//! id), rejects it if it does not decode to finite tensors of the model's shapes, checks the
//! miner's **sync proof** ([`crate::sync`]: the slice of the miner's base model seeded by the
//! hash of the window's first block must match the same slice of the validator's base model;
//! an update whose proof is missing, malformed or different is rejected, counted in
//! `updates_out_of_sync` and recorded in the miner's [`ScoreEntry::sync`]), then
//! **recomputes** the miner's work — the same local steps on the same deterministic pages from
//! the same base model — and scores the miner's update by cosine similarity with its own. Honest
//! work scores ≈ 1; noise, work on other pages, or a stale base scores ≈ 0.
//!
//! When the next window starts the evaluator closes the previous one (after in-flight scoring
//! finishes, bounded by half a window): every miner uid gets this window's score (0 when it sent
//! nothing, sent it late, sent garbage or was out of sync), smoothed by EMA and persisted. The lead validator
//! then aggregates the updates that passed `min_score`, stores the next model checkpoint and
//! gossips the signed [`WindowRecord`].

use crate::context::{forward_events, slot_get, Metrics, NodeContext, NodeEvent};
use crate::protocol::{GossipMsg, UpdateAnnouncement, WindowRecord};
use crate::sync::{SyncFailure, SyncStatus};
use crate::trainer::{fetch_blob, ModelSnapshot, TrainerHandle};
use crate::{join_err, ActorError};
use apiary_model::Update;
use apiary_net::PeerId;
use apiary_storage::{Column, ContentId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// A uid's persisted score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreEntry {
    /// Miner uid.
    pub uid: u16,
    /// Smoothed score.
    pub ema: f64,
    /// Score in the last closed window.
    pub last: f32,
    /// Last closed window.
    pub window: u64,
    /// How the miner's sync proof fared in the last closed window (`None`: no update was
    /// checked, e.g. it sent nothing, or its update was malformed or on another base model).
    #[serde(default)]
    pub sync: Option<SyncStatus>,
}

/// How one update fared.
#[derive(Clone)]
pub enum Outcome {
    /// Cosine similarity with the recomputed update.
    Scored {
        /// The score.
        score: f32,
        /// The decoded update (kept for aggregation).
        update: Arc<Update>,
        /// Its id.
        id: ContentId,
        /// The sync proof's check: [`SyncStatus::InSync`], or [`SyncStatus::Unchecked`] when
        /// this validator did not know the window's seed.
        sync: SyncStatus,
    },
    /// Undecodable, wrong shapes, NaN/Inf, or not fetchable.
    Bad(String),
    /// The sync proof was missing, malformed or did not match this validator's model: the
    /// update is neither recomputed nor aggregated and scores 0.
    OutOfSync(SyncFailure),
}

/// What the evaluator has of an update's sync proof before checking it.
enum SyncProof {
    /// This validator does not know the window's seed (why), so it cannot check.
    Unknown(String),
    /// The window's seed, and the proof's bytes or why there are none.
    Fetched([u8; 32], Result<Vec<u8>, SyncFailure>),
}

/// Messages of the evaluator.
pub enum EvaluatorMsg {
    /// A miner's update announcement, and the peer that relayed it.
    Announce(Box<UpdateAnnouncement>, PeerId),
    /// Scoring of one update finished.
    Evaluated {
        /// Window.
        window: u64,
        /// Miner uid.
        uid: u16,
        /// Result.
        outcome: Outcome,
    },
    /// A window started (closes the previous one).
    WindowStarted(u64),
    /// The model advanced (new base for evaluation).
    ModelAdvanced,
    /// Close a window even if some scoring is still running.
    ForceClose(u64),
    /// The aggregate for a closed window is ready to publish, with the model it produced.
    Aggregated(Box<Result<(WindowRecord, ModelSnapshot), String>>),
    /// Query: smoothed scores.
    Scores(RpcReplyPort<Vec<ScoreEntry>>),
    /// Query: how many updates of a window have been scored so far.
    Scored(u64, RpcReplyPort<usize>),
}

impl std::fmt::Debug for EvaluatorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EvaluatorMsg::Announce(..) => "Announce",
            EvaluatorMsg::Evaluated { .. } => "Evaluated",
            EvaluatorMsg::WindowStarted(_) => "WindowStarted",
            EvaluatorMsg::ModelAdvanced => "ModelAdvanced",
            EvaluatorMsg::ForceClose(_) => "ForceClose",
            EvaluatorMsg::Aggregated(_) => "Aggregated",
            EvaluatorMsg::Scores(_) => "Scores",
            EvaluatorMsg::Scored(..) => "Scored",
        })
    }
}

#[derive(Default)]
struct WindowEval {
    pending: BTreeSet<u16>,
    deferred: Vec<(UpdateAnnouncement, PeerId)>,
    results: BTreeMap<u16, Outcome>,
    closing: bool,
}

/// The actor.
pub struct Evaluator;

/// Its state.
pub struct EvaluatorState {
    ctx: Arc<NodeContext>,
    base: Option<ModelSnapshot>,
    windows: BTreeMap<u64, WindowEval>,
    scores: BTreeMap<u16, ScoreEntry>,
    last_closed: Option<u64>,
    /// Scored-update counts of recently closed windows.
    closed_counts: BTreeMap<u64, usize>,
    /// The model after the last record this validator built (or the trainer's, if newer): the
    /// next record builds on it, so a trainer still applying the previous record can never make
    /// the lead publish a record on a stale base (which would roll every follower back).
    tip: Option<ModelSnapshot>,
    /// An aggregation is running; closed windows wait in `queued`, in order.
    aggregating: bool,
    /// Closed windows waiting for the running aggregation: (window, scores, accepted updates).
    queued: std::collections::VecDeque<AggregationJob>,
}

/// A closed window the lead validator still has to aggregate.
struct AggregationJob {
    window: u64,
    scores: Vec<(u16, f32)>,
    accepted: Vec<(u16, ContentId, Arc<Update>)>,
}

impl Actor for Evaluator {
    type Msg = EvaluatorMsg;
    type State = EvaluatorState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let scores = ctx
            .store
            .scan::<ScoreEntry>(Column::Scores)?
            .into_iter()
            .map(|(_, s)| (s.uid, s))
            .collect::<BTreeMap<_, _>>();
        let last_closed = scores.values().map(|s| s.window).max();
        forward_events(&ctx, myself.clone(), |ev| match ev {
            NodeEvent::WindowStarted { window, .. } => Some(EvaluatorMsg::WindowStarted(window)),
            NodeEvent::ModelAdvanced { .. } => Some(EvaluatorMsg::ModelAdvanced),
            _ => None,
        });
        // The trainer may be starting too; the first ModelAdvanced or window fills the base.
        let _ = myself.cast(EvaluatorMsg::ModelAdvanced);
        Ok(EvaluatorState {
            ctx,
            base: None,
            windows: BTreeMap::new(),
            scores,
            last_closed,
            closed_counts: BTreeMap::new(),
            tip: None,
            aggregating: false,
            queued: std::collections::VecDeque::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EvaluatorMsg::Announce(ann, from) => {
                ensure_base(st).await;
                if st.last_closed.is_some_and(|c| ann.window <= c)
                    || st.windows.get(&ann.window).is_some_and(|w| w.closing)
                {
                    Metrics::inc(&st.ctx.metrics.gossip_stale);
                    tracing::info!(
                        uid = ann.uid,
                        window = ann.window,
                        "update arrived after its window closed"
                    );
                    return Ok(());
                }
                let we = st.windows.entry(ann.window).or_default();
                if we.results.contains_key(&ann.uid) || we.pending.contains(&ann.uid) {
                    return Ok(());
                }
                match &st.base {
                    Some(b) if b.id == ann.base_model => {
                        we.pending.insert(ann.uid);
                        spawn_eval(&myself, &st.ctx, b.clone(), *ann, from);
                    }
                    _ => we.deferred.push((*ann, from)),
                }
            }
            EvaluatorMsg::Evaluated {
                window,
                uid,
                outcome,
            } => {
                if let Some(we) = st.windows.get_mut(&window) {
                    we.pending.remove(&uid);
                    Metrics::inc(&st.ctx.metrics.updates_evaluated);
                    let rejected = match &outcome {
                        Outcome::Scored { .. } => false,
                        Outcome::Bad(e) => {
                            Metrics::inc(&st.ctx.metrics.updates_bad);
                            tracing::warn!(uid, window, error = %e, "rejected update");
                            true
                        }
                        Outcome::OutOfSync(f) => {
                            Metrics::inc(&st.ctx.metrics.updates_out_of_sync);
                            let hotkey = st
                                .ctx
                                .metagraph()
                                .and_then(|m| m.by_uid(uid).map(|n| n.hotkey.ss58()))
                                .unwrap_or_default();
                            tracing::warn!(
                                uid,
                                %hotkey,
                                window,
                                reason = %f,
                                "rejected update: miner {uid} is out of sync in window {window} \
                                 (its sync proof does not match this validator's model); scored 0"
                            );
                            true
                        }
                    };
                    if rejected {
                        // Nothing of a rejected update is kept: not its bytes, not its
                        // announcement.
                        let key = apiary_storage::window_uid_key(window, uid);
                        if let Err(e) = st.ctx.store.delete(Column::Announcements, &key) {
                            tracing::warn!(error = %e, "could not drop a bad announcement");
                        }
                    }
                    we.results.insert(uid, outcome);
                    if we.closing && we.pending.is_empty() {
                        finalize(&myself, st, window);
                    }
                }
            }
            EvaluatorMsg::WindowStarted(w) => {
                ensure_base(st).await;
                let open: Vec<u64> = st
                    .windows
                    .iter()
                    .filter(|(k, v)| **k < w && !v.closing)
                    .map(|(k, _)| *k)
                    .collect();
                let mut to_close = open;
                // Close the previous window even if no update arrived for it.
                if w > 0 && st.last_closed.is_none_or(|c| c < w - 1) {
                    let prev = w - 1;
                    if !to_close.contains(&prev)
                        && !st.windows.get(&prev).is_some_and(|v| v.closing)
                    {
                        to_close.push(prev);
                    }
                }
                for cw in to_close {
                    let we = st.windows.entry(cw).or_default();
                    we.closing = true;
                    if we.pending.is_empty() {
                        finalize(&myself, st, cw);
                    } else {
                        let c = &st.ctx.cfg.chain;
                        let grace =
                            Duration::from_millis(c.block_time_ms * c.blocks_per_window / 2);
                        myself.send_after(grace, move || EvaluatorMsg::ForceClose(cw));
                    }
                }
            }
            EvaluatorMsg::ForceClose(w) => {
                if st.windows.get(&w).is_some_and(|we| we.closing) {
                    tracing::warn!(window = w, "closing window with scoring still in flight");
                    finalize(&myself, st, w);
                }
            }
            EvaluatorMsg::ModelAdvanced => {
                if let Ok(snap) = TrainerHandle(Arc::clone(&st.ctx)).snapshot().await {
                    if st.tip.as_ref().is_none_or(|t| snap.window >= t.window) {
                        st.tip = Some(snap.clone());
                    }
                    st.base = Some(snap.clone());
                    let mut ready = Vec::new();
                    for (w, we) in st.windows.iter_mut() {
                        let (now, later): (Vec<_>, Vec<_>) = we
                            .deferred
                            .drain(..)
                            .partition(|(a, _)| a.base_model == snap.id);
                        we.deferred = later;
                        for (a, from) in now {
                            we.pending.insert(a.uid);
                            ready.push((*w, a, from));
                        }
                    }
                    for (_, a, from) in ready {
                        spawn_eval(&myself, &st.ctx, snap.clone(), a, from);
                    }
                }
            }
            EvaluatorMsg::Aggregated(res) => {
                st.aggregating = false;
                match *res {
                    Ok((rec, snap)) => {
                        st.tip = Some(snap);
                        publish_record(&st.ctx, rec).await;
                    }
                    Err(e) => tracing::error!(error = %e, "could not aggregate the window"),
                }
                if let Some(job) = st.queued.pop_front() {
                    start_aggregation(&myself, st, job);
                }
            }
            EvaluatorMsg::Scores(reply) => {
                let _ = reply.send(st.scores.values().cloned().collect());
            }
            EvaluatorMsg::Scored(w, reply) => {
                let n = match st.windows.get(&w) {
                    Some(we) => we.results.len(),
                    None => st.closed_counts.get(&w).copied().unwrap_or(0),
                };
                let _ = reply.send(n);
            }
        }
        Ok(())
    }
}

/// Fetches the trainer's model if the evaluator has none yet (first start, or restart).
async fn ensure_base(st: &mut EvaluatorState) {
    if st.base.is_none() {
        if let Ok(snap) = TrainerHandle(Arc::clone(&st.ctx)).snapshot().await {
            st.base = Some(snap);
        }
    }
}

fn spawn_eval(
    myself: &ActorRef<EvaluatorMsg>,
    ctx: &Arc<NodeContext>,
    base: ModelSnapshot,
    ann: UpdateAnnouncement,
    from: PeerId,
) {
    let ctx = Arc::clone(ctx);
    let me = myself.clone();
    tokio::spawn(async move {
        let (window, uid) = (ann.window, ann.uid);
        let outcome = match fetch_blob(&ctx, ann.update, Some(from), false).await {
            Err(e) => Outcome::Bad(e),
            Ok(bytes) => {
                let proof = match ctx.window_seed(window).await {
                    Err(e) => SyncProof::Unknown(e),
                    Ok(seed) => SyncProof::Fetched(
                        seed,
                        match ann.sync_slice {
                            None => Err(SyncFailure::Invalid(
                                "the announcement names no sync slice".into(),
                            )),
                            Some(id) => {
                                fetch_blob(&ctx, id, Some(from), false).await.map_err(|e| {
                                    SyncFailure::Invalid(format!("cannot get the slice: {e}"))
                                })
                            }
                        },
                    ),
                };
                let ctx2 = Arc::clone(&ctx);
                tokio::task::spawn_blocking(move || score_update(&ctx2, &base, &ann, &bytes, proof))
                    .await
                    .unwrap_or_else(|e| Outcome::Bad(join_err(e)))
            }
        };
        let _ = me.cast(EvaluatorMsg::Evaluated {
            window,
            uid,
            outcome,
        });
    });
}

/// Decodes an update, checks the sync proof (before any costly work), stores the update and
/// scores it against the recomputed one.
fn score_update(
    ctx: &NodeContext,
    base: &ModelSnapshot,
    ann: &UpdateAnnouncement,
    bytes: &[u8],
    proof: SyncProof,
) -> Outcome {
    let c = &ctx.cfg;
    let update = match crate::updates::decode(c, bytes) {
        Ok(u) => u,
        Err(e) => return Outcome::Bad(e),
    };
    let sync = match proof {
        SyncProof::Unknown(e) => {
            tracing::warn!(uid = ann.uid, window = ann.window, error = %e, "cannot check the sync proof; scoring the update without it");
            SyncStatus::Unchecked
        }
        SyncProof::Fetched(seed, bytes) => {
            match bytes.and_then(|b| crate::sync::check_proof(c, &base.params, &seed, &b)) {
                Ok(()) => SyncStatus::InSync,
                Err(f) => return Outcome::OutOfSync(f),
            }
        }
    };
    if let Err(e) = ctx.store.put_blob_verified(ann.update, bytes) {
        return Outcome::Bad(e.to_string());
    }
    let pages = match ctx.window_pages(ann.uid, ann.window) {
        Ok(p) => p,
        Err(e) => return Outcome::Bad(format!("recompute failed: cannot read the pages: {e}")),
    };
    let own = match crate::updates::compute(c, &base.params, &pages) {
        Ok((u, _)) => u,
        Err(e) => return Outcome::Bad(format!("recompute failed: {e}")),
    };
    match apiary_model::cosine(&update, &own) {
        Ok(s) if s.is_finite() => Outcome::Scored {
            score: s,
            update: Arc::new(update),
            id: ann.update,
            sync,
        },
        Ok(_) => Outcome::Bad("cosine is not finite".into()),
        Err(e) => Outcome::Bad(e.to_string()),
    }
}

fn finalize(myself: &ActorRef<EvaluatorMsg>, st: &mut EvaluatorState, window: u64) {
    let Some(we) = st.windows.remove(&window) else {
        return;
    };
    st.windows.retain(|w, _| *w > window);
    st.closed_counts.insert(window, we.results.len());
    while st.closed_counts.len() > 64 {
        st.closed_counts.pop_first();
    }
    st.last_closed = Some(st.last_closed.map_or(window, |c| c.max(window)));
    let ctx = Arc::clone(&st.ctx);
    let c = &ctx.cfg;
    for (a, _) in &we.deferred {
        Metrics::inc(&ctx.metrics.updates_wrong_base);
        tracing::warn!(
            uid = a.uid,
            window,
            "update computed on another base model; scored 0"
        );
    }
    let Some(mg) = ctx.metagraph() else { return };
    let me = ctx.hotkey.id();
    let alpha = c.validator.ema_alpha;
    let mut report = Vec::new();
    // Miners are neurons without a permit, or that submitted updates: on subtensor every
    // neuron holds a permit while the subnet has fewer neurons than validator slots.
    let miners: Vec<_> = mg
        .neurons
        .iter()
        .filter(|n| {
            n.hotkey != me
                && (!n.validator_permit
                    || we.results.contains_key(&n.uid)
                    || st.scores.contains_key(&n.uid))
        })
        .collect();
    for n in miners {
        let (s, sync) = match we.results.get(&n.uid) {
            Some(Outcome::Scored { score, sync, .. }) => (*score, Some(*sync)),
            Some(Outcome::OutOfSync(f)) => (0.0, Some(f.status())),
            _ => (0.0, None),
        };
        let prev = st.scores.get(&n.uid).map_or(0.0, |e| e.ema);
        let ema = alpha * f64::from(s.max(0.0)) + (1.0 - alpha) * prev;
        let entry = ScoreEntry {
            uid: n.uid,
            ema,
            last: s,
            window,
            sync,
        };
        if let Err(e) = ctx.store.put(Column::Scores, &n.uid.to_be_bytes(), &entry) {
            tracing::error!(error = %e, "could not persist a score");
        }
        st.scores.insert(n.uid, entry);
        report.push((n.uid, s, ema));
    }
    let accepted: Vec<(u16, ContentId, Arc<Update>)> = we
        .results
        .iter()
        .filter_map(|(uid, o)| match o {
            Outcome::Scored {
                score, update, id, ..
            } if f64::from(*score) >= c.validator.min_score => {
                Some((*uid, *id, Arc::clone(update)))
            }
            _ => None,
        })
        .collect();
    tracing::info!(window, accepted = accepted.len(), scores = ?report, "window closed");
    ctx.emit(NodeEvent::WindowClosed {
        window,
        scores: report.clone(),
        accepted: accepted.len(),
    });
    // Only the lead validator writes the record everyone follows.
    if mg.lead_validator().map(|n| n.hotkey) != Some(me) {
        return;
    }
    let job = AggregationJob {
        window,
        scores: report.iter().map(|(u, s, _)| (*u, *s)).collect(),
        accepted,
    };
    if st.aggregating {
        st.queued.push_back(job);
    } else {
        start_aggregation(myself, st, job);
    }
}

/// Aggregates a closed window's accepted updates on top of the tip (the model after the previous
/// record) in a blocking task; the result comes back as [`EvaluatorMsg::Aggregated`].
fn start_aggregation(
    myself: &ActorRef<EvaluatorMsg>,
    st: &mut EvaluatorState,
    job: AggregationJob,
) {
    let Some(base) = st.tip.clone().or_else(|| st.base.clone()) else {
        tracing::warn!(
            window = job.window,
            "no base model yet; no record for this window"
        );
        return;
    };
    st.aggregating = true;
    let ctx = Arc::clone(&st.ctx);
    let me_ref = myself.clone();
    let AggregationJob {
        window,
        scores,
        accepted,
    } = job;
    tokio::spawn(async move {
        let ctx2 = Arc::clone(&ctx);
        let res = tokio::task::spawn_blocking(
            move || -> Result<(WindowRecord, ModelSnapshot), String> {
                let c = &ctx2.cfg;
                let updates: Vec<Update> = accepted.iter().map(|(_, _, u)| (**u).clone()).collect();
                let (next, outer) =
                    crate::updates::outer_step(c, &base.params, &base.outer, &updates)?;
                let bytes = next.to_bytes().map_err(|e| e.to_string())?;
                let model = ctx2.store.put_blob(&bytes).map_err(|e| e.to_string())?;
                let outer_bytes = outer.to_bytes(&c.model).map_err(|e| e.to_string())?;
                let outer_state = ctx2
                    .store
                    .put_blob(&outer_bytes)
                    .map_err(|e| e.to_string())?;
                let rec = WindowRecord {
                    netuid: c.chain.netuid,
                    window,
                    base_model: base.id,
                    accepted: accepted.iter().map(|(u, id, _)| (*u, *id)).collect(),
                    model,
                    outer_state,
                    scores,
                    dataset: ContentId(ctx2.dataset.hash()),
                };
                let snap = ModelSnapshot {
                    params: Arc::new(next),
                    id: model,
                    window: Some(window),
                    outer: Arc::new(outer),
                    outer_id: outer_state,
                };
                Ok((rec, snap))
            },
        )
        .await
        .unwrap_or_else(|e| Err(join_err(e)));
        let _ = me_ref.cast(EvaluatorMsg::Aggregated(Box::new(res)));
    });
}

async fn publish_record(ctx: &Arc<NodeContext>, rec: WindowRecord) {
    let payload = GossipMsg::Record(rec.clone()).encode();
    if let Err(e) = ctx.net.publish(payload).await {
        tracing::warn!(error = %e, window = rec.window, "could not gossip the window record");
    }
    if let Err(e) = TrainerHandle(Arc::clone(ctx)).apply_record(rec, None) {
        tracing::warn!(error = %e, "own trainer unavailable for the record");
    }
}

/// Typed front of the evaluator.
#[derive(Clone)]
pub struct EvaluatorHandle(pub Arc<NodeContext>);

impl EvaluatorHandle {
    fn actor(&self) -> Result<ActorRef<EvaluatorMsg>, ActorError> {
        slot_get(&self.0.actors.evaluator).ok_or(ActorError::NotRunning("evaluator"))
    }
    /// Hands over an update announcement for scoring.
    pub fn announce(&self, ann: UpdateAnnouncement, from: PeerId) -> Result<(), ActorError> {
        self.actor()?
            .cast(EvaluatorMsg::Announce(Box::new(ann), from))
            .map_err(|e| ActorError::Call {
                actor: "evaluator",
                message: e.to_string(),
            })
    }
    /// How many updates of `window` have been scored.
    pub async fn scored_in(&self, window: u64) -> Result<usize, ActorError> {
        ractor::call_t!(self.actor()?, EvaluatorMsg::Scored, 10_000, window).map_err(|e| {
            ActorError::Call {
                actor: "evaluator",
                message: e.to_string(),
            }
        })
    }
    /// Smoothed scores by uid.
    pub async fn scores(&self) -> Result<Vec<ScoreEntry>, ActorError> {
        ractor::call_t!(self.actor()?, EvaluatorMsg::Scores, 10_000).map_err(|e| ActorError::Call {
            actor: "evaluator",
            message: e.to_string(),
        })
    }
}
