//! Trainer: owns the node's model; applies window records; on miners, trains each window.
//!
//! Every node runs one. The model is a checkpoint blob in the store (its content id is the
//! model hash) plus, per applied window, a record in the `windows` column; on start the trainer
//! resumes from the latest one (or the deterministic genesis model).
//!
//! Applying a [`WindowRecord`]: if it builds on our model, fetch the accepted update blobs that
//! we lack from peers, aggregate them in uid order off the runtime and check that the result
//! hashes to the record's model id; otherwise (we missed windows, or our result differs) fetch
//! the record's checkpoint by id and adopt it: a late joiner catches up in one verified download.
//!
//! Training (miners): when the node core says so ([`crate::window`] decides when: window `w`
//! started and the model for `w` is in, or half the window has passed), compute the update on
//! this uid's pages for `w` in `spawn_blocking`, store it with its sync proof (the
//! [`crate::sync`] slice of the model it trained from, seeded by the hash of `w`'s first
//! block), and announce both on gossip. Proofs older than [`SYNC_PROOFS_KEPT`] windows are
//! deleted from the store.
//!
//! The trainer is the node's one **model keeper**: the evaluator asks it for the model
//! ([`TrainerHandle::snapshot`]). It reports to the core what it holds at start
//! ([`Event::ModelAt`]), each record applied or refused, and each window trained.

use crate::blobs::{download_blob, fetch_blob};
use crate::context::{Metrics, NodeContext, NodeEvent};
use crate::handle::{CoreHandle, Slot};
use crate::protocol::{GossipMsg, UpdateAnnouncement, WindowRecord};
use crate::updates;
use crate::window::Event;
use crate::{join_err, ActorError, WorkError};
use apiary_model::{OuterState, Params};
use apiary_net::PeerId;
use apiary_storage::{u64_key, Column, ContentId, Pin};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What the trainer persists per applied window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedWindow {
    /// The window.
    pub window: u64,
    /// Model before.
    pub base_model: ContentId,
    /// Model after (checkpoint blob id).
    pub model: ContentId,
    /// Outer optimizer state after (blob id).
    pub outer_state: ContentId,
    /// Accepted updates `(uid, id)`.
    pub accepted: Vec<(u16, ContentId)>,
    /// Held-out loss of `model`.
    pub held_out_loss: f32,
    /// True when the checkpoint was downloaded instead of aggregated.
    pub caught_up: bool,
}

/// The trainer's status.
#[derive(Debug, Clone, Serialize)]
pub struct TrainerStatus {
    /// Current model id.
    pub model: ContentId,
    /// Window whose record produced it (None: genesis).
    pub model_window: Option<u64>,
    /// Last training loss.
    pub last_loss: Option<f32>,
    /// Held-out loss of the current model.
    pub held_out_loss: f32,
}

/// A snapshot of the model for evaluation.
#[derive(Clone)]
pub struct ModelSnapshot {
    /// Parameters.
    pub params: Arc<Params>,
    /// Their id.
    pub id: ContentId,
    /// Window whose record produced them.
    pub window: Option<u64>,
    /// The outer optimizer state that goes with them.
    pub outer: Arc<OuterState>,
    /// Its id.
    pub outer_id: ContentId,
}

/// Messages of the trainer.
pub enum TrainerMsg {
    /// Train for a window now (the core decided it is time).
    Train(u64),
    /// A window record to apply, with the peer it came from.
    ApplyRecord(Box<WindowRecord>, Option<PeerId>),
    /// Result of applying the record of a window (off-runtime work finished).
    RecordApplied(u64, Box<Result<Applied, WorkError>>),
    /// Result of training for a window (off-runtime work finished).
    UpdateComputed(u64, Box<Result<Computed, WorkError>>),
    /// Query: status.
    Status(RpcReplyPort<TrainerStatus>),
    /// Query: the current model.
    Snapshot(RpcReplyPort<ModelSnapshot>),
    /// Fault injection for supervision tests: panic inside the actor.
    Panic,
}

