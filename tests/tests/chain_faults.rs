//! The node's chain-facing actors under faults, on the embedded chain seen through a wrapper
//! that injects them: a block stream with gaps, repeats and a rewind (the chain watcher), and
//! `set_weights` calls that fail transiently (the weight setter's retries).

use apiary_actors::weights::WeightSubmission;
use apiary_chain::keys::Hotkey;
use apiary_chain::local::LocalChain;
use apiary_chain::{BlockInfo, ChainClient, ChainError, Metagraph, Result, TxReceipt};
use apiary_config::Role;
use apiary_storage::Column;
use apiary_tests::{init_tracing, test_config, wait_until, TestNet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

const T: Duration = Duration::from_secs(60);

/// The embedded chain, with an optional scripted block stream and `set_weights` failures.
struct Faulty {
    inner: Arc<LocalChain>,
    /// When set, nodes see these blocks instead of the chain's own.
    heads: Option<broadcast::Sender<BlockInfo>>,
    /// `set_weights` calls left to fail with `Unavailable`.
    fail_weights: AtomicU32,
    /// `set_weights` calls made.
    weight_calls: AtomicU32,
}

#[async_trait::async_trait]
impl ChainClient for Faulty {
    fn backend_name(&self) -> &'static str {
        "faulty-local"
    }
    async fn best_block(&self) -> Result<BlockInfo> {
        self.inner.best_block().await
    }
    fn subscribe_blocks(&self) -> broadcast::Receiver<BlockInfo> {
        match &self.heads {
            Some(tx) => tx.subscribe(),
            None => self.inner.subscribe_blocks(),
        }
    }
    async fn block_hash(&self, number: u64) -> Result<Option<[u8; 32]>> {
        self.inner.block_hash(number).await
    }
    async fn metagraph(&self, netuid: u16) -> Result<Metagraph> {
        self.inner.metagraph(netuid).await
    }
    async fn neuron_count(&self, netuid: u16) -> Result<u16> {
        self.inner.neuron_count(netuid).await
    }
    async fn register(&self, netuid: u16, hotkey: &Hotkey) -> Result<u16> {
        self.inner.register(netuid, hotkey).await
    }
    async fn set_commitment(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        data: Vec<u8>,
    ) -> Result<TxReceipt> {
        self.inner.set_commitment(netuid, hotkey, data).await
    }
    async fn set_weights(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<TxReceipt> {
        self.weight_calls.fetch_add(1, Ordering::SeqCst);
        let left = self.fail_weights.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_weights.store(left - 1, Ordering::SeqCst);
            return Err(ChainError::Unavailable(
                "injected: connection reset by peer".into(),
            ));
        }
        self.inner
            .set_weights(netuid, hotkey, uids, weights, version_key)
            .await
    }
    async fn weights(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>> {
        self.inner.weights(netuid, uid).await
    }
}

fn faulty(net: &TestNet, heads: Option<broadcast::Sender<BlockInfo>>, fail: u32) -> Arc<Faulty> {
    Arc::new(Faulty {
        inner: Arc::clone(&net.chain),
        heads,
        fail_weights: AtomicU32::new(fail),
        weight_calls: AtomicU32::new(0),
    })
}

fn block(number: u64, tag: u8) -> BlockInfo {
    let mut hash = [tag; 32];
    hash[..8].copy_from_slice(&number.to_be_bytes());
    BlockInfo {
        number,
        hash,
        timestamp_ms: 0,
    }
}

/// Gaps are counted, repeats dropped, and a head that goes backwards (a restarted dev chain)
/// is followed instead of stalling the watcher until the new chain passes the old height.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chain_watcher_counts_gaps_drops_repeats_and_follows_a_rewind() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    net.advance_to(10);
    let (tx, _) = broadcast::channel(64);
    let chain = faulty(&net, Some(tx.clone()), 0);
    let i = net
        .spawn_on(test_config(&dir, "watcher", Role::Miner), chain)
        .await;
    let ctx = net.nodes[i].ctx().clone();
    let bpw = ctx.cfg.chain.blocks_per_window;
    let head = net.chain.head().number;
    assert_eq!(ctx.status().block, head, "starts at the chain's head");

    // In order; then a gap of two blocks.
    let send = |b: BlockInfo| {
        tx.send(b).expect("the watcher listens");
    };
    send(block(head + 1, 1));
    send(block(head + 4, 1));
    wait_until(T, "the watcher reaches head+4", || async {
        ctx.status().block == head + 4
    })
    .await;
    let m = || ctx.metrics.snapshot();
    assert_eq!(m()["blocks_missed"], 2, "head+2 and head+3 were never seen");
    assert_eq!(m()["chain_rewinds"], 0);

    // A repeat of a block already seen is not a rewind.
    send(block(head + 1, 1));
    send(block(head + 5, 1));
    wait_until(T, "the watcher reaches head+5", || async {
        ctx.status().block == head + 5
    })
    .await;
    assert_eq!(m()["chain_rewinds"], 0, "a repeated block is dropped");

    // The chain restarts from genesis: block 3 with a hash never seen.
    send(block(3, 2));
    wait_until(T, "the watcher follows the restarted chain", || async {
        ctx.status().block == 3
    })
    .await;
    assert_eq!(m()["chain_rewinds"], 1);
    assert_eq!(ctx.status().window, 3 / bpw, "windows follow the new chain");
    send(block(4, 2));
    wait_until(T, "and keeps following it", || async {
        ctx.status().block == 4
    })
    .await;
    assert_eq!(m()["blocks_missed"], 2, "no new gap");
    net.shutdown().await;
}

