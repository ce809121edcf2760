//! Against the real subtensor runtime (spec 218) served by chopsticks on 127.0.0.1.
//!
//! Each test starts its own chopsticks (see `apiary_tests::chopsticks`); they run one at a time
//! (2-core CI). Chopsticks builds a block per transaction, and on `dev_newBlock`.

use apiary_chain::keys::Hotkey;
use apiary_chain::{normalize_weights, ChainClient, ChainError, PeerRecord};
use apiary_config::Role;
use apiary_daemon::{ChainSource, Node};
use apiary_subtensor::dev::TAO;
use apiary_subtensor::{SubtensorChain, Wallet};
use apiary_tests::chopsticks::Chopsticks;
use apiary_tests::{init_tracing, test_config, wait_until};
use std::sync::Arc;

fn subxt_value(n: u128) -> apiary_subtensor::values::Value {
    apiary_subtensor::values::Value::u128(n)
}
use std::time::Duration;

/// One chopsticks at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Hotkeys written by the wallet code and read back from the files.
fn wallet_keys(dir: &std::path::Path, names: &[&str]) -> Vec<Hotkey> {
    names
        .iter()
        .map(|n| {
            let w = Wallet::new(Some(dir), "apiary-test", n).expect("wallet names");
            w.create().expect("wallet files");
            w.hotkey().expect("hotkey file reads back")
        })
        .collect()
}

