//! `apiary devnet`: a whole local swarm in one process on the embedded chain.
//!
//! Starts an embedded chain, `validators + miners` nodes each with its own data dir, keys,
//! libp2p socket on 127.0.0.1 and admin socket, lets them find each other through their
//! on-chain peer records, runs `windows` windows and prints one line per window (held-out loss,
//! each miner's score, smoothed score and on-chain weight, bytes exchanged), or one JSON object
//! per line with `--json`. It fails if the loss did not go down.
//!
//! With `--adversary KIND[,KIND...]` (a build with the `adversary` feature) it adds one cheating
//! miner per kind, named after it ([`AdversaryKind`]); each line then shows every cheat's and
//! lazy miner's weight as a share of the mean honest miner's.

use crate::node::{ChainSource, Node};
use anyhow::{bail, Context, Result};
use apiary_actors::NodeEvent;
use apiary_chain::local::{LocalChain, SubnetParams};
use apiary_chain::ChainClient;
use apiary_config::{AdversaryKind, NodeConfig, Role};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Devnet settings.
#[derive(Debug, Clone)]
pub struct DevnetOpts {
    /// Honest miners.
    pub miners: usize,
    /// Lazy miners (publish noise).
    pub lazy: usize,
    /// Validators.
    pub validators: usize,
    /// Windows to run.
    pub windows: u64,
    /// Milliseconds per block.
    pub block_ms: u64,
    /// Blocks per window.
    pub blocks_per_window: u64,
    /// Where node data goes (a fresh temp dir if unset).
    pub dir: Option<PathBuf>,
    /// Training text.
    pub data: PathBuf,
    /// JSON lines instead of text.
    pub json: bool,
    /// Base config for every node (model and training settings), if given.
    pub base: Option<NodeConfig>,
    /// A subtensor dev chain (ws:// URL) to run on instead of the embedded chain.
    pub chain: Option<String>,
    /// With `chain`: use the legacy RPC backend (what chopsticks needs).
    pub legacy_rpc: bool,
    /// One extra cheating miner per kind (needs the `adversary` feature).
    pub adversaries: Vec<AdversaryKind>,
}

impl Default for DevnetOpts {
    fn default() -> Self {
        Self {
            miners: 3,
            lazy: 0,
            validators: 1,
            windows: 20,
            block_ms: 500,
            blocks_per_window: 4,
            dir: None,
            data: PathBuf::from("data/tinyshakespeare.txt"),
            json: false,
            base: None,
            chain: None,
            legacy_rpc: true,
            adversaries: Vec::new(),
        }
    }
}

/// One miner in a window line.
#[derive(Debug, Clone, Serialize)]
pub struct MinerLine {
    /// Node name.
    pub name: String,
    /// uid.
    pub uid: u16,
    /// This window's score.
    pub score: f32,
    /// Smoothed score.
    pub ema: f64,
    /// Weight on chain from the lead validator.
    pub weight: u16,
    /// The cheat this miner plays (`None`: honest or lazy).
    pub adversary: Option<AdversaryKind>,
    /// For cheats and lazy miners: `weight` as a fraction of the honest miners' mean weight.
    pub share_of_honest: Option<f64>,
}

/// One window line.
#[derive(Debug, Clone, Serialize)]
pub struct WindowLine {
    /// Window.
    pub window: u64,
    /// Held-out loss of the model after this window.
    pub held_out_loss: f32,
    /// Updates aggregated.
    pub accepted: usize,
    /// Per miner.
    pub miners: Vec<MinerLine>,
    /// Blob bytes sent between nodes during the window.
    pub bytes: u64,
    /// Model hash (short).
    pub model: String,
}

/// What the run did.
#[derive(Debug, Clone, Serialize)]
pub struct DevnetSummary {
    /// Held-out loss before the first window.
    pub initial_loss: f32,
    /// After the last.
    pub final_loss: f32,
    /// Windows reported.
    pub windows: u64,
    /// Data dir used.
    pub dir: PathBuf,
}

fn devnet_seed(name: &str) -> String {
    hex::encode(blake3::derive_key("apiary devnet key v1", name.as_bytes()))
}

/// Runs the devnet and writes lines to `out`.
pub async fn run(opts: DevnetOpts, out: &mut (dyn Write + Send)) -> Result<DevnetSummary> {
    if opts.validators == 0 || opts.miners + opts.lazy == 0 {
        bail!("a devnet needs at least one validator and one miner");
    }
    if !opts.adversaries.is_empty() && !apiary_actors::ADVERSARY_KIT {
        bail!("--adversary: this build has no adversary kit; build with --features adversary");
    }
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            std::env::temp_dir().join(format!("apiary-devnet-{}-{t}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let res = run_in(&opts, dir.clone(), out).await;
    // A devnet that failed leaves nothing behind in the temp dir it made (3-90 MB each); one
    // given with --dir is the operator's to inspect.
    if res.is_err() && opts.dir.is_none() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the devnet's data dir");
        }
    }
    res
}