impl std::fmt::Debug for TrainerMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            TrainerMsg::Train(_) => "Train",
            TrainerMsg::ApplyRecord(..) => "ApplyRecord",
            TrainerMsg::RecordApplied(..) => "RecordApplied",
            TrainerMsg::UpdateComputed(..) => "UpdateComputed",
            TrainerMsg::Status(_) => "Status",
            TrainerMsg::Snapshot(_) => "Snapshot",
            TrainerMsg::Panic => "Panic",
        };
        f.write_str(s)
    }
}

/// A record applied off the runtime.
pub struct Applied {
    /// The record's model, outer state and accepted updates, pinned until its `windows` record
    /// is written.
    pins: Vec<Pin>,
    record: WindowRecord,
    params: Arc<Params>,
    outer: Arc<OuterState>,
    held_out_loss: f32,
    caught_up: bool,
}

/// An update computed off the runtime.
pub struct Computed {
    pub(crate) base: ContentId,
    pub(crate) bytes: Vec<u8>,
    pub(crate) loss: f32,
    /// The encoded sync proof, if one could be made.
    pub(crate) sync_proof: Option<Vec<u8>>,
    /// Store (and so serve) the update's blob; false only for the adversary kit's
    /// `never-serve`, which announces an id it never serves.
    pub(crate) serve: bool,
    /// The author the blob names ([`updates::seal`]): `None` for this miner (always, but for
    /// the adversary kit's copies of other miners' blobs).
    pub(crate) author: Option<updates::Author>,
}

/// Windows whose sync proofs a miner keeps serving (validators fetch a proof while its window
/// is open, or soon after it closes).
pub const SYNC_PROOFS_KEPT: u64 = 4;

/// The actor.
pub struct Trainer;

/// What the trainer is started with.
pub struct TrainerArgs {
    /// The node.
    pub ctx: Arc<NodeContext>,
    /// Where it reports.
    pub core: CoreHandle,
}

/// Its state.
pub struct TrainerState {
    ctx: Arc<NodeContext>,
    core: CoreHandle,
    params: Arc<Params>,
    model_id: ContentId,
    outer: Arc<OuterState>,
    outer_id: ContentId,
    model_window: Option<u64>,
    held_out_loss: f32,
    last_loss: Option<f32>,
    /// A training task is running (the core asks for one at a time; a second ask while one
    /// runs is refused at once rather than queued).
    training: bool,
    /// Wire encoder; holds the compression residual between windows (used by one training
    /// task at a time).
    encoder: Arc<std::sync::Mutex<updates::Encoder>>,
    /// Sync proofs this miner published, `(window, blob id)`, oldest first.
    sync_proofs: std::collections::VecDeque<(u64, ContentId)>,
    /// Pins of the current model and outer state (a sweep never deletes them, record or not).
    model_pins: [Pin; 2],
    /// Windows applied since start (the sweep cadence counts them).
    applied: u64,
    /// The cheat this miner plays (`train.adversary`), with what it remembers between windows.
    #[cfg(feature = "adversary")]
    adversary: Option<crate::adversary::Shared>,
}

