//! Node supervisor: starts the node's actors for its role and restarts them within a budget.
//!
//! ractor has no restart strategy of its own; this actor is the parent of every child
//! (`spawn_linked`) and restarts a child that fails (panics or returns an error) or stops
//! unexpectedly. Restarts are counted in a sliding window: more than `max_restarts` within
//! `restart_window_secs` and the node stops with a [`NodeEvent::Fatal`] error, which the daemon
//! turns into a non-zero exit.
//!
//! The children are a table ([`children`]): adding an actor is one entry there (and a slot in
//! [`Handles`] if others must reach it). Every child gets the handles it needs as its
//! arguments; the supervisor fills each handle's slot on every (re)start, so a restarted
//! trainer is reachable at once.

use crate::chain_watcher::{ChainWatcher, ChainWatcherHandle};
use crate::competition::{Competitions, CompetitionsHandle};
use crate::context::{Metrics, NodeContext, NodeEvent};
use crate::evaluator::{Evaluator, EvaluatorArgs, EvaluatorHandle};
use crate::gossip::{GossipArgs, GossipMsgIn, GossipPeer};
use crate::handle::{CoreHandle, Slot};
use crate::node_core::{CoreArgs, NodeCore};
use crate::trainer::{Trainer, TrainerArgs, TrainerHandle};
use crate::weights::{WeightSetter, WeightSetterArgs, WeightSetterHandle};
use crate::windowed::Windowed;
use apiary_config::Role;
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The handles of a node's actors: what the daemon, the admin socket and tests use, and what
/// the supervisor hands to each child.
#[derive(Clone)]
pub struct Handles {
    /// The node core (window machine).
    pub core: CoreHandle,
    /// Chain watcher.
    pub chain_watcher: ChainWatcherHandle,
    /// Gossip peer.
    pub gossip: Slot<GossipMsgIn>,
    /// Trainer (the model keeper).
    pub trainer: TrainerHandle,
    /// Evaluator (validators).
    pub evaluator: EvaluatorHandle,
    /// Weight setter (validators).
    pub weight_setter: WeightSetterHandle,
    /// The incentive mechanism the node runs.
    pub mechanism: Arc<Windowed>,
    /// Model competitions (`[[competition]]`): validators rank, everyone serves its entries.
    pub competitions: CompetitionsHandle,
}

impl Handles {
    fn new(cfg: &apiary_config::NodeConfig) -> Self {
        Handles {
            core: CoreHandle(Slot::new("node core")),
            chain_watcher: ChainWatcherHandle(Slot::new("chain watcher")),
            gossip: Slot::new("gossip"),
            trainer: TrainerHandle(Slot::new("trainer")),
            evaluator: EvaluatorHandle(Slot::new("evaluator")),
            weight_setter: WeightSetterHandle(Slot::new("weight setter")),
            mechanism: Arc::new(Windowed::new(&cfg.validator)),
            competitions: CompetitionsHandle::new(),
        }
    }
}

/// Starts one child linked to the supervisor, fills its slot, returns its cell.
type SpawnFn = fn(
    Arc<NodeContext>,
    Handles,
    ActorCell,
) -> BoxFuture<'static, Result<ActorCell, ActorProcessingErr>>;

/// One row of the children table.
pub struct ChildSpec {
    /// Name in logs and errors.
    pub name: &'static str,
    /// Started only on validators.
    pub validator_only: bool,
    spawn: SpawnFn,
    clear: fn(&Handles),
}

/// Spawns `actor` linked to `sup` and puts its ref in `slot`.
async fn start<A: Actor>(
    actor: A,
    args: A::Arguments,
    slot: Slot<A::Msg>,
    sup: ActorCell,
) -> Result<ActorCell, ActorProcessingErr> {
    let (r, _) = Actor::spawn_linked(None, actor, args, sup).await?;
    slot.set(Some(r.clone()));
    Ok(r.get_cell())
}

