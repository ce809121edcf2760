//! The window state machine: every rule about *when* a node trains, evaluates, closes a window,
//! aggregates, applies a record or submits weights, in one synchronous type.
//!
//! It has the shape of Psyche's coordinator `tick`: [`WindowMachine::handle`] takes one
//! [`Event`] and returns the [`Action`]s it implies. No tokio, no I/O, no clock reads — time is
//! the block number it is given, and a grace period is an event ([`Event::GraceElapsed`]) that
//! whoever runs the machine schedules when asked to ([`Action::StartGrace`]). The node core
//! actor ([`crate::node_core`]) owns the machine, feeds it what the other actors report and casts
//! its actions to them; everything here can be driven by a test with a list of events.
//!
//! Window arithmetic is checked: a window or block number from the network can be anything up
//! to `u64::MAX`, and no rule here overflows on it (see [`announcement_window_ok`]).
//!
//! ## The rules
//! - **Clock.** Window `w` covers blocks `[w·B, (w+1)·B)` (`B = chain.blocks_per_window`). A
//!   block whose window differs from the last one starts that window (a rewind starts an
//!   earlier one).
//! - **Admission.** An announcement is for an open window when it is at most one window behind
//!   or ahead of the current one. The first per `(window, uid)` is kept; repeats are ignored.
//!   Who was heard first decides nothing else: an update blob names its author
//!   ([`crate::updates::Author`]), and a blob announced by a uid it does not name is refused
//!   when evaluated (`unique_content`), before or after the original.
//! - **Evaluation (validators).** An admitted update is evaluated at once when it was computed
//!   on the node's current model, else deferred until the model catches up. When window `w`
//!   starts, every earlier open window (and `w-1`, even without updates) starts closing: it
//!   closes as soon as its evaluations are done, or when its grace elapses. A window closes
//!   once; an update for a closed or closing window is late.
//! - **Aggregation (the lead validator).** Closed windows are aggregated one at a time, in order.
//! - **Records.** Window records are applied one at a time, in window order; a record for a
//!   window the model already reflects is dropped.
//! - **Training (miners).** A miner trains window `w` once, while `w` is the current window, when
//!   the model for `w` is in (the record of `w-1` applied) or half the window has passed, and no
//!   record is being applied.
//! - **Weights (validators).** Every `weights_every_windows` windows, once the previous window is
//!   closed (so the weights carry its scores), weights are submitted; a failed submission is
//!   retried at the block the weight setter names, never past the next scheduled one.

use crate::protocol::{UpdateAnnouncement, WindowRecord};
use apiary_net::PeerId;
use apiary_storage::ContentId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The window of `block` (`blocks_per_window` of 0 counts as 1).
pub fn window_of(block: u64, blocks_per_window: u64) -> u64 {
    block / blocks_per_window.max(1)
}

/// The first block of `window`, or `None` past the last block number.
pub fn first_block(window: u64, blocks_per_window: u64) -> Option<u64> {
    window.checked_mul(blocks_per_window.max(1))
}

/// Whether an announcement for `window` may be admitted while `current` is the current window:
/// at most one window behind or ahead. Checked arithmetic: any `window` is safe.
pub fn announcement_window_ok(current: u64, window: u64) -> bool {
    window >= current.saturating_sub(1) && window <= current.saturating_add(1)
}

/// What the machine needs to know about the node and the subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Blocks per window (`chain.blocks_per_window`, at least 1).
    pub blocks_per_window: u64,
    /// The node trains (a miner).
    pub miner: bool,
    /// The node evaluates and sets weights (a validator).
    pub validator: bool,
    /// Weights are submitted every this many windows (at least 1).
    pub weights_every_windows: u64,
}

