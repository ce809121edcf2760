//! Evaluator (validators): scores each miner's update and closes windows.
//!
//! For every announced update of the open window the evaluator fetches the blob (verified by
//! id), rejects it if it does not decode to finite tensors of the model's shapes, checks the
//! miner's **sync proof** ([`crate::sync`]: the slice of the miner's base model seeded by the
//! hash of the window's first block must match the same slice of the validator's base model;
//! an update whose proof is missing, malformed or different is rejected, counted in
//! `updates_out_of_sync` and recorded in the miner's [`ScoreEntry::sync`]), then
//! **recomputes** the miner's work — the same local steps on the same deterministic pages from
//! the same base model — and, once per window, the same work on the window's control pages,
//! and scores the update by [`crate::windowed::score_parts`]: honest work scores 1; a copy,
//! replay, stale base or other pages ≈ 0; a fraction of the work a fraction of the score.
//!
//! The checks and the score are the mechanism's ([`crate::windowed::Windowed`]'s check list:
//! `size` → `decodes` → `in_sync` → `recomputes` → `norm`); a refusal is counted under its
//! check's name (`rejected` in `apiary admin metrics`). When the window closes, of two updates
//! far more alike than honest miners' are, the copy is refused (`near_duplicate`).
//!
//! The node core ([`crate::window`]) decides when: it asks for an evaluation when an update
//! was computed on the current model, closes a window once (after in-flight scoring finishes,
//! bounded by half a window), and asks the lead validator to aggregate closed windows one at a
//! time. Closing gives every miner uid this window's score (0 when it sent nothing, sent it
//! late, sent garbage or was out of sync), smoothed by EMA and persisted. Aggregating applies
//! the updates that passed `min_score`, stores the next model checkpoint and gossips the signed
//! [`WindowRecord`].

use crate::blobs::fetch_blob;
use crate::context::{Metrics, NodeContext, NodeEvent};
use crate::handle::{CoreHandle, Slot};
use crate::mechanism::{Mechanism, Rejection};
use crate::protocol::{GossipMsg, UpdateAnnouncement, WindowRecord};
use crate::sync::{SyncFailure, SyncStatus};
use crate::trainer::{ModelSnapshot, TrainerHandle};
use crate::window::Event;
use crate::windowed::{
    Candidate, Controls, Residuals, Sampler, ScoreParts, Standing, SyncProof, Windowed,
};
use crate::{join_err, ActorError, WorkError};
use apiary_model::Update;
use apiary_net::PeerId;
use apiary_storage::{u64_key, Column, ContentId, Pin};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// The last scored update's score parts (fidelity, control, magnitude …): why the score is
    /// what it is. `None` when the last window's update was not scored.
    #[serde(default)]
    pub parts: Option<ScoreParts>,
    /// Why the last window scored 0, when it did (the refusing check and its reason, or that
    /// nothing was received).
    #[serde(default)]
    pub reason: Option<String>,
    /// Windows closed with this miner listed.
    #[serde(default)]
    pub windows: u64,
    /// Of those, windows in which this validator checked the miner's update in full
    /// (recomputed it, or refused it).
    #[serde(default)]
    pub recomputed: u64,
    /// The last window in which this validator checked the miner's update in full.
    #[serde(default)]
    pub last_recomputed: Option<u64>,
}

/// How one update fared.
#[derive(Clone)]
pub enum Outcome {
    /// Admitted by every check and scored (cosine similarity with the recomputed update).
    Scored {
        /// The score.
        score: f32,
        /// Its parts.
        parts: ScoreParts,
        /// Order in which this validator started evaluating it (earlier observed first).
        seq: u64,
        /// The decoded update (kept for aggregation).
        update: Arc<Update>,
        /// Its id.
        id: ContentId,
        /// Keeps its stored bytes from being swept until the window is aggregated (`None` in
        /// tests that never store it).
        pin: Option<Pin>,
        /// The sync proof's check: [`SyncStatus::InSync`], or [`SyncStatus::Unchecked`] when
        /// this validator did not know the window's seed.
        sync: SyncStatus,
    },
    /// Passed the cheap checks but not recomputed (the window's recompute budget went to
    /// others): the miner's smoothed score stays as it was; not aggregated.
    Unscored {
        /// The sync proof's check.
        sync: SyncStatus,
    },
    /// Refused by a check (or not fetchable): scores 0, neither kept nor aggregated.
    Rejected {
        /// Which check refused it, and why.
        rejection: Rejection,
        /// How the sync proof fared, when the sync check refused it.
        sync: Option<SyncStatus>,
    },
}

