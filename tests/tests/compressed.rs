//! A swarm that trains DiLoCo-style with compressed updates (top-k 1.56 % with error feedback,
//! 8-bit values) and a Nesterov outer optimizer whose momentum is replicated state.

use apiary_actors::protocol::UpdateAnnouncement;
use apiary_chain::ChainClient;
use apiary_config::{NodeConfig, Role};
use apiary_storage::{window_uid_key, Column};
use apiary_tests::{init_tracing, test_config, wait_until, TestNet};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn compressed(dir: &Path, name: &str, role: Role) -> NodeConfig {
    let mut c = test_config(dir, name, role);
    c.compression.enabled = true;
    c.compression.chunk = 256;
    c.compression.topk = 4;
    c.compression.quant_bits = 8;
    c.train.outer_momentum = 0.9;
    c.train.outer_nesterov = true;
    c.train.outer_lr = 0.7;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compressed_diloco_swarm_learns_agrees_and_late_joiner_catches_up() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let v = net
        .spawn(compressed(&dir, "validator", Role::Validator))
        .await;
    let mut honest = Vec::new();
    for i in 1..=3 {
        honest.push(
            net.spawn(compressed(&dir, &format!("miner-{i}"), Role::Miner))
                .await,
        );
    }
    let mut lazy_cfg = compressed(&dir, "lazy", Role::Miner);
    lazy_cfg.train.lazy = true;
    let lazy = net.spawn(lazy_cfg).await;
    net.wait_connected(T).await;

    let vctx = net.nodes[v].ctx().clone();

    let vctx_handles = net.nodes[v].handles().clone();
    let bpw = vctx.cfg.chain.blocks_per_window;
    let initial_loss = vctx.status().held_out_loss.expect("initial loss");
    let first = net.chain.head().number / bpw + 1;
    let windows = 6u64;
    let mut late = None;
    for (i, w) in (first..first + windows + 1).enumerate() {
        net.advance_to(w * bpw);
        if i > 0 {
            let prev = w - 1;
            wait_until(T, &format!("all nodes apply window {prev}"), || async {
                net.nodes
                    .iter()
                    .all(|n| n.ctx().status().model_window == Some(prev))
            })
            .await;
            let hashes: Vec<_> = net
                .nodes
                .iter()
                .map(|n| n.ctx().status().model_hash)
                .collect();
            assert!(
                hashes.windows(2).all(|p| p[0] == p[1]),
                "model hashes diverge after window {prev}: {hashes:?}"
            );
        }
        if w == first + windows {
            break;
        }
        let expected = if late.is_some() { 5 } else { 4 };
        let eval = vctx_handles.evaluator.clone();
        wait_until(T, &format!("validator scores window {w}"), || async {
            eval.scored_in(w).await.unwrap_or(0) >= expected
        })
        .await;
        // A miner joins after three windows of momentum have accumulated: it must adopt the
        // model *and* the outer state (else its next aggregate would differ) from its peers.
        if i == 2 {
            let idx = net.spawn(compressed(&dir, "late-miner", Role::Miner)).await;
            net.wait_connected(T).await;
            late = Some(idx);
        }
    }

    // Updates travelled compressed: each blob is a small fraction of the dense f32 update.
    let dense_bytes = 4 * apiary_model::Params::init(&vctx.cfg.model)
        .expect("init")
        .num_params() as u64;
    for &m in &honest {
        let mctx = net.nodes[m].ctx();
        let uid = mctx.uid().expect("uid");
        let ann: UpdateAnnouncement = mctx
            .store
            // The last window's: announcements of older windows have expired (retention).
            .get(
                Column::Announcements,
                &window_uid_key(first + windows - 1, uid),
            )
            .expect("store")
            .expect("announced");
        assert!(
            ann.size * 40 < dense_bytes,
            "update of {} bytes is not compressed (dense {dense_bytes})",
            ann.size
        );
    }
    let late_ctx = net.nodes[late.expect("late miner")].ctx().clone();
    assert!(
        late_ctx
            .metrics
            .catchups
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the late miner caught up by downloading a checkpoint"
    );

    let final_loss = vctx.status().held_out_loss.expect("loss");
    assert!(
        final_loss < initial_loss,
        "held-out loss did not drop: {initial_loss} -> {final_loss}"
    );
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
