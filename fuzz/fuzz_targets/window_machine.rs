//! Structure-aware: the window state machine driven by an arbitrary sequence of events with
//! arbitrary fields (windows and blocks up to `u64::MAX`, any uid, a handful of model ids).
//! Announcements and records come from the network; the machine must never panic on any of
//! them, in any order, whatever else happened.
#![no_main]
use apiary_actors::protocol::{UpdateAnnouncement, WindowRecord};
use apiary_actors::window::{Event, Schedule, WindowMachine};
use apiary_net::{Keypair, PeerId};
use apiary_storage::ContentId;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

/// A small id space, so announcements and records meet the models the machine knows.
fn id(i: u8) -> ContentId {
    ContentId([i % 8; 32])
}

fn peer() -> PeerId {
    Keypair::ed25519_from_bytes([7u8; 32])
        .map(|k| k.public().to_peer_id())
        .unwrap_or_else(|_| PeerId::random())
}

#[derive(Arbitrary, Debug)]
enum Ev {
    Block(u64),
    Metagraph { uid: Option<u16>, lead: bool },
    ModelAt { window: Option<u64>, model: u8 },
    Announced { window: u64, uid: u16, base: u8, update: u8 },
    Trained { window: u64, published: Option<(u16, u8, u8)> },
    Evaluated { window: u64, uid: u16, rejected: bool },
    EvaluatorReady { last_closed: Option<u64> },
    GraceElapsed(u64),
    Aggregated(u64),
    RecordReceived { window: u64, base: u8, model: u8, accepted: Vec<(u16, u8)>, ours: bool },
    RecordApplied { window: u64, model: u8 },
    RecordFailed(u64),
    WeightsReady { last_window: Option<u64> },
    WeightsFailed { window: u64, attempt: u32, retry_at: Option<u64> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    blocks_per_window: u8,
    miner: bool,
    validator: bool,
    weights_every_windows: u8,
    events: Vec<Ev>,
}

fn ann(window: u64, uid: u16, base: u8, update: u8) -> UpdateAnnouncement {
    UpdateAnnouncement {
        netuid: 1,
        window,
        uid,
        base_model: id(base),
        update: id(update),
        size: 10,
        loss: 1.0,
        sync_slice: None,
    }
}

fuzz_target!(|input: Input| {
    let schedule = Schedule {
        blocks_per_window: u64::from(input.blocks_per_window.max(1)),
        miner: input.miner,
        validator: input.validator,
        weights_every_windows: u64::from(input.weights_every_windows.max(1)),
    };
    let mut m = WindowMachine::new(schedule);
    let from = peer();
    for ev in input.events.into_iter().take(256) {
        let ev = match ev {
            Ev::Block(b) => Event::Block(b),
            Ev::Metagraph { uid, lead } => Event::Metagraph { uid, lead },
            Ev::ModelAt { window, model } => Event::ModelAt {
                window,
                model: id(model),
            },
            Ev::Announced {
                window,
                uid,
                base,
                update,
            } => Event::Announced {
                ann: ann(window, uid, base, update),
                from,
            },
            Ev::Trained { window, published } => Event::Trained {
                window,
                published: published.map(|(uid, base, update)| ann(window, uid, base, update)),
            },
            Ev::Evaluated {
                window,
                uid,
                rejected,
            } => Event::Evaluated {
                window,
                uid,
                rejected,
            },
            Ev::EvaluatorReady { last_closed } => Event::EvaluatorReady { last_closed },
            Ev::GraceElapsed(w) => Event::GraceElapsed(w),
            Ev::Aggregated(w) => Event::Aggregated(w),
            Ev::RecordReceived {
                window,
                base,
                model,
                accepted,
                ours,
            } => Event::RecordReceived {
                rec: WindowRecord {
                    netuid: 1,
                    window,
                    base_model: id(base),
                    accepted: accepted.into_iter().map(|(u, c)| (u, id(c))).collect(),
                    model: id(model),
                    outer_state: id(0),
                    scores: vec![],
                    dataset: id(0),
                },
                from: (!ours).then_some(from),
            },
            Ev::RecordApplied { window, model } => Event::RecordApplied {
                window,
                model: id(model),
            },
            Ev::RecordFailed(w) => Event::RecordFailed(w),
            Ev::WeightsReady { last_window } => Event::WeightsReady { last_window },
            Ev::WeightsFailed {
                window,
                attempt,
                retry_at,
            } => Event::WeightsFailed {
                window,
                attempt,
                retry_at,
            },
        };
        let _ = m.handle(ev);
    }
});
