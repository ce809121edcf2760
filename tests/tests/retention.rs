//! Retention over many windows: with a lazy miner (whose updates are stored, scored below
//! `min_score` and never accepted), the store stays bounded and no blob that a kept record
//! names is ever removed.

use apiary_actors::trainer::AppliedWindow;
use apiary_config::Role;
use apiary_storage::Column;
use apiary_tests::{init_tracing, test_config, wait_until, TestNet};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_windows_with_a_lazy_miner_keep_the_store_bounded_and_every_kept_model() {
    init_tracing();
    let started = Instant::now();
    // APIARY_TEST_NO_GC=1 runs the same swarm without sweeps, to measure what they save.
    let gc = std::env::var("APIARY_TEST_NO_GC").is_err();
    let windows: u64 = std::env::var("APIARY_TEST_WINDOWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let cfg = |name: &str, role| {
        let mut c = test_config(&dir, name, role);
        c.checkpoint.keep_recent = 3;
        c.checkpoint.every_windows = 10;
        c.node.gc_every_windows = u64::from(gc);
        c
    };
    let v = net.spawn(cfg("validator", Role::Validator)).await;
    net.spawn(cfg("miner", Role::Miner)).await;
    let mut lazy = cfg("lazy", Role::Miner);
    lazy.train.lazy = true;
    // The lazy miner runs over a (tiny) disk budget: it counts that, and sweeps and compacts
    // after every window.
    lazy.node.disk_budget_mb = 1;
    net.spawn(lazy).await;
    net.wait_connected(T).await;

    let bpw = net.nodes[v].ctx().cfg.chain.blocks_per_window;
    let eval = net.nodes[v].handles().evaluator.clone();
    let first = net.chain.head().number / bpw + 1;
    let mut max_blobs = vec![0usize; net.nodes.len()];
    let mut max_disk = vec![0u64; net.nodes.len()];
    for (i, w) in (first..=first + windows).enumerate() {
        net.advance_to(w * bpw);
        if i > 0 {
            let prev = w - 1;
            wait_until(T, &format!("all nodes apply window {prev}"), || async {
                net.nodes
                    .iter()
                    .all(|n| n.ctx().status().model_window == Some(prev))
            })
            .await;
            for (k, n) in net.nodes.iter().enumerate() {
                let s = &n.ctx().store;
                max_blobs[k] = max_blobs[k].max(s.blob_count().expect("count"));
                max_disk[k] = max_disk[k].max(s.disk_bytes());
            }
        }
        if w == first + windows {
            break;
        }
        // Both miners' updates of `w` are scored (the lazy one's below min_score).
        wait_until(
            T,
            &format!("validator scores 2 updates of window {w}"),
            || {
                let eval = eval.clone();
                async move { eval.scored_in(w).await.unwrap_or(0) >= 2 }
            },
        )
        .await;
    }
    let last = first + windows - 1;
    for (k, n) in net.nodes.iter().enumerate() {
        let ctx = n.ctx();
        let s = &ctx.store;
        let usage = s.usage().expect("usage");
        let kept: Vec<AppliedWindow> = s
            .scan::<AppliedWindow>(Column::Windows)
            .expect("scan")
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        let announcements = s.keys(Column::Announcements).expect("keys").len();
        println!(
            "{} (gc {gc}): after {windows} windows {} blobs (max {}), disk {} KiB (max {} KiB), \
             {} windows records, {} announcements, sweeps {} deleted {}",
            ctx.cfg.node.name,
            usage.blob_count,
            max_blobs[k],
            usage.disk_bytes >> 10,
            max_disk[k] >> 10,
            kept.len(),
            announcements,
            usage.sweeps,
            usage.blobs_swept,
        );
        if k == v {
            println!("{}", serde_json::to_string(&usage).expect("json"));
        }
        // Every kept window's model and outer state is still there and verifies.
        for w in &kept {
            for id in [w.model, w.outer_state] {
                assert!(
                    s.get_blob(id).expect("readable").is_some(),
                    "{}: window {}'s blob {} was removed",
                    ctx.cfg.node.name,
                    w.window,
                    id.short()
                );
            }
        }
        // The recent windows' accepted updates too (a follower one behind fetches them).
        for w in kept.iter().rev().take(3) {
            for (_, id) in &w.accepted {
                assert!(s.has_blob(*id).expect("has"), "accepted {id:?} removed");
            }
        }
        if !gc {
            continue;
        }
        // Kept: the last 3 windows and every 10th (of those this node applied).
        let got: Vec<u64> = kept.iter().map(|w| w.window).collect();
        let from = got.first().copied().unwrap_or(first).min(first);
        let want: Vec<u64> = (from..=last)
            .filter(|x| x % 10 == 0 || *x + 3 > last)
            .collect();
        assert_eq!(got, want, "{}: kept windows", ctx.cfg.node.name);
        // Announcements of the last few windows only.
        assert!(announcements <= 3 * 5, "{announcements} announcements kept");
        // Blobs: 2 per kept window + the recent windows' accepted updates + this node's own
        // recent updates and proofs + what the last window wrote; far below one per update.
        let bound = 2 * want.len() + 3 + 2 * 5 + 8;
        assert!(
            max_blobs[k] <= bound,
            "{}: {} blobs at most, bound {bound}",
            ctx.cfg.node.name,
            max_blobs[k]
        );
        assert!(usage.sweeps >= windows - 1);
        // Disk: the kept blobs, SSTs and the WAL since the last reclaim (every 8th sweep
        // compacts and flushes); measured about 4-10 MiB, 30 MiB and growing without sweeps.
        assert!(
            max_disk[k] < 20 << 20,
            "{}: store reached {} KiB",
            ctx.cfg.node.name,
            max_disk[k] >> 10
        );
        let over = ctx
            .metrics
            .disk_over_budget
            .load(std::sync::atomic::Ordering::Relaxed);
        if ctx.cfg.node.disk_budget_mb > 0 {
            assert!(over >= windows - 1, "over budget counted {over} times");
        } else {
            assert_eq!(over, 0);
        }
    }
    println!("retention test: {:?}", started.elapsed());
    net.shutdown().await;
}
