//! The `apiary` command line.

use crate::devnet::{self, DevnetOpts};
use crate::node::{ChainSource, Node};
use anyhow::{Context, Result};
use apiary_config::{AdversaryKind, NodeConfig, Role};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// apiary: incentivized, decentralized training of neural networks, peer to peer.
#[derive(Debug, Parser)]
#[command(name = "apiary", version = crate::report::VERSION, about)]
pub struct Cli {
    /// Log filter (e.g. `info`, `apiary=debug`); also RUST_LOG.
    #[arg(long, global = true, default_value = "warn")]
    pub log: String,
    /// Log lines as text (default) or as one JSON object per line (for journald, Loki, ...).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// How log lines are written (stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: timestamp, level, target, fields and the node/actor spans.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run one node until Ctrl-C or SIGTERM (then it stops its actors, closes the network and
    /// flushes the store before exiting).
    Run(RunArgs),
    /// Run a whole local swarm on the embedded chain and print one line per window.
    Devnet(DevnetArgs),
    /// Ask a running node over its admin socket.
    Admin(AdminArgs),
    /// Evaluate or export models (Hugging Face LLaMA directories).
    #[command(subcommand)]
    Model(crate::model_cmd::ModelCmd),
    /// Create and show btcli-compatible wallets.
    #[command(subcommand)]
    Wallet(crate::wallet_cmd::WalletCmd),
    /// Operator commands against a subtensor endpoint.
    #[command(subcommand)]
    Chain(crate::chain_cmd::ChainCmd),
    /// Model competitions: enter a model, see the leaderboard.
    #[command(subcommand)]
    Compete(CompeteCmd),
    /// Check a node's setup line by line (config, data dir, disk, dataset, device, listen port;
    /// on subtensor: wallet, endpoint, runtime weight calls, registration, validator permit)
    /// and print what to fix; exits non-zero when something blocks running.
    Doctor {
        /// The node's config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a commented config for a new miner or validator (btcli wallet and hotkey,
    /// endpoint, netuid, data dir).
    Init(crate::init_cmd::InitArgs),
    /// Check a config file and print it with defaults filled in.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

/// `apiary run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file (see config/examples).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Overrides node.data_dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides node.role.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Overrides net.listen.
    #[arg(long)]
    pub listen: Option<String>,
    /// Adds bootstrap multiaddrs.
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Overrides train.data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print nothing on stdout: no start-up lines and no status line per window (logs still go to
    /// stderr at `--log`).
    #[arg(long, short)]
    pub quiet: bool,
}

/// A role on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Miner.
    Miner,
    /// Validator.
    Validator,
}

/// `apiary devnet`.
#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// Honest miners.
    #[arg(long, default_value_t = 3)]
    pub miners: usize,
    /// Lazy miners that publish noise (validators should give them nothing).
    #[arg(long, default_value_t = 0)]
    pub lazy: usize,
    /// Validators.
    #[arg(long, default_value_t = 1)]
    pub validators: usize,
    /// Windows to run.
    #[arg(long, default_value_t = 20)]
    pub windows: u64,
    /// Milliseconds per block.
    #[arg(long, default_value_t = 500)]
    pub block_ms: u64,
    /// Blocks per window.
    #[arg(long, default_value_t = 4)]
    pub blocks_per_window: u64,
    /// Data dir for the nodes (default: a new temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Training text (file or directory).
    #[arg(long, default_value = "data/tinyshakespeare.txt")]
    pub data: PathBuf,
    /// Base node config (model, training, validator settings) for every node.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Run against this subtensor dev chain (ws:// URL, e.g. chopsticks) instead of the
    /// embedded chain: creates a subnet, funds and registers the nodes with //Alice.
    #[arg(long)]
    pub chain: Option<String>,
    /// With --chain: use subxt's default RPC backend instead of the legacy one (chopsticks).
    #[arg(long)]
    pub default_rpc: bool,
    /// Adds one cheating miner per listed kind, named after it (copier, noisy-copier, replay,
    /// stale, wrong-pages, partial, tiny, noise, negated, never-serve, poison-large,
    /// poison-nan, poison-inverted); needs a build with `--features adversary`.
    #[arg(long, value_delimiter = ',', value_name = "KIND[,KIND...]")]
    pub adversary: Vec<AdversaryKind>,
}

