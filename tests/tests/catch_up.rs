//! Late joiners and partitions: real nodes on 127.0.0.1 and one embedded chain, with a model
//! whose checkpoint (weights plus outer-optimizer state) is over 1 MiB each, so catching up
//! moves it in verified ranges from several peers (`/apiary/range/1`) into the joiner's store.

use apiary_config::{NodeConfig, Role};
use apiary_tests::{init_tracing, test_config, wait_until, TestNet};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// The test config with a model big enough that its checkpoint is several 1 MiB groups.
fn config(net: &TestNet, name: &str, role: Role) -> NodeConfig {
    let mut c = test_config(net.dir.path(), name, role);
    c.model.d_model = 96;
    c.model.n_layers = 3;
    c.model.n_heads = 4;
    c.model.d_ff = 256;
    c
}

fn hash_of(net: &TestNet, i: usize) -> (Option<u64>, Option<String>) {
    let s = net.nodes[i].ctx().status();
    (s.model_window, s.model_hash)
}

/// Runs window `w` until validator `v` scored `scored` updates of it, then closes it and waits
/// until every node in `appliers` applied its record.
async fn run_window(net: &TestNet, v: usize, scored: usize, appliers: &[usize], w: u64) {
    let bpw = net.nodes[v].ctx().cfg.chain.blocks_per_window;
    net.advance_to(w * bpw);
    let eval = net.nodes[v].handles().evaluator.clone();
    wait_until(
        T,
        &format!("validator scores {scored} updates of window {w}"),
        || async { eval.scored_in(w).await.unwrap_or(0) >= scored },
    )
    .await;
    net.advance_to((w + 1) * bpw);
    wait_until(T, &format!("nodes apply window {w}"), || async {
        appliers
            .iter()
            .all(|&i| net.nodes[i].ctx().status().model_window == Some(w))
    })
    .await;
}

/// Blocks (or unblocks) every pair across `left` and `right`, at both ends.
async fn partition(net: &TestNet, left: &[usize], right: &[usize], cut: bool) {
    for &l in left {
        for &r in right {
            for (from, to) in [(l, r), (r, l)] {
                let handle = &net.nodes[from].ctx().net;
                let other = net.nodes[to].ctx().net.local_peer_id();
                let done = if cut {
                    handle.block_peer(other).await
                } else {
                    handle.unblock_peer(other).await
                };
                done.expect("the network is running");
            }
        }
    }
}

