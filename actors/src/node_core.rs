//! The node core: owns the [`WindowMachine`], feeds it what the other actors report and
//! carries out its actions.
//!
//! It is the only actor that decides *when* anything window-related happens; the trainer
//! (model keeper), evaluator and weight setter only do what it asks and report back through
//! their [`crate::handle::CoreHandle`]. Blocks and metagraph reads reach it on the node's event bus. It is
//! also the single writer of the `announcements` column (first announcement per
//! `(window, uid)` kept, rejected ones dropped). When it restarts it asks every actor for its
//! state, so its machine starts where the node is.

use crate::context::{forward_events, Metrics, NodeContext, NodeEvent};
use crate::evaluator::EvaluatorHandle;
use crate::protocol::UpdateAnnouncement;
use crate::trainer::TrainerHandle;
use crate::weights::WeightSetterHandle;
use crate::window::{Action, Event, Schedule, WindowMachine};
use apiary_chain::keys::HotkeyId;
use apiary_chain::Metagraph;
use apiary_config::Role;
use apiary_storage::{window_uid_key, Column};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::Duration;

/// The actor.
pub struct NodeCore;

/// What the core is started with: the node and the handles of the actors it drives.
#[derive(Clone)]
pub struct CoreArgs {
    /// The node.
    pub ctx: Arc<NodeContext>,
    /// The model keeper.
    pub trainer: TrainerHandle,
    /// The evaluator (validators).
    pub evaluator: EvaluatorHandle,
    /// The weight setter (validators).
    pub weights: WeightSetterHandle,
}

/// Its state.
pub struct CoreState {
    args: CoreArgs,
    machine: WindowMachine,
}

/// The machine's view of a metagraph: this node's uid and whether it leads.
fn metagraph_event(mg: &Metagraph, me: &HotkeyId) -> Event {
    Event::Metagraph {
        uid: mg.by_hotkey(me).map(|n| n.uid),
        lead: mg.lead_validator().map(|n| n.hotkey) == Some(*me),
    }
}

impl Actor for NodeCore {
    type Msg = Event;
    type State = CoreState;
    type Arguments = CoreArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CoreArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx = Arc::clone(&args.ctx);
        let c = &ctx.cfg;
        let machine = WindowMachine::new(Schedule {
            blocks_per_window: c.chain.blocks_per_window,
            miner: c.node.role == Role::Miner,
            validator: c.node.role == Role::Validator,
            weights_every_windows: c.validator.weights_every_windows,
        });
        let me = ctx.hotkey.id();
        forward_events(&ctx, myself.clone(), move |ev| match ev {
            NodeEvent::Block(b) => Some(Event::Block(b.number)),
            NodeEvent::MetagraphUpdated(mg) => Some(metagraph_event(&mg, &me)),
            _ => None,
        });
        // After a restart of the core the others are running: ask them where they are. On the
        // node's first start they are not yet, and report themselves when they start.
        let mut boot = Vec::new();
        if let Some(mg) = ctx.metagraph() {
            boot.push(metagraph_event(&mg, &me));
        }
        if let Ok(s) = args.trainer.status().await {
            boot.push(Event::ModelAt {
                window: s.model_window,
                model: s.model,
            });
        }
        if c.node.role == Role::Validator {
            if let Ok(last_closed) = args.evaluator.last_closed().await {
                boot.push(Event::EvaluatorReady { last_closed });
            }
            if let Ok(last) = args.weights.last().await {
                boot.push(Event::WeightsReady {
                    last_window: last.map(|l| l.window),
                });
            }
        }
        let block = ctx.status().block;
        if block > 0 {
            boot.push(Event::Block(block));
        }
        for ev in boot {
            myself.cast(ev)?;
        }
        Ok(CoreState { args, machine })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        ev: Event,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Actions for an actor that is not running yet (it reports its state from its
        // `pre_start`, before the supervisor has filled its slot) or is restarting are retried
        // in order, briefly.
        let mut undelivered = Vec::new();
        for action in st.machine.handle(ev) {
            if let Some(a) = execute(&myself, &st.args, action) {
                undelivered.push(a);
            }
        }
        if !undelivered.is_empty() {
            let (me, args) = (myself.clone(), st.args.clone());
            tokio::spawn(async move {
                for action in undelivered {
                    let mut pending = Some(action);
                    for _ in 0..RETRIES {
                        let Some(a) = pending.take() else { break };
                        tokio::time::sleep(RETRY_EVERY).await;
                        pending = execute(&me, &args, a);
                    }
                    if pending.is_some() {
                        tracing::warn!("an actor stayed down; the window machine redoes its work when it reports back");
                    }
                }
            });
        }
        Ok(())
    }
}