/// `apiary compete …` (talks to a running node over its admin socket).
#[derive(Debug, Subcommand)]
pub enum CompeteCmd {
    /// Check a Hugging Face LLaMA directory against a competition's rules, store it as
    /// pieces the node serves, and commit it on chain.
    Submit {
        /// The model directory (`config.json`, `model.safetensors`, optional `tokenizer.json`).
        #[arg(long)]
        model: PathBuf,
        /// The competition's id (a `[[competition]]` of the node's config).
        #[arg(long)]
        competition: String,
        /// The node's admin socket and data dir.
        #[command(flatten)]
        node: NodeSocket,
    },
    /// Every competition's leaderboard: entries, status, loss, win rate, ε and weight.
    Leaderboard {
        /// The node's admin socket and data dir.
        #[command(flatten)]
        node: NodeSocket,
    },
    /// Same as `leaderboard` (what this validator evaluated and how it ranks it).
    Status {
        /// The node's admin socket and data dir.
        #[command(flatten)]
        node: NodeSocket,
    },
}

/// Where a running node's admin socket is.
#[derive(Debug, Args)]
pub struct NodeSocket {
    /// The admin socket (default `<data-dir>/admin.sock`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The node's data dir.
    #[arg(long, default_value = "./apiary-data")]
    pub data_dir: PathBuf,
    /// Print the raw JSON reply.
    #[arg(long)]
    pub json: bool,
}

