//! Seeds of the fuzz corpora (`fuzz/seeds/<target>/`): valid messages of every kind the fuzz
//! targets decode, so coverage-guided fuzzing starts from inputs that pass every check.
//!
//! Always runs as a test: every seed is built and checked to pass its decoder. With
//! `APIARY_WRITE_FUZZ_SEEDS=1` it also (re)writes the seed files:
//!
//! ```text
//! APIARY_WRITE_FUZZ_SEEDS=1 cargo test -p apiary-tests --test fuzz_seeds
//! ```
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use apiary_actors::protocol::{GossipMsg, UpdateAnnouncement, WindowRecord};
use apiary_chain::keys::Hotkey;
use apiary_compress::{CompressConfig, CompressedUpdate, Compressor};
use apiary_config::NodeConfig;
use apiary_model::{OuterState, Params, Update};
use apiary_net::{
    blob_codec, range_codec, BlobRequest, BlobResponse, Outboard, RangeRequest, RangeResponse,
    SignedEnvelope, BLOB_PROTOCOL, PART_LOG, RANGE_PROTOCOL,
};
use apiary_storage::ContentId;
use futures::executor::block_on;
use futures::io::Cursor;
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;

/// The fuzz targets' tiny model; must match `tiny_cfg` in `fuzz/src/lib.rs`.
fn tiny_cfg(compressed: bool) -> NodeConfig {
    let mut cfg = NodeConfig::default();
    cfg.model.vocab_size = 16;
    cfg.model.d_model = 8;
    cfg.model.n_layers = 1;
    cfg.model.n_heads = 2;
    cfg.model.d_ff = 16;
    cfg.model.seq_len = 8;
    cfg.compression.enabled = compressed;
    cfg.compression.chunk = 16;
    cfg.compression.topk = 4;
    cfg
}

fn messages() -> Vec<GossipMsg> {
    vec![
        GossipMsg::Update(UpdateAnnouncement {
            netuid: 1,
            window: 7,
            uid: 3,
            base_model: ContentId::of(b"base"),
            update: ContentId::of(b"update"),
            size: 12_345,
            loss: 2.5,
            sync_slice: Some(ContentId::of(b"slice")),
        }),
        GossipMsg::Update(UpdateAnnouncement {
            netuid: 1,
            window: u64::MAX,
            uid: 0,
            base_model: ContentId::of(b"base"),
            update: ContentId::of(b"update2"),
            size: 0,
            loss: 0.0,
            sync_slice: None,
        }),
        GossipMsg::Record(WindowRecord {
            netuid: 1,
            window: 9,
            base_model: ContentId::of(b"base"),
            accepted: vec![(1, ContentId::of(b"u1")), (3, ContentId::of(b"u3"))],
            model: ContentId::of(b"next"),
            outer_state: ContentId::of(b"outer"),
            scores: vec![(1, 0.9), (3, 0.1)],
            dataset: ContentId::of(b"data"),
        }),
    ]
}

fn compressed_configs() -> Vec<CompressConfig> {
    let base = CompressConfig {
        chunk: 16,
        topk: 4,
        dct: false,
        quant_bits: None,
    };
    vec![
        base,
        CompressConfig { dct: true, ..base },
        CompressConfig {
            quant_bits: Some(8),
            ..base
        },
        CompressConfig {
            dct: true,
            quant_bits: Some(2),
            chunk: 8,
            topk: 3,
        },
    ]
}

