//! The subtensor backend from the daemon's side: opening it from a config, and the operator
//! commands `apiary chain info | register | weights`.

use anyhow::{bail, Context, Result};
use apiary_chain::keys::Hotkey;
use apiary_chain::ChainClient;
use apiary_config::{ChainBackend, ChainRpc, NodeConfig};
use apiary_subtensor::dev::TAO;
use apiary_subtensor::{resolve_endpoint, RpcBackend, SubtensorChain, SubtensorOptions, Wallet};
use clap::{Args, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// The wallet named by `chain.wallet` / `chain.hotkey` / `chain.wallet_path`.
pub fn wallet_of(cfg: &NodeConfig) -> Result<Wallet> {
    Ok(Wallet::new(
        cfg.chain.wallet_path.as_deref(),
        &cfg.chain.wallet,
        &cfg.chain.hotkey,
    )?)
}

/// Connects to `chain.endpoint` with `chain.rpc`.
pub async fn connect_subtensor(cfg: &NodeConfig) -> Result<Arc<SubtensorChain>> {
    let url = resolve_endpoint(&cfg.chain.endpoint).map_err(anyhow::Error::msg)?;
    let rpc = match cfg.chain.rpc.resolve(&cfg.chain.endpoint) {
        ChainRpc::Legacy => RpcBackend::Legacy,
        ChainRpc::Default | ChainRpc::Auto => RpcBackend::Default,
    };
    let mut opts = SubtensorOptions::new(url.clone(), rpc);
    opts.mechanism = cfg.chain.mechanism;
    opts.block_time = std::time::Duration::from_millis(cfg.chain.subtensor_block_ms);
    SubtensorChain::connect(opts)
        .await
        .with_context(|| {
            format!("cannot reach subtensor at {url}; check chain.endpoint (and chain.rpc = \"legacy\" for chopsticks that is not on this machine)")
        })
}

/// Connects to `chain.endpoint` as a [`ChainClient`].
pub async fn connect(cfg: &NodeConfig) -> Result<Arc<dyn ChainClient>> {
    Ok(connect_subtensor(cfg).await?)
}

/// Endpoint, subnet and wallet of an operator command.
#[derive(Debug, Args)]
pub struct ChainSel {
    /// Node config whose `[chain]` section to use.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// finney | test | local | ws(s):// URL (overrides chain.endpoint).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Use the legacy RPC backend (chopsticks).
    #[arg(long)]
    pub legacy_rpc: bool,
    /// Subnet (overrides chain.netuid).
    #[arg(long)]
    pub netuid: Option<u16>,
    /// Wallet name (overrides chain.wallet; btcli's `--wallet.name` works too).
    #[arg(long, alias = "wallet.name")]
    pub wallet: Option<String>,
    /// Hotkey name (overrides chain.hotkey; btcli's `--wallet.hotkey` works too).
    #[arg(long, alias = "wallet.hotkey")]
    pub hotkey: Option<String>,
    /// Wallets directory (overrides chain.wallet_path; btcli's `--wallet.path` works too).
    #[arg(long, alias = "wallet.path")]
    pub wallet_path: Option<PathBuf>,
}

impl ChainSel {
    fn config(&self) -> Result<NodeConfig> {
        let mut cfg = match &self.config {
            Some(p) => NodeConfig::load(p)?,
            None => NodeConfig::default(),
        };
        cfg.chain.backend = ChainBackend::Subtensor;
        cfg.node.hotkey_seed = None;
        if let Some(e) = &self.endpoint {
            cfg.chain.endpoint = e.clone();
        }
        if self.legacy_rpc {
            cfg.chain.rpc = ChainRpc::Legacy;
        }
        if let Some(n) = self.netuid {
            cfg.chain.netuid = n;
        }
        if let Some(w) = &self.wallet {
            cfg.chain.wallet = w.clone();
        }
        if let Some(h) = &self.hotkey {
            cfg.chain.hotkey = h.clone();
        }
        if let Some(p) = &self.wallet_path {
            cfg.chain.wallet_path = Some(p.clone());
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `apiary chain …`.
#[derive(Debug, Subcommand)]
pub enum ChainCmd {
    /// Subnet hyperparameters, registration cost, your uid and balances.
    Info {
        /// Endpoint, subnet, wallet.
        #[command(flatten)]
        sel: ChainSel,
    },
    /// Burned registration of the wallet hotkey (asks for confirmation unless --yes).
    Register {
        /// Endpoint, subnet, wallet.
        #[command(flatten)]
        sel: ChainSel,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// Pay the burn from the hotkey's own balance instead of the coldkey (which is then not
        /// unlocked).
        #[arg(long)]
        pay_with_hotkey: bool,
    },
    /// The weights this wallet's hotkey has on chain.
    Weights {
        /// Endpoint, subnet, wallet.
        #[command(flatten)]
        sel: ChainSel,
    },
}

fn tao(rao: u128) -> String {
    format!("{}.{:09} TAO", rao / TAO, rao % TAO)
}

/// Runs an operator command, writing to stdout.
pub async fn run(cmd: ChainCmd) -> Result<()> {
    match cmd {
        ChainCmd::Info { sel } => {
            let cfg = sel.config()?;
            let netuid = cfg.chain.netuid;
            let chain = connect_subtensor(&cfg).await?;
            let params = chain.hyperparameters(netuid).await?;
            println!("endpoint {}  subnet {netuid}", chain.url());
            for (k, v) in &params {
                // Burns are balances in rao: shown in TAO, as btcli does.
                match v.parse::<u128>() {
                    Ok(rao) if k.contains("Burn") => println!("  {k:<28} {}", tao(rao)),
                    _ => println!("  {k:<28} {v}"),
                }
            }
            if let Some(b) = params.get("Burn").and_then(|b| b.parse::<u128>().ok()) {
                println!("  registration cost            {}", tao(b));
            }
            let w = wallet_of(&cfg)?;
            match w.hotkey() {
                Ok(hk) => {
                    let mg = chain.metagraph(netuid).await;
                    let uid = mg.ok().and_then(|m| m.by_hotkey(&hk.id()).map(|n| n.uid));
                    println!(
                        "hotkey {}  uid {}  balance {}",
                        hk.id(),
                        uid.map(|u| u.to_string())
                            .unwrap_or_else(|| "– (not registered)".into()),
                        tao(chain.balance(&hk.id()).await?)
                    );
                }
                Err(e) => println!("hotkey – ({e})"),
            }
            if let Ok(ck) = w.coldkey_pub() {
                println!("coldkey {}  balance {}", ck, tao(chain.balance(&ck).await?));
            }
            Ok(())
        }
        ChainCmd::Register {
            sel,
            yes,
            pay_with_hotkey,
        } => {
            let cfg = sel.config()?;
            let netuid = cfg.chain.netuid;
            let w = wallet_of(&cfg)?;
            let hk = w.hotkey()?;
            let payer: Hotkey = if pay_with_hotkey {
                hk.clone()
            } else {
                w.coldkey().with_context(|| {
                    format!(
                        "the coldkey pays the registration burn; unlock it (its password, or \
                         APIARY_WALLET_PASSWORD), register with btcli (`{}`) or pass \
                         --pay-with-hotkey",
                        crate::hints::btcli_register(&cfg.chain)
                            .map(|a| crate::hints::shell_line(&a))
                            .unwrap_or_default()
                    )
                })?
            };
            let chain = connect_subtensor(&cfg).await?;
            if let Some(n) = chain.metagraph(netuid).await?.by_hotkey(&hk.id()) {
                println!(
                    "hotkey {} is already registered on subnet {netuid} as uid {}",
                    hk.id(),
                    n.uid
                );
                return Ok(());
            }
            let params = chain.hyperparameters(netuid).await?;
            let cost = params
                .get("Burn")
                .and_then(|b| b.parse::<u128>().ok())
                .unwrap_or(0);
            let balance = chain.balance(&payer.id()).await?;
            println!(
                "register hotkey {} on subnet {netuid}: burns {} from {} (balance {})",
                hk.id(),
                tao(cost),
                payer.id(),
                tao(balance)
            );
            if !yes {
                print!("proceed? [y/N] ");
                std::io::stdout().flush()?;
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                if !matches!(line.trim(), "y" | "Y" | "yes") {
                    bail!("registration cancelled");
                }
            }
            let r = chain.burned_register(&payer, netuid, &hk.id()).await?;
            let uid = chain
                .metagraph(netuid)
                .await?
                .by_hotkey(&hk.id())
                .map(|n| n.uid);
            println!(
                "registered in block {} (tx {}); uid {}",
                r.block,
                r.tx_hash,
                uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into())
            );
            Ok(())
        }
        ChainCmd::Weights { sel } => {
            let cfg = sel.config()?;
            let netuid = cfg.chain.netuid;
            let hk = wallet_of(&cfg)?.hotkey()?;
            let chain = connect_subtensor(&cfg).await?;
            let mg = chain.metagraph(netuid).await?;
            let Some(me) = mg.by_hotkey(&hk.id()) else {
                bail!(
                    "hotkey {} is not registered on subnet {netuid}; {}",
                    hk.id(),
                    crate::hints::register_advice(&cfg.chain)
                );
            };
            let weights = chain.weights(netuid, me.uid).await?;
            println!(
                "uid {} (hotkey {}) on subnet {netuid}: last update block {}, validator permit {}",
                me.uid,
                hk.id(),
                me.last_update,
                me.validator_permit
            );
            if weights.is_empty() {
                println!("  no weights on chain");
            }
            let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
            for (dest, w) in weights {
                let who = mg
                    .by_uid(dest)
                    .map(|n| n.hotkey.to_string())
                    .unwrap_or_default();
                println!(
                    "  -> uid {dest:<5} {w:>6}  ({:.2}%)  {who}",
                    100.0 * f64::from(w) / total.max(1) as f64
                );
            }
            Ok(())
        }
    }
}