/// `apiary admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// status | sync | peers | unban | scores | windows | weights | metrics | store | export
    pub command: String,
    /// Ask again every second: `sync` draws a progress bar (bytes, rate, ETA, windows behind)
    /// until the node has caught up; other commands redraw their table.
    #[arg(long)]
    pub watch: bool,
    /// Show hashes, peer ids and hotkeys in full (they are shortened by default).
    #[arg(long)]
    pub wide: bool,
    /// `unban`: the peer id whose ban to lift (see `apiary admin peers`).
    #[arg(long)]
    pub peer: Option<String>,
    /// `export`: directory to write the model into (a Hugging Face LLaMA directory).
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// `export`: f32 (default, bit-exact) or bf16.
    #[arg(long)]
    pub dtype: Option<String>,
    /// The admin socket (default `<data-dir>/admin.sock`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The node's data dir.
    #[arg(long, default_value = "./apiary-data")]
    pub data_dir: PathBuf,
    /// Print the raw JSON reply.
    #[arg(long)]
    pub json: bool,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run(a) => run_node(a).await,
        Cmd::Devnet(a) => {
            let base = match &a.config {
                Some(p) => Some(NodeConfig::load(p)?),
                None => None,
            };
            let opts = DevnetOpts {
                miners: a.miners,
                lazy: a.lazy,
                validators: a.validators,
                windows: a.windows,
                block_ms: a.block_ms,
                blocks_per_window: a.blocks_per_window,
                dir: a.dir,
                data: a.data,
                json: a.json,
                base,
                chain: a.chain,
                legacy_rpc: !a.default_rpc,
                adversaries: a.adversary,
            };
            let mut out = std::io::stdout();
            devnet::run(opts, &mut out).await.map(|_| ())
        }
        Cmd::Admin(a) => {
            let socket = a.socket.unwrap_or_else(|| a.data_dir.join("admin.sock"));
            let mut req = serde_json::json!({"cmd": a.command});
            if let Some(p) = &a.path {
                // The node resolves relative paths against its own working directory.
                let p = std::path::absolute(p).context("resolving --path")?;
                req["path"] = p.display().to_string().into();
            }
            if let Some(d) = &a.dtype {
                req["dtype"] = d.clone().into();
            }
            if let Some(p) = &a.peer {
                req["peer"] = p.clone().into();
            }
            // Export writes a whole model; every other command answers at once.
            let timeout = if a.command == "export" {
                std::time::Duration::from_secs(600)
            } else {
                crate::admin::CLIENT_TIMEOUT
            };
            loop {
                let reply = crate::admin::request_timeout(&socket, &req, timeout).await?;
                if reply["ok"].as_bool() != Some(true) {
                    anyhow::bail!(
                        "{}",
                        reply["error"].as_str().unwrap_or("admin request failed")
                    );
                }
                if a.json {
                    println!("{reply}");
                } else if a.watch && a.command == "sync" {
                    let r: crate::admin::SyncReply =
                        serde_json::from_value(reply["result"].clone())
                            .context("reading the node's sync reply")?;
                    let done = r.downloads.is_empty() && r.behind == 0;
                    eprint!("\r\x1b[2K{}", crate::admin::sync_line(&r, 30));
                    if done {
                        eprintln!();
                        return Ok(());
                    }
                } else {
                    if a.watch {
                        // Clear the screen and redraw from the top.
                        print!("\x1b[2J\x1b[H");
                    }
                    let result = if a.wide {
                        reply["result"].clone()
                    } else {
                        crate::admin::short_ids(&reply["result"])
                    };
                    print!("{}", crate::admin::render_table(&result));
                }
                if !a.watch {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        Cmd::Compete(c) => {
            let (node, req, timeout) = match c {
                CompeteCmd::Submit {
                    model,
                    competition,
                    node,
                } => {
                    let path = std::path::absolute(&model).context("resolving --model")?;
                    let req = serde_json::json!({"cmd": "compete_submit",
                        "path": path.display().to_string(), "competition": competition});
                    (node, req, std::time::Duration::from_secs(3600))
                }
                CompeteCmd::Leaderboard { node } | CompeteCmd::Status { node } => (
                    node,
                    serde_json::json!({"cmd": "leaderboard"}),
                    crate::admin::CLIENT_TIMEOUT,
                ),
            };
            let socket = node
                .socket
                .unwrap_or_else(|| node.data_dir.join("admin.sock"));
            let reply = crate::admin::request_timeout(&socket, &req, timeout).await?;
            if node.json {
                println!("{reply}");
            } else if reply["ok"].as_bool() == Some(true) {
                let result = &reply["result"];
                match result.as_array() {
                    Some(boards) => {
                        for b in boards {
                            print!("{}", crate::admin::render_table(&leaderboard_view(b)));
                        }
                    }
                    None => print!("{}", crate::admin::render_table(result)),
                }
            } else {
                anyhow::bail!("{}", reply["error"].as_str().unwrap_or("request failed"));
            }
            Ok(())
        }
        Cmd::Model(m) => crate::model_cmd::run(m).await,
        Cmd::Wallet(w) => crate::wallet_cmd::run(w),
        Cmd::Chain(c) => crate::chain_cmd::run(c).await,
        Cmd::Init(a) => crate::init_cmd::run(&a),
        Cmd::Doctor { config, json } => {
            let cfg = NodeConfig::load(&config).with_context(|| {
                format!(
                    "{}: fix the file (`apiary check-config FILE` shows what it reads)",
                    config.display()
                )
            })?;
            let checks = crate::doctor::check(&cfg, &config).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", crate::doctor::render(&checks));
            }
            if crate::doctor::blocks(&checks) {
                anyhow::bail!("apiary doctor found problems that block running (see above)");
            }
            Ok(())
        }
        Cmd::CheckConfig { file } => {
            let cfg = NodeConfig::load(&file)?;
            println!(
                "{}",
                toml::to_string_pretty(&cfg).context("rendering config")?
            );
            Ok(())
        }
    }
}

