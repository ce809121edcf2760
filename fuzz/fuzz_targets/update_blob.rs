//! Raw bytes as an update blob fetched from a peer, decoded the way a validator and every
//! trainer do (`apiary_actors::updates::decode`): dense safetensors (`Update::from_bytes`) when
//! the first byte is even, compressed (`CompressedUpdate::from_bytes` + `decompress` +
//! `Update::from_vecs`) when it is odd. Also the author header in front of every update blob
//! (`updates::unseal`, then the rest decoded as above) and the outer-state blob a late joiner
//! fetches.
#![no_main]
use apiary_fuzz::cfgs;
use apiary_model::{OuterState, Update};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let cfg = &cfgs()[usize::from(sel & 1)];
    if let Ok(update) = apiary_actors::updates::decode(cfg, bytes) {
        // What passes decodes again from its dense encoding.
        let dense = update.to_bytes().expect("a decoded update encodes");
        Update::from_bytes(&cfg.model, &dense).expect("its dense encoding decodes");
    }
    if sel & 2 != 0 {
        let _ = OuterState::from_bytes(&cfg.model, bytes);
    }
    if sel & 4 != 0 {
        let _ = apiary_actors::updates::decode_sealed(cfg, bytes);
    }
});
