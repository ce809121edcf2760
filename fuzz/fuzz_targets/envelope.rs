//! Raw bytes as a gossip envelope, exactly as the network loop checks one
//! (`SignedEnvelope::decode` with the default limit, then the hotkey signature).
#![no_main]
use apiary_fuzz::MAX_MESSAGE_BYTES;
use apiary_net::SignedEnvelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for limit in [MAX_MESSAGE_BYTES, 64] {
        if let Ok(env) = SignedEnvelope::decode(data, limit) {
            let _ = env.verify(&apiary_net::SubnetTag([7; 32]));
            assert!(env.payload.len() <= limit);
            let again = SignedEnvelope::decode(&env.encode(), limit).expect("re-encoded decodes");
            assert_eq!(again, env);
        }
    }
});
