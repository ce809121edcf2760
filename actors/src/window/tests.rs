//! The window machine driven by event sequences (unit tests) and by random interleavings
//! (property tests). No tokio: every test is a plain function over events.

use super::*;
use proptest::prelude::*;

const BPW: u64 = 10;

fn peer() -> PeerId {
    // Any fixed peer id: the machine only passes it through.
    PeerId::from_bytes(&[0, 2, 8, 1]).unwrap_or_else(|_| PeerId::random())
}

fn model(i: u8) -> ContentId {
    ContentId::of(&[b'm', i])
}

fn ann(window: u64, uid: u16, base: ContentId) -> UpdateAnnouncement {
    UpdateAnnouncement {
        netuid: 1,
        window,
        uid,
        base_model: base,
        update: ContentId::of(&[window as u8, uid as u8]),
        size: 10,
        loss: 1.0,
        sync_slice: None,
    }
}

fn rec(window: u64, base: ContentId, next: ContentId) -> WindowRecord {
    WindowRecord {
        netuid: 1,
        window,
        base_model: base,
        accepted: vec![],
        model: next,
        outer_state: ContentId::of(b"o"),
        scores: vec![],
        dataset: ContentId::of(b"d"),
    }
}

fn miner() -> WindowMachine {
    WindowMachine::new(Schedule {
        blocks_per_window: BPW,
        miner: true,
        validator: false,
        weights_every_windows: 1,
    })
}

fn validator(lead: bool) -> WindowMachine {
    let mut m = WindowMachine::new(Schedule {
        blocks_per_window: BPW,
        miner: false,
        validator: true,
        weights_every_windows: 1,
    });
    m.handle(Event::Metagraph { uid: Some(0), lead });
    m.handle(Event::ModelAt {
        window: None,
        model: model(0),
    });
    m.handle(Event::EvaluatorReady { last_closed: None });
    m.handle(Event::WeightsReady { last_window: None });
    m
}

fn closes(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CloseWindow { window, .. } => Some(*window),
            _ => None,
        })
        .collect()
}

#[test]
fn announcement_window_arithmetic_is_checked() {
    assert!(announcement_window_ok(5, 4));
    assert!(announcement_window_ok(5, 5));
    assert!(announcement_window_ok(5, 6));
    assert!(!announcement_window_ok(5, 3));
    assert!(!announcement_window_ok(5, 7));
    assert!(!announcement_window_ok(5, u64::MAX));
    assert!(announcement_window_ok(u64::MAX, u64::MAX));
    assert!(announcement_window_ok(0, 0));
    assert!(!announcement_window_ok(u64::MAX, 0));
    assert_eq!(first_block(u64::MAX, 2), None);
    assert_eq!(window_of(25, 0), 25);
}

#[test]
fn a_hostile_window_field_is_late_not_a_panic() {
    let mut m = validator(true);
    m.handle(Event::Block(50));
    let out = m.handle(Event::Announced {
        ann: ann(u64::MAX, 3, model(0)),
        from: peer(),
    });
    assert!(matches!(
        out.as_slice(),
        [Action::Late {
            window: u64::MAX,
            ..
        }]
    ));
    // Blocks at the end of time do not overflow either.
    m.handle(Event::Block(u64::MAX));
    m.handle(Event::Block(u64::MAX - 1));
}

#[test]
fn miner_trains_once_per_window_when_the_model_is_in() {
    let mut m = miner();
    assert!(m.handle(Event::Block(0)).is_empty(), "no uid, no model yet");
    m.handle(Event::Metagraph {
        uid: Some(1),
        lead: false,
    });
    let out = m.handle(Event::ModelAt {
        window: None,
        model: model(0),
    });
    assert_eq!(out, vec![Action::Train { window: 0 }]);
    assert!(m.handle(Event::Block(1)).is_empty(), "once per window");
    m.handle(Event::Trained {
        window: 0,
        published: Some(ann(0, 1, model(0))),
    });
    // Window 1 starts, but the record of window 0 is not in: wait...
    assert!(m.handle(Event::Block(10)).is_empty());
    // ...until it is applied...
    let out = m.handle(Event::RecordReceived {
        rec: rec(0, model(0), model(1)),
        from: None,
    });
    assert!(matches!(out.as_slice(), [Action::ApplyRecord { rec, .. }] if rec.window == 0));
    let out = m.handle(Event::RecordApplied {
        window: 0,
        model: model(1),
    });
    assert_eq!(out, vec![Action::Train { window: 1 }]);
}

