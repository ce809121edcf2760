//! Pay that tracks work (issue 11): an adversarial swarm — 4 honest miners, one miner of each
//! cheat of the adversary kit, 2 copier sybils and 2 validators — against the same swarm
//! without cheats, dense and with compressed updates.
//!
//! After [`WINDOWS`] windows (EMA with `validator.ema_alpha` 0.3: an honest miner's smoothed
//! score is within `0.7^8 ≈ 6 %` of its steady state) both validators' on-chain weights must
//! pay each cheat at most its share of the useful work plus 5 points of an honest miner's
//! weight, rank every honest miner above every cheat, agree (cosine ≥ 0.95), and the shared
//! model must aggregate exactly the honest miners' updates in every window, as the clean swarm
//! does (its held-out loss is printed next to the clean swarm's; see `judge`). Each run prints its table of weight
//! shares (eprintln!; `cargo test -p apiary-tests --test adversary -- --nocapture`).
//!
//! The two tests share the machine's cores: they run one at a time (a lock), each on its own
//! runtime.

use apiary_actors::NodeEvent;
use apiary_chain::ChainClient;
use apiary_config::{AdversaryKind, NodeConfig, Role};
use apiary_tests::{init_tracing, next_event, test_config, wait_until, TestNet};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);
/// Windows each swarm runs.
const WINDOWS: u64 = 8;
/// Honest miners.
const HONEST: usize = 4;
/// Windows in which the kit's `stale` cheat still trains on the current model (its model of 3
/// windows before is the current one until 3 records have been applied).
const STALE_WINDOWS: usize = 3;
/// Copier sybils on top of the kit's one `copier`.
const SYBILS: usize = 2;

/// One swarm at a time: each is ~20 nodes on a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(test: impl std::future::Future<Output = ()>) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test);
}

/// A node of the swarm: its name and the cheat it plays (`None`: honest).
struct Spec {
    name: String,
    cheat: Option<AdversaryKind>,
}

/// What a swarm run ended with.
struct Outcome {
    /// Held-out loss of the final model.
    loss: f32,
    /// Per validator: uid → on-chain weight.
    weights: Vec<BTreeMap<u16, u16>>,
    /// Miners: uid and spec.
    miners: Vec<(u16, Spec)>,
    /// Per measured window: the uids whose updates the applied record aggregated.
    aggregated: Vec<(u64, Vec<u16>)>,
    /// Measured windows in which the `precomputer` announced exactly the content id its victim
    /// announced (its attack was the real one: the victim's own blob).
    precomputed: usize,
}

fn miner_specs(cheats: bool) -> Vec<Spec> {
    let mut specs: Vec<Spec> = (1..=HONEST)
        .map(|i| Spec {
            name: format!("miner-{i}"),
            cheat: None,
        })
        .collect();
    if cheats {
        for k in AdversaryKind::ALL {
            specs.push(Spec {
                name: k.name().to_string(),
                cheat: Some(k),
            });
        }
        for i in 1..=SYBILS {
            specs.push(Spec {
                name: format!("copier-sybil-{i}"),
                cheat: Some(AdversaryKind::Copier),
            });
        }
    }
    specs
}

