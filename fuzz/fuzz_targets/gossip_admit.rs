//! Structure-aware: a syntactically valid gossip message with arbitrary fields (any window, uid,
//! size, loss, ...), signed by a dev hotkey into an envelope, optionally corrupted at one byte,
//! then admitted the way a node does: envelope decode, signature, payload decode, window range.
#![no_main]
use apiary_actors::protocol::{GossipMsg, UpdateAnnouncement, WindowRecord};
use apiary_actors::window::{announcement_window_ok, first_block, window_of};
use apiary_fuzz::{hotkeys, MAX_MESSAGE_BYTES};
use apiary_net::SignedEnvelope;
use apiary_storage::ContentId;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Msg {
    Update {
        netuid: u16,
        window: u64,
        uid: u16,
        base_model: [u8; 32],
        update: [u8; 32],
        size: u64,
        loss: f32,
        sync_slice: Option<[u8; 32]>,
    },
    Record {
        netuid: u16,
        window: u64,
        base_model: [u8; 32],
        accepted: Vec<(u16, [u8; 32])>,
        model: [u8; 32],
        outer_state: [u8; 32],
        scores: Vec<(u16, f32)>,
        dataset: [u8; 32],
    },
    /// Any payload bytes, validly signed.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    signer: u8,
    msg: Msg,
    current: u64,
    blocks_per_window: u64,
    /// Flip `xor` into the encoded envelope at `at % len`.
    corrupt: Option<(u16, u8)>,
}

fuzz_target!(|input: Input| {
    let payload = match input.msg {
        Msg::Update {
            netuid,
            window,
            uid,
            base_model,
            update,
            size,
            loss,
            sync_slice,
        } => GossipMsg::Update(UpdateAnnouncement {
            netuid,
            window,
            uid,
            base_model: ContentId(base_model),
            update: ContentId(update),
            size,
            loss,
            sync_slice: sync_slice.map(ContentId),
        })
        .encode(),
        Msg::Record {
            netuid,
            window,
            base_model,
            accepted,
            model,
            outer_state,
            scores,
            dataset,
        } => GossipMsg::Record(WindowRecord {
            netuid,
            window,
            base_model: ContentId(base_model),
            accepted: accepted.into_iter().map(|(u, c)| (u, ContentId(c))).collect(),
            model: ContentId(model),
            outer_state: ContentId(outer_state),
            scores,
            dataset: ContentId(dataset),
        })
        .encode(),
        Msg::Raw(bytes) => bytes,
    };
    let key = &hotkeys()[usize::from(input.signer % 4)];
    let env = SignedEnvelope::sign(key, &apiary_net::SubnetTag([7; 32]), payload.clone());
    let mut bytes = env.encode();
    let corrupted = match input.corrupt {
        Some((at, xor)) if xor != 0 && !bytes.is_empty() => {
            let i = usize::from(at) % bytes.len();
            bytes[i] ^= xor;
            true
        }
        _ => false,
    };

    // The network loop's checks.
    let env = match SignedEnvelope::decode(&bytes, MAX_MESSAGE_BYTES) {
        Ok(env) => env,
        Err(e) => {
            assert!(corrupted || payload.len() > MAX_MESSAGE_BYTES, "{e}");
            return;
        }
    };
    let signed = env.verify(&apiary_net::SubnetTag([7; 32])).is_ok();
    if !corrupted {
        assert!(signed, "a freshly signed envelope verifies");
        assert_eq!(env.payload, payload);
    }
    if !signed {
        return;
    }
    // The gossip actor's.
    let Ok(msg) = GossipMsg::decode(&env.payload, MAX_MESSAGE_BYTES) else {
        return;
    };
    if let GossipMsg::Update(ann) = msg {
        let ok = announcement_window_ok(input.current, ann.window);
        assert_eq!(ok, ann.window.abs_diff(input.current) <= 1);
        let _ = window_of(ann.window, input.blocks_per_window);
        let _ = first_block(ann.window, input.blocks_per_window);
    }
});
