//! Whole-swarm acceptance tests: real nodes, libp2p on 127.0.0.1, the embedded chain.

use apiary_actors::protocol::UpdateAnnouncement;
use apiary_actors::sync::SyncStatus;
use apiary_chain::ChainClient;
use apiary_config::Role;
use apiary_storage::{window_uid_key, Column};
use apiary_tests::{init_tracing, test_config, wait_until, TestNet};
use std::sync::atomic::Ordering;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn model_hashes(net: &TestNet) -> Vec<Option<String>> {
    net.nodes
        .iter()
        .map(|n| n.ctx().status().model_hash)
        .collect()
}

/// 3 honest miners, 1 lazy miner, 1 validator, 5 windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_node_swarm_trains_scores_and_sets_weights() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let v = net
        .spawn(test_config(&dir, "validator", Role::Validator))
        .await;
    let mut honest = Vec::new();
    for i in 1..=3 {
        honest.push(
            net.spawn(test_config(&dir, &format!("miner-{i}"), Role::Miner))
                .await,
        );
    }
    let mut lazy_cfg = test_config(&dir, "lazy", Role::Miner);
    lazy_cfg.train.lazy = true;
    let lazy = net.spawn(lazy_cfg).await;
    net.wait_connected(T).await;

    let bpw = net.nodes[v].ctx().cfg.chain.blocks_per_window;
    let vctx = net.nodes[v].ctx().clone();
    let vctx_handles = net.nodes[v].handles().clone();
    let initial_loss = vctx.status().held_out_loss.expect("initial loss");
    // Start at the next window boundary.
    let first = net.chain.head().number / bpw + 1;
    let windows = 5u64;
    for (i, w) in (first..first + windows + 1).enumerate() {
        net.advance_to(w * bpw);
        // The previous window's record is applied everywhere, to the same model.
        if i > 0 {
            let prev = w - 1;
            wait_until(T, &format!("all nodes apply window {prev}"), || async {
                net.nodes
                    .iter()
                    .all(|n| n.ctx().status().model_window == Some(prev))
            })
            .await;
            let hashes = model_hashes(&net);
            assert!(
                hashes.windows(2).all(|p| p[0] == p[1]),
                "model hashes diverge after window {prev}: {hashes:?}"
            );
        }
        if w == first + windows {
            break;
        }
        // Every miner's update for `w` reaches the validator and is scored.
        let eval = vctx_handles.evaluator.clone();
        wait_until(
            T,
            &format!("validator scores 4 updates of window {w}"),
            || async { eval.scored_in(w).await.unwrap_or(0) >= 4 },
        )
        .await;
        // Every honest update of `w` reached the validator over the network: it holds each
        // blob now (checked per window: checkpoint retention later prunes old windows' blobs).
        for &m in &honest {
            let mctx = net.nodes[m].ctx();
            let uid = mctx.uid().expect("miner uid");
            let ann: UpdateAnnouncement = mctx
                .store
                .get(Column::Announcements, &window_uid_key(w, uid))
                .expect("store")
                .unwrap_or_else(|| panic!("miner {uid} announced nothing for window {w}"));
            assert!(
                vctx.store.has_blob(ann.update).expect("store"),
                "validator lacks miner {uid}'s update for window {w}"
            );
        }
    }
    // Every miner held the validator's model: all sync proofs matched (the lazy miner too: it
    // holds the model, it just does not train).
    assert_eq!(
        vctx.metrics.updates_out_of_sync.load(Ordering::Relaxed),
        0,
        "honest miners' sync proofs were rejected"
    );
    let scores = vctx_handles
        .evaluator
        .clone()
        .scores()
        .await
        .expect("scores");
    for &m in honest.iter().chain([&lazy]) {
        let uid = net.nodes[m].ctx().uid().expect("uid");
        let e = scores
            .iter()
            .find(|e| e.uid == uid)
            .unwrap_or_else(|| panic!("no score for uid {uid}: {scores:?}"));
        assert_eq!(e.sync, Some(SyncStatus::InSync), "uid {uid}: {e:?}");
    }
    let fetched = vctx.metrics.blobs_fetched.load(Ordering::Relaxed);
    assert!(
        fetched >= 4 * windows,
        "validator fetched only {fetched} blobs"
    );
    assert!(vctx.net.stats().snapshot().bytes_received > 0);

    let final_loss = vctx.status().held_out_loss.expect("loss");
    assert!(
        final_loss < initial_loss,
        "held-out loss did not drop: {initial_loss} -> {final_loss}"
    );

    // Weights on chain: every honest miner above the lazy one.
    let vuid = vctx.uid().expect("validator uid");
    wait_until(T, "weights on chain", || async {
        !net.chain
            .weights(1, vuid)
            .await
            .expect("weights")
            .is_empty()
    })
    .await;
    let weights = net.chain.weights(1, vuid).await.expect("weights");
    let w_of = |uid: u16| {
        weights
            .iter()
            .find(|(u, _)| *u == uid)
            .map_or(0, |(_, w)| *w)
    };
    let lazy_uid = net.nodes[lazy].ctx().uid().expect("uid");
    for &m in &honest {
        let uid = net.nodes[m].ctx().uid().expect("uid");
        assert!(
            w_of(uid) > w_of(lazy_uid),
            "honest uid {uid} weight {} <= lazy {}: {weights:?}",
            w_of(uid),
            w_of(lazy_uid)
        );
    }
    net.shutdown().await;
}