/// Runs a swarm of 2 validators and `miner_specs(cheats)` for [`WINDOWS`] windows.
async fn swarm(config: fn(&Path, &str, Role) -> NodeConfig, cheats: bool) -> Outcome {
    init_tracing();
    let started = Instant::now();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let mut validators = Vec::new();
    for i in 1..=2 {
        let mut c = config(&dir, &format!("validator-{i}"), Role::Validator);
        // Every window's record is read back at the end: keep them all.
        c.checkpoint.keep_recent = WINDOWS as usize + 8;
        validators.push(net.spawn(c).await);
    }
    let specs = miner_specs(cheats);
    let mut miner_idx = Vec::new();
    for s in &specs {
        let mut c = config(&dir, &s.name, Role::Miner);
        c.train.adversary = s.cheat;
        miner_idx.push(net.spawn(c).await);
    }
    net.wait_connected(T).await;
    // Every announcement is evaluated, copies included (a blob names its author; the
    // announcer it does not name is refused, whoever was heard first).
    let expected = specs.len();

    let vctx: Vec<_> = validators
        .iter()
        .map(|&v| net.nodes[v].ctx().clone())
        .collect();
    let evals: Vec<_> = validators
        .iter()
        .map(|&v| net.nodes[v].handles().evaluator.clone())
        .collect();
    let mut events: Vec<_> = vctx.iter().map(|c| c.events.subscribe()).collect();
    let bpw = vctx[0].cfg.chain.blocks_per_window;
    let mut first = net.chain.head().number / bpw + 1;
    // Compressed: validators replay each miner's error-feedback residual from their recomputes,
    // and a window they did not see (one a miner trained before the swarm was connected) puts
    // them out of step until the next reset; the measured windows start at a reset.
    let reset = vctx[0].cfg.compression.residual_reset_windows;
    if vctx[0].cfg.compression.enabled && reset > 0 {
        first = first.div_ceil(reset) * reset;
    }
    let last = first + WINDOWS;
    for (i, w) in (first..=last).enumerate() {
        net.advance_to(w * bpw);
        if i > 0 {
            let prev = w - 1;
            wait_until(T, &format!("all nodes apply window {prev}"), || async {
                net.nodes
                    .iter()
                    .all(|n| n.ctx().status().model_window == Some(prev))
            })
            .await;
        }
        if w == last {
            break;
        }
        for (k, eval) in evals.iter().enumerate() {
            wait_until(
                T,
                &format!("validator {k} scores {expected} updates of window {w}"),
                || async { eval.scored_in(w).await.unwrap_or(0) >= expected },
            )
            .await;
        }
    }
    // The weights set at the start of the last window carry every window's scores.
    let mut accepted = Vec::new();
    for (k, ev) in events.iter_mut().enumerate() {
        let mut per_window = BTreeMap::new();
        next_event(
            ev,
            T,
            &format!("validator {k} sets weights for window {last}"),
            |e| match e {
                NodeEvent::WeightsSubmitted {
                    window,
                    outcome: Ok(_),
                    ..
                } if window >= last => Some(()),
                NodeEvent::WindowClosed {
                    window, accepted, ..
                } if window >= first => {
                    per_window.insert(window, accepted);
                    None
                }
                _ => None,
            },
        )
        .await;
        accepted.push(per_window.into_values().collect::<Vec<_>>());
    }
    let mut weights = Vec::new();
    for c in &vctx {
        let vuid = c.uid().expect("validator uid");
        weights.push(
            net.chain
                .weights(1, vuid)
                .await
                .expect("weights")
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        );
    }
    let loss = vctx[0].status().held_out_loss.expect("loss");
    let mut aggregated = Vec::new();
    for w in first..last {
        let applied: apiary_actors::trainer::AppliedWindow = vctx[0]
            .store
            .get(apiary_storage::Column::Windows, &apiary_storage::u64_key(w))
            .expect("store")
            .expect("applied window");
        aggregated.push((w, applied.accepted.iter().map(|(u, _)| *u).collect()));
    }
    let mut miners = Vec::new();
    for (s, &idx) in specs.into_iter().zip(&miner_idx) {
        miners.push((net.nodes[idx].ctx().uid().expect("miner uid"), s));
    }
    // The precomputer's announcements against everyone else's, as an honest miner stored them
    // (validators drop the announcements they refuse).
    let witness = net.nodes[miner_idx[1]].ctx().clone();
    let announced = |w: u64, uid: u16| {
        witness
            .store
            .get::<apiary_actors::protocol::UpdateAnnouncement>(
                apiary_storage::Column::Announcements,
                &apiary_storage::window_uid_key(w, uid),
            )
            .ok()
            .flatten()
            .map(|a| a.update)
    };
    let mut precomputed = 0;
    if let Some((pre, _)) = miners
        .iter()
        .find(|(_, s)| s.cheat == Some(AdversaryKind::Precomputer))
    {
        for w in first..last {
            let Some(id) = announced(w, *pre) else {
                continue;
            };
            if miners
                .iter()
                .any(|(u, _)| u != pre && announced(w, *u) == Some(id))
            {
                precomputed += 1;
            }
        }
    }
    eprintln!(
        "swarm of {} miners ({}), {WINDOWS} windows: {:.1} s, held-out loss {loss:.4}, updates \
         accepted per window (per validator) {accepted:?}",
        miners.len(),
        if cheats { "with cheats" } else { "clean" },
        started.elapsed().as_secs_f64()
    );
    net.shutdown().await;
    Outcome {
        loss,
        weights,
        miners,
        aggregated,
        precomputed,
    }
}

/// A cheat's weight limit as a fraction of the mean honest weight: its share of the useful
/// work plus 5 points.
fn limit(kind: AdversaryKind, local_steps: usize) -> f64 {
    match kind {
        AdversaryKind::Partial => 1.0 / local_steps as f64 + 0.05,
        AdversaryKind::Tiny => 0.01 + 0.05,
        _ => 0.05,
    }
}