/// `(target, file name, bytes)` of every seed, each checked against its decoder.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let key = Hotkey::from_dev_label("fuzz-0");
    for (i, m) in messages().iter().enumerate() {
        let payload = m.encode();
        assert!(GossipMsg::decode(&payload, 64 << 10).is_ok());
        out.push(("gossip_msg", format!("msg-{i}"), payload.clone()));
        let env = SignedEnvelope::sign(&key, &apiary_net::SubnetTag([7; 32]), payload).encode();
        let back = SignedEnvelope::decode(&env, 64 << 10).unwrap();
        back.verify(&apiary_net::SubnetTag([7; 32])).unwrap();
        out.push(("envelope", format!("env-{i}"), env));
    }

    // Update blobs: selector byte (bit 0: compressed, bit 1: also as an outer state) + bytes.
    let dense_cfg = tiny_cfg(false);
    let update = Update::random_like(&dense_cfg.model, 1, 0.01).unwrap();
    let dense = update.to_bytes().unwrap();
    assert!(apiary_actors::updates::decode(&dense_cfg, &dense).is_ok());
    out.push(("update_blob", "dense".into(), [&[0u8][..], &dense].concat()));
    let zcfg = tiny_cfg(true);
    let mut enc = apiary_actors::updates::Encoder::new(&zcfg).unwrap();
    let packed = enc.encode(&update).unwrap();
    assert!(apiary_actors::updates::decode(&zcfg, &packed).is_ok());
    out.push((
        "update_blob",
        "compressed".into(),
        [&[1u8][..], &packed].concat(),
    ));
    let mut mcfg = dense_cfg.clone();
    mcfg.train.outer_momentum = 0.9;
    let base = Params::init(&mcfg.model).unwrap();
    let (_, outer) = apiary_actors::updates::outer_step(
        &mcfg,
        &base,
        &OuterState::new(),
        std::slice::from_ref(&update),
    )
    .unwrap();
    let outer_bytes = outer.to_bytes(&mcfg.model).unwrap();
    assert!(OuterState::from_bytes(&mcfg.model, &outer_bytes).is_ok());
    out.push((
        "update_blob",
        "outer".into(),
        [&[2u8][..], &outer_bytes].concat(),
    ));

    // Compressed updates of several configs.
    let vecs = update.to_vecs().unwrap();
    let lengths: Vec<usize> = vecs.iter().map(Vec::len).collect();
    for (i, z) in compressed_configs().into_iter().enumerate() {
        let bytes = Compressor::new(z, &lengths)
            .unwrap()
            .compress(&vecs)
            .unwrap()
            .to_bytes();
        assert!(CompressedUpdate::from_bytes(&bytes).is_ok());
        out.push(("compressed_update", format!("cfg-{i}"), bytes));
    }

    // Sync proofs of the tiny model (the subnet's fraction, and a wider one).
    for (i, fraction) in [dense_cfg.train.sync_slice_fraction, 0.25]
        .into_iter()
        .enumerate()
    {
        let mut c = dense_cfg.clone();
        c.train.sync_slice_fraction = fraction;
        let seed = [i as u8 + 1; 32];
        let proof = apiary_actors::sync::make_proof(&c, &base, &seed).unwrap();
        apiary_actors::sync::check_proof(&c, &base, &seed, &proof).unwrap();
        out.push(("sync_slice", format!("proof-{i}"), proof));
    }

    // Blob protocol streams, written by the swarm's codec.
    let proto = StreamProtocol::new(BLOB_PROTOCOL);
    let mut codec = blob_codec(256 << 20);
    let mut w = Cursor::new(Vec::new());
    block_on(codec.write_request(&proto, &mut w, BlobRequest { id: [5; 32] })).unwrap();
    out.push(("blob_codec", "request".into(), w.into_inner()));
    for (name, resp) in [
        (
            "found",
            BlobResponse::Found(serde_bytes::ByteBuf::from(b"hello".to_vec())),
        ),
        ("not-found", BlobResponse::NotFound),
        ("too-large", BlobResponse::TooLarge { size: 1 << 40 }),
    ] {
        let mut w = Cursor::new(Vec::new());
        block_on(codec.write_response(&proto, &mut w, resp.clone())).unwrap();
        let bytes = w.into_inner();
        let back = block_on(codec.read_response(&proto, &mut Cursor::new(bytes.clone())));
        assert_eq!(back.unwrap(), resp);
        out.push(("blob_codec", name.into(), bytes));
    }

    // Range protocol streams (same target), and a stored outboard.
    let rproto = StreamProtocol::new(RANGE_PROTOCOL);
    let mut rcodec = range_codec();
    for (name, req) in [
        (
            "range-outboard-request",
            RangeRequest::Outboard { id: [6; 32] },
        ),
        (
            "range-groups-request",
            RangeRequest::Groups {
                id: [6; 32],
                first: 3,
                count: 8,
            },
        ),
    ] {
        let mut w = Cursor::new(Vec::new());
        block_on(rcodec.write_request(&rproto, &mut w, req)).unwrap();
        out.push(("blob_codec", name.into(), w.into_inner()));
    }
    let big: Vec<u8> = (0..(2usize << PART_LOG) + 100).map(|i| i as u8).collect();
    let ob = Outboard::compute(&big, PART_LOG).unwrap();
    ob.verify(blake3::hash(&big).as_bytes()).unwrap();
    for (name, resp) in [
        (
            "range-outboard",
            RangeResponse::Outboard {
                len: ob.len,
                cvs: serde_bytes::ByteBuf::from(ob.cvs.concat()),
                inline: None,
            },
        ),
        (
            "range-inline",
            RangeResponse::Outboard {
                len: 5,
                cvs: serde_bytes::ByteBuf::new(),
                inline: Some(serde_bytes::ByteBuf::from(b"hello".to_vec())),
            },
        ),
        (
            "range-groups",
            RangeResponse::Groups(serde_bytes::ByteBuf::from(vec![1u8; 300])),
        ),
        ("range-busy", RangeResponse::Busy),
    ] {
        let mut w = Cursor::new(Vec::new());
        block_on(rcodec.write_response(&rproto, &mut w, resp.clone())).unwrap();
        let bytes = w.into_inner();
        let back = block_on(rcodec.read_response(&rproto, &mut Cursor::new(bytes.clone())));
        assert_eq!(back.unwrap(), resp);
        out.push(("blob_codec", name.into(), bytes));
    }
    let stored = ob.encode();
    assert_eq!(Outboard::decode(&stored).unwrap(), ob);
    out.push(("blob_codec", "stored-outboard".into(), stored));

    // A competition model manifest: the tiny model exported and packaged in 1 KiB pieces.
    {
        let dir = tempfile::tempdir().unwrap();
        apiary_model::export_hf_dir(
            &base,
            &dense_cfg.model,
            dir.path(),
            apiary_model::HfDtype::F32,
            None,
        )
        .unwrap();
        let m = apiary_compete::package_dir(dir.path(), "tiny", 1024, |_, _| {
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap();
        let bytes = m.to_bytes();
        assert_eq!(
            apiary_compete::ModelManifest::from_bytes(&bytes, 1 << 20).unwrap(),
            m
        );
        out.push(("model_manifest", "tiny".into(), bytes));
    }
    out.push((
        "admin_request",
        "compete-submit".into(),
        b"{\"cmd\":\"compete_submit\",\"path\":\"/tmp/m\",\"competition\":\"tiny\"}\n".to_vec(),
    ));

    // Admin request lines.
    for (i, line) in [
        r#"{"cmd":"status"}"#,
        r#"{"cmd":"windows","limit":5}"#,
        r#"{"cmd":"export","path":"/tmp/m","dtype":"bf16"}"#,
        r#"{"cmd":"metrics"}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let line = format!("{line}\n").into_bytes();
        assert!(apiary_daemon::admin::parse_request(&line).is_ok());
        out.push(("admin_request", format!("line-{i}"), line));
    }
    out
}

#[test]
fn fuzz_seeds_are_valid_messages() {
    let seeds = seeds();
    assert!(seeds.len() > 20);
    if std::env::var_os("APIARY_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    for (target, name, bytes) in seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