/// Tries to hand over an action for an actor that is not running this many times...
const RETRIES: u32 = 40;
/// ...this far apart.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// Carries out one action; returns it when its actor is not running (to be retried). Other
/// failures are logged: an actor that restarts reports its state when it is back, and the
/// machine re-issues what was lost.
fn execute(myself: &ActorRef<Event>, a: &CoreArgs, action: Action) -> Option<Action> {
    let ctx = &a.ctx;
    let retry = action.clone();
    let res = match action {
        Action::Train { window } => a.trainer.train(window),
        Action::KeepAnnouncement(ann) => {
            keep_announcement(ctx, &ann);
            Ok(())
        }
        Action::DropAnnouncement { window, uid } => {
            // Nothing of a rejected update is kept: not its bytes, not its announcement.
            if let Err(e) = ctx
                .store
                .delete(Column::Announcements, &window_uid_key(window, uid))
            {
                tracing::warn!(error = %e, "could not drop a rejected announcement");
            }
            Ok(())
        }
        Action::Evaluate { ann, from } => a.evaluator.evaluate(ann, from),
        Action::Late {
            window,
            uid,
            current,
        } => {
            Metrics::inc(&ctx.metrics.gossip_stale);
            tracing::info!(
                uid,
                window,
                ?current,
                "update for a window that is not open (closed, or more than one window away)"
            );
            Ok(())
        }
        Action::StartGrace { window } => {
            let c = &ctx.cfg.chain;
            let grace = Duration::from_millis(
                c.block_time_ms
                    .saturating_mul(c.blocks_per_window)
                    .saturating_div(2),
            );
            myself.send_after(grace, move || Event::GraceElapsed(window));
            Ok(())
        }
        Action::CloseWindow {
            window,
            wrong_base,
            forced,
            aggregate,
        } => {
            if forced {
                // The first forced close after start is the evaluator warming up (loading the
                // model, the first recomputes); later ones mean it cannot keep up.
                let n = ctx
                    .metrics
                    .windows_forced_close
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n == 0 {
                    tracing::info!(
                        window,
                        "closing window with scoring still in flight (warming up)"
                    );
                } else {
                    tracing::warn!(window, "closing window with scoring still in flight; this validator cannot keep up (fewer recomputes: validator.max_recomputes_per_window)");
                }
            }
            a.evaluator.close(window, wrong_base, aggregate)
        }
        Action::Aggregate { window } => a.evaluator.aggregate(window),
        Action::ApplyRecord { rec, from } => a.trainer.apply_record(rec, from),
        Action::SubmitWeights { window, attempt } => a.weights.submit(window, attempt),
        Action::RevealCommits => a.weights.reveal(),
    };
    match res {
        Ok(()) => None,
        Err(crate::ActorError::NotRunning(actor)) => {
            tracing::debug!(actor, "actor not running; retrying the action shortly");
            Some(retry)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not hand an action to an actor");
            None
        }
    }
}

/// Stores an admitted announcement unless one for its `(window, uid)` is stored already.
fn keep_announcement(ctx: &NodeContext, ann: &UpdateAnnouncement) {
    let key = window_uid_key(ann.window, ann.uid);
    match ctx
        .store
        .get::<UpdateAnnouncement>(Column::Announcements, &key)
    {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "announcement lookup failed"),
    }
    if let Err(e) = ctx.store.put(Column::Announcements, &key, ann) {
        tracing::warn!(error = %e, "could not store an announcement");
    }
    if ctx.cfg.node.role == Role::Validator {
        Metrics::inc(&ctx.metrics.updates_received);
    }
}
