//! Node supervisor: starts the node's actors for its role and restarts them within a budget.
//!
//! ractor has no restart strategy of its own; this actor is the parent of every child
//! (`spawn_linked`) and restarts a child that fails (panics or returns an error) or stops
//! unexpectedly. Restarts are counted in a sliding window: more than `max_restarts` within
//! `restart_window_secs` and the node stops with a [`NodeEvent::Fatal`] error, which the daemon
//! turns into a non-zero exit. Children find each other through the context's slots, which the
//! supervisor updates on every (re)start, so a restarted trainer is reachable at once.

use crate::chain_watcher::ChainWatcher;
use crate::context::{slot_set, Metrics, NodeContext, NodeEvent};
use crate::evaluator::Evaluator;
use crate::gossip::GossipPeer;
use crate::trainer::Trainer;
use crate::weights::WeightSetter;
use apiary_config::Role;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kinds of children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    /// Chain watcher.
    ChainWatcher,
    /// Gossip peer.
    Gossip,
    /// Trainer.
    Trainer,
    /// Evaluator.
    Evaluator,
    /// Weight setter.
    WeightSetter,
}

impl ChildKind {
    fn name(self) -> &'static str {
        match self {
            ChildKind::ChainWatcher => "chain-watcher",
            ChildKind::Gossip => "gossip",
            ChildKind::Trainer => "trainer",
            ChildKind::Evaluator => "evaluator",
            ChildKind::WeightSetter => "weight-setter",
        }
    }
}

/// Messages of the supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Stop every child, then the supervisor.
    Shutdown,
}

/// The supervisor actor.
pub struct NodeSupervisor;

/// Its state.
pub struct SupervisorState {
    ctx: Arc<NodeContext>,
    children: HashMap<ActorId, ChildKind>,
    restarts: VecDeque<Instant>,
    stopping: bool,
}

async fn spawn_child(
    ctx: &Arc<NodeContext>,
    kind: ChildKind,
    sup: ActorCell,
) -> Result<ActorCell, ActorProcessingErr> {
    let c = Arc::clone(ctx);
    let span = tracing::info_span!("actor", node = %ctx.name(), actor = kind.name());
    let _e = span.enter();
    let cell = match kind {
        ChildKind::ChainWatcher => {
            let (r, _) = Actor::spawn_linked(None, ChainWatcher, c, sup).await?;
            slot_set(&ctx.actors.chain_watcher, Some(r.clone()));
            r.get_cell()
        }
        ChildKind::Gossip => {
            let (r, _) = Actor::spawn_linked(None, GossipPeer, c, sup).await?;
            slot_set(&ctx.actors.gossip, Some(r.clone()));
            r.get_cell()
        }
        ChildKind::Trainer => {
            let (r, _) = Actor::spawn_linked(None, Trainer, c, sup).await?;
            slot_set(&ctx.actors.trainer, Some(r.clone()));
            r.get_cell()
        }
        ChildKind::Evaluator => {
            let (r, _) = Actor::spawn_linked(None, Evaluator, c, sup).await?;
            slot_set(&ctx.actors.evaluator, Some(r.clone()));
            r.get_cell()
        }
        ChildKind::WeightSetter => {
            let (r, _) = Actor::spawn_linked(None, WeightSetter, c, sup).await?;
            slot_set(&ctx.actors.weight_setter, Some(r.clone()));
            r.get_cell()
        }
    };
    tracing::debug!("started");
    Ok(cell)
}