#[test]
fn miner_trains_on_what_it_has_after_half_the_window() {
    let mut m = miner();
    m.handle(Event::Metagraph {
        uid: Some(1),
        lead: false,
    });
    m.handle(Event::ModelAt {
        window: None,
        model: model(0),
    });
    m.handle(Event::Block(30)); // window 3, model is genesis: not ready
    assert!(m.handle(Event::Block(34)).is_empty());
    assert_eq!(
        m.handle(Event::Block(35)),
        vec![Action::Train { window: 3 }]
    );
}

#[test]
fn miner_never_trains_while_applying_or_for_a_past_window() {
    let mut m = miner();
    m.handle(Event::Metagraph {
        uid: Some(1),
        lead: false,
    });
    m.handle(Event::ModelAt {
        window: Some(4),
        model: model(0),
    });
    m.handle(Event::RecordReceived {
        rec: rec(5, model(0), model(1)),
        from: None,
    });
    // Window 5 starts while the record of 5 is applying: no training yet.
    let out = m.handle(Event::Block(50));
    assert!(out.iter().all(|a| !matches!(a, Action::Train { .. })));
    // The record is applied in window 6: train 6, never 5.
    m.handle(Event::Block(60));
    let out = m.handle(Event::RecordApplied {
        window: 5,
        model: model(1),
    });
    assert_eq!(out, vec![Action::Train { window: 6 }]);
}

#[test]
fn records_apply_one_at_a_time_in_order_and_old_ones_are_dropped() {
    let mut m = miner();
    m.handle(Event::ModelAt {
        window: Some(2),
        model: model(0),
    });
    assert!(m
        .handle(Event::RecordReceived {
            rec: rec(2, model(9), model(9)),
            from: None
        })
        .is_empty());
    let first = m.handle(Event::RecordReceived {
        rec: rec(4, model(1), model(2)),
        from: None,
    });
    assert!(matches!(first.as_slice(), [Action::ApplyRecord { rec, .. }] if rec.window == 4));
    // 3 arrives while 4 is applying: it waits, then is dropped (the model is past it).
    assert!(m
        .handle(Event::RecordReceived {
            rec: rec(3, model(0), model(1)),
            from: None
        })
        .is_empty());
    assert!(m
        .handle(Event::RecordReceived {
            rec: rec(5, model(2), model(3)),
            from: None
        })
        .is_empty());
    let out = m.handle(Event::RecordApplied {
        window: 4,
        model: model(2),
    });
    assert!(matches!(out.as_slice(), [Action::ApplyRecord { rec, .. }] if rec.window == 5));
}

#[test]
fn a_restarted_keeper_gets_the_record_it_lost() {
    let mut m = miner();
    m.handle(Event::ModelAt {
        window: None,
        model: model(0),
    });
    m.handle(Event::RecordReceived {
        rec: rec(0, model(0), model(1)),
        from: None,
    });
    let out = m.handle(Event::ModelAt {
        window: None,
        model: model(0),
    });
    assert!(matches!(out.as_slice(), [Action::ApplyRecord { rec, .. }] if rec.window == 0));
}

#[test]
fn validator_evaluates_closes_once_aggregates_and_then_sets_weights() {
    let mut m = validator(true);
    let out = m.handle(Event::Block(0));
    assert!(out.contains(&Action::SubmitWeights {
        window: 0,
        attempt: 1
    }));
    let out = m.handle(Event::Announced {
        ann: ann(0, 1, model(0)),
        from: peer(),
    });
    assert!(matches!(
        out.as_slice(),
        [Action::KeepAnnouncement(_), Action::Evaluate { .. }]
    ));
    // A duplicate is ignored.
    assert!(m
        .handle(Event::Announced {
            ann: ann(0, 1, model(0)),
            from: peer()
        })
        .is_empty());
    // Window 1 starts with the evaluation running: grace, no close, no weights yet.
    let out = m.handle(Event::Block(10));
    assert!(out.contains(&Action::StartGrace { window: 0 }));
    assert!(closes(&out).is_empty());
    assert!(!out
        .iter()
        .any(|a| matches!(a, Action::SubmitWeights { .. })));
    // The evaluation lands: close, aggregate, then weights (in that order).
    let out = m.handle(Event::Evaluated {
        window: 0,
        uid: 1,
        rejected: false,
    });
    assert_eq!(
        out,
        vec![
            Action::CloseWindow {
                window: 0,
                wrong_base: vec![],
                forced: false,
                aggregate: true
            },
            Action::Aggregate { window: 0 },
            Action::SubmitWeights {
                window: 1,
                attempt: 1
            },
        ]
    );
    // The grace elapsing later changes nothing; an update for window 0 is now late.
    assert!(m.handle(Event::GraceElapsed(0)).is_empty());
    let out = m.handle(Event::Announced {
        ann: ann(0, 2, model(0)),
        from: peer(),
    });
    assert!(out.iter().any(|a| matches!(a, Action::Late { .. })));
    assert!(!out.iter().any(|a| matches!(a, Action::Evaluate { .. })));
}