fn cosine(a: &BTreeMap<u16, u16>, b: &BTreeMap<u16, u16>) -> f64 {
    let uids: std::collections::BTreeSet<u16> = a.keys().chain(b.keys()).copied().collect();
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for u in uids {
        let x = f64::from(a.get(&u).copied().unwrap_or(0));
        let y = f64::from(b.get(&u).copied().unwrap_or(0));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Prints the share table and checks the acceptance rules; returns the violations.
fn judge(label: &str, clean: &Outcome, adv: &Outcome, local_steps: usize) -> Vec<String> {
    let mut bad = Vec::new();
    let w = |v: usize, uid: u16| f64::from(adv.weights[v].get(&uid).copied().unwrap_or(0));
    let honest: Vec<u16> = adv
        .miners
        .iter()
        .filter(|(_, s)| s.cheat.is_none())
        .map(|(u, _)| *u)
        .collect();
    let means: Vec<f64> = (0..adv.weights.len())
        .map(|v| honest.iter().map(|&u| w(v, u)).sum::<f64>() / honest.len() as f64)
        .collect();
    eprintln!("\n{label}: weight as a share of the mean honest weight, per validator");
    eprintln!(
        "{:<16} {:>4} {:>9} {:>9} {:>7}",
        "node", "uid", "val-1", "val-2", "limit"
    );
    for (uid, s) in &adv.miners {
        let shares: Vec<f64> = (0..adv.weights.len())
            .map(|v| {
                if means[v] > 0.0 {
                    w(v, *uid) / means[v]
                } else {
                    f64::NAN
                }
            })
            .collect();
        let lim = s.cheat.map(|k| limit(k, local_steps));
        eprintln!(
            "{:<16} {:>4} {:>8.1}% {:>8.1}% {:>7}",
            s.name,
            uid,
            100.0 * shares[0],
            100.0 * shares[1],
            lim.map_or("-".to_string(), |l| format!("{:.0}%", 100.0 * l))
        );
        if let Some(l) = lim {
            for (v, sh) in shares.iter().enumerate() {
                if sh.is_nan() || *sh > l {
                    bad.push(format!(
                        "{} (uid {uid}) earns {:.1}% of an honest miner at validator {}, limit {:.0}%",
                        s.name,
                        100.0 * sh,
                        v + 1,
                        100.0 * l
                    ));
                }
            }
        }
    }
    for v in 0..adv.weights.len() {
        let min_honest = honest
            .iter()
            .map(|&u| w(v, u))
            .fold(f64::INFINITY, f64::min);
        for (uid, s) in adv.miners.iter().filter(|(_, s)| s.cheat.is_some()) {
            if w(v, *uid) >= min_honest {
                bad.push(format!(
                    "{} (uid {uid}) weight {} at validator {} is not below every honest miner (lowest {min_honest})",
                    s.name,
                    w(v, *uid),
                    v + 1
                ));
            }
        }
    }
    let cos = cosine(&adv.weights[0], &adv.weights[1]);
    eprintln!("cosine of the validators' weight vectors: {cos:.4}");
    if cos.is_nan() || cos < 0.95 {
        bad.push(format!(
            "the validators' weight vectors have cosine {cos:.4} < 0.95"
        ));
    }
    // The shared model learns as fast as without the cheats: it aggregated every honest update
    // and, once no cheat can pass for honest, nothing else, as the clean swarm did. That is the
    // exact form of "held-out loss within 2 % of the clean swarm": two separate swarms draw
    // different pages (a window's pages come from its first block hash, which includes the wall
    // clock), so their losses after 8 windows differ by up to ±3 % each with no cheat at all
    // (a 6 % gap was seen once on a loaded machine); the loss is printed and only a gross gap
    // (10 %, e.g. a poisoned model) fails.
    let mut want = honest.clone();
    want.sort_unstable();
    // In the first windows some cheats still do honest work: `stale` trains on the model of 3
    // windows before, which is the current one until 3 records have been applied, and
    // `replay` / `wrong-pages` repeat their first window's honest work. From then on, only
    // honest updates may be aggregated; before, every honest one must be.
    for (i, (w, uids)) in adv.aggregated.iter().enumerate() {
        let mut got = uids.clone();
        got.sort_unstable();
        let ok = if i < STALE_WINDOWS {
            want.iter().all(|u| got.contains(u))
        } else {
            got == want
        };
        if !ok {
            bad.push(format!(
                "window {w} aggregated uids {got:?}, not exactly the honest miners {want:?}"
            ));
        }
    }
    for (w, uids) in &clean.aggregated {
        if uids.len() != HONEST {
            bad.push(format!(
                "the clean swarm aggregated {} updates in window {w}, not {HONEST}",
                uids.len()
            ));
        }
    }
    // Dense updates are deterministic: the precomputer must have announced its victim's exact
    // blob (the real attack) in at least 2 windows — in the others it computed from the model
    // before the latest record reached it (measured 4 of 8) — and the victim is still
    // aggregated in every window (checked above).
    eprintln!(
        "precomputer announced its victim's exact update id in {} of {WINDOWS} windows",
        adv.precomputed
    );
    if label == "dense" && adv.precomputed < 2 {
        bad.push(format!(
            "the precomputer reproduced its victim's blob in only {} of {WINDOWS} windows: the \
             attack this test guards against did not happen",
            adv.precomputed
        ));
    }
    let ratio = adv.loss / clean.loss;
    eprintln!(
        "held-out loss: clean {:.4}, with cheats {:.4} ({:+.2} %)",
        clean.loss,
        adv.loss,
        100.0 * (ratio - 1.0)
    );
    if ratio.is_nan() || ratio > 1.10 {
        bad.push(format!(
            "held-out loss with cheats {:.4} is more than 10 % above the clean swarm's {:.4}",
            adv.loss, clean.loss
        ));
    }
    bad
}

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

async fn clean_vs_adversarial(label: &str, config: fn(&Path, &str, Role) -> NodeConfig) {
    let started = Instant::now();
    let clean = swarm(config, false).await;
    let adv = swarm(config, true).await;
    let local_steps = config(Path::new("/tmp"), "x", Role::Miner)
        .train
        .local_steps;
    let bad = judge(label, &clean, &adv, local_steps);
    eprintln!(
        "{label}: both swarms in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        bad.is_empty(),
        "{label}: pay does not track work:\n  {}",
        bad.join("\n  ")
    );
}

/// Dense updates: honest updates are bit-identical to the validators' recomputes.
#[test]
fn adversarial_swarm_pays_only_for_work() {
    run(clean_vs_adversarial("dense", test_config));
}

/// Compressed updates (top-k 1.56 % with error feedback, 8-bit values): honest cosines with the
/// validators' recomputes are below 1.
#[test]
fn adversarial_swarm_pays_only_for_work_with_compressed_updates() {
    run(clean_vs_adversarial("compressed", compressed));
}

/// Copiers pass over updates they cannot copy. `poison-nan` and `never-serve` register first,
/// so they hold the lowest miner uids and announce as early as the honest miner: a copier that
/// took the lowest announcer blindly failed its window on them and announced nothing (a run of
/// the compressed swarm above once waited forever for its `noisy-copier`). Every window, the
/// `noisy-copier` must announce an update the validator scores, and the exact `copier` a copy
/// of the honest miner's.
#[test]
fn copiers_pass_over_updates_they_cannot_copy() {
    run(async {
        init_tracing();
        let mut net = TestNet::new();
        let dir = net.dir.path().to_path_buf();
        let v = net
            .spawn(test_config(&dir, "validator", Role::Validator))
            .await;
        let mut uids = Vec::new();
        for (name, cheat) in [
            ("poison-nan", Some(AdversaryKind::PoisonNan)),
            ("never-serve", Some(AdversaryKind::NeverServe)),
            ("honest", None),
            ("noisy-copier", Some(AdversaryKind::NoisyCopier)),
            ("copier", Some(AdversaryKind::Copier)),
        ] {
            let mut c = test_config(&dir, name, Role::Miner);
            c.train.adversary = cheat;
            uids.push((name, net.spawn(c).await));
        }
        net.wait_connected(T).await;
        let eval = net.nodes[v].handles().evaluator.clone();
        let bpw = net.nodes[v].ctx().cfg.chain.blocks_per_window;
        let first = net.chain.head().number / bpw + 1;
        let node_of = |name: &str| {
            let i = uids.iter().find(|(n, _)| *n == name).map(|(_, i)| *i);
            &net.nodes[i.expect("spawned")]
        };
        let uid_of = |name: &str| node_of(name).ctx().uid().expect("uid");
        let (nan, never, honest) = (
            uid_of("poison-nan"),
            uid_of("never-serve"),
            uid_of("honest"),
        );
        assert!(
            nan < honest && never < honest,
            "the cheats hold the lowest uids"
        );
        let miners = ["honest", "noisy-copier", "copier"];
        let mut published: Vec<_> = miners
            .iter()
            .map(|n| node_of(n).ctx().events.subscribe())
            .collect();
        for w in first..first + 3 {
            net.advance_to(w * bpw);
            // poison-nan, never-serve, honest and noisy-copier; the copier's copy is not evaluated.
            wait_until(
                T,
                &format!("the validator scores 4 updates of window {w}"),
                || async { eval.scored_in(w).await.unwrap_or(0) >= 4 },
            )
            .await;
            let mut ids = Vec::new();
            for (name, ev) in miners.iter().zip(&mut published) {
                let what = format!("{name} publishes its update of window {w}");
                ids.push(
                    next_event(ev, T, &what, |e| match e {
                        NodeEvent::UpdatePublished { window, update, .. } if window == w => {
                            Some(update)
                        }
                        _ => None,
                    })
                    .await,
                );
            }
            assert_eq!(
                ids[2], ids[0],
                "window {w}: the copier copies the honest update, the only one it can copy"
            );
            assert_ne!(ids[1], ids[0], "window {w}: the noisy copier adds noise");
        }
        net.shutdown().await;
    });
}
