//! The dashboard page (`metrics.dashboard`): one self-contained HTML page served at `/` next
//! to `/metrics` (no CDN, no external script: canvas charts drawn by a few lines of inline
//! JavaScript), which polls `/api/dashboard` every 2 s.

use apiary_actors::context::NodeContext;
use apiary_actors::trainer::AppliedWindow;
use apiary_actors::weights::WeightSubmission;
use apiary_actors::Handles;
use apiary_storage::Column;
use serde_json::{json, Value};

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");

/// Windows of loss and weights the data carries at most.
const HISTORY: usize = 500;

/// What the page shows: the node, the chain and whether weights reach it, the held-out loss per
/// applied window, the miners' scores now and per closed window (validators), the weights
/// submitted per window, peers with their uids, and sync progress.
pub async fn data(ctx: &NodeContext, handles: &Handles) -> Value {
    let status = ctx.status();
    let loss: Vec<Value> = ctx
        .store
        .scan::<AppliedWindow>(Column::Windows)
        .unwrap_or_default()
        .into_iter()
        .rev()
        .take(HISTORY)
        .rev()
        .filter(|(_, w)| w.held_out_loss.is_finite())
        .map(|(_, w)| json!({"window": w.window, "held_out_loss": w.held_out_loss}))
        .collect();
    let weights: Vec<Value> = ctx
        .store
        .scan::<WeightSubmission>(Column::Weights)
        .unwrap_or_default()
        .into_iter()
        .rev()
        .take(HISTORY)
        .rev()
        .filter(|(_, s)| s.error.is_none())
        .map(|(_, s)| json!({"window": s.window, "weights": s.weights}))
        .collect();
    // Every closed window's scores, from the node's store: a page opened now draws the whole
    // history, and windows the validator did not close show as gaps, not as lines.
    let score_history: Vec<Value> = ctx
        .store
        .scan::<Vec<(u16, f32, f64)>>(Column::ScoreHistory)
        .unwrap_or_default()
        .into_iter()
        .rev()
        .take(HISTORY)
        .rev()
        .filter_map(|(k, scores)| {
            let window = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
            Some(json!({"window": window, "scores": scores.iter()
                .map(|(uid, last, ema)| json!({"uid": uid, "last": last, "ema": ema}))
                .collect::<Vec<_>>()}))
        })
        .collect();
    let last_submission = if ctx.cfg.node.role == apiary_config::Role::Validator {
        handles.weight_setter.last().await.ok().flatten()
    } else {
        None
    };
    let mg = ctx.metagraph();
    let uid_of_peer = |peer: &str| -> Option<u16> {
        mg.as_ref()?
            .neurons
            .iter()
            .find(|n| n.peer.as_ref().is_some_and(|p| p.peer_id == peer))
            .map(|n| n.uid)
    };
    let miners: Vec<Value> = if ctx.cfg.node.role == apiary_config::Role::Validator {
        handles
            .evaluator
            .scores()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|e| json!({"uid": e.uid, "ema": e.ema, "last": e.last, "window": e.window}))
            .collect()
    } else {
        Vec::new()
    };
    let peers: Vec<Value> = ctx
        .net
        .standings()
        .await
        .into_iter()
        .map(|p| {
            let peer = p.peer.to_string();
            json!({"uid": uid_of_peer(&peer), "peer": peer, "connected": p.connected,
                   "gossip_score": p.gossip_score, "strikes": p.strikes, "banned": p.banned})
        })
        .collect();
    json!({
        "node": {"name": ctx.cfg.node.name, "role": ctx.cfg.node.role.to_string(), "uid": status.uid},
        "sync": crate::admin::sync(ctx),
        "chain": {
            "backend": ctx.chain.backend_name(),
            "block": status.block,
            "health": ctx.chain.connection_health(),
            // What the chain holds from this validator, and how the latest attempt went.
            "weights_set": status.weights_set,
            "last_submission": last_submission,
        },
        "loss": loss,
        "score_history": score_history,
        "weights": weights,
        "miners": miners,
        "peers": peers,
    })
}
