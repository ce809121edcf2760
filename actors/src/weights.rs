//! Weight setter (validators): turns smoothed scores into u16 weights on the chain.
//!
//! Every `weights_every_windows` windows it reads the evaluator's scores, normalizes them the way
//! Bittensor does (largest = `u16::MAX`), submits `set_weights` signed by the hotkey, and records
//! every submission — window, block, tx hash or error — in the `weights` column.
//!
//! When to submit is the node core's decision ([`crate::window`]): every
//! `weights_every_windows` windows, once the previous window is closed, so the weights carry
//! that window's scores (the setter and the evaluator no longer race on the window start).
//!
//! ## Retries
//! A submission that fails transiently (endpoint unreachable, transaction dropped) is retried on
//! the next block, and one refused by the rate limit is retried once the limit has passed (the
//! chain backend says how many blocks that is; [`retry_after`]), at most [`MAX_ATTEMPTS`] times
//! per window and never past the next scheduled submission. Refusals that waiting does not fix (no permit, not
//! registered) are recorded and not retried. The backend itself never submits twice inside one
//! rate-limit period.
//!
//! ## Commit-reveal
//! When the subnet uses commit-reveal the backend commits a hash; at every window start the
//! setter asks it to reveal the commits whose reveal period has come.

use crate::competition::{merge_shares, Board};
use crate::context::{NodeContext, NodeEvent};
use crate::evaluator::EvaluatorHandle;
use crate::handle::{CoreHandle, Slot};
use crate::mechanism::Mechanism;
use crate::window::Event;
use crate::windowed::Windowed;
use crate::ActorError;
use apiary_chain::ChainError;
use apiary_storage::{u64_key, Column};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
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
    /// Submit weights for a window (`attempt` 1 is the first try).
    Submit {
        /// The window that triggers it.
        window: u64,
        /// Attempt number.
        attempt: u32,
    },
    /// Reveal pending commit-reveal commits (at each window start).
    Reveal,
    /// Query: the last submission.
    Last(RpcReplyPort<Option<WeightSubmission>>),
}

/// The actor.
pub struct WeightSetter;

/// What the weight setter is started with.
pub struct WeightSetterArgs {
    /// The node.
    pub ctx: Arc<NodeContext>,
    /// Where it reports.
    pub core: CoreHandle,
    /// Where the scores are.
    pub evaluator: EvaluatorHandle,
    /// The incentive mechanism: how scores become weights.
    pub mechanism: Arc<Windowed>,
    /// The competitions' published weights, merged by share.
    pub competitions: Arc<Board>,
}

/// Its state.
pub struct WeightSetterState {
    ctx: Arc<NodeContext>,
    core: CoreHandle,
    evaluator: EvaluatorHandle,
    mechanism: Arc<Windowed>,
    competitions: Arc<Board>,
    last: Option<WeightSubmission>,
}

impl Actor for WeightSetter {
    type Msg = WeightSetterMsg;
    type State = WeightSetterState;
    type Arguments = WeightSetterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WeightSetterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let WeightSetterArgs {
            ctx,
            core,
            evaluator,
            mechanism,
            competitions,
        } = args;
        let last = ctx
            .store
            .last::<WeightSubmission>(Column::Weights)?
            .map(|(_, v)| v);
        core.report(Event::WeightsReady {
            last_window: last.as_ref().map(|l| l.window),
        });
        // What the chain holds from this validator since before the restart (the status line and
        // metrics show it); older successes are not searched when the last attempt failed.
        if let Some(WeightSubmission {
            window,
            weights,
            block: Some(block),
            error: None,
            ..
        }) = last.clone()
        {
            let set = crate::context::WeightsSet {
                window,
                block,
                weights,
            };
            ctx.update_status(|s| s.weights_set = Some(set));
        }
        Ok(WeightSetterState {
            ctx,
            core,
            evaluator,
            mechanism,
            competitions,
            last,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WeightSetterMsg::Submit { window, attempt } => {
                if attempt > 1 {
                    tracing::info!(window, attempt, "retrying set_weights");
                }
                submit(st, window, attempt).await;
            }
            WeightSetterMsg::Reveal => reveal(&st.ctx).await,
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
pub fn retry_after(err: &ChainError, block: u64) -> Option<u64> {
    match err {
        ChainError::RateLimited { blocks_left, .. } => {
            Some(block.saturating_add((*blocks_left).max(1)))
        }
        e if e.is_transient() => Some(block.saturating_add(1)),
        _ => None,
    }
}

async fn submit(st: &mut WeightSetterState, window: u64, attempt: u32) {
    let ctx = &st.ctx;
    let scores = match st.evaluator.scores().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no scores; weights not set this window");
            return;
        }
    };
    let pairs: Vec<(u16, f64)> = scores.iter().map(|s| (s.uid, s.ema)).collect();
    let (mut uids, mut weights) = st.mechanism.weights(&pairs);
    // Several mechanisms on one subnet: the runtime (spec 218) has one weight vector per
    // validator, so training and each competition get their configured share of it.
    let comps = st.competitions.weights();
    if !comps.is_empty() {
        let train_share = 1.0 - comps.iter().map(|(s, _)| s).sum::<f64>();
        let train: Vec<(u16, f64)> = uids
            .iter()
            .zip(&weights)
            .map(|(u, w)| (*u, f64::from(*w)))
            .collect();
        let mut parts = vec![(train_share, train)];
        parts.extend(comps);
        (uids, weights) = apiary_chain::normalize_weights(&merge_shares(&parts));
    }
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
        Ok(r) => {
            tracing::info!(window, block = r.block, weights = ?pairs, "weights set");
            ctx.metrics.weights_set.fetch_add(1, Ordering::Relaxed);
            let set = crate::context::WeightsSet {
                window,
                block: r.block,
                weights: pairs.clone(),
            };
            ctx.update_status(|s| s.weights_set = Some(set));
        }
        Err(e) => {
            ctx.metrics.weights_failed.fetch_add(1, Ordering::Relaxed);
            let block = ctx.status().block;
            let retry_at = retry_after(e, block).filter(|_| attempt < MAX_ATTEMPTS);
            match retry_at {
                Some(at_block) => {
                    tracing::warn!(window, attempt, error = %e, retry_at_block = at_block, "set_weights failed; will retry");
                }
                None => tracing::warn!(window, attempt, error = %e, "set_weights refused"),
            }
            st.core.report(Event::WeightsFailed {
                window,
                attempt,
                retry_at,
            });
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
pub struct WeightSetterHandle(pub Slot<WeightSetterMsg>);

impl WeightSetterHandle {
    /// Asks for a submission.
    pub fn submit(&self, window: u64, attempt: u32) -> Result<(), ActorError> {
        self.0.cast(WeightSetterMsg::Submit { window, attempt })
    }
    /// Asks for pending commits to be revealed.
    pub fn reveal(&self) -> Result<(), ActorError> {
        self.0.cast(WeightSetterMsg::Reveal)
    }
    /// The last submission.
    pub async fn last(&self) -> Result<Option<WeightSubmission>, ActorError> {
        ractor::call_t!(self.0.get()?, WeightSetterMsg::Last, 10_000)
            .map_err(|e| self.0.call_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_waits_out_rate_limits_and_never_overflows() {
        let limited = ChainError::RateLimited {
            blocks_left: 5,
            limit: 10,
        };
        assert_eq!(retry_after(&limited, 100), Some(105));
        assert_eq!(retry_after(&limited, u64::MAX), Some(u64::MAX));
    }
}
