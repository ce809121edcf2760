//! Weight setter (validators): turns smoothed scores into u16 weights on the chain.
//!
//! Every `weights_every_windows` windows it reads the evaluator's scores, normalizes them the way
//! Bittensor does (largest = `u16::MAX`), submits `set_weights` signed by the hotkey, and records
//! every submission — window, block, tx hash or error — in the `weights` column.

use crate::context::{forward_events, slot_get, NodeContext, NodeEvent};
use crate::evaluator::EvaluatorHandle;
use crate::ActorError;
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

/// Messages of the weight setter.
#[derive(Debug)]
pub enum WeightSetterMsg {
    /// A window started: submit if it is time.
    WindowStarted(u64),
    /// Query: the last submission.
    Last(RpcReplyPort<Option<WeightSubmission>>),
}

/// The actor.
pub struct WeightSetter;

/// Its state.
pub struct WeightSetterState {
    ctx: Arc<NodeContext>,
    last: Option<WeightSubmission>,
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
            _ => None,
        });
        Ok(WeightSetterState { ctx, last })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WeightSetterMsg::WindowStarted(w) => {
                let every = st.ctx.cfg.validator.weights_every_windows;
                if w % every != 0 || st.last.as_ref().is_some_and(|l| l.window >= w) {
                    return Ok(());
                }
                submit(st, w).await;
            }
            WeightSetterMsg::Last(reply) => {
                let _ = reply.send(st.last.clone());
            }
        }
        Ok(())
    }
}

async fn submit(st: &mut WeightSetterState, window: u64) {
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
        Err(e) => tracing::warn!(window, error = %e, "set_weights refused"),
    }
    if let Err(e) = ctx.store.put(Column::Weights, &u64_key(window), &sub) {
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