/// Builds blocks until `netuid` has run an epoch and `uid` holds a validator permit.
async fn wait_for_permit(chain: &SubtensorChain, netuid: u16, uid: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mg = chain.metagraph(netuid).await.expect("metagraph");
        if mg.by_uid(uid).is_some_and(|n| n.validator_permit) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "uid {uid} got no validator permit (metagraph at block {}: {:?})",
            mg.block,
            mg.neurons
        );
        chain.dev_new_blocks(5).await.expect("dev_newBlock");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subtensor_registration_commitments_weights_and_runtime_rules() {
    init_tracing();
    let _one = SERIAL.lock().await;
    let started = std::time::Instant::now();
    let chop = Chopsticks::start().await;
    let chain = chop.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = wallet_keys(dir.path(), &["validator", "miner-1", "miner-2", "miner-3"]);

    let owner = Hotkey::from_dev_label("subnet owner");
    let netuid = chain.dev_subnet(&owner, 10).await.expect("create a subnet");

    // An unfunded hotkey cannot register, and is told why.
    let poor = Hotkey::from_dev_label("unfunded");
    let err = chain
        .register(netuid, &poor)
        .await
        .expect_err("an unfunded hotkey cannot register");
    assert!(
        matches!(err, ChainError::InsufficientBalance(_)),
        "unexpected error: {err}"
    );
    assert!(err.to_string().contains("transfer TAO"), "{err}");

    let mut uids = Vec::new();
    for k in &keys {
        uids.push(
            chain
                .dev_register(netuid, k, 1_000)
                .await
                .expect("register"),
        );
    }
    // Registration is idempotent.
    assert_eq!(
        chain.register(netuid, &keys[0]).await.expect("again"),
        uids[0]
    );
    chain
        .add_stake(&keys[0], &keys[0].id(), netuid, 100 * TAO)
        .await
        .expect("validator stake");

    // Every node publishes its peer record; the metagraph carries them back.
    let records: Vec<PeerRecord> = (0..keys.len())
        .map(|i| PeerRecord {
            peer_id: format!("12D3KooWTestPeer{i}"),
            addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 40000 + i)],
            models: Vec::new(),
        })
        .collect();
    for (k, r) in keys.iter().zip(&records) {
        chain
            .set_commitment(netuid, k, r.encode())
            .await
            .expect("commitment");
    }
    let mg = chain.metagraph(netuid).await.expect("metagraph");
    for ((k, r), uid) in keys.iter().zip(&records).zip(&uids) {
        let n = mg.by_hotkey(&k.id()).expect("registered");
        assert_eq!(n.uid, *uid);
        assert_eq!(n.peer.as_ref(), Some(r), "peer record of uid {uid}");
    }

    // The runtime refuses to serve an axon on 127.0.0.1, and the error says why.
    let err = chain
        .serve_axon(&keys[1], netuid, "127.0.0.1".parse().expect("ip"), 8091)
        .await
        .expect_err("loopback axon");
    assert!(matches!(err, ChainError::InvalidAxon(_)), "{err}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    chain
        .serve_axon(&keys[1], netuid, "127.0.0.2".parse().expect("ip"), 8091)
        .await
        .expect("127.0.0.2 is accepted");

    // Weights: the validator needs its permit (an epoch), then what it computes lands on chain.
    wait_for_permit(&chain, netuid, uids[0]).await;
    let scores: Vec<(u16, f64)> = uids[1..]
        .iter()
        .zip([0.9, 0.5, 0.1])
        .map(|(u, s)| (*u, s))
        .collect();
    let (dests, weights) = normalize_weights(&scores);
    chain
        .set_weights(netuid, &keys[0], &dests, &weights, 0)
        .await
        .expect("set_weights");
    let on_chain = chain.weights(netuid, uids[0]).await.expect("read weights");
    let mut expected: Vec<(u16, u16)> =
        dests.iter().copied().zip(weights.iter().copied()).collect();
    expected.sort();
    let mut got = on_chain.clone();
    got.sort();
    assert_eq!(
        got, expected,
        "raw storage Weights equals what was computed"
    );
    let all = chain.all_weights(netuid).await.expect("all weights");
    assert_eq!(all.get(&uids[0]).map(|w| w.len()), Some(expected.len()));

    // Inside the rate limit a second submission is refused locally, saying how long to wait.
    chain
        .sudo_set_weights_rate_limit(netuid, 100)
        .await
        .expect("rate limit");
    let err = chain
        .set_weights(netuid, &keys[0], &dests, &weights, 0)
        .await
        .expect_err("rate limited");
    match &err {
        ChainError::RateLimited { blocks_left, limit } => {
            assert_eq!(*limit, 100);
            assert!(*blocks_left > 0 && *blocks_left <= 100, "{err}");
        }
        other => panic!("expected RateLimited, got {other}"),
    }
    assert!(err.to_string().contains("wait"), "{err}");

    // A miner without a permit is refused locally too.
    let err = chain
        .set_weights(netuid, &keys[1], &[uids[2]], &[1], 0)
        .await
        .expect_err("no permit");
    assert!(
        matches!(
            err,
            ChainError::NoValidatorPermit(..) | ChainError::RateLimited { .. }
        ),
        "{err}"
    );
    // Commit-reveal: with the subnet's switch on, set_weights commits a hash and a later call
    // reveals it; the revealed weights land in raw storage exactly.
    chain
        .sudo_set_weights_rate_limit(netuid, 0)
        .await
        .expect("rate limit off");
    chain
        .sudo(
            "AdminUtils",
            "sudo_set_commit_reveal_weights_enabled",
            &[
                ("netuid", subxt_value(netuid.into())),
                ("enabled", apiary_subtensor::values::bool_value(true)),
            ],
        )
        .await
        .expect("enable commit-reveal");
    let (dests2, weights2) = normalize_weights(&[(uids[1], 0.2), (uids[2], 1.0), (uids[3], 0.6)]);
    chain
        .set_weights(netuid, &keys[0], &dests2, &weights2, 0)
        .await
        .expect("commit weights");
    let mut expected2: Vec<(u16, u16)> = dests2
        .iter()
        .copied()
        .zip(weights2.iter().copied())
        .collect();
    expected2.sort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let revealed = chain.reveal_pending(&keys[0]).await.expect("reveal");
        if revealed > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the weights commit was never revealable"
        );
        chain.dev_new_blocks(5).await.expect("blocks");
    }
    let mut got2 = chain.weights(netuid, uids[0]).await.expect("weights");
    got2.sort();
    assert_eq!(got2, expected2, "revealed weights equal the committed ones");
    eprintln!(
        "subtensor chain scenario took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subtensor_nodes_find_each_other_only_through_the_chain() {
    init_tracing();
    let _one = SERIAL.lock().await;
    let chop = Chopsticks::start().await;
    let chain = chop.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["validator-0", "miner-1", "miner-2", "miner-3"];
    let keys = wallet_keys(&dir.path().join("wallets"), &names);
    let owner = Hotkey::from_dev_label("subnet owner 2");
    let netuid = chain.dev_subnet(&owner, 10).await.expect("subnet");

    // `apiary doctor` against this runtime, for the first node as its operator would set it
    // up: the hotkey is in a btcli wallet but not registered yet.
    let mut dcfg = test_config(dir.path(), names[0], Role::Validator);
    dcfg.chain.backend = apiary_config::ChainBackend::Subtensor;
    dcfg.chain.endpoint = chop.url();
    dcfg.chain.rpc = apiary_config::ChainRpc::Legacy;
    dcfg.chain.wallet_path = Some(dir.path().join("wallets"));
    dcfg.chain.wallet = "apiary-test".into();
    dcfg.chain.hotkey = names[0].into();
    dcfg.chain.netuid = netuid;
    let doctor = |cfg: apiary_config::NodeConfig| async move {
        apiary_daemon::doctor::check(&cfg, std::path::Path::new("node.toml")).await
    };
    let checks = doctor(dcfg.clone()).await;
    let report = apiary_daemon::doctor::render(&checks);
    let find = |checks: &[apiary_daemon::doctor::Check], what: &str| {
        checks
            .iter()
            .find(|c| c.what == what)
            .cloned()
            .unwrap_or_else(|| panic!("no {what} check"))
    };
    let reg = find(&checks, "registration");
    assert_eq!(
        reg.verdict,
        apiary_daemon::doctor::Verdict::Fail,
        "{report}"
    );
    // Both printed commands target this chain: apiary's with every selector, btcli's with
    // `--network <this endpoint>` (without it btcli registers on finney).
    let fix = reg.fix.clone().unwrap_or_default();
    let wallets = dir.path().join("wallets");
    assert_eq!(
        fix,
        format!(
            "register it: `apiary chain register --endpoint {url} --netuid {netuid} --wallet \
             apiary-test --hotkey {} --legacy-rpc --wallet-path {w}` (or with btcli: `btcli \
             subnet register --network {url} --netuid {netuid} --wallet.name apiary-test \
             --wallet.hotkey {} --wallet.path {w}`)",
            names[0],
            names[0],
            url = chop.url(),
            w = wallets.display()
        ),
        "{report}"
    );
    let runtime = find(&checks, "runtime");
    assert_eq!(
        runtime.verdict,
        apiary_daemon::doctor::Verdict::Ok,
        "{report}"
    );
    // Spec 218's metadata: plain and hash-commit calls, no mechanisms, no timelock.
    assert!(
        runtime.detail.starts_with(
            "weight calls: set_weights, commit_weights, reveal_weights; this node uses \
             set_weights (commit_weights + reveal_weights under commit-reveal)"
        ),
        "{report}"
    );
    let calls = chain.weight_calls().await.expect("metadata");
    assert!(!calls.set_mechanism_weights && !calls.commit_timelocked_mechanism_weights);
    assert_eq!(
        find(&checks, "endpoint").verdict,
        apiary_daemon::doctor::Verdict::Ok,
        "{report}"
    );
    assert!(apiary_daemon::doctor::blocks(&checks));

    let shared: Arc<dyn ChainClient> = chain.clone();
    let mut nodes = Vec::new();
    for (name, key) in names.iter().zip(&keys) {
        chain
            .fund_from_alice(&key.id(), 1_000 * TAO)
            .await
            .expect("fund");
        let role = if name.starts_with("validator") {
            Role::Validator
        } else {
            Role::Miner
        };
        let mut cfg = test_config(dir.path(), name, role);
        cfg.chain.netuid = netuid;
        cfg.node.hotkey_seed = Some(hex::encode(key.seed()));
        assert!(cfg.net.bootstrap.is_empty(), "no bootstrap list");
        // Registration and the peer record go through the chain inside Node::spawn.
        let node = Node::spawn(cfg, ChainSource::Shared(Arc::clone(&shared)))
            .await
            .expect("node starts");
        nodes.push(node);
    }
    // Registered now: the doctor finds its uid.
    let checks = doctor(dcfg.clone()).await;
    let reg = find(&checks, "registration");
    assert_eq!(
        reg.verdict,
        apiary_daemon::doctor::Verdict::Ok,
        "{}",
        apiary_daemon::doctor::render(&checks)
    );
    assert!(reg.detail.starts_with("uid "), "{}", reg.detail);

    let mg = chain.metagraph(netuid).await.expect("metagraph");
    for n in &nodes {
        let me = mg.by_hotkey(&n.ctx().hotkey.id()).expect("registered");
        let rec = me.peer.as_ref().expect("peer record committed");
        assert_eq!(rec.peer_id, n.ctx().net.local_peer_id().to_string());
    }
    let want = nodes.len();
    wait_until(
        Duration::from_secs(90),
        "all nodes connected through chain records",
        || {
            let nodes = &nodes;
            async move {
                let mut ok = true;
                for n in nodes {
                    let _ = n.handles().chain_watcher.refresh();
                    if n.ctx().net.connected_peers().await.len() + 1 < want {
                        ok = false;
                    }
                }
                ok
            }
        },
    )
    .await;
    // A node configured for subtensor (endpoint, wallet) signs with the wallet's hotkey and
    // refuses to start unregistered rather than burning TAO on its own.
    let outsider = wallet_keys(&dir.path().join("wallets"), &["outsider"]);
    let mut cfg = test_config(dir.path(), "outsider", Role::Miner);
    cfg.node.hotkey_seed = None;
    cfg.chain.backend = apiary_config::ChainBackend::Subtensor;
    cfg.chain.endpoint = chop.url();
    cfg.chain.rpc = apiary_config::ChainRpc::Legacy;
    cfg.chain.wallet_path = Some(dir.path().join("wallets"));
    cfg.chain.wallet = "apiary-test".into();
    cfg.chain.hotkey = "outsider".into();
    cfg.chain.netuid = netuid;
    let cfg_chain = cfg.chain.clone();
    let err = match Node::spawn(cfg, ChainSource::FromConfig).await {
        Ok(_) => panic!("an unregistered subtensor node must not start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&outsider[0].id().ss58()), "{err}");
    assert!(
        err.contains(&apiary_daemon::hints::register_advice(&cfg_chain)),
        "{err}"
    );

    // The admin socket's status reports the chain connection.
    let st = apiary_daemon::admin::status(nodes[0].ctx()).await;
    let health = st
        .chain_health
        .expect("subtensor reports its connection health");
    assert_eq!(health["connected"], serde_json::json!(true), "{health}");
    assert!(health["last_block"].is_u64(), "{health}");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subtensor_follower_survives_a_chopsticks_restart() {
    init_tracing();
    let _one = SERIAL.lock().await;
    let mut chop = Chopsticks::start().await;
    let chain = chop.client().await;
    let mut blocks = chain.subscribe_blocks();
    chain.dev_new_blocks(2).await.expect("blocks");
    let before = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match blocks.recv().await {
                Ok(b) if b.number >= 2 => return b.number,
                Ok(_) => continue,
                Err(e) => panic!("block stream: {e}"),
            }
        }
    })
    .await
    .expect("blocks arrive");

    chop.restart().await;
    // Blocks made while the follower is still backing off (through a second connection): it
    // must replay them after reconnecting, so no block number (and no window) is lost.
    let other = chop.client().await;
    other
        .dev_new_blocks(3)
        .await
        .expect("blocks during the outage");
    wait_until(Duration::from_secs(120), "the client reconnects", || {
        let chain = Arc::clone(&chain);
        async move {
            let h = chain.health();
            h.connected && h.reconnects >= 1
        }
    })
    .await;
    // It follows the restarted chain: new blocks arrive on the same receiver.
    chain.dev_new_blocks(1).await.expect("blocks after restart");
    let best = chain
        .best_block()
        .await
        .expect("calls work after the restart");
    let mut seen = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match blocks.recv().await {
                Ok(b) => {
                    seen.insert(b.number);
                    if b.number == best.number && b.hash == best.hash {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    panic!("the test's receiver lagged by {n} blocks")
                }
                Err(e) => panic!("block stream closed: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "head {} after the restart never reached the block stream (before: {before})",
            best.number
        )
    });
    let missing: Vec<u64> = (before + 1..=best.number)
        .filter(|n| !seen.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "blocks {missing:?} were never delivered across the restart (before {before}, head {}, health {:?})",
        best.number,
        chain.health()
    );
    assert!(best.number >= before + 4, "the outage blocks were built");
    tracing::info!(health = ?chain.health(), "follower after the restart");
}