/// Check name of an update that could not be fetched.
pub const FETCHABLE: &str = "fetchable";
/// Check name of an update computed on a model other than this validator's.
pub const BASE_MODEL: &str = "base_model";

/// A record built by aggregation, the model it produced, and the pins of the blobs it names.
pub type Built = (WindowRecord, ModelSnapshot, Vec<Pin>);

/// Messages of the evaluator.
pub enum EvaluatorMsg {
    /// Evaluate a miner's update (computed on the current model), relayed by a peer.
    Evaluate(Box<UpdateAnnouncement>, PeerId),
    /// Scoring of one update finished.
    Evaluated {
        /// Window.
        window: u64,
        /// Miner uid.
        uid: u16,
        /// Result.
        outcome: Outcome,
    },
    /// Close a window: score every miner, smooth, persist.
    Close {
        /// The window.
        window: u64,
        /// Uids whose updates were computed on another model.
        wrong_base: Vec<u16>,
        /// An aggregation of this window will be asked for: keep its accepted updates.
        aggregate: bool,
    },
    /// Aggregate a closed window and publish its record (lead validator).
    Aggregate(u64),
    /// The aggregate for a closed window is ready to publish, with the model it produced.
    Aggregated(u64, Box<Result<Built, WorkError>>),
    /// Query: smoothed scores.
    Scores(RpcReplyPort<Vec<ScoreEntry>>),
    /// Query: how many updates of a window have been scored so far.
    Scored(u64, RpcReplyPort<usize>),
    /// Query: the latest window this evaluator closed.
    LastClosed(RpcReplyPort<Option<u64>>),
}

impl std::fmt::Debug for EvaluatorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EvaluatorMsg::Evaluate(..) => "Evaluate",
            EvaluatorMsg::Evaluated { .. } => "Evaluated",
            EvaluatorMsg::Close { .. } => "Close",
            EvaluatorMsg::Aggregate(_) => "Aggregate",
            EvaluatorMsg::Aggregated(..) => "Aggregated",
            EvaluatorMsg::Scores(_) => "Scores",
            EvaluatorMsg::Scored(..) => "Scored",
            EvaluatorMsg::LastClosed(_) => "LastClosed",
        })
    }
}

/// The actor.
pub struct Evaluator;

/// What the evaluator is started with.
pub struct EvaluatorArgs {
    /// The node.
    pub ctx: Arc<NodeContext>,
    /// Where it reports.
    pub core: CoreHandle,
    /// The model keeper it asks for the model.
    pub trainer: TrainerHandle,
    /// The incentive mechanism: checks and score.
    pub mechanism: Arc<Windowed>,
}

/// Its state.
pub struct EvaluatorState {
    ctx: Arc<NodeContext>,
    core: CoreHandle,
    trainer: TrainerHandle,
    mechanism: Arc<Windowed>,
    /// The model updates are evaluated against (the model keeper's, fetched when it changes).
    base: Option<ModelSnapshot>,
    /// Outcomes of the windows not yet closed.
    results: BTreeMap<u64, BTreeMap<u16, Outcome>>,
    scores: BTreeMap<u16, ScoreEntry>,
    last_closed: Option<u64>,
    /// Scored-update counts of recently closed windows.
    closed_counts: BTreeMap<u64, usize>,
    /// The model after the last record this validator built: the next record builds on it
    /// (or on the keeper's model if that is newer), so a keeper still applying the previous
    /// record can never make the lead publish a record on a stale base (which would roll every
    /// follower back).
    tip: Option<ModelSnapshot>,
    /// Pins of the last record built: its accepted updates, model and outer state.
    tip_pins: Vec<Pin>,
    /// Closed windows the core will ask to aggregate.
    jobs: BTreeMap<u64, AggregationJob>,
    /// Bounds the evaluations that fetch and recompute at once (one per core): a flood of
    /// announcements queues here instead of starting that many recomputes.
    permits: Arc<tokio::sync::Semaphore>,
    /// The windows' control recomputes.
    controls: Arc<Controls>,
    /// Miners' error-feedback residuals, replayed.
    residuals: Arc<Residuals>,
    /// Evaluations started so far (gives each its `seq`).
    started: u64,
    /// Which updates to recompute when there are more miners than the budget.
    sampler: Sampler,
    /// Recomputes started per open window.
    recomputes: BTreeMap<u64, usize>,
}