impl Actor for Trainer {
    type Msg = TrainerMsg;
    type State = TrainerState;
    type Arguments = TrainerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        TrainerArgs { ctx, core }: TrainerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx2 = Arc::clone(&ctx);
        let Loaded {
            params,
            model_id,
            outer,
            outer_id,
            model_window,
            held_out_loss,
        } = tokio::task::spawn_blocking(move || load_model(&ctx2))
            .await
            .map_err(join_err)??;
        ctx.update_status(|s| {
            s.model_hash = Some(model_id.to_hex());
            s.model_window = model_window;
            s.held_out_loss = Some(held_out_loss);
        });
        tracing::info!(model = %model_id.short(), ?model_window, held_out_loss, "trainer ready");
        core.report(Event::ModelAt {
            window: model_window,
            model: model_id,
        });
        let encoder = updates::Encoder::new(&ctx.cfg).map_err(ActorProcessingErr::from)?;
        #[cfg(feature = "adversary")]
        let adversary = ctx
            .cfg
            .train
            .adversary
            .map(crate::adversary::Adversary::shared);
        let model_pins = [ctx.store.pin(model_id), ctx.store.pin(outer_id)];
        Ok(TrainerState {
            model_pins,
            applied: 0,
            encoder: Arc::new(std::sync::Mutex::new(encoder)),
            ctx,
            core,
            params: Arc::new(params),
            model_id,
            outer: Arc::new(outer),
            outer_id,
            model_window,
            held_out_loss,
            last_loss: None,
            training: false,
            sync_proofs: std::collections::VecDeque::new(),
            #[cfg(feature = "adversary")]
            adversary,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TrainerMsg::Train(w) => {
                if st.training {
                    tracing::warn!(window = w, "asked to train while training; skipping");
                    st.core.report(Event::Trained {
                        window: w,
                        published: None,
                    });
                } else {
                    start_training(&myself, st, w);
                }
            }
            TrainerMsg::ApplyRecord(rec, from) => {
                let w = rec.window;
                if st.model_window.is_some_and(|mw| w <= mw) {
                    st.core.report(Event::RecordFailed(w));
                    return Ok(());
                }
                let ours = ContentId(st.ctx.dataset.hash());
                if rec.dataset != ours {
                    Metrics::inc(&st.ctx.metrics.dataset_mismatch);
                    tracing::error!(
                        window = w,
                        lead = %rec.dataset.short(),
                        ours = %ours.short(),
                        "this node's dataset differs from the lead validator's: its updates will \
                         score near zero; use the subnet's train.data, train.tokenizer and \
                         model.seq_len"
                    );
                }
                start_apply(&myself, st, *rec, from);
            }
            TrainerMsg::RecordApplied(w, res) => match *res {
                Ok(a) => {
                    let model = a.record.model;
                    let sweep = on_applied(st, a);
                    st.core.report(Event::RecordApplied { window: w, model });
                    if let Some(reclaim) = sweep {
                        sweep_blobs(&st.ctx, reclaim).await;
                    }
                }
                Err(e) => {
                    Metrics::inc(&st.ctx.metrics.records_rejected);
                    tracing::warn!(window = w, error = %e, "could not apply a window record");
                    st.core.report(Event::RecordFailed(w));
                }
            },
            TrainerMsg::UpdateComputed(w, res) => {
                st.training = false;
                let published = match *res {
                    Ok(c) => publish_update(st, w, c).await,
                    Err(e) => {
                        tracing::error!(window = w, error = %e, "training failed");
                        None
                    }
                };
                st.core.report(Event::Trained {
                    window: w,
                    published,
                });
            }
            TrainerMsg::Status(reply) => {
                let _ = reply.send(TrainerStatus {
                    model: st.model_id,
                    model_window: st.model_window,
                    last_loss: st.last_loss,
                    held_out_loss: st.held_out_loss,
                });
            }
            TrainerMsg::Snapshot(reply) => {
                let _ = reply.send(ModelSnapshot {
                    params: Arc::clone(&st.params),
                    id: st.model_id,
                    window: st.model_window,
                    outer: Arc::clone(&st.outer),
                    outer_id: st.outer_id,
                });
            }
            TrainerMsg::Panic => panic!("trainer fault injected by request"),
        }
        Ok(())
    }
}

/// The model a trainer starts from.
struct Loaded {
    params: Params,
    model_id: ContentId,
    outer: OuterState,
    outer_id: ContentId,
    model_window: Option<u64>,
    held_out_loss: f32,
}

/// Resumes from the latest applied window (model and outer state, both verified by id), or
/// from the deterministic genesis model.
fn load_model(ctx: &NodeContext) -> Result<Loaded, ActorProcessingErr> {
    let cfg = &ctx.cfg.model;
    if let Some((_, rec)) = ctx.store.last::<AppliedWindow>(Column::Windows)? {
        let model = ctx.store.get_blob(rec.model);
        let outer = ctx.store.get_blob(rec.outer_state);
        match (model, outer) {
            (Ok(Some(m)), Ok(Some(o))) => {
                return Ok(Loaded {
                    params: Params::from_bytes(cfg, &m)?,
                    model_id: rec.model,
                    outer: OuterState::from_bytes(cfg, &o)?,
                    outer_id: rec.outer_state,
                    model_window: Some(rec.window),
                    held_out_loss: rec.held_out_loss,
                });
            }
            (Ok(_), Ok(_)) => tracing::warn!(
                window = rec.window,
                "checkpoint missing; starting from genesis (peers' records will catch us up)"
            ),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "checkpoint unreadable; starting from genesis")
            }
        }
    }
    let p = genesis(cfg)?;
    let model_id = ctx.store.put_blob(&p.to_bytes()?)?;
    let outer = OuterState::new();
    let outer_id = ctx.store.put_blob(&outer.to_bytes(cfg)?)?;
    let loss = apiary_model::eval_loss(cfg, &p, &ctx.held_out_pages()?)?;
    Ok(Loaded {
        params: p,
        model_id,
        outer,
        outer_id,
        model_window: None,
        held_out_loss: loss,
    })
}

