//! Raw bytes as a gossip payload (`GossipMsg::decode`: announcements and window records), then
//! the window arithmetic an admitted announcement goes through.
#![no_main]
use apiary_actors::protocol::GossipMsg;
use apiary_actors::window::{announcement_window_ok, first_block, window_of};
use apiary_fuzz::MAX_MESSAGE_BYTES;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = GossipMsg::decode(data, MAX_MESSAGE_BYTES) else {
        return;
    };
    let bytes = msg.encode();
    let again = GossipMsg::decode(&bytes, MAX_MESSAGE_BYTES).expect("re-encoded decodes");
    assert_eq!(again.encode(), bytes);
    let window = match &msg {
        GossipMsg::Update(a) => a.window,
        GossipMsg::Record(r) => r.window,
    };
    for current in [0, 1, window, window.wrapping_sub(1), window.wrapping_add(1), u64::MAX] {
        let _ = announcement_window_ok(current, window);
    }
    for bpw in [0, 1, 10, u64::MAX] {
        let _ = window_of(window, bpw);
        let _ = first_block(window, bpw);
    }
});