/// A closed window the lead validator still has to aggregate.
struct AggregationJob {
    /// The accepted updates' pins (the aggregation stores the record that names them).
    pins: Vec<Pin>,
    window: u64,
    scores: Vec<(u16, f32)>,
    accepted: Vec<(u16, ContentId, Arc<Update>)>,
}

impl Actor for Evaluator {
    type Msg = EvaluatorMsg;
    type State = EvaluatorState;
    type Arguments = EvaluatorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: EvaluatorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let EvaluatorArgs {
            ctx,
            core,
            trainer,
            mechanism,
        } = args;
        let scores = ctx
            .store
            .scan::<ScoreEntry>(Column::Scores)?
            .into_iter()
            .map(|(_, s)| (s.uid, s))
            .collect::<BTreeMap<_, _>>();
        let last_closed = scores.values().map(|s| s.window).max();
        core.report(Event::EvaluatorReady { last_closed });
        let sampler = Sampler {
            budget: ctx.cfg.validator.max_recomputes_per_window,
            min_score: ctx.cfg.validator.min_score as f32,
            salt: rand::random(),
        };
        Ok(EvaluatorState {
            ctx,
            core,
            trainer,
            mechanism,
            base: None,
            results: BTreeMap::new(),
            scores,
            last_closed,
            closed_counts: BTreeMap::new(),
            tip: None,
            tip_pins: Vec::new(),
            jobs: BTreeMap::new(),
            permits: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            controls: Arc::default(),
            residuals: Arc::default(),
            started: 0,
            sampler,
            recomputes: BTreeMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EvaluatorMsg::Evaluate(ann, from) => {
                if st.base.as_ref().is_none_or(|b| b.id != ann.base_model) {
                    if let Ok(snap) = st.trainer.snapshot().await {
                        st.base = Some(snap);
                    }
                }
                match st.base.clone() {
                    Some(b) if b.id == ann.base_model => {
                        st.started += 1;
                        let recompute = sample(st, &ann);
                        spawn_eval(&myself, st, b, *ann, from, recompute);
                    }
                    _ => {
                        // The model moved on between the core's decision and now.
                        let outcome = Outcome::Rejected {
                            rejection: Rejection::new(
                                BASE_MODEL,
                                "computed on a model other than this validator's",
                            ),
                            sync: None,
                        };
                        let _ = myself.cast(EvaluatorMsg::Evaluated {
                            window: ann.window,
                            uid: ann.uid,
                            outcome,
                        });
                    }
                }
            }
            EvaluatorMsg::Evaluated {
                window,
                uid,
                outcome,
            } => {
                Metrics::inc(&st.ctx.metrics.updates_evaluated);
                let rejected = match &outcome {
                    Outcome::Scored { .. } => false,
                    Outcome::Unscored { .. } => {
                        Metrics::inc(&st.ctx.metrics.updates_sampled_out);
                        false
                    }
                    Outcome::Rejected { rejection, .. } => {
                        count_rejection(&st.ctx, window, uid, rejection);
                        true
                    }
                };
                st.results.entry(window).or_default().insert(uid, outcome);
                st.core.report(Event::Evaluated {
                    window,
                    uid,
                    rejected,
                });
            }
            EvaluatorMsg::Close {
                window,
                wrong_base,
                aggregate,
            } => finalize(st, window, &wrong_base, aggregate),
            EvaluatorMsg::Aggregate(w) => match st.jobs.remove(&w) {
                Some(job) => {
                    // Build on the newer of our last record's model and the keeper's model.
                    if let Ok(snap) = st.trainer.snapshot().await {
                        if st.tip.as_ref().is_none_or(|t| snap.window >= t.window) {
                            st.tip = Some(snap);
                        }
                    }
                    start_aggregation(&myself, st, job);
                }
                None => {
                    tracing::warn!(window = w, "nothing to aggregate for this window");
                    st.core.report(Event::Aggregated(w));
                }
            },
            EvaluatorMsg::Aggregated(w, res) => {
                match *res {
                    Ok((rec, snap, pins)) => {
                        st.tip = Some(snap);
                        st.tip_pins = pins;
                        // Aggregating decoded and summed every accepted update.
                        apiary_alloc::trim();
                        publish_record(&st.ctx, &st.core, rec).await;
                    }
                    Err(e) => {
                        tracing::error!(window = w, error = %e, "could not aggregate the window")
                    }
                }
                st.core.report(Event::Aggregated(w));
            }
            EvaluatorMsg::Scores(reply) => {
                let _ = reply.send(st.scores.values().cloned().collect());
            }
            EvaluatorMsg::Scored(w, reply) => {
                let n = match st.results.get(&w) {
                    Some(r) => r.len(),
                    None => st.closed_counts.get(&w).copied().unwrap_or(0),
                };
                let _ = reply.send(n);
            }
            EvaluatorMsg::LastClosed(reply) => {
                let _ = reply.send(st.last_closed);
            }
        }
        Ok(())
    }
}

