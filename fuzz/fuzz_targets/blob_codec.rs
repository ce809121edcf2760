//! Raw bytes as a blob request or response stream of both blob protocols, read by the very
//! codecs the swarm runs (`apiary_net::blob_codec` and `range_codec`, CBOR with the node's size
//! caps); a response that decodes is written back and read again. The bytes are also read as a
//! stored outboard (`Outboard::decode`), and an outboard answer goes through the checks the
//! downloader makes.
#![no_main]
use apiary_net::{
    blob_codec, range_codec, BlobResponse, Outboard, RangeResponse, BLOB_PROTOCOL, PART_LOG,
    RANGE_PROTOCOL,
};
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
    if let Ok(resp) = block_on(codec.read_response(&proto, &mut Cursor::new(data))) {
        if let BlobResponse::Found(bytes) = &resp {
            // What the requester does next: hash and compare with the id it asked for.
            let _ = blake3::hash(bytes);
        }
        let mut out = Cursor::new(Vec::new());
        block_on(codec.write_response(&proto, &mut out, resp.clone())).expect("writes");
        let again = block_on(codec.read_response(&proto, &mut Cursor::new(out.into_inner())))
            .expect("re-encoded response reads");
        assert_eq!(again, resp);
    }

    let rproto = StreamProtocol::new(RANGE_PROTOCOL);
    let mut rcodec = range_codec();
    let _ = block_on(rcodec.read_request(&rproto, &mut Cursor::new(data)));
    if let Ok(resp) = block_on(rcodec.read_response(&rproto, &mut Cursor::new(data))) {
        if let RangeResponse::Outboard { len, cvs, .. } = &resp {
            // What the downloader does with an outboard: cut the hashes, check them.
            if cvs.len() % 32 == 0 {
                let ob = Outboard {
                    len: *len,
                    group_log: PART_LOG,
                    cvs: cvs
                        .chunks_exact(32)
                        .map(|c| c.try_into().expect("32 bytes"))
                        .collect(),
                };
                let _ = ob.verify(&[7; 32]);
                let _ = ob.verify_group(&[7; 32], 0, &cvs[..cvs.len().min(64)]);
            }
        }
        let mut out = Cursor::new(Vec::new());
        block_on(rcodec.write_response(&rproto, &mut out, resp.clone())).expect("writes");
        let again = block_on(rcodec.read_response(&rproto, &mut Cursor::new(out.into_inner())))
            .expect("re-encoded response reads");
        assert_eq!(again, resp);
    }
    let _ = Outboard::decode(data);
});