fn clear_slot(ctx: &NodeContext, kind: ChildKind) {
    match kind {
        ChildKind::ChainWatcher => slot_set(&ctx.actors.chain_watcher, None),
        ChildKind::Gossip => slot_set(&ctx.actors.gossip, None),
        ChildKind::Trainer => slot_set(&ctx.actors.trainer, None),
        ChildKind::Evaluator => slot_set(&ctx.actors.evaluator, None),
        ChildKind::WeightSetter => slot_set(&ctx.actors.weight_setter, None),
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut kinds = vec![
            ChildKind::Trainer,
            ChildKind::ChainWatcher,
            ChildKind::Gossip,
        ];
        if ctx.cfg.node.role == Role::Validator {
            kinds.push(ChildKind::Evaluator);
            kinds.push(ChildKind::WeightSetter);
        }
        let mut children = HashMap::new();
        for k in kinds {
            let cell = spawn_child(&ctx, k, myself.get_cell()).await?;
            children.insert(cell.get_id(), k);
        }
        Ok(SupervisorState {
            ctx,
            children,
            restarts: VecDeque::new(),
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Shutdown => {
                st.stopping = true;
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        let Some(kind) = st.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        clear_slot(&st.ctx, kind);
        if st.stopping {
            return Ok(());
        }
        tracing::error!(node = %st.ctx.name(), actor = kind.name(), %why, "actor died");
        let sup = &st.ctx.cfg.supervisor;
        let window = Duration::from_secs(sup.restart_window_secs);
        loop {
            let now = Instant::now();
            while st
                .restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > window)
            {
                st.restarts.pop_front();
            }
            if st.restarts.len() >= sup.max_restarts as usize {
                let msg = format!(
                    "{} kept failing: {} restarts within {}s exceeded the budget (supervisor.max_restarts = {}); last error: {why}",
                    kind.name(),
                    st.restarts.len(),
                    sup.restart_window_secs,
                    sup.max_restarts
                );
                tracing::error!(node = %st.ctx.name(), "{msg}");
                st.ctx.update_status(|s| s.fatal = Some(msg.clone()));
                st.ctx.emit(NodeEvent::Fatal(msg.clone()));
                st.stopping = true;
                myself.stop(Some(msg));
                return Ok(());
            }
            st.restarts.push_back(now);
            Metrics::inc(&st.ctx.metrics.restarts);
            match spawn_child(&st.ctx, kind, myself.get_cell()).await {
                Ok(cell) => {
                    tracing::warn!(node = %st.ctx.name(), actor = kind.name(), "actor restarted");
                    st.children.insert(cell.get_id(), kind);
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(actor = kind.name(), error = %e, "restart failed");
                }
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        st.stopping = true;
        let ctx = &st.ctx;
        for cell in [
            crate::context::slot_get(&ctx.actors.weight_setter).map(|r| r.get_cell()),
            crate::context::slot_get(&ctx.actors.evaluator).map(|r| r.get_cell()),
            crate::context::slot_get(&ctx.actors.gossip).map(|r| r.get_cell()),
            crate::context::slot_get(&ctx.actors.chain_watcher).map(|r| r.get_cell()),
            crate::context::slot_get(&ctx.actors.trainer).map(|r| r.get_cell()),
        ]
        .into_iter()
        .flatten()
        {
            cell.stop(None);
        }
        for k in [
            ChildKind::ChainWatcher,
            ChildKind::Gossip,
            ChildKind::Trainer,
            ChildKind::Evaluator,
            ChildKind::WeightSetter,
        ] {
            clear_slot(ctx, k);
        }
        Ok(())
    }
}

/// A running supervisor.
pub struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
    join: Option<tokio::task::JoinHandle<()>>,
    ctx: Arc<NodeContext>,
}

/// Starts the node's supervisor and its children.
pub async fn spawn_supervisor(ctx: Arc<NodeContext>) -> Result<SupervisorHandle, String> {
    let (actor, join) = Actor::spawn(None, NodeSupervisor, Arc::clone(&ctx))
        .await
        .map_err(|e| format!("could not start the node's actors: {e}"))?;
    Ok(SupervisorHandle {
        actor,
        join: Some(join),
        ctx,
    })
}

impl SupervisorHandle {
    /// Asks every actor to stop and waits for the supervisor to finish.
    pub async fn shutdown(self) {
        let _ = self.actor.cast(SupervisorMsg::Shutdown);
        if let Some(j) = self.join {
            let _ = j.await;
        }
    }

    /// Waits until the supervisor stops; `Err` with the reason if the node failed.
    pub async fn wait(&mut self) -> Result<(), String> {
        if let Some(j) = self.join.take() {
            let _ = j.await;
        }
        match self.ctx.status().fatal {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// Whether the supervisor has stopped.
    pub fn is_finished(&self) -> bool {
        self.join.as_ref().is_none_or(|j| j.is_finished())
    }
}