/// Something that happened, reported to the machine.
#[derive(Debug, Clone)]
pub enum Event {
    /// The chain watcher saw a block (repeats and rewinds included).
    Block(u64),
    /// The metagraph was read: this node's uid and whether it is the lead validator.
    Metagraph {
        /// This node's uid, if registered.
        uid: Option<u16>,
        /// Whether this node is the lead validator (it aggregates and writes records).
        lead: bool,
    },
    /// The model keeper (the trainer) holds this model: at its (re)start. Anything it was doing
    /// for the machine (training, applying a record) was lost.
    ModelAt {
        /// The window whose record produced the model (`None`: genesis).
        window: Option<u64>,
        /// The model's id.
        model: ContentId,
    },
    /// An update announcement passed the gossip checks (signature, registered hotkey, uid).
    Announced {
        /// The announcement.
        ann: UpdateAnnouncement,
        /// The peer that relayed it (the first to ask for its blobs).
        from: PeerId,
    },
    /// This miner published its update for a window (or training for it failed: `None`).
    Trained {
        /// The window trained for.
        window: u64,
        /// The published announcement.
        published: Option<UpdateAnnouncement>,
    },
    /// The evaluator finished one update.
    Evaluated {
        /// Window.
        window: u64,
        /// Miner uid.
        uid: u16,
        /// It failed a check: its announcement is dropped.
        rejected: bool,
    },
    /// The evaluator (re)started; it had closed every window up to `last_closed`. Evaluations
    /// it was running are lost.
    EvaluatorReady {
        /// Latest closed window it remembers.
        last_closed: Option<u64>,
    },
    /// The grace for closing `window` elapsed (scheduled after [`Action::StartGrace`]).
    GraceElapsed(u64),
    /// The lead validator finished aggregating a window (published its record, or failed).
    Aggregated(u64),
    /// A window record to apply (gossip from the lead validator, or this lead's own).
    RecordReceived {
        /// The record.
        rec: WindowRecord,
        /// Who sent it (`None`: this node).
        from: Option<PeerId>,
    },
    /// The model keeper applied the record of `window`; its model is now `model`.
    RecordApplied {
        /// The record's window.
        window: u64,
        /// The resulting model.
        model: ContentId,
    },
    /// The model keeper could not apply the record of `window`.
    RecordFailed(u64),
    /// The weight setter (re)started; it last submitted for `last_window`.
    WeightsReady {
        /// Window of its last submission.
        last_window: Option<u64>,
    },
    /// A weight submission for `window` failed; retry at `retry_at` (`None`: waiting will not
    /// help, or the attempts are used up).
    WeightsFailed {
        /// The window it was for.
        window: u64,
        /// The attempt that failed (1 is the first).
        attempt: u32,
        /// Block from which to try again.
        retry_at: Option<u64>,
    },
}

/// Something the machine wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Train for `window` from the current model and publish the update (miners).
    Train {
        /// The window.
        window: u64,
    },
    /// Keep an admitted announcement (the first for its `(window, uid)`).
    KeepAnnouncement(UpdateAnnouncement),
    /// Forget an announcement whose update was rejected.
    DropAnnouncement {
        /// Window.
        window: u64,
        /// Miner uid.
        uid: u16,
    },
    /// Evaluate an update (validators); it was computed on the current model.
    Evaluate {
        /// The announcement.
        ann: UpdateAnnouncement,
        /// Who relayed it.
        from: PeerId,
    },
    /// An announcement for a window that is not open, or one closed or closing: counted, dropped.
    Late {
        /// Its window.
        window: u64,
        /// Miner uid.
        uid: u16,
        /// The node's current window.
        current: Option<u64>,
    },
    /// Schedule [`Event::GraceElapsed`]`(window)` after the closing grace.
    StartGrace {
        /// The window waiting for evaluations.
        window: u64,
    },
    /// Close a window: score every miner, smooth, persist (validators). Happens once per window.
    CloseWindow {
        /// The window.
        window: u64,
        /// Uids whose updates were computed on another model (never evaluated).
        wrong_base: Vec<u16>,
        /// Evaluations were still running (the grace elapsed).
        forced: bool,
        /// This node leads: an [`Action::Aggregate`] for the window follows (now or after the
        /// running aggregation), so keep its accepted updates.
        aggregate: bool,
    },
    /// Aggregate a closed window into the next model and publish its record (lead validator).
    Aggregate {
        /// The window.
        window: u64,
    },
    /// Apply a window record (the model keeper).
    ApplyRecord {
        /// The record.
        rec: WindowRecord,
        /// Who sent it.
        from: Option<PeerId>,
    },
    /// Submit weights from the smoothed scores (validators).
    SubmitWeights {
        /// The window that triggers it.
        window: u64,
        /// Attempt number (1 is the first).
        attempt: u32,
    },
    /// Reveal pending commit-reveal weight commits (validators, at each window start).
    RevealCommits,
}

/// A window a validator is evaluating.
#[derive(Debug, Default, Clone)]
struct OpenWindow {
    /// Uids being evaluated.
    pending: BTreeSet<u16>,
    /// Updates waiting for the model they were computed on.
    deferred: Vec<(UpdateAnnouncement, PeerId)>,
    /// The window is closing: it closes when `pending` empties or its grace elapses.
    closing: bool,
}

