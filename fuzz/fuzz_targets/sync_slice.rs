//! Raw bytes as a sync proof (`Slice::from_bytes`, then `apiary_actors::sync::check_proof`
//! against the tiny model): accepted slices re-encode to themselves; checking never panics.
#![no_main]
use apiary_actors::sync::check_proof;
use apiary_compress::Slice;
use apiary_fuzz::{cfgs, tiny_params};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let params = tiny_params();
    let cfg = &cfgs()[0];
    let decoded = Slice::from_bytes(data);
    let seed = match &decoded {
        Ok(s) => *s.seed(),
        Err(_) => [0u8; 32],
    };
    // With the subnet's fraction, then with the proof's own (so its values get compared).
    let _ = check_proof(cfg, params, &seed, data);
    if let Ok(s) = decoded {
        assert_eq!(s.to_bytes(), data, "accepted bytes re-encode to themselves");
        let mut own = cfg.clone();
        own.train.sync_slice_fraction = s.fraction();
        let _ = check_proof(&own, params, &seed, data);
    }
});