async fn run_in(
    opts: &DevnetOpts,
    dir: PathBuf,
    out: &mut (dyn Write + Send),
) -> Result<DevnetSummary> {
    let data = crate::corpus::resolve(&opts.data, &dir)
        .with_context(|| format!("writing the built-in corpus into {}", dir.display()))?;
    if !data.exists() {
        bail!(
            "training data {} not found; pass --data PATH (a text file or directory)",
            opts.data.display()
        );
    }
    let mut base = opts.base.clone().unwrap_or_default();
    let (chain, sub) = match &opts.chain {
        None => {
            let chain = LocalChain::open(&dir.join("chain"))?;
            chain.create_subnet(base.chain.netuid, SubnetParams::default())?;
            (Some(chain), None)
        }
        Some(url) => {
            let (sub, netuid) = subtensor_devnet_chain(url, opts.legacy_rpc).await?;
            base.chain.netuid = netuid;
            (None, Some(sub))
        }
    };
    let netuid = base.chain.netuid;
    let shared: Arc<dyn ChainClient> = match (&chain, &sub) {
        (Some(c), _) => c.clone(),
        (None, Some(s)) => s.clone(),
        (None, None) => bail!("no chain"),
    };

    let mut specs = Vec::new();
    for i in 0..opts.validators {
        specs.push((format!("validator-{i}"), Role::Validator, false, None));
    }
    for i in 0..opts.miners {
        specs.push((format!("miner-{}", i + 1), Role::Miner, false, None));
    }
    for i in 0..opts.lazy {
        specs.push((format!("lazy-{}", i + 1), Role::Miner, true, None));
    }
    for (i, kind) in opts.adversaries.iter().enumerate() {
        let same_before = opts.adversaries[..i].iter().filter(|k| *k == kind).count();
        let name = match same_before {
            0 => kind.name().to_string(),
            n => format!("{kind}-{}", n + 1),
        };
        specs.push((name, Role::Miner, false, Some(*kind)));
    }
    // Honest miners' names: the yardstick of the cheats' shares.
    let honest: std::collections::BTreeSet<String> = specs
        .iter()
        .filter(|(_, role, lazy, adv)| *role == Role::Miner && !lazy && adv.is_none())
        .map(|(name, ..)| name.clone())
        .collect();
    let cheats: BTreeMap<String, AdversaryKind> = specs
        .iter()
        .filter_map(|(name, _, _, adv)| adv.map(|k| (name.clone(), k)))
        .collect();
    let mut nodes = Vec::new();
    for (i, (name, role, lazy, adversary)) in specs.iter().enumerate() {
        let mut cfg = base.clone();
        // One metrics port for a whole devnet cannot be: the first node (the lead validator)
        // takes the configured one, the others the same address with a port of their own.
        if i > 0 {
            if let Some(mut addr) = cfg.metrics.listen_addr() {
                addr.set_port(0);
                cfg.metrics.listen = addr.to_string();
            }
        }
        cfg.node.name = name.clone();
        cfg.node.role = *role;
        cfg.node.data_dir = dir.join(name);
        cfg.node.hotkey_seed = Some(devnet_seed(&format!("hotkey/{name}")));
        cfg.net.p2p_key_seed = Some(devnet_seed(&format!("p2p/{name}")));
        cfg.net.listen = "/ip4/127.0.0.1/tcp/0".into();
        cfg.net.heartbeat_ms = cfg.net.heartbeat_ms.min(200);
        cfg.chain.block_time_ms = opts.block_ms;
        cfg.chain.blocks_per_window = opts.blocks_per_window;
        cfg.train.data = data.clone();
        cfg.train.lazy = *lazy;
        cfg.train.adversary = *adversary;
        if let Some(sub) = &sub {
            // Fund the node's hotkey from //Alice; it registers itself (burned) on start.
            let hk = apiary_chain::keys::Hotkey::from_seed(&hex::decode(
                cfg.node.hotkey_seed.as_deref().unwrap_or_default(),
            )?)?;
            sub.fund_from_alice(&hk.id(), 1_000 * apiary_subtensor::dev::TAO)
                .await
                .with_context(|| format!("funding {name} from //Alice"))?;
        }
        let node = Node::spawn(cfg, ChainSource::Shared(Arc::clone(&shared)))
            .await
            .with_context(|| format!("starting {name}"))?;
        nodes.push(node);
    }
    for (i, n) in nodes.iter().enumerate().take(opts.validators) {
        let stake = 1_000_000 * (opts.validators - i) as u64;
        match (&chain, &sub) {
            (Some(c), _) => c.add_stake(netuid, &n.ctx().hotkey.id(), stake)?,
            (None, Some(s)) => {
                let hk = &n.ctx().hotkey;
                s.add_stake(
                    hk,
                    &hk.id(),
                    netuid,
                    100 * (opts.validators - i) as u128 * apiary_subtensor::dev::TAO,
                )
                .await
                .with_context(|| format!("staking on {}", n.ctx().name()))?;
            }
            (None, None) => {}
        }
    }
    let lead = &nodes[0];
    let lead_ctx = Arc::clone(lead.ctx());
    let mut events = lead_ctx.events.subscribe();
    let initial_loss = lead_ctx.status().held_out_loss.unwrap_or(f32::NAN);
    if !opts.json {
        writeln!(
            out,
            "apiary devnet: {} validator(s), {} miner(s), {} lazy, {} cheat(s); data dir {}",
            opts.validators,
            opts.miners,
            opts.lazy,
            opts.adversaries.len(),
            dir.display()
        )?;
        for n in &nodes {
            let mut line = format!(
                "  {:<12} admin socket {}",
                n.ctx().name(),
                n.ctx().cfg.admin_socket_path().display()
            );
            if let Some(addr) = n.metrics_addr() {
                line.push_str(&format!("  metrics http://{addr}/metrics"));
                if n.ctx().cfg.metrics.dashboard {
                    line.push_str(&format!("  dashboard http://{addr}/"));
                }
            }
            writeln!(out, "{line}")?;
        }
        writeln!(out, "start        held-out loss {initial_loss:.4}")?;
    } else {
        writeln!(
            out,
            "{}",
            serde_json::json!({"event": "start", "held_out_loss": initial_loss, "dir": dir})
        )?;
    }
    out.flush()?;

    let producer = match (&chain, &sub) {
        (Some(c), _) => c.spawn_producer(Duration::from_millis(opts.block_ms)),
        (None, Some(s)) => spawn_dev_blocks(Arc::clone(s), Duration::from_millis(opts.block_ms)),
        (None, None) => tokio::spawn(async {}),
    };
    let names: BTreeMap<apiary_chain::keys::HotkeyId, String> = nodes
        .iter()
        .map(|n| (n.ctx().hotkey.id(), n.ctx().name().to_string()))
        .collect();
    let window_ms = opts.block_ms * opts.blocks_per_window;
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(window_ms * (opts.windows + 5) * 3 + 60_000);
    let mut closed: BTreeMap<u64, Vec<(u16, f32, f64)>> = BTreeMap::new();
    let mut reported = 0u64;
    let mut final_loss = initial_loss;
    let mut last_bytes = 0u64;
    // Ctrl-C or SIGTERM ends the devnet like its last window: nodes stopped (admin sockets
    // removed, stores flushed) and the summary printed.
    let stop = crate::cli::shutdown_signal();
    tokio::pin!(stop);
    let mut interrupted: Option<&'static str> = None;
    let result: Result<()> = loop {
        let ev = tokio::select! {
            r = tokio::time::timeout_at(deadline, events.recv()) => match r {
                Err(_) => break Err(anyhow::anyhow!("devnet timed out after {reported} windows")),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(_)) => break Err(anyhow::anyhow!("validator stopped")),
                Ok(Ok(ev)) => ev,
            },
            sig = &mut stop => {
                interrupted = Some(sig);
                break Ok(());
            }
        };
        match ev {
            NodeEvent::WindowClosed { window, scores, .. } => {
                closed.insert(window, scores);
            }
            NodeEvent::Fatal(e) => break Err(anyhow::anyhow!("validator failed: {e}")),
            NodeEvent::ModelAdvanced {
                window,
                model,
                held_out_loss,
                ..
            } => {
                let scores = closed.remove(&window).unwrap_or_default();
                let mg = lead_ctx.metagraph();
                let lead_uid = lead_ctx.uid().unwrap_or(0);
                let weights: BTreeMap<u16, u16> = shared
                    .weights(netuid, lead_uid)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let mut miners = Vec::new();
                for (uid, score, ema) in scores {
                    let name = mg
                        .as_ref()
                        .and_then(|m| m.by_uid(uid))
                        .and_then(|n| names.get(&n.hotkey).cloned())
                        .unwrap_or_else(|| format!("uid{uid}"));
                    miners.push(MinerLine {
                        adversary: cheats.get(&name).copied(),
                        name,
                        uid,
                        score,
                        ema,
                        weight: weights.get(&uid).copied().unwrap_or(0),
                        share_of_honest: None,
                    });
                }
                let honest_w: Vec<f64> = miners
                    .iter()
                    .filter(|m| honest.contains(&m.name))
                    .map(|m| f64::from(m.weight))
                    .collect();
                let honest_mean = honest_w.iter().sum::<f64>() / honest_w.len().max(1) as f64;
                for m in miners.iter_mut().filter(|m| !honest.contains(&m.name)) {
                    m.share_of_honest =
                        (honest_mean > 0.0).then(|| f64::from(m.weight) / honest_mean);
                }
                let total: u64 = nodes
                    .iter()
                    .map(|n| n.ctx().net.stats().snapshot().bytes_sent)
                    .sum();
                let line = WindowLine {
                    window,
                    held_out_loss,
                    accepted: miners
                        .iter()
                        .filter(|m| f64::from(m.score) >= base.validator.min_score)
                        .count(),
                    miners,
                    bytes: total - last_bytes.min(total),
                    model: model.short(),
                };
                last_bytes = total;
                final_loss = held_out_loss;
                if opts.json {
                    writeln!(out, "{}", serde_json::to_string(&line)?)?;
                } else {
                    let per: Vec<String> = line
                        .miners
                        .iter()
                        .map(|m| {
                            let share = m
                                .share_of_honest
                                .map(|x| format!(" ({:.1}% of honest)", 100.0 * x))
                                .unwrap_or_default();
                            format!(
                                "{} s={:+.3} ema={:.3} w={}{share}",
                                m.name, m.score, m.ema, m.weight
                            )
                        })
                        .collect();
                    writeln!(
                        out,
                        "window {:<5} held-out loss {:.4}  accepted {}  bytes {:>9}  model {}  | {}",
                        line.window,
                        line.held_out_loss,
                        line.accepted,
                        line.bytes,
                        line.model,
                        per.join(" | ")
                    )?;
                }
                out.flush()?;
                reported += 1;
                if reported >= opts.windows {
                    break Ok(());
                }
            }
            _ => {}
        }
    };
    producer.abort();
    // All at once: a node stopping one by one beside still-running peers is redialled by them
    // (a "dial failed: connection refused" warning for each, at the default log level).
    let mut stopping = tokio::task::JoinSet::new();
    for n in nodes {
        stopping.spawn(n.shutdown());
    }
    while stopping.join_next().await.is_some() {}
    result?;
    let summary = DevnetSummary {
        initial_loss,
        final_loss,
        windows: reported,
        dir,
    };
    if opts.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"event": "done", "initial_loss": initial_loss, "final_loss": final_loss, "windows": reported})
        )?;
    } else {
        let how = match interrupted {
            Some(sig) => format!("stopped by {sig}"),
            None => "done".to_string(),
        };
        writeln!(
            out,
            "{how}: held-out loss {initial_loss:.4} -> {final_loss:.4} over {reported} windows"
        )?;
    }
    if interrupted.is_some() {
        return Ok(summary);
    }
    if final_loss.partial_cmp(&initial_loss) != Some(std::cmp::Ordering::Less) {
        bail!("held-out loss did not go down ({initial_loss:.4} -> {final_loss:.4})");
    }
    Ok(summary)
}