/// A weight submission waiting for its retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    window: u64,
    at_block: u64,
    attempt: u32,
}

/// The window state machine (see the module docs for its rules).
#[derive(Debug, Clone)]
pub struct WindowMachine {
    schedule: Schedule,
    /// Latest block seen.
    block: Option<u64>,
    /// Window of the latest block.
    window: Option<u64>,
    uid: Option<u16>,
    lead: bool,
    /// The model keeper's model, once it reported one.
    model: Option<ContentId>,
    /// The window whose record produced the model.
    model_window: Option<u64>,
    /// Admitted `(window, uid)`s of recent windows.
    announced: BTreeMap<u64, BTreeSet<u16>>,
    // Miner.
    training: Option<u64>,
    last_trained: Option<u64>,
    // Records.
    records: BTreeMap<u64, (WindowRecord, Option<PeerId>)>,
    applying: Option<(WindowRecord, Option<PeerId>)>,
    // Validator.
    open: BTreeMap<u64, OpenWindow>,
    last_closed: Option<u64>,
    aggregate_queue: VecDeque<u64>,
    aggregating: Option<u64>,
    /// The evaluator reported its state: windows may close and updates be evaluated (before
    /// that, the machine does not know which windows it already closed).
    evaluator_ready: bool,
    weights_ready: bool,
    weights_last: Option<u64>,
    weights_retry: Option<Retry>,
}

impl WindowMachine {
    /// A machine that has seen nothing yet.
    pub fn new(schedule: Schedule) -> Self {
        WindowMachine {
            schedule: Schedule {
                blocks_per_window: schedule.blocks_per_window.max(1),
                weights_every_windows: schedule.weights_every_windows.max(1),
                ..schedule
            },
            block: None,
            window: None,
            uid: None,
            lead: false,
            model: None,
            model_window: None,
            announced: BTreeMap::new(),
            training: None,
            last_trained: None,
            records: BTreeMap::new(),
            applying: None,
            open: BTreeMap::new(),
            last_closed: None,
            aggregate_queue: VecDeque::new(),
            aggregating: None,
            evaluator_ready: false,
            weights_ready: false,
            weights_last: None,
            weights_retry: None,
        }
    }

    /// The current window, once a block was seen.
    pub fn window(&self) -> Option<u64> {
        self.window
    }

    /// The latest closed window (validators).
    pub fn last_closed(&self) -> Option<u64> {
        self.last_closed
    }

    /// The window whose record produced the current model.
    pub fn model_window(&self) -> Option<u64> {
        self.model_window
    }