/// Counts a refusal under its check and, for the checks that have one, its legacy counter.
fn count_rejection(ctx: &NodeContext, window: u64, uid: u16, r: &Rejection) {
    ctx.rejections.count(r.check);
    let m = &ctx.metrics;
    match r.check {
        crate::windowed::IN_SYNC => {
            Metrics::inc(&m.updates_out_of_sync);
            let hotkey = ctx
                .metagraph()
                .and_then(|mg| mg.by_uid(uid).map(|n| n.hotkey.ss58()))
                .unwrap_or_default();
            tracing::warn!(
                uid,
                %hotkey,
                window,
                reason = %r.reason,
                "rejected update: miner {uid} is out of sync in window {window} \
                 (its sync proof does not match this validator's model); scored 0"
            );
        }
        crate::windowed::UNIQUE_CONTENT => {
            Metrics::inc(&m.updates_copied);
            tracing::warn!(uid, window, reason = %r.reason, "update blob names another author: a copy, scored 0");
        }
        BASE_MODEL => {
            Metrics::inc(&m.updates_wrong_base);
            tracing::warn!(
                uid,
                window,
                "update computed on another base model; scored 0"
            );
        }
        _ => {
            Metrics::inc(&m.updates_bad);
            tracing::warn!(uid, window, error = %r, "rejected update");
        }
    }
}

/// Whether to recompute this update ([`Sampler`]); counts it against the window's budget.
fn sample(st: &mut EvaluatorState, ann: &UpdateAnnouncement) -> bool {
    let standing = st
        .scores
        .get(&ann.uid)
        .map_or(Standing::default(), |e| Standing {
            last_recomputed: e.last_recomputed,
            last_score: e.last,
        });
    let miners = st
        .ctx
        .metagraph()
        .map_or(0, |mg| mg.neurons.len().saturating_sub(1));
    let started = st.recomputes.entry(ann.window).or_default();
    let yes = st
        .sampler
        .recompute(ann.uid, ann.window, standing, miners, *started);
    if yes {
        *started += 1;
    }
    while st.recomputes.len() > 4 {
        st.recomputes.pop_first();
    }
    yes
}