/// The subnet's starting model: a Hugging Face checkpoint (`model.init_from`) whose shapes match
/// `[model]`, or the deterministic initialization from `model.init_seed`.
fn genesis(cfg: &apiary_config::ModelConfig) -> Result<Params, ActorProcessingErr> {
    let Some(dir) = &cfg.init_from else {
        return Ok(Params::init(cfg)?);
    };
    let (hf, params) = apiary_model::load_hf_dir(dir)?;
    let shape =
        |c: &apiary_config::ModelConfig| (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.d_ff);
    if shape(&hf) != shape(cfg) {
        return Err(format!(
            "model.init_from {} has (vocab_size, d_model, n_layers, n_heads, d_ff) = {:?} but \
             [model] says {:?}; make [model] match the checkpoint's config.json",
            dir.display(),
            shape(&hf),
            shape(cfg)
        )
        .into());
    }
    tracing::info!(from = %dir.display(), "genesis model loaded from a Hugging Face checkpoint");
    Ok(params)
}

/// Trains for window `w` from the current model off the runtime; the result comes back as
/// [`TrainerMsg::UpdateComputed`].
fn start_training(myself: &ActorRef<TrainerMsg>, st: &mut TrainerState, w: u64) {
    let ctx = &st.ctx;
    let Some(uid) = ctx.uid() else {
        tracing::warn!(window = w, "not registered (no uid); not training");
        st.core.report(Event::Trained {
            window: w,
            published: None,
        });
        return;
    };
    st.training = true;
    let ctx2 = Arc::clone(ctx);
    let params = Arc::clone(&st.params);
    let base = st.model_id;
    let encoder = Arc::clone(&st.encoder);
    #[cfg(feature = "adversary")]
    let adversary = st.adversary.clone();
    #[cfg(feature = "adversary")]
    if let Some(a) = &adversary {
        crate::adversary::note_model(a, base, &params);
    }
    let me = myself.clone();
    tokio::spawn(async move {
        let seed = ctx2.window_seed(w).await;
        let job = Job {
            ctx: ctx2,
            params,
            base,
            uid,
            window: w,
            seed,
            encoder,
        };
        #[cfg(feature = "adversary")]
        if let Some(a) = adversary {
            let res = crate::adversary::train(a, job).await;
            let _ = me.cast(TrainerMsg::UpdateComputed(w, Box::new(res)));
            return;
        }
        let res = tokio::task::spawn_blocking(move || job.honest())
            .await
            .unwrap_or_else(|e| Err(join_err(e)));
        let _ = me.cast(TrainerMsg::UpdateComputed(w, Box::new(res)));
    });
}

/// One window's training: what the honest path (and the adversary kit) computes from.
pub(crate) struct Job {
    /// The node.
    pub(crate) ctx: Arc<NodeContext>,
    /// The current model.
    pub(crate) params: Arc<Params>,
    /// Its id.
    pub(crate) base: ContentId,
    /// This miner's uid.
    pub(crate) uid: u16,
    /// The window.
    pub(crate) window: u64,
    /// The hash of the window's first block, or why it is unknown.
    pub(crate) seed: Result<[u8; 32], String>,
    /// The miner's wire encoder.
    pub(crate) encoder: Arc<std::sync::Mutex<updates::Encoder>>,
}

