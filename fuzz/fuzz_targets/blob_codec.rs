//! Raw bytes as a blob request or response stream, read by the very codec the swarm runs
//! (`apiary_net::blob_codec`, CBOR with the node's size caps); a response that decodes is
//! written back and read again.
#![no_main]
use apiary_net::{blob_codec, BlobResponse, BLOB_PROTOCOL};
use futures::executor::block_on;
use futures::io::Cursor;
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use libfuzzer_sys::fuzz_target;

/// `net.max_blob_bytes`' default (256 MiB): the codec never reads more than the input anyway.
const MAX_BLOB_BYTES: usize = 256 << 20;

fuzz_target!(|data: &[u8]| {
    let proto = StreamProtocol::new(BLOB_PROTOCOL);
    let mut codec = blob_codec(MAX_BLOB_BYTES);
    let _ = block_on(codec.read_request(&proto, &mut Cursor::new(data)));
    let Ok(resp) = block_on(codec.read_response(&proto, &mut Cursor::new(data))) else {
        return;
    };
    if let BlobResponse::Found(bytes) = &resp {
        // What the requester does next: hash and compare with the id it asked for.
        let _ = blake3::hash(bytes);
    }
    let mut out = Cursor::new(Vec::new());
    block_on(codec.write_response(&proto, &mut out, resp.clone())).expect("writes");
    let again = block_on(codec.read_response(&proto, &mut Cursor::new(out.into_inner())))
        .expect("re-encoded response reads");
    assert_eq!(again, resp);
});