fn spawn_eval(
    myself: &ActorRef<EvaluatorMsg>,
    st: &EvaluatorState,
    base: ModelSnapshot,
    ann: UpdateAnnouncement,
    from: PeerId,
    recompute: bool,
) {
    let ctx = Arc::clone(&st.ctx);
    let mechanism = Arc::clone(&st.mechanism);
    let permits = Arc::clone(&st.permits);
    let (controls, residuals) = (Arc::clone(&st.controls), Arc::clone(&st.residuals));
    let seq = st.started;
    let me = myself.clone();
    tokio::spawn(async move {
        let (window, uid) = (ann.window, ann.uid);
        let _permit = permits.acquire_owned().await;
        // An absurd announced size is refused before anything is fetched.
        let max = crate::windowed::max_update_bytes(base.params.num_params());
        let fetched = if ann.size > max {
            Err(Rejection::new(
                crate::windowed::SIZE,
                format!(
                    "announced {} bytes, more than any update of this model needs ({max}); not fetched",
                    ann.size
                ),
            ))
        } else {
            fetch_blob(&ctx, ann.update, Some(from), false)
                .await
                .map_err(|e| Rejection::new(FETCHABLE, e))
        };
        let outcome = match fetched {
            Err(rejection) => Outcome::Rejected {
                rejection,
                sync: None,
            },
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
                let window_hash = match &proof {
                    SyncProof::Fetched(seed, _) => Some(*seed),
                    SyncProof::Unknown(_) => None,
                };
                let candidate = Candidate {
                    ctx: Arc::clone(&ctx),
                    window_hash,
                    ann,
                    base: Arc::clone(&base.params),
                    bytes,
                    proof,
                    controls,
                    residuals,
                    update: None,
                    own: None,
                    control: None,
                    sync: None,
                    parts: None,
                };
                tokio::task::spawn_blocking(move || {
                    score_update(&mechanism, candidate, seq, recompute)
                })
                .await
                .unwrap_or_else(|e| Outcome::Rejected {
                    rejection: Rejection::new("evaluation", join_err(e)),
                    sync: None,
                })
            }
        };
        let _ = me.cast(EvaluatorMsg::Evaluated {
            window,
            uid,
            outcome,
        });
    });
}

/// Runs the mechanism's checks and score; an admitted update's bytes are stored (followers
/// and the aggregation need them).
fn score_update(mechanism: &Windowed, mut c: Candidate, seq: u64, recompute: bool) -> Outcome {
    if !recompute {
        // Sampled out: only the checks before the recompute.
        for check in mechanism.checks() {
            if check.name() == crate::windowed::RECOMPUTES {
                break;
            }
            if let Err(rejection) = check.check(&mut c) {
                let sync = (rejection.check == crate::windowed::IN_SYNC)
                    .then_some(c.sync)
                    .flatten();
                return Outcome::Rejected { rejection, sync };
            }
        }
        return Outcome::Unscored {
            sync: c.sync.unwrap_or(SyncStatus::Unchecked),
        };
    }
    match mechanism.evaluate(&mut c) {
        Err(rejection) => {
            let sync = (rejection.check == crate::windowed::IN_SYNC)
                .then_some(c.sync)
                .flatten();
            Outcome::Rejected { rejection, sync }
        }
        Ok(score) => {
            tracing::debug!(uid = c.ann.uid, window = c.ann.window, parts = ?c.parts, "scored");
            if let Err(e) = c.ctx.store.put_blob_verified(c.ann.update, &c.bytes) {
                return Outcome::Rejected {
                    rejection: Rejection::new("stored", e),
                    sync: None,
                };
            }
            match (c.update, c.parts) {
                (Some(u), Some(parts)) => Outcome::Scored {
                    score,
                    parts,
                    seq,
                    update: Arc::new(u),
                    id: c.ann.update,
                    pin: Some(c.ctx.store.pin(c.ann.update)),
                    sync: c.sync.unwrap_or(SyncStatus::Unchecked),
                },
                _ => Outcome::Rejected {
                    rejection: Rejection::new("score", "no decoded update or score parts"),
                    sync: None,
                },
            }
        }
    }
}