    /// Takes one event and returns what to do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Block(n) => self.on_block(n, &mut out),
            Event::Metagraph { uid, lead } => {
                self.uid = uid;
                self.lead = lead;
            }
            Event::ModelAt { window, model } => {
                self.model = Some(model);
                self.model_window = window;
                // The keeper restarted: what it was doing is lost; try it again.
                self.training = None;
                if let Some((rec, from)) = self.applying.take() {
                    self.records.insert(rec.window, (rec, from));
                }
                self.release_deferred(&mut out);
            }
            Event::Announced { ann, from } => self.on_announced(ann, from, &mut out),
            Event::Trained { window, published } => {
                if self.training == Some(window) {
                    self.training = None;
                }
                if let Some(ann) = published {
                    if self.note_announced(ann.window, ann.uid) {
                        out.push(Action::KeepAnnouncement(ann));
                    }
                }
            }
            Event::Evaluated {
                window,
                uid,
                rejected,
            } => {
                if rejected {
                    out.push(Action::DropAnnouncement { window, uid });
                }
                if let Some(ow) = self.open.get_mut(&window) {
                    ow.pending.remove(&uid);
                    if ow.closing && ow.pending.is_empty() {
                        self.close(window, false, &mut out);
                    }
                }
            }
            Event::EvaluatorReady { last_closed } => {
                self.last_closed = self.last_closed.max(last_closed);
                // Windows it already closed stay closed (their deferred updates are late).
                if let Some(c) = self.last_closed {
                    self.open.retain(|w, _| *w > c);
                }
                // Its queued aggregations are lost with it.
                self.aggregating = None;
                self.aggregate_queue.clear();
                if !self.evaluator_ready {
                    // First report: what waited for it goes ahead.
                    self.evaluator_ready = true;
                    if let Some(w) = self.window {
                        self.close_before(w, &mut out);
                    }
                    self.release_deferred(&mut out);
                }
                // Its running evaluations are lost: windows waiting for them close now.
                let ready: Vec<u64> = self
                    .open
                    .iter_mut()
                    .filter_map(|(w, ow)| {
                        ow.pending.clear();
                        ow.closing.then_some(*w)
                    })
                    .collect();
                for w in ready {
                    self.close(w, false, &mut out);
                }
            }
            Event::GraceElapsed(w) => {
                if self.open.get(&w).is_some_and(|ow| ow.closing) {
                    self.close(w, true, &mut out);
                }
            }
            Event::Aggregated(w) => {
                if self.aggregating == Some(w) {
                    self.aggregating = None;
                }
            }
            Event::RecordReceived { rec, from } => {
                let past = self.model_window.is_some_and(|mw| rec.window <= mw)
                    || self
                        .applying
                        .as_ref()
                        .is_some_and(|(a, _)| a.window == rec.window);
                if !past {
                    self.records.insert(rec.window, (rec, from));
                }
            }
            Event::RecordApplied { window, model } => {
                if self
                    .applying
                    .as_ref()
                    .is_some_and(|(a, _)| a.window == window)
                {
                    self.applying = None;
                }
                if self.model_window.is_none_or(|mw| window > mw) {
                    self.model_window = Some(window);
                    self.model = Some(model);
                    self.release_deferred(&mut out);
                }
            }
            Event::RecordFailed(w) => {
                if self.applying.as_ref().is_some_and(|(a, _)| a.window == w) {
                    self.applying = None;
                }
            }
            Event::WeightsReady { last_window } => {
                self.weights_ready = true;
                self.weights_last = self.weights_last.max(last_window);
            }
            Event::WeightsFailed {
                window,
                attempt,
                retry_at,
            } => {
                self.weights_retry = retry_at.map(|at_block| Retry {
                    window,
                    at_block,
                    attempt: attempt.saturating_add(1),
                });
            }
        }
        self.step(&mut out);
        out
    }

    fn on_block(&mut self, n: u64, out: &mut Vec<Action>) {
        let bpw = self.schedule.blocks_per_window;
        let w = window_of(n, bpw);
        self.block = Some(n);
        if self.window != Some(w) {
            self.window = Some(w);
            self.on_window_started(w, out);
        }
        if let Some(r) = self.weights_retry {
            if n >= r.at_block {
                self.weights_retry = None;
                let every = self.schedule.weights_every_windows;
                let next_scheduled = (r.window / every).saturating_add(1).saturating_mul(every);
                if w < next_scheduled {
                    out.push(Action::SubmitWeights {
                        window: r.window,
                        attempt: r.attempt,
                    });
                }
            }
        }
    }

    fn on_window_started(&mut self, w: u64, out: &mut Vec<Action>) {
        // Admission accepts one window back: older (window, uid)s can be forgotten.
        self.announced
            .retain(|aw, _| aw.checked_add(2).is_none_or(|x| x > w));
        if !self.schedule.validator {
            return;
        }
        out.push(Action::RevealCommits);
        if self.evaluator_ready {
            self.close_before(w, out);
        }
    }

    /// Starts closing every open window before `w`, and `w-1` even without updates.
    fn close_before(&mut self, w: u64, out: &mut Vec<Action>) {
        let mut to_close: Vec<u64> = self
            .open
            .iter()
            .filter(|(k, v)| **k < w && !v.closing)
            .map(|(k, _)| *k)
            .collect();
        // Close the previous window even if no update arrived for it.
        if let Some(prev) = w.checked_sub(1) {
            if self.last_closed.is_none_or(|c| c < prev)
                && !to_close.contains(&prev)
                && !self.open.get(&prev).is_some_and(|v| v.closing)
            {
                to_close.push(prev);
            }
        }
        for cw in to_close {
            let ow = self.open.entry(cw).or_default();
            ow.closing = true;
            if ow.pending.is_empty() {
                self.close(cw, false, out);
            } else {
                out.push(Action::StartGrace { window: cw });
            }
        }
    }

    /// Records `(window, uid)` as admitted; false if it already was.
    fn note_announced(&mut self, window: u64, uid: u16) -> bool {
        self.announced.entry(window).or_default().insert(uid)
    }

    fn on_announced(&mut self, ann: UpdateAnnouncement, from: PeerId, out: &mut Vec<Action>) {
        let (window, uid) = (ann.window, ann.uid);
        if let Some(current) = self.window {
            if !announcement_window_ok(current, window) {
                out.push(Action::Late {
                    window,
                    uid,
                    current: Some(current),
                });
                return;
            }
        }
        if !self.note_announced(window, uid) {
            return; // the first announcement per (window, uid) wins
        }
        out.push(Action::KeepAnnouncement(ann.clone()));
        if !self.schedule.validator {
            return;
        }
        if self.last_closed.is_some_and(|c| window <= c)
            || self.open.get(&window).is_some_and(|ow| ow.closing)
        {
            out.push(Action::Late {
                window,
                uid,
                current: self.window,
            });
            return;
        }
        let ow = self.open.entry(window).or_default();
        if self.evaluator_ready && self.model == Some(ann.base_model) {
            ow.pending.insert(uid);
            out.push(Action::Evaluate { ann, from });
        } else {
            ow.deferred.push((ann, from));
        }
    }

    /// Evaluates deferred updates computed on the (new) current model.
    fn release_deferred(&mut self, out: &mut Vec<Action>) {
        let Some(model) = self.model else { return };
        if !self.evaluator_ready {
            return;
        }
        for ow in self.open.values_mut().filter(|ow| !ow.closing) {
            let (now, later): (Vec<_>, Vec<_>) = ow
                .deferred
                .drain(..)
                .partition(|(a, _)| a.base_model == model);
            ow.deferred = later;
            for (ann, from) in now {
                ow.pending.insert(ann.uid);
                out.push(Action::Evaluate { ann, from });
            }
        }
    }

    fn close(&mut self, window: u64, forced: bool, out: &mut Vec<Action>) {
        let Some(ow) = self.open.remove(&window) else {
            return;
        };
        self.open.retain(|w, _| *w > window);
        self.last_closed = Some(self.last_closed.map_or(window, |c| c.max(window)));
        out.push(Action::CloseWindow {
            window,
            wrong_base: ow.deferred.iter().map(|(a, _)| a.uid).collect(),
            forced,
            aggregate: self.lead,
        });
        if self.lead {
            self.aggregate_queue.push_back(window);
        }
    }

    /// Starts whatever has become possible: the next aggregation, the next record, training,
    /// a weight submission.
    fn step(&mut self, out: &mut Vec<Action>) {
        if self.aggregating.is_none() {
            if let Some(w) = self.aggregate_queue.pop_front() {
                self.aggregating = Some(w);
                out.push(Action::Aggregate { window: w });
            }
        }
        if self.applying.is_none() && self.model.is_some() {
            if let Some(mw) = self.model_window {
                self.records.retain(|w, _| *w > mw);
            }
            if let Some((_, (rec, from))) = self.records.pop_first() {
                self.applying = Some((rec.clone(), from));
                out.push(Action::ApplyRecord { rec, from });
            }
        }
        if let Some(w) = self.trainable() {
            self.training = Some(w);
            self.last_trained = Some(w);
            out.push(Action::Train { window: w });
        }
        if let Some(w) = self.weights_due() {
            self.weights_last = Some(w);
            self.weights_retry = None;
            out.push(Action::SubmitWeights {
                window: w,
                attempt: 1,
            });
        }
    }

    /// The window a miner should train for now, if any.
    fn trainable(&self) -> Option<u64> {
        if !self.schedule.miner
            || self.training.is_some()
            || self.applying.is_some()
            || self.uid.is_none()
            || self.model.is_none()
        {
            return None;
        }
        let (w, block) = (self.window?, self.block?);
        if self.last_trained.is_some_and(|t| t >= w) {
            return None;
        }
        let bpw = self.schedule.blocks_per_window;
        // Train on the model for `w` (the record of `w-1` applied; genesis is the model for
        // window 0); past half the window, train on what we have rather than miss the window.
        let half_gone = bpw > 1
            && first_block(w, bpw)
                .and_then(|f| f.checked_add(bpw / 2))
                .is_some_and(|half| block >= half);
        let ready = half_gone
            || match self.model_window {
                None => w == 0,
                Some(mw) => mw.saturating_add(1) >= w,
            };
        ready.then_some(w)
    }

    /// The window whose weights are due now, if any.
    fn weights_due(&self) -> Option<u64> {
        if !self.schedule.validator || !self.weights_ready {
            return None;
        }
        let w = self.window?;
        if !w.is_multiple_of(self.schedule.weights_every_windows)
            || self.weights_last.is_some_and(|l| l >= w)
        {
            return None;
        }
        // The previous window's scores go into these weights: wait for its close.
        match w.checked_sub(1) {
            None => Some(w),
            Some(prev) => self.last_closed.is_some_and(|c| c >= prev).then_some(w),
        }
    }
}

#[cfg(test)]
mod tests;