/// A node stopped and restarted on the same data dir keeps blobs, scores and chain state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_blobs_scores_and_chain_state() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let vcfg = test_config(&dir, "validator", Role::Validator);
    let v = net.spawn(vcfg.clone()).await;
    net.spawn(test_config(&dir, "miner-1", Role::Miner)).await;
    net.wait_connected(T).await;
    let bpw = vcfg.chain.blocks_per_window;
    let first = net.chain.head().number / bpw + 1;
    for w in first..first + 3 {
        net.advance_to(w * bpw);
        let vctx = net.nodes[v].ctx().clone();
        let vctx_handles = net.nodes[v].handles().clone();
        if w > first {
            wait_until(T, "record applied", || async {
                vctx.status().model_window == Some(w - 1)
            })
            .await;
        }
        let eval = vctx_handles.evaluator.clone();
        wait_until(T, "update scored", || async {
            eval.scored_in(w).await.unwrap_or(0) >= 1
        })
        .await;
    }
    let vctx = net.nodes[v].ctx().clone();
    let vctx_handles = net.nodes[v].handles().clone();
    let scores_before = vctx_handles
        .evaluator
        .clone()
        .scores()
        .await
        .expect("scores");
    assert!(!scores_before.is_empty());
    let blobs_before = vctx.store.blob_count().expect("count");
    let model_before = vctx.status().model_hash.clone();
    let block_before: apiary_chain::BlockInfo = vctx
        .store
        .get(Column::ChainView, b"latest_block")
        .expect("store")
        .expect("block persisted");
    drop(vctx);
    let node = net.nodes.remove(v);
    node.shutdown().await;

    // The database lock is released once the node's tasks have wound down.
    let chain: std::sync::Arc<dyn ChainClient> = net.chain.clone();
    let mut restarted = None;
    for _ in 0..200 {
        match apiary_daemon::Node::spawn(
            vcfg.clone(),
            apiary_daemon::ChainSource::Shared(chain.clone()),
        )
        .await
        {
            Ok(n) => {
                restarted = Some(n);
                break;
            }
            Err(e) if format!("{e:#}").contains("lock") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("restart failed: {e:#}"),
        }
    }
    let node = restarted.expect("node restarts on its data dir");
    let ctx = node.ctx().clone();
    let ctx_handles = node.handles().clone();
    assert!(ctx.store.blob_count().expect("count") >= blobs_before);
    wait_until(T, "trainer resumed", || async {
        ctx.status().model_hash.is_some()
    })
    .await;
    assert_eq!(
        ctx.status().model_hash,
        model_before,
        "model resumed from the store"
    );
    let scores_after = ctx_handles
        .evaluator
        .clone()
        .scores()
        .await
        .expect("scores");
    assert_eq!(scores_after, scores_before, "scores survive the restart");
    let block_after: apiary_chain::BlockInfo = ctx
        .store
        .get(Column::ChainView, b"latest_block")
        .expect("store")
        .expect("block persisted");
    assert!(block_after.number >= block_before.number);
    node.shutdown().await;
    net.shutdown().await;
}