impl Job {
    /// The sync proof of the current model (a slice taken before training), if one can be made.
    pub(crate) fn sync_proof(&self) -> Option<Vec<u8>> {
        let w = self.window;
        match &self.seed {
            Ok(seed) => match crate::sync::make_proof(&self.ctx.cfg, &self.params, seed) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(window = w, error = %e, "could not make the sync proof; validators will reject this update");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(window = w, error = %e, "no seed for the sync proof; validators will reject this update");
                None
            }
        }
    }

    /// The pages this miner owes work on in `window` (whose first block hashes to `hash`).
    pub(crate) fn pages_of(
        &self,
        window: u64,
        hash: &[u8; 32],
    ) -> Result<Vec<Vec<u32>>, WorkError> {
        Ok(self.ctx.window_pages(self.uid, window, hash)?)
    }

    /// The hash of this window's first block, or why there is none.
    pub(crate) fn hash(&self) -> Result<&[u8; 32], WorkError> {
        self.seed.as_ref().map_err(|e| {
            WorkError::Compute(format!(
                "the window's first block hash is unknown, and with it the window's pages: {e}"
            ))
        })
    }

    /// The honest update of this window (noise for a `train.lazy` miner), with its loss.
    pub(crate) fn honest_update(&self) -> Result<(apiary_model::Update, f32), WorkError> {
        let c = &self.ctx.cfg;
        if c.train.lazy {
            let seed = self.window ^ u64::from(self.uid) << 32;
            return Ok((
                apiary_model::Update::random_like(&c.model, seed, 0.01)
                    .map_err(|e| e.to_string())?,
                f32::NAN,
            ));
        }
        let pages = self.pages_of(self.window, self.hash()?)?;
        Ok(updates::compute(c, &self.params, &pages)?)
    }

    /// Wire bytes of `update` through the miner's encoder (compression residual included,
    /// cleared at the windows the subnet says).
    pub(crate) fn encode(&self, update: &apiary_model::Update) -> Result<Vec<u8>, WorkError> {
        Ok(self
            .encoder
            .lock()
            .map_err(|_| "update encoder poisoned by an earlier panic".to_string())?
            .encode_window(&self.ctx.cfg, self.window, update)?)
    }

    /// Honest work: the sync proof, the update on this window's pages, encoded.
    fn honest(self) -> Result<Computed, WorkError> {
        // The proof is a slice of the model we train from, taken before training.
        let sync_proof = self.sync_proof();
        let (update, loss) = self.honest_update()?;
        let bytes = self.encode(&update)?;
        Ok(Computed {
            base: self.base,
            bytes,
            loss,
            sync_proof,
            serve: true,
            author: None,
        })
    }
}

/// Stores and announces a computed update; the announcement, if it went out.
async fn publish_update(
    st: &mut TrainerState,
    window: u64,
    c: Computed,
) -> Option<UpdateAnnouncement> {
    let ctx = &st.ctx;
    let uid = ctx.uid()?;
    // The blob names its author (see `updates::Author`): whoever else computes these tensors
    // gets another id.
    let author = c.author.unwrap_or(updates::Author {
        netuid: ctx.cfg.chain.netuid,
        window,
        uid,
    });
    let sealed = updates::seal(author, &c.bytes);
    let stored = if c.serve {
        ctx.store.put_blob(&sealed)
    } else {
        Ok(ContentId::of(&sealed))
    };
    let id = match stored {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "could not store our update");
            return None;
        }
    };
    if c.loss.is_finite() {
        st.last_loss = Some(c.loss);
        ctx.update_status(|s| s.last_loss = Some(c.loss));
    }
    let sync_slice = match c.sync_proof.as_deref().map(|p| ctx.store.put_blob(p)) {
        Some(Ok(proof)) => {
            remember_sync_proof(st, window, proof);
            Some(proof)
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "could not store our sync proof; validators will reject this update");
            None
        }
        None => None,
    };
    let ctx = &st.ctx;
    let ann = UpdateAnnouncement {
        netuid: ctx.cfg.chain.netuid,
        window,
        uid,
        base_model: c.base,
        update: id,
        size: sealed.len() as u64,
        loss: c.loss,
        sync_slice,
    };
    let payload = GossipMsg::Update(ann.clone()).encode();
    // The mesh may still be forming right after start: retry briefly.
    let mut attempt = 0;
    loop {
        match ctx.net.publish(payload.clone()).await {
            Ok(()) => break,
            Err(e) if attempt < 20 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "publish failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            // No peer subscribed yet: expected while a node starts or runs alone (admin status
            // shows its peers); anything else is worth a warning.
            Err(e @ apiary_net::NetError::NoPeers) => {
                tracing::info!(error = %e, window, "could not announce our update");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, window, "could not announce our update");
                return None;
            }
        }
    }
    Metrics::inc(&ctx.metrics.updates_published);
    tracing::info!(window, update = %id.short(), loss = c.loss, "update published");
    ctx.emit(NodeEvent::UpdatePublished {
        window,
        update: id,
        loss: c.loss,
    });
    Some(ann)
}