async fn run_node(a: RunArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    if let Some(d) = a.data_dir {
        cfg.node.data_dir = d;
    }
    if let Some(r) = a.role {
        cfg.node.role = match r {
            RoleArg::Miner => Role::Miner,
            RoleArg::Validator => Role::Validator,
        };
    }
    if let Some(l) = a.listen {
        cfg.net.listen = l;
    }
    cfg.net.bootstrap.extend(a.bootstrap);
    if let Some(d) = a.data {
        cfg.train.data = d;
    }
    cfg.validate()?;
    // A node that cannot start leaves no data dir behind unless one was there before.
    let data_dir = cfg.node.data_dir.clone();
    let fresh = !data_dir.exists();
    let mut node = match Node::spawn(cfg, ChainSource::FromConfig).await {
        Ok(n) => n,
        Err(e) => {
            if fresh {
                let _ = std::fs::remove_dir_all(&data_dir);
            }
            return Err(e);
        }
    };
    let reporter = (!a.quiet).then(|| {
        let ctx = std::sync::Arc::clone(node.ctx());
        let handles = node.handles().clone();
        let metrics = node.metrics_addr();
        tokio::spawn(async move {
            let admin = ctx.cfg.admin_socket_path();
            let endpoint = (ctx.cfg.chain.backend == apiary_config::ChainBackend::Subtensor)
                .then(|| ctx.cfg.chain.endpoint.clone());
            let at = crate::report::Endpoints {
                admin: &admin,
                metrics,
                dashboard: ctx.cfg.metrics.dashboard,
                netuid: ctx.cfg.chain.netuid,
                endpoint: endpoint.as_deref(),
            };
            let mut out = std::io::stdout();
            crate::report::watch(std::sync::Arc::clone(&ctx), handles, at, &mut out).await;
        })
    });
    let res = tokio::select! {
        r = node.wait() => r,
        signal = shutdown_signal() => {
            tracing::info!(signal, "stopping: finishing up and closing the store");
            Ok(())
        }
    };
    if let Some(r) = reporter {
        r.abort();
    }
    node.shutdown().await;
    tracing::info!("shutdown complete");
    res
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what systemd and container runtimes send to stop a
/// service); returns the signal's name.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// A leaderboard as a person reads it: short model ids, no hotkeys, refusals on one line.
fn leaderboard_view(b: &serde_json::Value) -> serde_json::Value {
    let short = |v: &serde_json::Value| -> serde_json::Value {
        v.as_str()
            .map(|s| s.chars().take(12).collect::<String>())
            .into()
    };
    let entries: Vec<serde_json::Value> = b["entries"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| {
                    serde_json::json!({
                        "uid": e["uid"], "model": short(&e["model"]),
                        "commit": e["commit_block"], "status": e["status"],
                        "loss": e["loss"], "win_rate": e["win_rate"], "ema": e["ema"],
                        "eps": e["epsilon"], "weight": e["weight"], "rounds": e["rounds"],
                        "reason": e["reason"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let refusals = b["refusals"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    serde_json::json!({
        "competition": b["competition"], "share": b["share"], "rounds": b["rounds"],
        "round_block": b["round_block"], "leader": b["leader"],
        "evaluated": b["evaluated"].as_array().map(|a| a.len()).unwrap_or(0),
        "refusals": refusals, "entries": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devnet_takes_a_list_of_adversaries() {
        let cli = Cli::try_parse_from(["apiary", "devnet", "--adversary", "copier,noisy-copier"])
            .expect("parses");
        let Cmd::Devnet(a) = cli.cmd else {
            panic!("not devnet")
        };
        assert_eq!(
            a.adversary,
            vec![AdversaryKind::Copier, AdversaryKind::NoisyCopier]
        );
        let e = Cli::try_parse_from(["apiary", "devnet", "--adversary", "thief"])
            .expect_err("unknown kind")
            .to_string();
        assert!(e.contains("unknown adversary `thief`"), "{e}");
    }

    #[cfg(not(feature = "adversary"))]
    #[tokio::test]
    async fn devnet_without_the_kit_refuses_adversaries() {
        let opts = DevnetOpts {
            adversaries: vec![AdversaryKind::Stale],
            ..DevnetOpts::default()
        };
        let mut out = Vec::new();
        let e = devnet::run(opts, &mut out).await.expect_err("no kit");
        assert!(
            e.to_string().contains("build with --features adversary"),
            "{e}"
        );
    }

    #[cfg(not(feature = "adversary"))]
    #[tokio::test]
    async fn a_node_without_the_kit_refuses_a_cheat() {
        let mut cfg = NodeConfig::default();
        cfg.train.adversary = Some(AdversaryKind::Copier);
        let Err(e) = Node::spawn(cfg, ChainSource::FromConfig).await else {
            panic!("a node with a cheat started without the adversary kit")
        };
        let e = format!("{e:#}");
        assert!(e.contains("this build has no adversary kit"), "{e}");
    }
}