/// Produces blocks until the head is at least `n` (transactions build blocks of their own, so
/// the head is read back rather than counted).
async fn advance_to(chain: &SubtensorChain, n: u64) -> u64 {
    loop {
        let head = chain.best_block().await.expect("best block").number;
        if head >= n {
            return head;
        }
        let count = u32::try_from(n - head).expect("a few blocks");
        chain.dev_new_blocks(count).await.expect("dev_newBlock");
    }
}

/// The five-node swarm of `swarm.rs` on the subtensor runtime: 3 honest miners, 1 lazy miner and
/// 1 validator over libp2p on 127.0.0.1, the test driving the chain's blocks window by window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subtensor_five_node_swarm_trains_scores_and_sets_weights() {
    use apiary_actors::protocol::UpdateAnnouncement;
    use apiary_storage::{window_uid_key, Column};

    const T: Duration = Duration::from_secs(120);
    // Room for the validator's set_weights blocks inside a window.
    const BPW: u64 = 4;
    init_tracing();
    let _one = SERIAL.lock().await;
    let started = std::time::Instant::now();
    let chop = Chopsticks::start().await;
    let chain = chop.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["validator", "miner-1", "miner-2", "miner-3", "lazy"];
    let keys = wallet_keys(&dir.path().join("wallets"), &names);
    // The validator owns the subnet: the owner's hotkey holds the subnet's initial stake, so it
    // is the lead validator whose window records everyone follows. dev_subnet also sets the
    // weights rate limit to 0.
    let netuid = chain.dev_subnet(&keys[0], 10).await.expect("subnet");

    // Everyone is registered before any node starts, so each starts with the full metagraph.
    let mut uids = Vec::new();
    for k in &keys {
        uids.push(
            chain
                .dev_register(netuid, k, 1_000)
                .await
                .expect("register"),
        );
    }
    wait_for_permit(&chain, netuid, uids[0]).await;
    let mg = chain.metagraph(netuid).await.expect("metagraph");
    let top = mg
        .neurons
        .iter()
        .filter(|n| n.validator_permit)
        .max_by_key(|n| n.stake)
        .map(|n| n.uid);
    assert_eq!(
        top,
        Some(uids[0]),
        "the validator has the most stake: {:?}",
        mg.neurons
    );

    let shared: Arc<dyn ChainClient> = chain.clone();
    let mut nodes = Vec::new();
    for (name, key) in names.iter().zip(&keys) {
        let role = if *name == "validator" {
            Role::Validator
        } else {
            Role::Miner
        };
        let mut cfg = test_config(dir.path(), name, role);
        cfg.chain.netuid = netuid;
        cfg.chain.blocks_per_window = BPW;
        cfg.node.hotkey_seed = Some(hex::encode(key.seed()));
        cfg.train.lazy = *name == "lazy";
        let node = Node::spawn(cfg, ChainSource::Shared(Arc::clone(&shared)))
            .await
            .expect("node starts");
        nodes.push(node);
    }
    let want = nodes.len();
    wait_until(T, "all nodes connected through chain records", || {
        let nodes = &nodes;
        async move {
            let mut ok = true;
            for n in nodes {
                let _ = n.handles().chain_watcher.refresh();
                if n.ctx().net.connected_peers().await.len() + 1 < want
                    || n.ctx().net.gossip_peers().await + 1 < want
                {
                    ok = false;
                }
            }
            ok
        }
    })
    .await;

    let vctx = nodes[0].ctx().clone();

    let vctx_handles = nodes[0].handles().clone();
    assert_eq!(vctx.uid(), Some(uids[0]));
    // With its peer record published, the validator leads.
    let mg = chain.metagraph(netuid).await.expect("metagraph");
    assert_eq!(
        mg.lead_validator().map(|n| n.uid),
        Some(uids[0]),
        "the validator leads: {:?}",
        mg.neurons
    );
    let honest = &nodes[1..4];
    let lazy = &nodes[4];
    wait_until(T, "initial held-out loss", || async {
        vctx.status().held_out_loss.is_some()
    })
    .await;
    let initial_loss = vctx.status().held_out_loss.expect("initial loss");
    let head = chain.best_block().await.expect("head").number;
    let first = head / BPW + 1;
    let windows = 5u64;
    let eval = vctx_handles.evaluator.clone();
    for (i, w) in (first..first + windows + 1).enumerate() {
        // Miners train a window once they hold the previous window's record, or from its
        // midpoint on; before the first window of the loop they may hold none.
        let start = if i == 0 { w * BPW + BPW / 2 } else { w * BPW };
        let head = advance_to(&chain, start).await;
        assert_eq!(
            head / BPW,
            w,
            "the chain ran past window {w} (head {head}) before the test advanced it"
        );
        // The previous window's record is applied everywhere, to the same model.
        if i > 0 {
            let prev = w - 1;
            wait_until(T, &format!("all nodes apply window {prev}"), || async {
                nodes
                    .iter()
                    .all(|n| n.ctx().status().model_window == Some(prev))
            })
            .await;
            let hashes: Vec<Option<String>> =
                nodes.iter().map(|n| n.ctx().status().model_hash).collect();
            assert!(
                hashes.windows(2).all(|p| p[0] == p[1]),
                "model hashes diverge after window {prev}: {hashes:?}"
            );
        }
        if w == first + windows {
            break;
        }
        // Every miner's update for `w` reaches the validator and is scored.
        wait_until(
            T,
            &format!("validator scores 4 updates of window {w}"),
            || async { eval.scored_in(w).await.unwrap_or(0) >= 4 },
        )
        .await;
        // Every honest update of `w` reached the validator over the network.
        for m in honest {
            let mctx = m.ctx();
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
    let final_loss = vctx.status().held_out_loss.expect("loss");
    assert!(
        final_loss < initial_loss,
        "held-out loss did not drop: {initial_loss} -> {final_loss}"
    );

    // Weights read back from the chain: every honest miner above the lazy one. The validator
    // sets them when a window starts (the lazy miner's zero weight may be left out).
    let vuid = uids[0];
    wait_until(T, "weights on chain", || {
        let chain = Arc::clone(&chain);
        async move {
            !chain
                .weights(netuid, vuid)
                .await
                .expect("weights")
                .is_empty()
        }
    })
    .await;
    let weights = chain.weights(netuid, vuid).await.expect("weights");
    let w_of = |uid: u16| {
        weights
            .iter()
            .find(|(u, _)| *u == uid)
            .map_or(0, |(_, w)| *w)
    };
    let lazy_uid = lazy.ctx().uid().expect("uid");
    for m in honest {
        let uid = m.ctx().uid().expect("uid");
        assert!(
            w_of(uid) > w_of(lazy_uid),
            "honest uid {uid} weight {} <= lazy {}: {weights:?}",
            w_of(uid),
            w_of(lazy_uid)
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
    eprintln!(
        "subtensor swarm scenario took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `apiary devnet --chain URL`: the whole local swarm on the real runtime — it creates a
/// subnet, funds, registers and stakes its nodes with //Alice, and then trains, scores and sets
/// weights as on the embedded chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devnet_runs_on_the_subtensor_runtime() {
    init_tracing();
    let _one = SERIAL.lock().await;
    let chop = Chopsticks::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = test_config(dir.path(), "base", Role::Miner);
    let opts = apiary_daemon::devnet::DevnetOpts {
        miners: 2,
        lazy: 1,
        validators: 1,
        windows: 4,
        block_ms: 400,
        blocks_per_window: 4,
        dir: Some(dir.path().join("devnet")),
        data: apiary_tests::corpus(),
        json: true,
        base: Some(base),
        chain: Some(chop.url()),
        legacy_rpc: true,
        adversaries: Vec::new(),
    };
    let mut out = Vec::new();
    let summary = apiary_daemon::devnet::run(opts, &mut out)
        .await
        .unwrap_or_else(|e| panic!("devnet on subtensor: {e:#}\n{}", chop.log()));
    let text = String::from_utf8_lossy(&out);
    assert_eq!(summary.windows, 4, "{text}");
    assert!(
        summary.final_loss < summary.initial_loss,
        "held-out loss {} -> {}\n{text}",
        summary.initial_loss,
        summary.final_loss
    );
    // The last window line: honest miners outscore the lazy one, on chain too.
    let last: serde_json::Value = text
        .lines()
        .rfind(|l| l.starts_with('{') && l.contains("\"miners\""))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no window lines in:\n{text}"));
    let miners = last["miners"].as_array().expect("miners");
    let weight = |name: &str| {
        miners
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["weight"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        weight("miner-1") > weight("lazy-1") && weight("miner-2") > weight("lazy-1"),
        "on-chain weights: {last}"
    );
}

/// The operator's path of the README against the local subtensor (chopsticks), each step the
/// `apiary` command an operator types, run in this process: `wallet new`, `init` for that
/// endpoint (the written defaults: rpc = auto, the built-in corpus, no `train.data` to edit),
/// `doctor` (registration the one failure, its fix the complete register line), `chain register
/// --yes`, `doctor` again (nothing blocks), then the node `apiary run` starts from the written
/// config: it finds its uid and publishes its peer record on chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn init_doctor_register_run_against_the_local_chain() {
    use clap::Parser;
    init_tracing();
    let _one = SERIAL.lock().await;
    let chop = Chopsticks::start().await;
    let chain = chop.client().await;
    let owner = Hotkey::from_dev_label("subnet owner");
    let netuid = chain.dev_subnet(&owner, 10).await.expect("create a subnet");
    let dir = tempfile::tempdir().expect("tempdir");
    let wallets = dir.path().join("wallets");
    let config = dir.path().join("apiary.toml");
    let data_dir = dir.path().join("node");
    let apiary = |args: Vec<String>| {
        apiary_daemon::cli::Cli::try_parse_from(std::iter::once("apiary".to_string()).chain(args))
            .unwrap_or_else(|e| panic!("arguments: {e}"))
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let path = |p: &std::path::Path| p.display().to_string();

    apiary_daemon::cli::run(apiary(
        [
            s(&[
                "wallet",
                "new",
                "--wallet.name",
                "op",
                "--wallet.hotkey",
                "m1",
            ]),
            s(&[
                "--wallet.path",
                &path(&wallets),
                "--no-mnemonic",
                "--unencrypted-coldkey",
            ]),
        ]
        .concat(),
    ))
    .await
    .expect("apiary wallet new");
    let w = Wallet::new(Some(&wallets), "op", "m1").expect("wallet");
    chain
        .fund_from_alice(&w.coldkey_pub().expect("coldkeypub"), 1_000 * TAO)
        .await
        .expect("fund the coldkey");

    let url = chop.url();
    apiary_daemon::cli::run(apiary(s(&[
        "init",
        "--role",
        "miner",
        "--endpoint",
        &url,
        "--netuid",
        &netuid.to_string(),
        "--wallet",
        "op",
        "--hotkey",
        "m1",
        "--wallet-path",
        &path(&wallets),
        "--data-dir",
        &path(&data_dir),
        "--out",
        &path(&config),
    ])))
    .await
    .expect("apiary init");
    let mut cfg = apiary_config::NodeConfig::load(&config).expect("the written config loads");

    // Before registering, doctor fails on registration only, with the command that fixes it.
    let checks = apiary_daemon::doctor::check(&cfg, &config).await;
    let failing: Vec<_> = checks
        .iter()
        .filter(|c| c.verdict == apiary_daemon::doctor::Verdict::Fail)
        .collect();
    assert_eq!(failing.len(), 1, "{checks:#?}");
    assert_eq!(failing[0].what, "registration", "{checks:#?}");
    let fix = failing[0].fix.clone().expect("a fix");
    assert!(
        fix.contains(&format!(
            "--endpoint {url} --netuid {netuid} --wallet op --hotkey m1"
        )),
        "{fix}"
    );

    apiary_daemon::cli::run(apiary(s(&[
        "chain",
        "register",
        "--config",
        &path(&config),
        "--yes",
    ])))
    .await
    .expect("apiary chain register");
    let checks = apiary_daemon::doctor::check(&cfg, &config).await;
    assert!(!apiary_daemon::doctor::blocks(&checks), "{checks:#?}");

    // `apiary run --config apiary.toml`, with a port of its own for the test.
    cfg.net.listen = "/ip4/127.0.0.1/tcp/0".into();
    let node = Node::spawn(cfg, ChainSource::FromConfig)
        .await
        .expect("the node starts from the written config");
    let hotkey = w.hotkey().expect("hotkey").id();
    let uid = chain
        .metagraph(netuid)
        .await
        .expect("metagraph")
        .by_hotkey(&hotkey)
        .expect("registered")
        .uid;
    let ctx = node.ctx().clone();
    wait_until(
        Duration::from_secs(120),
        "the node knows its uid",
        || async { ctx.status().uid == Some(uid) },
    )
    .await;
    let peer = ctx.net.local_peer_id().to_string();
    let mg = chain.metagraph(netuid).await.expect("metagraph");
    assert_eq!(
        mg.by_uid(uid)
            .and_then(|n| n.peer.as_ref())
            .map(|p| p.peer_id.clone()),
        Some(peer),
        "the node's peer record is on chain"
    );
    node.shutdown().await;
}