/// Records a published sync proof and deletes the proofs of windows more than
/// [`SYNC_PROOFS_KEPT`] before `window` (unless a kept window uses the same blob).
fn remember_sync_proof(st: &mut TrainerState, window: u64, proof: ContentId) {
    st.sync_proofs.push_back((window, proof));
    while let Some(&(w, id)) = st.sync_proofs.front() {
        if w + SYNC_PROOFS_KEPT > window {
            break;
        }
        st.sync_proofs.pop_front();
        if st.sync_proofs.iter().any(|(_, other)| *other == id) {
            continue;
        }
        if let Err(e) = st.ctx.store.delete_blob(id) {
            tracing::warn!(error = %e, window = w, "could not delete an old sync proof");
        }
    }
}

/// Applies a record off the runtime; the result comes back as [`TrainerMsg::RecordApplied`].
fn start_apply(
    myself: &ActorRef<TrainerMsg>,
    st: &mut TrainerState,
    rec: WindowRecord,
    from: Option<PeerId>,
) {
    let ctx = Arc::clone(&st.ctx);
    let base = Base {
        params: Arc::clone(&st.params),
        id: st.model_id,
        outer: Arc::clone(&st.outer),
    };
    let me = myself.clone();
    let w = rec.window;
    let pins: Vec<Pin> = [rec.model, rec.outer_state]
        .into_iter()
        .chain(rec.accepted.iter().map(|(_, id)| *id))
        .map(|id| ctx.store.pin(id))
        .collect();
    tokio::spawn(async move {
        let res = apply_record(&ctx, base, rec, from).await.map(|mut a| {
            a.pins = pins;
            a
        });
        let _ = me.cast(TrainerMsg::RecordApplied(w, Box::new(res)));
    });
}

/// The model a record is applied to.
struct Base {
    params: Arc<Params>,
    id: ContentId,
    outer: Arc<OuterState>,
}