#[test]
fn who_announced_an_update_id_first_decides_nothing() {
    // The blob names its author; the evaluator refuses the announcer it does not name, so the
    // machine evaluates both announcements of one id, in either order.
    let mut m = validator(false);
    m.handle(Event::Block(0));
    let original = ann(0, 1, model(0));
    let mut copy = original.clone();
    copy.uid = 2;
    let first = m.handle(Event::Announced {
        ann: copy.clone(),
        from: peer(),
    });
    let second = m.handle(Event::Announced {
        ann: original.clone(),
        from: peer(),
    });
    for (out, a) in [(first, copy), (second, original)] {
        assert!(
            out.iter()
                .any(|x| matches!(x, Action::Evaluate { ann, .. } if *ann == a)),
            "{out:?}"
        );
    }
}

#[test]
fn grace_forces_a_close_and_deferred_updates_count_as_wrong_base() {
    let mut m = validator(false);
    m.handle(Event::Block(0));
    m.handle(Event::Announced {
        ann: ann(0, 1, model(0)),
        from: peer(),
    });
    m.handle(Event::Announced {
        ann: ann(0, 2, model(7)),
        from: peer(),
    });
    m.handle(Event::Block(10));
    let out = m.handle(Event::GraceElapsed(0));
    assert_eq!(
        closes(&out),
        vec![0],
        "forced close of the window with a running evaluation"
    );
    assert!(out.contains(&Action::CloseWindow {
        window: 0,
        wrong_base: vec![2],
        forced: true,
        aggregate: false
    }));
    // Not the lead: nothing to aggregate.
    assert!(!out.iter().any(|a| matches!(a, Action::Aggregate { .. })));
    // The late evaluation result is harmless.
    let out = m.handle(Event::Evaluated {
        window: 0,
        uid: 1,
        rejected: true,
    });
    assert_eq!(out, vec![Action::DropAnnouncement { window: 0, uid: 1 }]);
}

#[test]
fn deferred_updates_are_evaluated_when_the_model_catches_up() {
    let mut m = validator(false);
    m.handle(Event::Block(10));
    let out = m.handle(Event::Announced {
        ann: ann(1, 1, model(1)),
        from: peer(),
    });
    assert!(!out.iter().any(|a| matches!(a, Action::Evaluate { .. })));
    m.handle(Event::RecordReceived {
        rec: rec(0, model(0), model(1)),
        from: None,
    });
    let out = m.handle(Event::RecordApplied {
        window: 0,
        model: model(1),
    });
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Evaluate { ann, .. } if ann.uid == 1)));
}

#[test]
fn aggregations_run_one_at_a_time_in_window_order() {
    let mut m = validator(true);
    m.handle(Event::Block(0));
    let a = m.handle(Event::Block(10));
    assert!(a.contains(&Action::Aggregate { window: 0 }));
    let b = m.handle(Event::Block(20));
    assert!(
        !b.iter().any(|a| matches!(a, Action::Aggregate { .. })),
        "0 still running"
    );
    let c = m.handle(Event::Aggregated(0));
    assert_eq!(c, vec![Action::Aggregate { window: 1 }]);
}

