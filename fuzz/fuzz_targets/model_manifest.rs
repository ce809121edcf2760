//! Raw bytes as a competition model manifest (`ModelManifest::from_bytes`), what a validator
//! fetches by the id a miner committed: whatever it accepts re-encodes to an equal manifest,
//! and its size check, piece list and id never panic.
#![no_main]
use apiary_compete::ModelManifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = ModelManifest::from_bytes(data, 1 << 20) else {
        return;
    };
    let again = ModelManifest::from_bytes(&m.to_bytes(), 1 << 20).expect("re-encoded manifest decodes");
    assert_eq!(again, m);
    let _ = m.check_size(1 << 30);
    let _ = m.piece_ids();
    let _ = m.total_bytes();
    let _ = m.id();
});
