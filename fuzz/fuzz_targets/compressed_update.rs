//! Raw bytes as a compressed update (`CompressedUpdate::from_bytes`): whatever it accepts must
//! re-encode to the same bytes (the format is canonical, its hash names the update) and
//! decompress without panicking.
#![no_main]
use apiary_compress::{decompress, CompressedUpdate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(u) = CompressedUpdate::from_bytes(data) else {
        return;
    };
    assert_eq!(u.to_bytes(), data, "accepted bytes re-encode to themselves");
    // The node decompresses against its model's lengths; here against the header's own, when
    // they are small enough to allocate densely.
    let total = u.lengths().iter().try_fold(0usize, |a, &l| a.checked_add(l));
    if total.is_some_and(|t| t <= 1 << 20) {
        let lengths = u.lengths().to_vec();
        let dense = decompress(&u, &lengths).expect("lengths match");
        assert_eq!(dense.len(), lengths.len());
    }
    let _ = decompress(&u, &[16, 16]);
});