/// The node's children in start order. The core starts first: every other child reports to
/// it when it starts.
pub fn children() -> Vec<ChildSpec> {
    vec![
        ChildSpec {
            name: "node-core",
            validator_only: false,
            spawn: |ctx, h, sup| {
                let args = CoreArgs {
                    ctx,
                    trainer: h.trainer.clone(),
                    evaluator: h.evaluator.clone(),
                    weights: h.weight_setter.clone(),
                };
                Box::pin(start(NodeCore, args, h.core.0, sup))
            },
            clear: |h| h.core.0.set(None),
        },
        ChildSpec {
            name: "trainer",
            validator_only: false,
            spawn: |ctx, h, sup| {
                let args = TrainerArgs { ctx, core: h.core };
                Box::pin(start(Trainer, args, h.trainer.0, sup))
            },
            clear: |h| h.trainer.0.set(None),
        },
        ChildSpec {
            name: "chain-watcher",
            validator_only: false,
            spawn: |ctx, h, sup| Box::pin(start(ChainWatcher, ctx, h.chain_watcher.0, sup)),
            clear: |h| h.chain_watcher.0.set(None),
        },
        ChildSpec {
            name: "gossip",
            validator_only: false,
            spawn: |ctx, h, sup| {
                let args = GossipArgs {
                    ctx,
                    core: h.core,
                    chain_watcher: h.chain_watcher,
                };
                Box::pin(start(GossipPeer, args, h.gossip, sup))
            },
            clear: |h| h.gossip.set(None),
        },
        ChildSpec {
            name: "evaluator",
            validator_only: true,
            spawn: |ctx, h, sup| {
                let args = EvaluatorArgs {
                    ctx,
                    core: h.core,
                    trainer: h.trainer,
                    mechanism: h.mechanism,
                };
                Box::pin(start(Evaluator, args, h.evaluator.0, sup))
            },
            clear: |h| h.evaluator.0.set(None),
        },
        ChildSpec {
            name: "weight-setter",
            validator_only: true,
            spawn: |ctx, h, sup| {
                let args = WeightSetterArgs {
                    ctx,
                    core: h.core,
                    evaluator: h.evaluator,
                    mechanism: h.mechanism,
                    competitions: Arc::clone(&h.competitions.board),
                };
                Box::pin(start(WeightSetter, args, h.weight_setter.0, sup))
            },
            clear: |h| h.weight_setter.0.set(None),
        },
        ChildSpec {
            name: "competitions",
            validator_only: false,
            spawn: |ctx, h, sup| {
                let args = (ctx, Arc::clone(&h.competitions.board));
                Box::pin(start(Competitions, args, h.competitions.slot, sup))
            },
            clear: |h| h.competitions.slot.set(None),
        },
    ]
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
    handles: Handles,
    table: Vec<ChildSpec>,
    /// Running children: cell id → index in `table`.
    children: HashMap<ActorId, usize>,
    /// Running children's cells, by index in `table`.
    cells: HashMap<usize, ActorCell>,
    restarts: VecDeque<Instant>,
    stopping: bool,
}

async fn spawn_child(
    st: &mut SupervisorState,
    i: usize,
    sup: ActorCell,
) -> Result<(), ActorProcessingErr> {
    let Some(spec) = st.table.get(i) else {
        return Err(format!("no child {i} in the table").into());
    };
    let span = tracing::info_span!("actor", node = %st.ctx.name(), actor = spec.name);
    let cell = {
        let _e = span.enter();
        (spec.spawn)(Arc::clone(&st.ctx), st.handles.clone(), sup)
    }
    .await?;
    tracing::debug!(node = %st.ctx.name(), actor = spec.name, "started");
    st.children.insert(cell.get_id(), i);
    st.cells.insert(i, cell);
    Ok(())
}