/// Connects to a subtensor dev chain and creates the devnet's subnet (owner funded by //Alice,
/// weights rate limit 0, short tempo so validator permits come quickly).
async fn subtensor_devnet_chain(
    url: &str,
    legacy_rpc: bool,
) -> Result<(Arc<apiary_subtensor::SubtensorChain>, u16)> {
    use apiary_subtensor::{resolve_endpoint, RpcBackend, SubtensorChain, SubtensorOptions};
    let url = resolve_endpoint(url).map_err(anyhow::Error::msg)?;
    let rpc = if legacy_rpc {
        RpcBackend::Legacy
    } else {
        RpcBackend::Default
    };
    let sub = SubtensorChain::connect(SubtensorOptions::new(url.clone(), rpc))
        .await
        .with_context(|| format!("cannot reach the dev chain at {url}"))?;
    let owner =
        apiary_chain::keys::Hotkey::from_dev_label(&format!("devnet owner {}", std::process::id()));
    let netuid = sub
        .dev_subnet(&owner, 10)
        .await
        .context("creating the devnet subnet (needs a dev chain whose sudo key is //Alice)")?;
    Ok((sub, netuid))
}

/// Builds a block every `every` on a chain that only builds blocks on demand (chopsticks);
/// stops quietly on a chain that does not have `dev_newBlock`.
fn spawn_dev_blocks(
    sub: Arc<apiary_subtensor::SubtensorChain>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sub.dev_new_blocks(1).await {
                tracing::info!(error = %e, "dev_newBlock unavailable; relying on the chain's own blocks");
                return;
            }
        }
    })
}
