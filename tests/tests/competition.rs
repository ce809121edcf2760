//! Model competitions end to end: real nodes on 127.0.0.1, the embedded chain, real models.
//!
//! Three miners enter models trained for 0, 50 and 200 steps; a copier re-commits the best
//! model's exact bytes later; a near-copier commits it with 1e-4 relative noise; one
//! rule-breaker commits a model with too many parameters and one a model with a tokenizer the
//! competition does not use (both bypass the local check, as modified software would). Two
//! validators fetch, check, evaluate and rank them; then the best model's miner goes offline
//! and a third validator that joins later still fetches its model from the nodes that hold it.

use apiary_chain::ModelCommit;
use apiary_config::{CompetitionConfig, ModelConfig, NodeConfig, Role};
use apiary_model::{export_hf_dir, HfDtype, Params};
use apiary_storage::ContentId;
use apiary_tests::{init_tracing, test_config, wait_until, TestNet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const COMP: &str = "tiny";

fn competition() -> CompetitionConfig {
    CompetitionConfig {
        id: COMP.into(),
        // The test model has 37 024 parameters; the rule-breaker's has twice the width.
        max_params: 50_000,
        tokenizer: "bytes".into(),
        seq_len: 32,
        eval_pages: 16,
        eval_delay_blocks: 2,
        eval_every_blocks: 3,
        probe_tokens: 64,
        piece_bytes: 16 * 1024,
        ..CompetitionConfig::default()
    }
}

fn cfg(dir: &Path, name: &str, role: Role) -> NodeConfig {
    let mut c = test_config(dir, name, role);
    c.competitions = vec![competition()];
    // Windows are long: this test is about competitions, and the weight setter still runs.
    c.chain.blocks_per_window = 4;
    c.validator.weights_every_windows = 1;
    c
}

/// `steps` AdamW steps of the test model on the node's data, from the shared init.
fn trained(
    mc: &ModelConfig,
    tc: &apiary_config::TrainConfig,
    pages: &[Vec<u32>],
    steps: usize,
) -> Params {
    let base = Params::init(mc).expect("init");
    if steps == 0 {
        return base;
    }
    let mut t = tc.clone();
    t.local_steps = steps;
    t.batch_pages = 8;
    t.learning_rate = 2e-3;
    let (u, _) = apiary_model::compute_update(mc, &t, &base, pages).expect("train");
    apiary_model::aggregate(&base, &[u], 1.0).expect("apply")
}

/// `p` with every value scaled by `1 + 1e-4 × r`, r uniform in [-1, 1] (deterministic).
fn noisy(mc: &ModelConfig, p: &Params) -> Params {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let vecs = p
        .to_vecs()
        .expect("vecs")
        .into_iter()
        .map(|v| {
            v.into_iter()
                .map(|a| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let r = (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
                    (f64::from(a) * (1.0 + 1e-4 * r)) as f32
                })
                .collect()
        })
        .collect();
    Params::from_vecs(mc, vecs).expect("noisy")
}

fn export(p: &Params, mc: &ModelConfig, dir: &Path, tokenizer: Option<&Path>) -> PathBuf {
    export_hf_dir(p, mc, dir, HfDtype::F32, tokenizer).expect("export");
    dir.to_path_buf()
}

/// Commits a model the way modified software would: stored and committed without the local
/// constraint check.
async fn commit_unchecked(node: &apiary_daemon::Node, dir: &Path) {
    let ctx = node.ctx();
    let store = ctx.store.clone();
    let manifest = apiary_compete::package_dir(dir, COMP, competition().piece_bytes, |id, b| {
        store.put_blob_verified(ContentId(id), b).map(|_| ())
    })
    .expect("package");
    let mid = store.put_blob(&manifest.to_bytes()).expect("manifest");
    let hotkey = ctx.hotkey.id();
    let mut record = apiary_actors::context::local_peer_record(&ctx.net).await;
    record.models = vec![ModelCommit {
        competition: COMP.into(),
        model: hex::encode(mid.0),
        digest: hex::encode(apiary_compete::commit_digest(&mid.0, &hotkey.0)),
    }];
    ctx.chain
        .set_commitment(1, &ctx.hotkey, record.encode())
        .await
        .expect("commit");
}

fn board(node: &apiary_daemon::Node) -> apiary_actors::competition::Leaderboard {
    node.handles()
        .competitions
        .board
        .leaderboards()
        .into_iter()
        .find(|b| b.competition == COMP)
        .unwrap_or_default()
}

fn weights_by_uid(b: &apiary_actors::competition::Leaderboard) -> BTreeMap<u16, f64> {
    b.entries.iter().map(|e| (e.uid, e.weight)).collect()
}

fn cosine(a: &BTreeMap<u16, f64>, b: &BTreeMap<u16, f64>) -> f64 {
    let keys: std::collections::BTreeSet<u16> = a.keys().chain(b.keys()).copied().collect();
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for k in keys {
        let (x, y) = (
            a.get(&k).copied().unwrap_or(0.0),
            b.get(&k).copied().unwrap_or(0.0),
        );
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_are_ranked_copies_and_rule_breakers_earn_nothing_and_models_outlive_their_miner() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let v1 = net.spawn(cfg(&dir, "validator-1", Role::Validator)).await;
    let v2 = net.spawn(cfg(&dir, "validator-2", Role::Validator)).await;
    let names = [
        "m0",
        "m50",
        "m200",
        "copier",
        "near-copier",
        "too-big",
        "wrong-tok",
    ];
    let mut miner = BTreeMap::new();
    for n in names {
        miner.insert(n, net.spawn(cfg(&dir, n, Role::Miner)).await);
    }
    net.wait_connected(T).await;
    let uids: Vec<u16> = net
        .nodes
        .iter()
        .map(|n| n.ctx().uid().expect("registered"))
        .collect();
    let uid = |i: usize| uids[i];

    // The models.
    let ctx = net.nodes[v1].ctx().clone();
    let mc = ctx.cfg.model.clone();
    let n = ctx.dataset.train_pages().min(1600);
    let pages: Vec<Vec<u32>> = (0..n).map(|i| ctx.dataset.page(i).expect("page")).collect();
    let models = dir.join("models");
    let p0 = trained(&mc, &ctx.cfg.train, &pages, 0);
    let p50 = trained(&mc, &ctx.cfg.train, &pages, 50);
    let p200 = trained(&mc, &ctx.cfg.train, &pages, 200);
    let d0 = export(&p0, &mc, &models.join("m0"), None);
    let d50 = export(&p50, &mc, &models.join("m50"), None);
    let d200 = export(&p200, &mc, &models.join("m200"), None);
    let dnear = export(&noisy(&mc, &p200), &mc, &models.join("near"), None);
    let mut big_cfg = mc.clone();
    big_cfg.d_model = 64;
    big_cfg.d_ff = 128;
    let dbig = export(
        &Params::init(&big_cfg).expect("big"),
        &big_cfg,
        &models.join("big"),
        None,
    );
    let tok = dir.join("tokenizer.json");
    std::fs::write(
        &tok,
        br#"{"version":"1.0","model":{"type":"BPE","vocab":{}}}"#,
    )
    .expect("tok");
    let dtok = export(&p50, &mc, &models.join("tok"), Some(&tok));

    // The three honest entries first.
    for (name, d) in [("m0", &d0), ("m50", &d50), ("m200", &d200)] {
        let node = &net.nodes[miner[name]];
        let done = apiary_actors::competition::submit(node.ctx(), COMP, d)
            .await
            .expect("submit");
        assert_eq!(done.competition, COMP);
    }
    // The local check refuses the rule-breakers with their reason...
    for (name, d, why) in [
        ("too-big", &dbig, "params"),
        ("wrong-tok", &dtok, "tokenizer"),
    ] {
        let err = apiary_actors::competition::submit(net.nodes[miner[name]].ctx(), COMP, d)
            .await
            .expect_err("refused locally");
        assert!(err.to_string().contains(why), "{name}: {err}");
    }
    let honest_block = net.chain.head().number;
    for _ in 0..3 {
        net.block();
    }
    // ...so they commit without it; the copier and the near-copier commit later.
    commit_unchecked(&net.nodes[miner["too-big"]], &dbig).await;
    commit_unchecked(&net.nodes[miner["wrong-tok"]], &dtok).await;
    apiary_actors::competition::submit(net.nodes[miner["copier"]].ctx(), COMP, &d200)
        .await
        .expect("copier submits");
    apiary_actors::competition::submit(net.nodes[miner["near-copier"]].ctx(), COMP, &dnear)
        .await
        .expect("near-copier submits");
    assert!(net.chain.head().number > honest_block);

    // Rounds until both validators have evaluated every eligible model at least twice.
    let settled = |b: &apiary_actors::competition::Leaderboard| {
        b.entries.len() == names.len()
            && b.entries.iter().all(|e| e.status != "waiting")
            && b.entries
                .iter()
                .filter(|e| e.status == "eligible")
                .all(|e| e.rounds >= 2)
    };
    let mut block = net.chain.head().number;
    for _ in 0..200 {
        if settled(&board(&net.nodes[v1])) && settled(&board(&net.nodes[v2])) {
            break;
        }
        block += 1;
        net.advance_to(block);
        let round = board(&net.nodes[v1]).rounds;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while board(&net.nodes[v1]).rounds == round {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    let (b1, b2) = (board(&net.nodes[v1]), board(&net.nodes[v2]));
    println!(
        "validator-1: {}",
        serde_json::to_string_pretty(&b1).unwrap_or_default()
    );
    for b in [&b1, &b2] {
        assert!(settled(b), "not settled: {b:?}");
        let e = |n: &str| {
            let u = uid(miner[n]);
            b.entries
                .iter()
                .find(|e| e.uid == u)
                .expect("entry")
                .clone()
        };
        let (best, mid, worst) = (e("m200"), e("m50"), e("m0"));
        assert_eq!(best.status, "eligible");
        assert!(
            best.weight > mid.weight && mid.weight >= worst.weight,
            "{b:?}"
        );
        assert!(best.loss < mid.loss && mid.loss < worst.loss, "{b:?}");
        for (n, status) in [("copier", "copy"), ("near-copier", "near_copy")] {
            let c = e(n);
            assert_eq!(c.status, status, "{n}: {c:?}");
            assert_eq!(c.weight, 0.0, "{n}");
        }
        for (n, why) in [("too-big", "params"), ("wrong-tok", "tokenizer")] {
            let c = e(n);
            assert_eq!(c.status, "refused", "{n}: {c:?}");
            assert!(
                c.reason.as_deref().unwrap_or("").starts_with(why),
                "{n}: {c:?}"
            );
            assert_eq!(c.weight, 0.0);
            assert!(
                b.refusals.get(why).copied().unwrap_or(0) >= 1,
                "{:?}",
                b.refusals
            );
        }
    }
    let (w1, w2) = (weights_by_uid(&b1), weights_by_uid(&b2));
    let agree = cosine(&w1, &w2);
    println!("weights v1 {w1:?}\nweights v2 {w2:?}\ncosine {agree:.4}");
    assert!(agree >= 0.95, "validators disagree: {agree}");

    // The weight setter submits the competition's weights (share 1: training gets none).
    let best_uid = uid(miner["m200"]);
    let bpw = net.nodes[v1].ctx().cfg.chain.blocks_per_window;
    let w = net.chain.head().number / bpw + 2;
    net.advance_to(w * bpw + 1);
    for v in [v1, v2] {
        let vuid = uid(v);
        let chain = net.chain.clone();
        wait_until(T, "weights on chain favour the best model", || {
            let chain = chain.clone();
            async move {
                let ws = apiary_chain::ChainClient::weights(&*chain, 1, vuid)
                    .await
                    .unwrap_or_default();
                ws.iter().max_by_key(|(_, w)| *w).map(|(u, _)| *u) == Some(best_uid)
            }
        })
        .await;
        let block = net.chain.head().number + 1;
        net.advance_to(block);
    }

    // The best model's miner (and the copier, who holds the same bytes) go offline; a
    // validator that joins now fetches the model from the validators that hold it.
    let m200 = miner["m200"];
    let copier = miner["copier"];
    let mut gone = Vec::new();
    for i in [copier, m200] {
        gone.push(net.nodes.remove(i));
    }
    for n in gone {
        n.shutdown().await;
    }
    let v3 = net.spawn(cfg(&dir, "validator-3", Role::Validator)).await;
    net.wait_connected(T).await;
    let mut block = net.chain.head().number;
    wait_until(
        T,
        "the late validator evaluates the offline miner's model",
        || {
            block += 1;
            net.advance_to(block);
            let b = board(&net.nodes[v3]);
            async move {
                b.entries
                    .iter()
                    .any(|e| e.uid == best_uid && e.status == "eligible" && e.rounds >= 1)
            }
        },
    )
    .await;
    let b3 = board(&net.nodes[v3]);
    let top = b3.entries.first().expect("entries");
    assert_eq!(top.uid, best_uid, "{b3:?}");
    net.shutdown().await;
}