#[test]
fn failed_weights_are_retried_at_the_named_block_within_the_schedule() {
    let mut m = validator(false);
    m.handle(Event::Block(0));
    m.handle(Event::WeightsFailed {
        window: 0,
        attempt: 1,
        retry_at: Some(3),
    });
    assert!(m.handle(Event::Block(2)).is_empty());
    assert_eq!(
        m.handle(Event::Block(3)),
        vec![Action::SubmitWeights {
            window: 0,
            attempt: 2
        }]
    );
    // A retry due only after the next scheduled submission is dropped.
    m.handle(Event::WeightsFailed {
        window: 0,
        attempt: 2,
        retry_at: Some(12),
    });
    let out = m.handle(Event::Block(12));
    assert!(!out.contains(&Action::SubmitWeights {
        window: 0,
        attempt: 3
    }));
    assert!(out.contains(&Action::SubmitWeights {
        window: 1,
        attempt: 1
    }));
}

#[test]
fn nothing_closes_before_the_evaluator_says_what_it_closed() {
    // A restarted node: the watcher's first block comes before the evaluator's report.
    let mut m = WindowMachine::new(Schedule {
        blocks_per_window: BPW,
        miner: false,
        validator: true,
        weights_every_windows: 1,
    });
    m.handle(Event::ModelAt {
        window: Some(1),
        model: model(1),
    });
    let out = m.handle(Event::Block(30));
    assert!(closes(&out).is_empty(), "window 2 may already be closed");
    let out = m.handle(Event::Announced {
        ann: ann(3, 1, model(1)),
        from: peer(),
    });
    assert!(!out.iter().any(|a| matches!(a, Action::Evaluate { .. })));
    let out = m.handle(Event::EvaluatorReady {
        last_closed: Some(2),
    });
    assert!(
        closes(&out).is_empty(),
        "window 2 was closed before the restart"
    );
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Evaluate { ann, .. } if ann.window == 3)));
}

#[test]
fn a_restarted_evaluator_does_not_leave_a_window_open_forever() {
    let mut m = validator(false);
    m.handle(Event::Block(0));
    m.handle(Event::Announced {
        ann: ann(0, 1, model(0)),
        from: peer(),
    });
    m.handle(Event::Block(10));
    let out = m.handle(Event::EvaluatorReady { last_closed: None });
    assert_eq!(closes(&out), vec![0]);
}

// ---- Property tests: random interleavings of events -------------------------------------

fn arb_event() -> impl Strategy<Value = Event> {
    let window = prop_oneof![8 => 0u64..12, 1 => Just(u64::MAX), 1 => Just(u64::MAX - 1)];
    let block = prop_oneof![10 => 0u64..120, 1 => Just(u64::MAX)];
    let m = (0u8..3).prop_map(model);
    prop_oneof![
        6 => block.prop_map(Event::Block),
        1 => (proptest::option::of(0u16..4), any::<bool>())
            .prop_map(|(uid, lead)| Event::Metagraph { uid, lead }),
        4 => (window.clone(), 0u16..4, m.clone())
            .prop_map(|(w, u, b)| Event::Announced { ann: ann(w, u, b), from: peer() }),
        2 => (window.clone(), proptest::option::of((0u16..4, m.clone())))
            .prop_map(|(w, p)| Event::Trained { window: w, published: p.map(|(u, b)| ann(w, u, b)) }),
        4 => (window.clone(), 0u16..4, any::<bool>())
            .prop_map(|(window, uid, rejected)| Event::Evaluated { window, uid, rejected }),
        1 => proptest::option::of(window.clone()).prop_map(|last_closed| Event::EvaluatorReady { last_closed }),
        2 => window.clone().prop_map(Event::GraceElapsed),
        2 => window.clone().prop_map(Event::Aggregated),
        3 => (window.clone(), m.clone(), m.clone())
            .prop_map(|(w, a, b)| Event::RecordReceived { rec: rec(w, a, b), from: None }),
        3 => (window.clone(), m.clone()).prop_map(|(window, model)| Event::RecordApplied { window, model }),
        1 => window.clone().prop_map(Event::RecordFailed),
        1 => proptest::option::of(window.clone()).prop_map(|last_window| Event::WeightsReady { last_window }),
        1 => (window.clone(), 1u32..5, proptest::option::of(0u64..130))
            .prop_map(|(window, attempt, retry_at)| Event::WeightsFailed { window, attempt, retry_at }),
    ]
}