async fn apply_record(
    ctx: &Arc<NodeContext>,
    base: Base,
    rec: WindowRecord,
    from: Option<PeerId>,
) -> Result<Applied, WorkError> {
    // The validator that made the record (and any node that already has it) loads it directly.
    let have_model = ctx.store.has_blob(rec.model).unwrap_or(false)
        && ctx.store.has_blob(rec.outer_state).unwrap_or(false);
    if rec.base_model == base.id && !have_model {
        let mut blobs = Vec::with_capacity(rec.accepted.len());
        for (_, id) in &rec.accepted {
            blobs.push(fetch_blob(ctx, *id, from, true).await?);
        }
        let ctx2 = Arc::clone(ctx);
        let rec2 = rec.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<Option<Applied>, WorkError> {
            let c = &ctx2.cfg;
            let mut updates = Vec::with_capacity(blobs.len());
            for ((uid, _), b) in rec2.accepted.iter().zip(&blobs) {
                let (author, wire) = updates::unseal(b)?;
                if author.uid != *uid || author.window != rec2.window {
                    return Err(format!(
                        "the record accepts uid {uid}'s update of window {}, but that blob is \
                         uid {}'s of window {}",
                        rec2.window, author.uid, author.window
                    )
                    .into());
                }
                updates.push(updates::decode(c, wire)?);
            }
            let (next, outer) = updates::outer_step(c, &base.params, &base.outer, &updates)?;
            let bytes = next.to_bytes().map_err(|e| e.to_string())?;
            let outer_bytes = outer.to_bytes(&c.model).map_err(|e| e.to_string())?;
            if ContentId::of(&bytes) != rec2.model
                || ContentId::of(&outer_bytes) != rec2.outer_state
            {
                return Ok(None);
            }
            ctx2.store.put_blob(&bytes).map_err(|e| e.to_string())?;
            ctx2.store
                .put_blob(&outer_bytes)
                .map_err(|e| e.to_string())?;
            let loss = apiary_model::eval_loss(&c.model, &next, &ctx2.held_out_pages()?)
                .map_err(|e| e.to_string())?;
            Ok(Some(Applied {
                pins: Vec::new(),
                record: rec2,
                params: Arc::new(next),
                outer: Arc::new(outer),
                held_out_loss: loss,
                caught_up: false,
            }))
        })
        .await
        .map_err(join_err)??;
        if let Some(a) = res {
            Metrics::inc(&ctx.metrics.records_applied);
            return Ok(a);
        }
        tracing::warn!(
            window = rec.window,
            "our aggregate differs from the record; downloading the checkpoint"
        );
    }
    // Catch up: download the checkpoint (model and outer state) by id, in verified ranges from
    // every peer that holds it (the record's publisher first), straight into the store.
    let hints: Vec<PeerId> = from.into_iter().collect();
    let (model, outer) = tokio::join!(
        download_blob(ctx, rec.model, &hints),
        download_blob(ctx, rec.outer_state, &hints)
    );
    model?;
    outer?;
    let ctx2 = Arc::clone(ctx);
    let applied = tokio::task::spawn_blocking(move || -> Result<Applied, WorkError> {
        let c = &ctx2.cfg;
        let read = |id: ContentId| -> Result<Vec<u8>, WorkError> {
            ctx2.store.get_blob(id)?.ok_or_else(|| {
                WorkError::Fetch(format!(
                    "checkpoint blob {} vanished after download",
                    id.short()
                ))
            })
        };
        let (bytes, outer_bytes) = (read(rec.model)?, read(rec.outer_state)?);
        let p = Params::from_bytes(&c.model, &bytes).map_err(|e| e.to_string())?;
        let outer = OuterState::from_bytes(&c.model, &outer_bytes).map_err(|e| e.to_string())?;
        let loss = apiary_model::eval_loss(&c.model, &p, &ctx2.held_out_pages()?)
            .map_err(|e| e.to_string())?;
        Ok(Applied {
            pins: Vec::new(),
            record: rec,
            params: Arc::new(p),
            outer: Arc::new(outer),
            held_out_loss: loss,
            caught_up: !have_model,
        })
    })
    .await
    .map_err(join_err)??;
    if applied.caught_up {
        Metrics::inc(&ctx.metrics.catchups);
    } else {
        Metrics::inc(&ctx.metrics.records_applied);
    }
    Ok(applied)
}

/// Persists an applied window: its record and the expiry of what it supersedes, in one synced
/// batch ([`crate::retention::expire`]); then moves the model pins, trims the allocator's
/// cache, and reports whether a blob sweep is due (`Some(reclaim)`).
fn on_applied(st: &mut TrainerState, a: Applied) -> Option<bool> {
    let ctx = &st.ctx;
    let rec = &a.record;
    let entry = AppliedWindow {
        window: rec.window,
        base_model: rec.base_model,
        model: rec.model,
        outer_state: rec.outer_state,
        accepted: rec.accepted.clone(),
        held_out_loss: a.held_out_loss,
        caught_up: a.caught_up,
    };
    if let Err(e) = persist_applied(ctx, &entry) {
        tracing::error!(error = %e, window = rec.window, "could not persist the applied window");
    }
    st.model_pins = [ctx.store.pin(rec.model), ctx.store.pin(rec.outer_state)];
    drop(a.pins);
    st.params = a.params;
    st.model_id = rec.model;
    st.outer = a.outer;
    st.outer_id = rec.outer_state;
    st.model_window = Some(rec.window);
    st.held_out_loss = a.held_out_loss;
    ctx.update_status(|s| {
        s.model_hash = Some(rec.model.to_hex());
        s.model_window = Some(rec.window);
        s.held_out_loss = Some(a.held_out_loss);
    });
    tracing::info!(window = rec.window, model = %rec.model.short(), accepted = rec.accepted.len(), held_out_loss = a.held_out_loss, caught_up = a.caught_up, "model advanced");
    ctx.emit(NodeEvent::ModelAdvanced {
        window: rec.window,
        model: rec.model,
        held_out_loss: a.held_out_loss,
        caught_up: a.caught_up,
    });
    // Applying a record decodes, aggregates and evaluates: large blocks freed now.
    apiary_alloc::trim();
    st.applied += 1;
    crate::retention::sweep_due(ctx, st.applied)
}