/// Closes `window` (the core does this once per window): scores every miner, smooths,
/// persists, announces; keeps the accepted updates when the core will ask to aggregate them.
fn finalize(st: &mut EvaluatorState, window: u64, wrong_base: &[u16], aggregate: bool) {
    let mut results = st.results.remove(&window).unwrap_or_default();
    for (uid, rejection) in near_duplicates(&results, st.ctx.cfg.validator.duplicate_cosine) {
        count_rejection(&st.ctx, window, uid, &rejection);
        results.insert(
            uid,
            Outcome::Rejected {
                rejection,
                sync: None,
            },
        );
    }
    st.results.retain(|w, _| *w > window);
    st.closed_counts.insert(window, results.len());
    while st.closed_counts.len() > 64 {
        st.closed_counts.pop_first();
    }
    st.last_closed = Some(st.last_closed.map_or(window, |c| c.max(window)));
    let ctx = Arc::clone(&st.ctx);
    let c = &ctx.cfg;
    for uid in wrong_base {
        ctx.rejections.count(BASE_MODEL);
        Metrics::inc(&ctx.metrics.updates_wrong_base);
        tracing::warn!(
            uid,
            window,
            "update computed on another base model; scored 0"
        );
    }
    let Some(mg) = ctx.metagraph() else { return };
    let me = ctx.hotkey.id();
    let alpha = c.validator.ema_alpha;
    let mut report = Vec::new();
    // Every miner's score of this window is written in one synced batch: after a crash the
    // scores are all of this window or all of the previous one.
    let mut batch = ctx.store.batch();
    // Miners are neurons without a permit, or that submitted updates: on subtensor every
    // neuron holds a permit while the subnet has fewer neurons than validator slots.
    let miners: Vec<_> = mg
        .neurons
        .iter()
        .filter(|n| {
            n.hotkey != me
                && (!n.validator_permit
                    || results.contains_key(&n.uid)
                    || st.scores.contains_key(&n.uid))
        })
        .collect();
    for n in miners {
        let prev = st.scores.get(&n.uid);
        let prev_ema = prev.map_or(0.0, |e| e.ema);
        let smooth = |s: f32| alpha * f64::from(s.max(0.0)) + (1.0 - alpha) * prev_ema;
        let windows = prev.map_or(0, |e| e.windows) + 1;
        let recomputed = prev.map_or(0, |e| e.recomputed);
        let (s, ema, sync, parts, reason, recomputed, last_recomputed) =
            match results.get(&n.uid) {
                Some(Outcome::Scored {
                    score, sync, parts, ..
                }) => (
                    *score,
                    smooth(*score),
                    Some(*sync),
                    Some(*parts),
                    None,
                    recomputed + 1,
                    Some(window),
                ),
                Some(Outcome::Unscored { sync }) => (
                    prev.map_or(0.0, |e| e.last),
                    prev_ema,
                    Some(*sync),
                    prev.and_then(|e| e.parts),
                    Some("not recomputed this window (the recompute budget went to others); smoothed score kept".into()),
                    recomputed,
                    prev.and_then(|e| e.last_recomputed),
                ),
                Some(Outcome::Rejected { sync, rejection }) => (
                    0.0,
                    smooth(0.0),
                    *sync,
                    None,
                    Some(rejection.to_string()),
                    recomputed + 1,
                    Some(window),
                ),
                None if wrong_base.contains(&n.uid) => (
                    0.0,
                    smooth(0.0),
                    None,
                    None,
                    Some(format!("{BASE_MODEL}: computed on another model")),
                    recomputed,
                    prev.and_then(|e| e.last_recomputed),
                ),
                None => (
                    0.0,
                    smooth(0.0),
                    None,
                    None,
                    Some("nothing received in time".into()),
                    recomputed,
                    prev.and_then(|e| e.last_recomputed),
                ),
            };
        let entry = ScoreEntry {
            uid: n.uid,
            ema,
            last: s,
            window,
            sync,
            parts,
            reason,
            windows,
            recomputed,
            last_recomputed,
        };
        if let Err(e) = batch.put(Column::Scores, &n.uid.to_be_bytes(), &entry) {
            tracing::error!(error = %e, uid = n.uid, "could not encode a score");
        }
        st.scores.insert(n.uid, entry);
        report.push((n.uid, s, ema));
    }
    // The window's scores for the dashboard's history, and the oldest kept one dropped.
    if let Err(e) = batch.put(Column::ScoreHistory, &u64_key(window), &report) {
        tracing::error!(error = %e, window, "could not encode the window's score history");
    }
    if let Some(old) = window.checked_sub(apiary_storage::SCORE_HISTORY_KEPT) {
        batch.delete(Column::ScoreHistory, &u64_key(old));
    }
    if let Err(e) = ctx.store.write(batch) {
        tracing::error!(error = %e, window, "could not persist the window's scores");
    }
    let accepted: Vec<(u16, ContentId, Arc<Update>)> = results
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
    let pins: Vec<Pin> = results
        .values()
        .filter_map(|o| match o {
            Outcome::Scored {
                score,
                pin: Some(p),
                ..
            } if f64::from(*score) >= c.validator.min_score => Some(p.clone()),
            _ => None,
        })
        .collect();
    let sampled_out = results
        .values()
        .filter(|o| matches!(o, Outcome::Unscored { .. }))
        .count();
    tracing::info!(
        window,
        accepted = accepted.len(),
        checked_in_full = results.len() - sampled_out,
        sampled_out,
        scores = ?report,
        "window closed"
    );
    ctx.emit(NodeEvent::WindowClosed {
        window,
        scores: report.clone(),
        accepted: accepted.len(),
    });
    // Only the lead validator writes the record everyone follows; the core says if we lead.
    if aggregate {
        st.jobs.insert(
            window,
            AggregationJob {
                pins,
                window,
                scores: report.iter().map(|(u, s, _)| (*u, *s)).collect(),
                accepted,
            },
        );
        // The core asks for each right after the close or the running aggregation; anything
        // older is left from a restart of the core and will not be asked for.
        while st.jobs.len() > 4 {
            st.jobs.pop_first();
        }
    }
}

