//! Bad input is rejected, counted and logged, and nothing of it is stored.

use apiary_actors::protocol::{GossipMsg, UpdateAnnouncement};
use apiary_actors::sync::SyncStatus;
use apiary_chain::keys::Hotkey;
use apiary_chain::ChainClient;
use apiary_config::{NodeConfig, Role};
use apiary_net::{BlobProvider, NetParams, SignedEnvelope};
use apiary_storage::{window_uid_key, Column, ContentId};
use apiary_tests::{init_tracing, test_config, wait_until, TestNet};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Serves whatever bytes it was told to under whatever id (it can lie).
#[derive(Default)]
struct Rogue(Mutex<HashMap<[u8; 32], Vec<u8>>>);

impl BlobProvider for Rogue {
    fn get_blob(&self, id: &[u8; 32]) -> Option<Vec<u8>> {
        self.0.lock().expect("lock").get(id).cloned()
    }
}

/// Rebuilds a safetensors blob, changing one tensor with `f`.
fn tamper(bytes: &[u8], f: impl Fn(&str, Vec<usize>, Vec<u8>) -> (Vec<usize>, Vec<u8>)) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("safetensors");
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, (name, view)) in st.tensors().into_iter().enumerate() {
        let (shape, data) = if i == 0 {
            f(&name, view.shape().to_vec(), view.data().to_vec())
        } else {
            (view.shape().to_vec(), view.data().to_vec())
        };
        owned.push((name, view.dtype(), shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_rejected_counted_and_not_stored() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let mut vcfg = test_config(&dir, "validator", Role::Validator);
    // Each bad message is studied on its own here; bans are the attack suite's (attacks.rs).
    vcfg.net.peer_scoring = false;
    let v = net.spawn(vcfg.clone()).await;
    let vctx = net.nodes[v].ctx().clone();
    let tag = vctx.net.subnet_tag();
    let vctx_handles = net.nodes[v].handles().clone();

    // A registered rogue and an unregistered stranger, on a raw libp2p node.
    let rogue_key = Hotkey::from_dev_label("rogue");
    let stranger = Hotkey::from_dev_label("stranger");
    let rogue_uid = net.chain.register(1, &rogue_key).await.expect("register");
    // Two more registered hotkeys published through the rogue's node: one announces an
    // update, the other re-announces the same bytes as its own (a copier).
    let first_key = Hotkey::from_dev_label("first");
    let copier_key = Hotkey::from_dev_label("copier");
    let first_uid = net.chain.register(1, &first_key).await.expect("register");
    let copier_uid = net.chain.register(1, &copier_key).await.expect("register");
    let provider = Arc::new(Rogue::default());
    let mut params = NetParams::new(
        "/ip4/127.0.0.1/tcp/0".parse().expect("addr"),
        apiary_net::Keypair::generate_ed25519(),
        rogue_key.clone(),
        1,
    );
    params.heartbeat = Duration::from_millis(100);
    params.subnet = tag;
    let (rogue, _events) = apiary_net::spawn(params, provider.clone())
        .await
        .expect("rogue net");
    let vaddr = vctx.net.listen_addrs().await[0]
        .clone()
        .with(apiary_net::Protocol::P2p(vctx.net.local_peer_id()));
    rogue.dial(vaddr).await.expect("dial validator");
    wait_until(T, "gossip mesh with the validator", || async {
        rogue.gossip_peers().await >= 1 && vctx.net.gossip_peers().await >= 1
    })
    .await;
    net.block(); // the validator's metagraph learns the rogue
    wait_until(T, "rogue in metagraph", || async {
        vctx.metagraph()
            .is_some_and(|m| m.by_uid(rogue_uid).is_some() && m.by_uid(copier_uid).is_some())
    })
    .await;
    let model = ContentId::from_hex(&vctx.status().model_hash.expect("model")).expect("hex");
    let window = vctx.window();
    let ann = |update: ContentId, size: usize| UpdateAnnouncement {
        netuid: 1,
        window,
        uid: rogue_uid,
        base_model: model,
        update,
        size: size as u64,
        loss: 1.0,
        sync_slice: None,
    };
    let m = &vctx.metrics;
    let ns = || vctx.net.stats().snapshot();
    // Retry publishing until the mesh accepts it (bounded).
    async fn publish(rogue: &apiary_net::NetHandle, env: SignedEnvelope) {
        for _ in 0..100 {
            if rogue.publish_envelope(env.clone()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("could not publish");
    }

    // (1) Bad signature: claims the rogue's hotkey, signed by the stranger.
    let payload = GossipMsg::Update(ann(ContentId::of(b"x"), 1)).encode();
    let mut env = SignedEnvelope::sign(&stranger, &tag, payload.clone());
    env.hotkey = rogue_key.id();
    publish(&rogue, env).await;
    wait_until(T, "bad signature counted", || async {
        ns().bad_signature >= 1
    })
    .await;

    // (2) Unregistered hotkey, validly signed.
    let mut a = ann(ContentId::of(b"y"), 1);
    a.uid = 99;
    publish(
        &rogue,
        SignedEnvelope::sign(&stranger, &tag, GossipMsg::Update(a).encode()),
    )
    .await;
    wait_until(T, "unregistered counted", || async {
        m.gossip_unregistered.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(vctx
        .store
        .get::<UpdateAnnouncement>(Column::Announcements, &window_uid_key(window, 99))
        .expect("store")
        .is_none());

    // (3) Oversize message and (4) a malformed payload.
    let big = vec![7u8; vcfg.net.max_message_bytes * 2];
    for _ in 0..100 {
        if rogue.publish_raw(big.clone()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until(T, "oversize counted", || async { ns().oversize >= 1 }).await;
    publish(
        &rogue,
        SignedEnvelope::sign(&rogue_key, &tag, b"not a gossip message".to_vec()),
    )
    .await;
    wait_until(T, "malformed counted", || async {
        m.gossip_malformed.load(Ordering::Relaxed) >= 1
    })
    .await;

    // (4b) Window numbers at the end of time from a registered hotkey. They used to overflow
    // `window + 1` in the gossip actor (a panic; seven of them used up the restart budget and
    // stopped the node): now they are late, counted, and the node runs on.
    let stale_before = m.gossip_stale.load(Ordering::Relaxed);
    for i in 0..10u8 {
        let mut a = ann(ContentId::of(&[b'w', i]), 1);
        a.window = u64::MAX - u64::from(i % 2);
        publish(
            &rogue,
            SignedEnvelope::sign(&rogue_key, &tag, GossipMsg::Update(a).encode()),
        )
        .await;
    }
    wait_until(T, "absurd windows counted as late", || async {
        m.gossip_stale.load(Ordering::Relaxed) >= stale_before + 10
    })
    .await;
    assert_eq!(m.restarts.load(Ordering::Relaxed), 0, "no actor died");
    assert!(vctx.status().fatal.is_none());

    // (5) A blob whose bytes do not match its id.
    let honest = apiary_model::Update::random_like(&vcfg.model, 1, 0.01)
        .expect("update")
        .to_bytes()
        .expect("bytes");
    let lie_id = ContentId::of(&honest);
    provider
        .0
        .lock()
        .expect("lock")
        .insert(lie_id.0, b"something else entirely".to_vec());
    publish(
        &rogue,
        SignedEnvelope::sign(
            &rogue_key,
            &tag,
            GossipMsg::Update(ann(lie_id, honest.len())).encode(),
        ),
    )
    .await;
    wait_until(T, "hash mismatch counted", || async {
        ns().bad_blob_hash >= 1 && m.updates_bad.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(!vctx.store.has_blob(lie_id).expect("store"));

    // (6) A delta with NaN, and (7) one with the wrong shapes, each for a fresh window slot.
    let nan = tamper(&honest, |_, shape, mut data| {
        data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        (shape, data)
    });
    let wrong = tamper(&honest, |_, shape, data| {
        let n: usize = shape.iter().product();
        (vec![n, 1], data)
    });
    let mut bad_ids = Vec::new();
    for (i, bytes) in [nan, wrong].into_iter().enumerate() {
        // Each rogue update needs its own (window, uid) slot: advance a window.
        let bpw = vcfg.chain.blocks_per_window;
        let target = net.chain.head().number / bpw + 1;
        net.advance_to(target * bpw);
        wait_until(T, "validator in the new window", || async {
            let s = vctx.status();
            s.window == target && s.model_window == Some(target - 1)
        })
        .await;
        let base = ContentId::from_hex(&vctx.status().model_hash.expect("model")).expect("hex");
        // Sealed as the rogue's own (a blob names its author), so `decodes` judges the tensors.
        let bytes = apiary_actors::updates::seal(
            apiary_actors::updates::Author {
                netuid: 1,
                window: target,
                uid: rogue_uid,
            },
            &bytes,
        );
        let id = ContentId::of(&bytes);
        provider.0.lock().expect("lock").insert(id.0, bytes.clone());
        let mut a = ann(id, bytes.len());
        a.window = target;
        a.base_model = base;
        publish(
            &rogue,
            SignedEnvelope::sign(&rogue_key, &tag, GossipMsg::Update(a.clone()).encode()),
        )
        .await;
        let want = 2 + i as u64;
        wait_until(T, "bad delta counted", || async {
            m.updates_bad.load(Ordering::Relaxed) >= want
        })
        .await;
        assert!(!vctx.store.has_blob(id).expect("store"), "bad delta stored");
        assert!(vctx
            .store
            .get::<UpdateAnnouncement>(Column::Announcements, &window_uid_key(a.window, rogue_uid))
            .expect("store")
            .is_none());
        bad_ids.push(id);
    }
    // (8) Well-formed updates with a bad sync proof: a slice of another model (a miner a window
    // behind), and no slice at all. Rejected before recomputation, counted as out of sync, and
    // nothing of them is stored.
    let wire = apiary_model::Update::random_like(&vcfg.model, 2, 0.01)
        .expect("update")
        .to_bytes()
        .expect("bytes");
    let genesis = apiary_model::Params::init(&vcfg.model).expect("params");
    let step = apiary_model::Update::random_like(&vcfg.model, 3, 0.01).expect("update");
    let behind = apiary_model::aggregate(&genesis, &[step], 1.0).expect("params");
    let bad_before = m.updates_bad.load(Ordering::Relaxed);
    for (i, with_slice) in [true, false].into_iter().enumerate() {
        let bpw = vcfg.chain.blocks_per_window;
        let target = net.chain.head().number / bpw + 1;
        net.advance_to(target * bpw);
        wait_until(T, "validator in the new window", || async {
            let s = vctx.status();
            s.window == target && s.model_window == Some(target - 1)
        })
        .await;
        let base = ContentId::from_hex(&vctx.status().model_hash.expect("model")).expect("hex");
        // The rogue's own blob for this window (a blob names its author and window).
        let update = apiary_actors::updates::seal(
            apiary_actors::updates::Author {
                netuid: 1,
                window: target,
                uid: rogue_uid,
            },
            &wire,
        );
        let update_id = ContentId::of(&update);
        provider
            .0
            .lock()
            .expect("lock")
            .insert(update_id.0, update.clone());
        let mut a = ann(update_id, update.len());
        a.window = target;
        a.base_model = base;
        if with_slice {
            let seed = net
                .chain
                .block_hash(target * bpw)
                .await
                .expect("chain")
                .expect("the window's first block");
            let proof = apiary_actors::sync::make_proof(&vcfg, &behind, &seed).expect("proof");
            let proof_id = ContentId::of(&proof);
            provider.0.lock().expect("lock").insert(proof_id.0, proof);
            a.sync_slice = Some(proof_id);
        }
        publish(
            &rogue,
            SignedEnvelope::sign(&rogue_key, &tag, GossipMsg::Update(a.clone()).encode()),
        )
        .await;
        let want = 1 + i as u64;
        wait_until(T, "out-of-sync update counted", || async {
            m.updates_out_of_sync.load(Ordering::Relaxed) >= want
        })
        .await;
        assert!(
            !vctx.store.has_blob(update_id).expect("store"),
            "out-of-sync update stored"
        );
        if let Some(p) = a.sync_slice {
            assert!(!vctx.store.has_blob(p).expect("store"), "sync proof stored");
        }
        assert!(vctx
            .store
            .get::<UpdateAnnouncement>(Column::Announcements, &window_uid_key(a.window, rogue_uid))
            .expect("store")
            .is_none());
    }
    // The rogue's score records why: its sync proof failed (the last one was missing).
    let next = net.chain.head().number / vcfg.chain.blocks_per_window + 1;
    net.advance_to(next * vcfg.chain.blocks_per_window);
    wait_until(T, "the out-of-sync window closed", || async {
        vctx_handles
            .evaluator
            .clone()
            .scores()
            .await
            .unwrap_or_default()
            .iter()
            .any(|e| e.uid == rogue_uid && e.window == next - 1)
    })
    .await;
    let entry = vctx_handles
        .evaluator
        .clone()
        .scores()
        .await
        .expect("scores")
        .into_iter()
        .find(|e| e.uid == rogue_uid)
        .expect("rogue scored");
    assert_eq!(entry.sync, Some(SyncStatus::Invalid), "{entry:?}");
    assert_eq!(entry.last, 0.0);
    assert_eq!(
        m.updates_bad.load(Ordering::Relaxed),
        bad_before,
        "out-of-sync updates are not counted as malformed"
    );

    // Nothing bad reached the model: records after the bad updates accept nothing.
    let bpw = vcfg.chain.blocks_per_window;
    let before = vctx.status().model_hash.clone();
    let next = net.chain.head().number / bpw + 1;
    net.advance_to(next * bpw);
    let closing = next - 1;
    wait_until(T, "window closed", || async {
        vctx.status().model_window == Some(closing)
    })
    .await;
    assert_eq!(
        vctx.status().model_hash,
        before,
        "model changed by bad updates"
    );

    // (8) A malformed admin request gets an error and the socket keeps serving.
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let s = tokio::net::UnixStream::connect(vcfg.admin_socket_path())
            .await
            .expect("admin");
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"this is not json\n{\"cmd\":\"status\"}\n")
            .await
            .expect("write");
        let mut l1 = String::new();
        r.read_line(&mut l1).await.expect("read");
        let v1: serde_json::Value = serde_json::from_str(&l1).expect("json");
        assert_eq!(v1["ok"], false);
        assert!(v1["error"].as_str().expect("error").contains("malformed"));
        let mut l2 = String::new();
        r.read_line(&mut l2).await.expect("read");
        let v2: serde_json::Value = serde_json::from_str(&l2).expect("json");
        assert_eq!(v2["ok"], true, "{v2}");
        let unknown = apiary_daemon::admin::request(
            &vcfg.admin_socket_path(),
            &serde_json::json!({"cmd": "frobnicate"}),
        )
        .await
        .expect("admin");
        assert_eq!(unknown["ok"], false);
    }

    // (9) An invalid config file is refused with the key named, and no node starts from it.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[model]\nd_model = 64\nn_heads = 3\n").expect("write");
    let err = NodeConfig::load(&bad).expect_err("invalid");
    assert!(err.to_string().contains("model.n_heads"), "{err}");
    std::fs::write(&bad, "[modle]\nx = 1\n").expect("write");
    assert!(NodeConfig::load(&bad).is_err());
    let mut c = test_config(&dir, "broken", Role::Miner);
    c.model.n_heads = 3;
    let chain: Arc<dyn ChainClient> = net.chain.clone();
    assert!(
        apiary_daemon::Node::spawn(c, apiary_daemon::ChainSource::Shared(chain))
            .await
            .is_err()
    );

    // (10) A precomputer announces another miner's update id *before* that miner does (it
    // computed the same bytes from public pages): who was heard first decides nothing. The
    // blob names its author, so the early copy is refused as a copy and the author's own
    // announcement, heard second, is not.
    let current = ContentId::from_hex(&vctx.status().model_hash.expect("model")).expect("hex");
    let w = vctx.window();
    let blob = apiary_actors::updates::seal(
        apiary_actors::updates::Author {
            netuid: 1,
            window: w,
            uid: first_uid,
        },
        b"an update worth copying",
    );
    // The validator already holds the bytes (as after fetching them from their author).
    let id = vctx.store.put_blob(&blob).expect("store the blob");
    let mut original = ann(id, blob.len());
    original.uid = first_uid;
    original.window = w;
    original.base_model = current;
    let mut copy = original.clone();
    copy.uid = copier_uid;
    let copied_before = m.updates_copied.load(Ordering::Relaxed);
    publish(
        &rogue,
        SignedEnvelope::sign(&copier_key, &tag, GossipMsg::Update(copy).encode()),
    )
    .await;
    wait_until(T, "the early copy refused as a copy", || async {
        m.updates_copied.load(Ordering::Relaxed) > copied_before
    })
    .await;
    assert_eq!(vctx.rejections.snapshot().get("unique_content"), Some(&1));
    let bad_before = m.updates_bad.load(Ordering::Relaxed);
    let decodes_before = vctx
        .rejections
        .snapshot()
        .get("decodes")
        .copied()
        .unwrap_or(0);
    publish(
        &rogue,
        SignedEnvelope::sign(
            &first_key,
            &tag,
            GossipMsg::Update(original.clone()).encode(),
        ),
    )
    .await;
    // The author's announcement passes the author check and is judged on its bytes (which
    // are not a real update here: `decodes` refuses them), never as a copy.
    wait_until(T, "the author's own announcement evaluated", || async {
        m.updates_bad.load(Ordering::Relaxed) > bad_before
    })
    .await;
    assert_eq!(vctx.rejections.snapshot().get("unique_content"), Some(&1));
    assert_eq!(
        vctx.rejections.snapshot().get("decodes"),
        Some(&(decodes_before + 1))
    );

    rogue.shutdown().await;
    net.shutdown().await;
}
