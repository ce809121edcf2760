//! Raw bytes as an admin socket request line (`apiary_daemon::admin::parse_request`).
//!
//! The parser lives in its own dependency-light file, compiled here by path, so this target does
//! not build the whole daemon (subxt, clap, ...).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../daemon/src/admin/request.rs"]
#[allow(dead_code)]
mod request;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = request::parse_request(data) {
        let line = serde_json::to_vec(&req).expect("a request serializes");
        // The re-serialized line spells out every field, so it may exceed the line cap.
        if line.len() <= request::MAX_LINE {
            let again = request::parse_request(&line).expect("a serialized request parses");
            assert_eq!(again, req);
        }
    }
});
