//! Typed slots: how actors reach each other without a registry that every actor imports.
//!
//! The supervisor makes one [`Slot`] per child before it starts any, hands each actor the
//! handles (typed wrappers around slots) it needs, and fills a slot with the child's current
//! `ActorRef` on every (re)start, so a restarted actor is found by everyone at once. This module
//! depends on no actor: a handle type lives next to its actor, and the core's inbox
//! ([`CoreHandle`]) lives here because every executor reports to it.

use crate::window::Event;
use crate::ActorError;
use ractor::{ActorRef, Message};
use std::sync::{Arc, RwLock};

/// The current `ActorRef` of one child, shared by everyone who holds a copy.
pub struct Slot<M: Message> {
    actor: &'static str,
    current: Arc<RwLock<Option<ActorRef<M>>>>,
}

impl<M: Message> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Slot {
            actor: self.actor,
            current: Arc::clone(&self.current),
        }
    }
}

impl<M: Message> Slot<M> {
    /// An empty slot for the actor called `actor`.
    pub fn new(actor: &'static str) -> Self {
        Slot {
            actor,
            current: Arc::new(RwLock::new(None)),
        }
    }

    /// The actor's name (for errors and logs).
    pub fn actor(&self) -> &'static str {
        self.actor
    }

    /// The running actor, or [`ActorError::NotRunning`].
    pub fn get(&self) -> Result<ActorRef<M>, ActorError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(ActorError::NotRunning(self.actor))
    }

    /// Fills (or empties) the slot; the supervisor's job.
    pub fn set(&self, r: Option<ActorRef<M>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// Sends a message without waiting.
    pub fn cast(&self, msg: M) -> Result<(), ActorError> {
        self.get()?.cast(msg).map_err(|e| self.call_err(e))
    }

    /// The error for a failed call or cast.
    pub fn call_err(&self, e: impl std::fmt::Display) -> ActorError {
        ActorError::Call {
            actor: self.actor,
            message: e.to_string(),
        }
    }
}

/// Typed front of the node core ([`crate::core`]): where the other actors report the
/// [`Event`]s of its window machine.
#[derive(Clone)]
pub struct CoreHandle(pub Slot<Event>);

impl CoreHandle {
    /// Reports an event. When the core is restarting the event is lost, which the machine
    /// tolerates: the core asks every actor for its state when it starts.
    pub fn report(&self, ev: Event) {
        if let Err(e) = self.0.cast(ev) {
            tracing::debug!(error = %e, "the node core missed an event");
        }
    }
}