/// The updates of one window that copy another: of each pair whose cosine is at least
/// `threshold`, the one less like its own recompute (or, if equally, the later evaluated)
/// is refused as `near_duplicate`. Honest miners' updates are far less alike (0.3–0.65).
fn near_duplicates(results: &BTreeMap<u16, Outcome>, threshold: f64) -> Vec<(u16, Rejection)> {
    let scored: Vec<(u16, f32, u64, &Update)> = results
        .iter()
        .filter_map(|(uid, o)| match o {
            Outcome::Scored {
                parts, seq, update, ..
            } => Some((*uid, parts.fidelity, *seq, update.as_ref())),
            _ => None,
        })
        .collect();
    let mut out: Vec<(u16, Rejection)> = Vec::new();
    for (i, a) in scored.iter().enumerate() {
        for b in &scored[i + 1..] {
            let Ok(cos) = apiary_model::cosine(a.3, b.3) else {
                continue;
            };
            if f64::from(cos) < threshold {
                continue;
            }
            // The original is the one its own recompute vouches for; on a tie, the earlier.
            let (keep, lose) = if (b.1, std::cmp::Reverse(b.2)) > (a.1, std::cmp::Reverse(a.2)) {
                (b, a)
            } else {
                (a, b)
            };
            if !out.iter().any(|(u, _)| *u == lose.0) {
                out.push((
                    lose.0,
                    Rejection::new(
                        crate::windowed::NEAR_DUPLICATE,
                        format!(
                            "cosine {cos:.3} with uid {}'s update of this window",
                            keep.0
                        ),
                    ),
                ));
            }
        }
    }
    out
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
        st.core.report(Event::Aggregated(job.window));
        return;
    };
    let ctx = Arc::clone(&st.ctx);
    let me_ref = myself.clone();
    let AggregationJob {
        pins,
        window,
        scores,
        accepted,
    } = job;
    tokio::spawn(async move {
        let ctx2 = Arc::clone(&ctx);
        let res = tokio::task::spawn_blocking(
            move || -> Result<(WindowRecord, ModelSnapshot), WorkError> {
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
        // The accepted updates, the model and the outer state stay pinned until the next
        // record is built (this node's trainer pins them again while it applies the record).
        let res = res.map(|(rec, snap)| {
            let mut pins = pins;
            pins.push(ctx.store.pin(rec.model));
            pins.push(ctx.store.pin(rec.outer_state));
            (rec, snap, pins)
        });
        let _ = me_ref.cast(EvaluatorMsg::Aggregated(window, Box::new(res)));
    });
}

/// Gossips a record and hands it to this node's core (the lead applies its own record too).
async fn publish_record(ctx: &Arc<NodeContext>, core: &CoreHandle, rec: WindowRecord) {
    let payload = GossipMsg::Record(rec.clone()).encode();
    if let Err(e) = ctx.net.publish(payload).await {
        tracing::warn!(error = %e, window = rec.window, "could not gossip the window record");
    }
    core.report(Event::RecordReceived { rec, from: None });
}

/// Typed front of the evaluator.
#[derive(Clone)]
pub struct EvaluatorHandle(pub Slot<EvaluatorMsg>);

impl EvaluatorHandle {
    /// Asks for an update to be evaluated.
    pub fn evaluate(&self, ann: UpdateAnnouncement, from: PeerId) -> Result<(), ActorError> {
        self.0.cast(EvaluatorMsg::Evaluate(Box::new(ann), from))
    }
    /// Asks for a window to be closed.
    pub fn close(
        &self,
        window: u64,
        wrong_base: Vec<u16>,
        aggregate: bool,
    ) -> Result<(), ActorError> {
        self.0.cast(EvaluatorMsg::Close {
            window,
            wrong_base,
            aggregate,
        })
    }
    /// Asks for a closed window to be aggregated.
    pub fn aggregate(&self, window: u64) -> Result<(), ActorError> {
        self.0.cast(EvaluatorMsg::Aggregate(window))
    }
    /// How many updates of `window` have been scored.
    pub async fn scored_in(&self, window: u64) -> Result<usize, ActorError> {
        ractor::call_t!(self.0.get()?, EvaluatorMsg::Scored, 10_000, window)
            .map_err(|e| self.0.call_err(e))
    }
    /// Smoothed scores by uid.
    pub async fn scores(&self) -> Result<Vec<ScoreEntry>, ActorError> {
        ractor::call_t!(self.0.get()?, EvaluatorMsg::Scores, 10_000).map_err(|e| self.0.call_err(e))
    }
    /// The latest window closed.
    pub async fn last_closed(&self) -> Result<Option<u64>, ActorError> {
        ractor::call_t!(self.0.get()?, EvaluatorMsg::LastClosed, 10_000)
            .map_err(|e| self.0.call_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_config::ModelConfig;

    fn small() -> ModelConfig {
        ModelConfig {
            d_model: 16,
            n_layers: 1,
            n_heads: 2,
            d_ff: 32,
            seq_len: 8,
            ..ModelConfig::default()
        }
    }

    fn scored(update: Update, fidelity: f32, seq: u64) -> Outcome {
        let parts = crate::windowed::score_from(
            fidelity,
            0.0,
            0.0,
            1.0,
            crate::windowed::Calibration {
                full: 0.9,
                zero: 0.75,
            },
        );
        Outcome::Scored {
            score: parts.score,
            parts,
            seq,
            update: Arc::new(update),
            id: ContentId::of(&seq.to_le_bytes()),
            pin: None,
            sync: SyncStatus::InSync,
        }
    }

    fn plus(a: &Update, b: &Update, cfg: &ModelConfig) -> Update {
        let (va, vb) = (a.to_vecs().expect("vecs"), b.to_vecs().expect("vecs"));
        let sum = va
            .iter()
            .zip(&vb)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + q).collect())
            .collect();
        Update::from_vecs(cfg, sum).expect("update")
    }

    #[test]
    fn near_duplicates_lose_to_the_update_its_recompute_vouches_for() {
        let cfg = small();
        let a = Update::random_like(&cfg, 1, 1.0).expect("a");
        // a + 1 % noise: cosine ≈ 0.9999 with a.
        let b = plus(&a, &Update::random_like(&cfg, 2, 0.01).expect("n"), &cfg);
        let c = Update::random_like(&cfg, 3, 1.0).expect("c");
        assert!(apiary_model::cosine(&a, &b).expect("cos") > 0.99);
        assert!(apiary_model::cosine(&a, &c).expect("cos").abs() < 0.2);
        // The copy (uid 2) was observed first, but only uid 1's recompute matches.
        let results = BTreeMap::from([
            (1, scored(a.clone(), 1.0, 5)),
            (2, scored(b.clone(), 0.4, 1)),
            (3, scored(c, 0.9, 2)),
        ]);
        let dups = near_duplicates(&results, 0.95);
        assert_eq!(dups.len(), 1, "{dups:?}");
        assert_eq!(dups[0].0, 2);
        assert_eq!(dups[0].1.check, crate::windowed::NEAR_DUPLICATE);
        assert!(dups[0].1.reason.contains("uid 1"), "{dups:?}");
        // Equally faithful: the later observed loses.
        let results = BTreeMap::from([(1, scored(a, 1.0, 5)), (2, scored(b, 1.0, 1))]);
        let dups = near_duplicates(&results, 0.95);
        assert_eq!(dups.iter().map(|d| d.0).collect::<Vec<_>>(), vec![1]);
        // Nothing alike: nothing refused.
        assert!(near_duplicates(&BTreeMap::new(), 0.95).is_empty());
    }
}