/// A miner that joins after several windows of training reaches the swarm's model hash within
/// two windows, by downloading the checkpoint in ranges from the peers that hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_joiner_reaches_the_swarm_model_within_two_windows() {
    init_tracing();
    let mut net = TestNet::new();
    let v = net.spawn(config(&net, "validator", Role::Validator)).await;
    let m1 = net.spawn(config(&net, "miner-1", Role::Miner)).await;
    let m2 = net.spawn(config(&net, "miner-2", Role::Miner)).await;
    net.wait_connected(T).await;
    let initial = hash_of(&net, v).1;
    let bpw = net.nodes[v].ctx().cfg.chain.blocks_per_window;
    let first = net.chain.head().number / bpw + 1;
    for w in first..first + 3 {
        run_window(&net, v, 2, &[v, m1, m2], w).await;
    }
    let swarm = hash_of(&net, v);
    assert_ne!(swarm.1, initial, "the swarm trained: its model moved");

    // The joiner starts with the initial model, three windows behind.
    let j = net.spawn(config(&net, "joiner", Role::Miner)).await;
    net.wait_connected(T).await;
    let joined_at = net.chain.head().number / bpw;
    assert_eq!(hash_of(&net, j).1, initial);

    // Within two windows of joining, it holds the swarm's model for the same window.
    let mut caught_up_at = None;
    for k in 1..=2u64 {
        run_window(&net, v, 2, &[v, m1, m2], joined_at + k).await;
        let want = hash_of(&net, v);
        let reached = tokio::time::timeout(Duration::from_secs(60), async {
            while hash_of(&net, j) != want {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok();
        if reached {
            caught_up_at = Some(k);
            break;
        }
    }
    let k = caught_up_at.unwrap_or_else(|| {
        panic!(
            "the joiner did not reach the swarm's model within 2 windows: joiner {:?}, swarm {:?}",
            hash_of(&net, j),
            hash_of(&net, v)
        )
    });
    // It caught up either by downloading the checkpoint in verified ranges (the usual way: its
    // model is not the record's base) or, when a record built on a model it already held
    // reached it first, by recomputing the aggregate from the accepted updates.
    let stats = net.nodes[j].ctx().net.stats().snapshot();
    if stats.downloads_completed == 0 {
        assert!(
            stats.blobs_fetched >= 1,
            "neither downloaded the checkpoint nor fetched updates: {stats:?}"
        );
    } else {
        assert!(
            stats.ranges_fetched >= 2,
            "a checkpoint over 1 MiB comes in several verified ranges: {stats:?}"
        );
    }
    assert_eq!(stats.bad_ranges, 0);
    eprintln!(
        "joiner caught up {k} window(s) after joining: {} ranges, {} bytes received",
        stats.ranges_fetched, stats.bytes_received
    );
    net.shutdown().await;
}

/// A swarm cut into two halves for three windows, then healed, converges to one model hash.
///
/// The partition is made with libp2p's block list at both ends of every cross-half pair
/// ([`apiary_net::NetHandle::block_peer`]): connections between the halves close and every
/// dial across is refused, in both directions, while the chain (shared in-process) keeps
/// producing blocks for everyone. The half without the validator receives no window records,
/// so its model stays behind; after the blocks are lifted it reconnects, receives the next
/// record, finds that record's base is not its model, and downloads the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_swarm_heals_to_one_model_hash() {
    init_tracing();
    let mut net = TestNet::new();
    let v = net.spawn(config(&net, "validator", Role::Validator)).await;
    let a = net.spawn(config(&net, "miner-a", Role::Miner)).await;
    let b1 = net.spawn(config(&net, "miner-b1", Role::Miner)).await;
    let b2 = net.spawn(config(&net, "miner-b2", Role::Miner)).await;
    net.wait_connected(T).await;
    let bpw = net.nodes[v].ctx().cfg.chain.blocks_per_window;
    let first = net.chain.head().number / bpw + 1;
    run_window(&net, v, 3, &[v, a, b1, b2], first).await;

    // Cut {validator, miner-a} from {miner-b1, miner-b2}.
    let (left, right) = ([v, a], [b1, b2]);
    let peer = |i: usize| net.nodes[i].ctx().net.local_peer_id();
    partition(&net, &left, &right, true).await;
    wait_until(T, "the halves disconnect", || async {
        let mut cut = true;
        for &l in &left {
            let connected = net.nodes[l].ctx().net.connected_peers().await;
            cut &= right.iter().all(|&r| !connected.contains(&peer(r)));
        }
        cut
    })
    .await;
    let split_at = hash_of(&net, b1);
    for w in first + 1..first + 4 {
        run_window(&net, v, 1, &[v, a], w).await;
    }
    assert_ne!(
        hash_of(&net, v).1,
        hash_of(&net, b1).1,
        "the halves diverged"
    );
    assert_eq!(
        hash_of(&net, b1),
        split_at,
        "the cut-off half received no record"
    );

    // Heal.
    partition(&net, &left, &right, false).await;
    net.wait_connected(T).await;
    run_window(&net, v, 1, &[v, a, b1, b2], first + 4).await;
    let hashes: Vec<_> = (0..net.nodes.len()).map(|i| hash_of(&net, i)).collect();
    assert!(
        hashes.windows(2).all(|p| p[0] == p[1]),
        "one model hash after healing: {hashes:?}"
    );
    for i in right {
        let s = net.nodes[i].ctx().net.stats().snapshot();
        assert!(s.downloads_completed >= 1, "caught up by download: {s:?}");
    }
    net.shutdown().await;
}