/// Writes the applied window's record and expires the records it supersedes (windows that are
/// no longer kept, old announcements and weight submissions) in one synced batch.
fn persist_applied(
    ctx: &NodeContext,
    entry: &AppliedWindow,
) -> Result<(), apiary_storage::StoreError> {
    let mut batch = ctx.store.batch();
    batch.put(Column::Windows, &u64_key(entry.window), entry)?;
    let mut records: Vec<AppliedWindow> = ctx
        .store
        .scan::<AppliedWindow>(Column::Windows)?
        .into_iter()
        .map(|(_, w)| w)
        .filter(|w| w.window != entry.window)
        .collect();
    records.push(entry.clone());
    records.sort_by_key(|w| w.window);
    crate::retention::expire(ctx, &mut batch, records, entry.window)?;
    ctx.store.write(batch)
}

/// Sweeps unreferenced blobs off the runtime (the trainer waits: no record is applied while
/// it runs).
async fn sweep_blobs(ctx: &Arc<NodeContext>, reclaim: bool) {
    let ctx2 = Arc::clone(ctx);
    let res = tokio::task::spawn_blocking(move || {
        let kept: Vec<(bool, AppliedWindow)> = {
            let all = ctx2.store.scan::<AppliedWindow>(Column::Windows)?;
            let c = &ctx2.cfg.checkpoint;
            let windows: Vec<u64> = all.iter().map(|(_, w)| w.window).collect();
            let flags =
                crate::retention::kept(&windows, c.keep_recent, c.every_windows, c.keep_periodic);
            let n = all.len();
            all.into_iter()
                .zip(flags)
                .enumerate()
                .filter(|(_, (_, k))| *k)
                .map(|(i, ((_, w), _))| (i + c.keep_recent >= n, w))
                .collect()
        };
        crate::retention::sweep(&ctx2, &kept, reclaim)
    })
    .await;
    match res {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "blob sweep failed"),
        Err(e) => tracing::warn!(error = %e, "blob sweep task failed"),
    }
}

/// Typed front of the trainer.
#[derive(Clone)]
pub struct TrainerHandle(pub Slot<TrainerMsg>);

impl TrainerHandle {
    /// The trainer's status.
    pub async fn status(&self) -> Result<TrainerStatus, ActorError> {
        ractor::call_t!(self.0.get()?, TrainerMsg::Status, 10_000).map_err(|e| self.0.call_err(e))
    }
    /// The current model.
    pub async fn snapshot(&self) -> Result<ModelSnapshot, ActorError> {
        ractor::call_t!(self.0.get()?, TrainerMsg::Snapshot, 10_000).map_err(|e| self.0.call_err(e))
    }
    /// Asks it to train for a window.
    pub fn train(&self, window: u64) -> Result<(), ActorError> {
        self.0.cast(TrainerMsg::Train(window))
    }
    /// Hands over a window record to apply.
    pub fn apply_record(&self, rec: WindowRecord, from: Option<PeerId>) -> Result<(), ActorError> {
        self.0.cast(TrainerMsg::ApplyRecord(Box::new(rec), from))
    }
    /// Fault injection: makes the trainer panic (the supervisor restarts it).
    pub fn inject_panic(&self) -> Result<(), ActorError> {
        self.0.cast(TrainerMsg::Panic)
    }
}