/// A validator whose first `set_weights` calls fail with an unreachable endpoint retries on
/// the next blocks, records every attempt, and its weights land on chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weight_setter_retries_transient_failures_and_records_every_attempt() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let chain = faulty(&net, None, 2);
    // Windows long enough that both retries fall inside the window that failed.
    let cfg = |name: &str, role| {
        let mut c = test_config(&dir, name, role);
        c.chain.blocks_per_window = 6;
        c
    };
    let v = net
        .spawn_on(cfg("validator", Role::Validator), chain.clone())
        .await;
    net.spawn(cfg("miner", Role::Miner)).await;
    net.wait_connected(T).await;
    let vctx = net.nodes[v].ctx().clone();
    let vctx_handles = net.nodes[v].handles().clone();
    let uid = vctx.status().uid.expect("validator uid");

    // Windows until the validator submits: it scores the miner's update of each window, and
    // its scores reach the weight setter at a later window start.
    let bpw = vctx.cfg.chain.blocks_per_window;
    let eval = vctx_handles.evaluator.clone();
    let mut w = net.chain.head().number / bpw + 1;
    while chain.weight_calls.load(Ordering::SeqCst) == 0 {
        assert!(w < 40, "the validator never submitted weights");
        net.advance_to(w * bpw);
        wait_until(T, &format!("the validator scores window {w}"), || async {
            eval.scored_in(w).await.unwrap_or(0) >= 1
                || chain.weight_calls.load(Ordering::SeqCst) > 0
        })
        .await;
        w += 1;
    }
    // The first submission failed; one retry per block follows.
    for calls in 1..=3u32 {
        wait_until(T, &format!("set_weights call {calls}"), || async {
            chain.weight_calls.load(Ordering::SeqCst) >= calls
        })
        .await;
        if calls < 3 {
            // The failure is recorded before the retry waits for its block.
            wait_until(T, "the failure is recorded", || async {
                vctx.store
                    .scan::<WeightSubmission>(Column::Weights)
                    .map(|r| r.len() >= calls as usize)
                    .unwrap_or(false)
            })
            .await;
            net.block();
        }
    }
    wait_until(T, "the weights land on chain", || async {
        !net.chain
            .weights(1, uid)
            .await
            .unwrap_or_default()
            .is_empty()
    })
    .await;
    // The successful attempt is recorded after the chain took it: wait for its record.
    wait_until(T, "the successful attempt is recorded", || async {
        vctx.store
            .scan::<WeightSubmission>(Column::Weights)
            .map(|r| r.len() >= 3)
            .unwrap_or(false)
    })
    .await;
    let records: Vec<WeightSubmission> = vctx
        .store
        .scan::<WeightSubmission>(Column::Weights)
        .expect("weight records")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert!(records.len() >= 3, "every attempt is recorded: {records:?}");
    let first_window = records[0].window;
    let same: Vec<&WeightSubmission> = records
        .iter()
        .filter(|r| r.window == first_window)
        .collect();
    assert!(
        same.len() >= 3,
        "two failures and a success for one window: {records:?}"
    );
    assert!(same[0]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("unavailable")));
    assert!(same[1].error.is_some());
    assert!(
        same[2].error.is_none() && same[2].block.is_some(),
        "{:?}",
        same[2]
    );
    assert_eq!(chain.fail_weights.load(Ordering::SeqCst), 0);
    net.shutdown().await;
}

/// A registration is seen at the next block (the uid count changed), not only at the periodic
/// metagraph refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_registration_refreshes_the_metagraph_at_the_next_block() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let cfg = |name: &str| {
        let mut c = test_config(&dir, name, Role::Miner);
        c.chain.metagraph_refresh_blocks = 1_000;
        c
    };
    let a = net.spawn(cfg("early")).await;
    let actx = net.nodes[a].ctx().clone();
    let b = net.spawn(cfg("late")).await;
    let late = net.nodes[b].ctx().hotkey.id();
    assert!(
        actx.metagraph()
            .is_none_or(|m| m.by_hotkey(&late).is_none()),
        "the early node has not re-read the metagraph yet"
    );
    net.block();
    wait_until(T, "the early node sees the late registration", || async {
        actx.metagraph()
            .is_some_and(|m| m.by_hotkey(&late).is_some())
    })
    .await;
    assert!(net.chain.head().number < 1_000);
    net.shutdown().await;
}
