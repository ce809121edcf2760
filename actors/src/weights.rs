//! Weight setter (validators): turns smoothed scores into u16 weights on the chain.
//!
//! Every `weights_every_windows` windows it reads the evaluator's scores, normalizes them the way
//! Bittensor does (largest = `u16::MAX`), submits `set_weights` signed by the hotkey, and records
//! every submission — window, block, tx hash or error — in the `weights` column.
//!
//! ## Retries
//! A submission that fails transiently (endpoint unreachable, transaction dropped) is retried on
//! the next block, and one refused by the rate limit is retried once the limit has passed (the
//! chain backend says how many blocks that is), at most [`MAX_ATTEMPTS`] times per window and
//! never past the next scheduled submission. Refusals that waiting does not fix (no permit, not
//! registered) are recorded and not retried. The backend itself never submits twice inside one
//! rate-limit period.
//!
//! ## Commit-reveal
//! When the subnet uses commit-reveal the backend commits a hash; at every window start the
//! setter asks it to reveal the commits whose reveal period has come.

use crate::context::{forward_events, slot_get, NodeContext, NodeEvent};
use crate::evaluator::EvaluatorHandle;
use crate::ActorError;
use apiary_chain::ChainError;
use apiary_storage::{u64_key, Column};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One weight submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightSubmission {
    /// Window that triggered it.
    pub window: u64,
    /// `(uid, weight)` submitted.
    pub weights: Vec<(u16, u16)>,
    /// Inclusion block.
    pub block: Option<u64>,
    /// Transaction hash.
    pub tx_hash: Option<String>,
    /// Error, if the chain refused it.
    pub error: Option<String>,
}

/// Submissions tried per window, first try included.
pub const MAX_ATTEMPTS: u32 = 4;

/// Messages of the weight setter.
#[derive(Debug)]
pub enum WeightSetterMsg {
    /// A window started: submit if it is time; reveal pending commits.
    WindowStarted(u64),
    /// A new block: retry a failed submission when its time has come.
    Block(u64),
    /// Query: the last submission.
    Last(RpcReplyPort<Option<WeightSubmission>>),
}

/// The actor.
pub struct WeightSetter;

/// Its state.
pub struct WeightSetterState {
    ctx: Arc<NodeContext>,
    last: Option<WeightSubmission>,
    retry: Option<Retry>,
}

/// A failed submission waiting for its next try.
#[derive(Debug, Clone, Copy)]
struct Retry {
    window: u64,
    at_block: u64,
    attempt: u32,
}

impl Actor for WeightSetter {
    type Msg = WeightSetterMsg;
    type State = WeightSetterState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let last = ctx
            .store
            .last::<WeightSubmission>(Column::Weights)?
            .map(|(_, v)| v);
        forward_events(&ctx, myself, |ev| match ev {
            NodeEvent::WindowStarted { window, .. } => Some(WeightSetterMsg::WindowStarted(window)),
            NodeEvent::Block(b) => Some(WeightSetterMsg::Block(b.number)),
            _ => None,
        });
        Ok(WeightSetterState {
            ctx,
            last,
            retry: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WeightSetterMsg::WindowStarted(w) => {
                reveal(&st.ctx).await;
                let every = st.ctx.cfg.validator.weights_every_windows;
                if w % every != 0 || st.last.as_ref().is_some_and(|l| l.window >= w) {
                    return Ok(());
                }
                st.retry = None;
                submit(st, w, 1).await;
            }
            WeightSetterMsg::Block(n) => {
                let Some(r) = st.retry else { return Ok(()) };
                if n < r.at_block {
                    return Ok(());
                }
                st.retry = None;
                let every = st.ctx.cfg.validator.weights_every_windows;
                let next_scheduled = (r.window / every + 1) * every;
                let window = apiary_chain::window_of(n, st.ctx.cfg.chain.blocks_per_window);
                if window >= next_scheduled {
                    return Ok(());
                }
                tracing::info!(
                    window = r.window,
                    attempt = r.attempt,
                    "retrying set_weights"
                );
                submit(st, r.window, r.attempt).await;
            }
            WeightSetterMsg::Last(reply) => {
                let _ = reply.send(st.last.clone());
            }
        }
        Ok(())
    }
}