/// What the supervisor is started with.
pub struct SupervisorArgs {
    ctx: Arc<NodeContext>,
    handles: Handles,
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        SupervisorArgs { ctx, handles }: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let validator = ctx.cfg.node.role == Role::Validator;
        let table: Vec<ChildSpec> = children()
            .into_iter()
            .filter(|c| validator || !c.validator_only)
            .collect();
        let mut st = SupervisorState {
            ctx,
            handles,
            table,
            children: HashMap::new(),
            cells: HashMap::new(),
            restarts: VecDeque::new(),
            stopping: false,
        };
        for spec in &st.table {
            st.ctx.actor_restarts.register(spec.name);
        }
        for i in 0..st.table.len() {
            spawn_child(&mut st, i, myself.get_cell()).await?;
        }
        Ok(st)
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
        let Some(i) = st.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        st.cells.remove(&i);
        let Some(spec) = st.table.get(i) else {
            return Ok(());
        };
        let name = spec.name;
        (spec.clear)(&st.handles);
        if st.stopping {
            return Ok(());
        }
        tracing::error!(node = %st.ctx.name(), actor = name, %why, "actor died");
        let sup = st.ctx.cfg.supervisor.clone();
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
                    "{name} kept failing: {} restarts within {}s exceeded the budget (supervisor.max_restarts = {}); last error: {why}",
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
            st.ctx.actor_restarts.count(name);
            match spawn_child(st, i, myself.get_cell()).await {
                Ok(()) => {
                    tracing::warn!(node = %st.ctx.name(), actor = name, "actor restarted");
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(actor = name, error = %e, "restart failed");
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
        // Stop in reverse start order.
        for i in (0..st.table.len()).rev() {
            if let Some(cell) = st.cells.remove(&i) {
                cell.stop(None);
            }
        }
        for spec in &st.table {
            (spec.clear)(&st.handles);
        }
        Ok(())
    }
}

/// A running supervisor.
pub struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
    join: Option<tokio::task::JoinHandle<()>>,
    ctx: Arc<NodeContext>,
    handles: Handles,
}

/// Starts the node's supervisor and its children.
pub async fn spawn_supervisor(
    ctx: Arc<NodeContext>,
) -> Result<SupervisorHandle, crate::ActorError> {
    let handles = Handles::new(&ctx.cfg);
    // Every check the mechanism can refuse under is counted from 0, so its series exists
    // before the first refusal (a dashboard panel shows 0, not "No data").
    {
        use crate::mechanism::Mechanism;
        for c in handles.mechanism.checks() {
            ctx.rejections.register(c.name());
        }
        ctx.rejections.register(crate::windowed::UNIQUE_CONTENT);
        ctx.rejections.register(crate::evaluator::BASE_MODEL);
    }
    let args = SupervisorArgs {
        ctx: Arc::clone(&ctx),
        handles: handles.clone(),
    };
    let (actor, join) = Actor::spawn(None, NodeSupervisor, args)
        .await
        .map_err(|e| crate::ActorError::Start(e.to_string()))?;
    Ok(SupervisorHandle {
        actor,
        join: Some(join),
        ctx,
        handles,
    })
}

impl SupervisorHandle {
    /// The node's actor handles.
    pub fn handles(&self) -> &Handles {
        &self.handles
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ActorRestarts;

    #[test]
    fn every_child_is_listed_with_zero_restarts_and_counted_by_name() {
        let restarts = ActorRestarts::default();
        let table = children();
        for spec in &table {
            restarts.register(spec.name);
        }
        let s = restarts.snapshot();
        assert_eq!(s.len(), table.len(), "child names are distinct: {s:?}");
        assert!(s.values().all(|&n| n == 0), "{s:?}");
        for name in ["trainer", "evaluator", "gossip", "node-core"] {
            assert!(s.contains_key(name), "{name} missing from {s:?}");
        }
        restarts.count("trainer");
        restarts.count("trainer");
        restarts.count("gossip");
        // Registering again (a supervisor restarted on the same context) keeps the counts.
        restarts.register("trainer");
        let s = restarts.snapshot();
        assert_eq!(s.get("trainer"), Some(&2));
        assert_eq!(s.get("gossip"), Some(&1));
        assert_eq!(s.values().sum::<u64>(), 3);
    }
}