/// A panicking trainer is restarted; past the budget the node stops with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trainer_panics_are_supervised() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let mut cfg = test_config(&dir, "miner", Role::Miner);
    cfg.supervisor.max_restarts = 2;
    cfg.supervisor.restart_window_secs = 600;
    let socket = cfg.admin_socket_path();
    let i = net.spawn(cfg).await;
    let ctx = net.nodes[i].ctx().clone();
    let ctx_handles = net.nodes[i].handles().clone();
    let status = || async {
        let r = apiary_daemon::admin::request(&socket, &serde_json::json!({"cmd": "status"}))
            .await
            .expect("admin answers");
        assert_eq!(r["ok"], true, "{r}");
        r
    };
    // The operator sees where the node listens (the bound port, dialable as is).
    let r = status().await;
    let addrs = r["result"]["listen_addrs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Every child of a miner is listed with 0 restarts from the start.
    let miner_children: Vec<&str> = apiary_actors::supervisor::children()
        .iter()
        .filter(|c| !c.validator_only)
        .map(|c| c.name)
        .collect();
    let per_actor = ctx.actor_restarts.snapshot();
    assert_eq!(per_actor.len(), miner_children.len(), "{per_actor:?}");
    for name in &miner_children {
        assert_eq!(per_actor.get(name), Some(&0), "{name}: {per_actor:?}");
    }
    let peer = ctx.net.local_peer_id().to_string();
    assert!(
        addrs.iter().any(|a| a.as_str().is_some_and(|a| {
            a.starts_with("/ip4/127.0.0.1/tcp/") && !a.contains("/tcp/0/") && a.ends_with(&peer)
        })),
        "status shows no listen address: {r}"
    );
    for n in 1..=2u64 {
        ctx_handles
            .trainer
            .clone()
            .inject_panic()
            .expect("trainer running");
        wait_until(T, "trainer restarted", || async {
            ctx.metrics.restarts.load(Ordering::Relaxed) == n
                && ctx_handles.trainer.clone().status().await.is_ok()
        })
        .await;
        let r = status().await;
        assert!(r["result"]["model_hash"].is_string());
        // Counted against the trainer only.
        let per_actor = ctx.actor_restarts.snapshot();
        assert_eq!(per_actor.get("trainer"), Some(&n), "{per_actor:?}");
        assert_eq!(per_actor.values().sum::<u64>(), n, "{per_actor:?}");
    }
    // The third failure within the window exceeds the budget.
    ctx_handles
        .trainer
        .clone()
        .inject_panic()
        .expect("trainer running");
    let mut node = net.nodes.remove(i);
    let res = tokio::time::timeout(T, node.wait())
        .await
        .expect("node stops");
    let err = res.expect_err("node must fail past the budget").to_string();
    assert!(err.contains("restart") && err.contains("trainer"), "{err}");
    // The admin socket still explains why.
    let r = status().await;
    assert!(
        r["result"]["fatal"]
            .as_str()
            .is_some_and(|f| f.contains("budget")),
        "{r}"
    );
    node.shutdown().await;
    net.shutdown().await;
}