/// Reveals pending commit-reveal commits, if the backend holds any.
async fn reveal(ctx: &Arc<NodeContext>) {
    if ctx.chain.pending_reveals(&ctx.hotkey.id()) == 0 {
        return;
    }
    match ctx.chain.reveal_pending(&ctx.hotkey).await {
        Ok(0) => tracing::debug!("weight commits not yet revealable"),
        Ok(n) => tracing::info!(revealed = n, "weight commits revealed"),
        Err(e) => {
            tracing::warn!(error = %e, "revealing weight commits failed; will retry next window")
        }
    }
}

/// When to try again after `err`, or `None` if waiting will not help.
fn retry_after(err: &ChainError, block: u64) -> Option<u64> {
    match err {
        ChainError::RateLimited { blocks_left, .. } => Some(block + (*blocks_left).max(1)),
        e if e.is_transient() => Some(block + 1),
        _ => None,
    }
}

async fn submit(st: &mut WeightSetterState, window: u64, attempt: u32) {
    let ctx = &st.ctx;
    let scores = match EvaluatorHandle(Arc::clone(ctx)).scores().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no scores; weights not set this window");
            return;
        }
    };
    let pairs: Vec<(u16, f64)> = scores.iter().map(|s| (s.uid, s.ema)).collect();
    let (uids, weights) = apiary_chain::normalize_weights(&pairs);
    if uids.is_empty() {
        return;
    }
    let res = ctx
        .chain
        .set_weights(
            ctx.cfg.chain.netuid,
            &ctx.hotkey,
            &uids,
            &weights,
            ctx.cfg.validator.version_key,
        )
        .await;
    let pairs: Vec<(u16, u16)> = uids.iter().copied().zip(weights.iter().copied()).collect();
    let sub = match &res {
        Ok(r) => WeightSubmission {
            window,
            weights: pairs.clone(),
            block: Some(r.block),
            tx_hash: Some(r.tx_hash.clone()),
            error: None,
        },
        Err(e) => WeightSubmission {
            window,
            weights: pairs.clone(),
            block: None,
            tx_hash: None,
            error: Some(e.to_string()),
        },
    };
    match &res {
        Ok(r) => tracing::info!(window, block = r.block, weights = ?pairs, "weights set"),
        Err(e) => {
            let block = ctx.status().block;
            match retry_after(e, block).filter(|_| attempt < MAX_ATTEMPTS) {
                Some(at_block) => {
                    tracing::warn!(window, attempt, error = %e, retry_at_block = at_block, "set_weights failed; will retry");
                    st.retry = Some(Retry {
                        window,
                        at_block,
                        attempt: attempt + 1,
                    });
                }
                None => tracing::warn!(window, attempt, error = %e, "set_weights refused"),
            }
        }
    }
    // One record per attempt: the key is (window, attempt), big-endian, so records sort by time.
    let mut key = u64_key(window).to_vec();
    key.extend_from_slice(&attempt.to_be_bytes());
    if let Err(e) = ctx.store.put(Column::Weights, &key, &sub) {
        tracing::error!(error = %e, "could not record the weight submission");
    }
    ctx.emit(NodeEvent::WeightsSubmitted {
        window,
        weights: pairs,
        outcome: res.map(|r| r.block).map_err(|e| e.to_string()),
    });
    st.last = Some(sub);
}

/// Typed front of the weight setter.
#[derive(Clone)]
pub struct WeightSetterHandle(pub Arc<NodeContext>);

impl WeightSetterHandle {
    /// The last submission.
    pub async fn last(&self) -> Result<Option<WeightSubmission>, ActorError> {
        let a = slot_get(&self.0.actors.weight_setter)
            .ok_or(ActorError::NotRunning("weight setter"))?;
        ractor::call_t!(a, WeightSetterMsg::Last, 10_000).map_err(|e| ActorError::Call {
            actor: "weight setter",
            message: e.to_string(),
        })
    }
}