fn arb_machine() -> impl Strategy<Value = WindowMachine> {
    (any::<bool>(), 1u64..4, 1u64..20).prop_map(|(is_miner, every, bpw)| {
        WindowMachine::new(Schedule {
            blocks_per_window: bpw,
            miner: is_miner,
            validator: !is_miner,
            weights_every_windows: every,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// A window closes once; nothing is evaluated for a closed window or twice per
    /// (window, uid); aggregations never overlap.
    #[test]
    fn windows_close_once_and_evaluations_are_unique(
        mut m in arb_machine(),
        first_model in 0u8..3,
        events in proptest::collection::vec(arb_event(), 1..64),
    ) {
        m.handle(Event::ModelAt { window: None, model: model(first_model) });
        let mut closed = BTreeSet::new();
        let mut evaluated = BTreeSet::new();
        let mut aggregating: Option<u64> = None;
        for ev in events {
            let is_ready = matches!(ev, Event::EvaluatorReady { .. });
            if let Event::Aggregated(w) = ev {
                if aggregating == Some(w) { aggregating = None; }
            }
            if is_ready { evaluated.clear(); aggregating = None; }
            let last_closed_before = m.last_closed();
            for a in m.handle(ev) {
                match a {
                    Action::CloseWindow { window, .. } => {
                        prop_assert!(closed.insert(window), "window {} closed twice", window);
                    }
                    Action::Evaluate { ann, .. } => {
                        prop_assert!(last_closed_before.is_none_or(|c| ann.window > c));
                        prop_assert!(!closed.contains(&ann.window));
                        prop_assert!(evaluated.insert((ann.window, ann.uid)), "evaluated twice");
                    }
                    Action::Aggregate { window } => {
                        prop_assert!(aggregating.is_none(), "aggregations overlap");
                        prop_assert!(closed.contains(&window));
                        aggregating = Some(window);
                    }
                    _ => {}
                }
            }
        }
    }

    /// A miner trains only for the current window, at most once per window, never while a
    /// record is applying; records apply one at a time, each past the model's window.
    #[test]
    fn training_respects_deadlines_and_records_apply_in_order(
        mut m in arb_machine(),
        events in proptest::collection::vec(arb_event(), 1..64),
    ) {
        m.handle(Event::ModelAt { window: None, model: model(0) });
        let mut trained = BTreeSet::new();
        let mut block: Option<u64> = None;
        let mut applying: Option<u64> = None;
        let mut last_applied: Option<u64> = None;
        let bpw = m.schedule.blocks_per_window;
        for ev in events {
            match &ev {
                Event::Block(n) => block = Some(*n),
                Event::RecordApplied { window, .. } | Event::RecordFailed(window)
                    if applying == Some(*window) =>
                {
                    applying = None;
                }
                _ => {}
            }
            if let Event::RecordApplied { window, .. } = &ev {
                last_applied = last_applied.max(Some(*window));
            }
            let model_window = m.model_window();
            for a in m.handle(ev) {
                match a {
                    Action::Train { window } => {
                        let b = block.expect("a block was seen");
                        prop_assert_eq!(window, window_of(b, bpw), "trains only the current window");
                        prop_assert!(trained.insert(window), "trained window {} twice", window);
                        prop_assert!(applying.is_none(), "trains while applying");
                    }
                    Action::ApplyRecord { rec, .. } => {
                        prop_assert!(applying.is_none(), "two records applying at once");
                        prop_assert!(model_window.is_none_or(|mw| rec.window > mw));
                        prop_assert!(last_applied.is_none_or(|l| rec.window > l), "out of order");
                        applying = Some(rec.window);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Weights go out at most once per scheduled window (first attempts), only on schedule
    /// and only after the previous window closed.
    #[test]
    fn weights_follow_the_close_of_the_previous_window(
        mut m in arb_machine(),
        events in proptest::collection::vec(arb_event(), 1..64),
    ) {
        let mut firsts = BTreeSet::new();
        let every = m.schedule.weights_every_windows;
        for ev in events {
            for a in m.handle(ev) {
                if let Action::SubmitWeights { window, attempt: 1 } = a {
                    prop_assert!(window % every == 0);
                    prop_assert!(firsts.insert(window), "weights for {} submitted twice", window);
                    prop_assert!(window == 0 || m.last_closed().is_some_and(|c| c.saturating_add(1) >= window));
                }
            }
        }
    }
}
