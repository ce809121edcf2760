//! `apiary init`: a commented config file for a new node, naming the btcli wallet and hotkey
//! the way btcli users expect.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

/// `apiary init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// What the node does.
    #[arg(long, value_enum)]
    pub role: crate::cli::RoleArg,
    /// The btcli wallet (`~/.bittensor/wallets/<wallet>`; btcli's `--wallet.name` works too).
    #[arg(long, alias = "wallet.name", default_value = "default")]
    pub wallet: String,
    /// The wallet's hotkey (`<wallet>/hotkeys/<hotkey>`; btcli's `--wallet.hotkey` works too).
    #[arg(long, alias = "wallet.hotkey", default_value = "default")]
    pub hotkey: String,
    /// The chain: `finney` (main network), `test` (testnet), `local` (a subtensor on
    /// ws://127.0.0.1:9944), a ws:// or wss:// URL, or `embedded` for apiary's own local chain.
    #[arg(long, default_value = "finney")]
    pub endpoint: String,
    /// The subnet.
    #[arg(long, default_value_t = 1)]
    pub netuid: u16,
    /// The wallets directory, when not `~/.bittensor/wallets` (btcli's `--wallet.path` works
    /// too).
    #[arg(long, alias = "wallet.path")]
    pub wallet_path: Option<PathBuf>,
    /// Where the node keeps its store, keys and admin socket.
    #[arg(long, default_value = "./apiary-data")]
    pub data_dir: PathBuf,
    /// The file to write.
    #[arg(long, short, default_value = "apiary.toml")]
    pub out: PathBuf,
    /// Overwrite the file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// The config text for `args` (TOML with comments); every key it sets is a real key.
pub fn render(args: &InitArgs) -> Result<String> {
    for (what, name) in [("--wallet", &args.wallet), ("--hotkey", &args.hotkey)] {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            bail!("{what} `{name}` is not a wallet or hotkey name (btcli names: no slashes, no leading dot)");
        }
    }
    let validator = matches!(args.role, crate::cli::RoleArg::Validator);
    let role = if validator { "validator" } else { "miner" };
    let embedded = args.endpoint == "embedded";
    if !embedded
        && !["finney", "test", "local"].contains(&args.endpoint.as_str())
        && !args.endpoint.starts_with("ws://")
        && !args.endpoint.starts_with("wss://")
    {
        bail!(
            "--endpoint `{}`: use finney, test, local, a ws:// or wss:// URL, or embedded",
            args.endpoint
        );
    }
    let data_dir = args.data_dir.display().to_string().replace('\\', "/");
    let mut t = String::new();
    t.push_str(&format!(
        "# apiary {role} (written by `apiary init`). Every key is optional; `apiary check-config \
         FILE`\n# prints the whole config with defaults. Run it with `apiary run --config FILE`.\n\n"
    ));
    t.push_str(&format!(
        "[node]\nname = \"{role}\"\nrole = \"{role}\"\n# Store (db/), keys, admin socket \
         (`apiary admin status --data-dir {data_dir}`).\ndata_dir = {}\n\n",
        toml_str(&data_dir)
    ));
    t.push_str("[chain]\n");
    if embedded {
        t.push_str(
            "# apiary's embedded chain: a local test network, no TAO involved.\n\
             backend = \"local\"\nauto_register = true\n",
        );
    } else {
        let chain = apiary_config::ChainConfig {
            backend: apiary_config::ChainBackend::Subtensor,
            endpoint: args.endpoint.clone(),
            netuid: args.netuid,
            wallet: args.wallet.clone(),
            hotkey: args.hotkey.clone(),
            wallet_path: args.wallet_path.clone(),
            ..apiary_config::ChainConfig::default()
        };
        t.push_str(&format!(
            "backend = \"subtensor\"\n# finney = main network, test = testnet, local = \
             ws://127.0.0.1:9944, or a URL.\nendpoint = {}\n# The btcli wallet and hotkey that \
             sign (~/.bittensor/wallets/<wallet>/hotkeys/<hotkey>).\n# Register first: \
             `{}`\n# (or with btcli: `{}`).\nwallet = {}\nhotkey = {}\n# The subnet's incentive mechanism \
             these weights are for (0 = the main one).\nmechanism = 0\n# Block time in ms \
             (12000 on finney and testnet, 250 on a fast-block localnet):\n# commit-reveal v4 \
             encrypts weights to the drand round of their reveal.\nsubtensor_block_ms = \
             12000\n",
            toml_str(&args.endpoint),
            crate::hints::shell_line(&crate::hints::apiary_register(&chain)),
            crate::hints::btcli_register(&chain)
                .map(|a| crate::hints::shell_line(&a))
                .unwrap_or_default(),
            toml_str(&args.wallet),
            toml_str(&args.hotkey)
        ));
        if let Some(p) = &args.wallet_path {
            t.push_str(&format!(
                "# Where the wallets are (btcli's --wallet.path).
wallet_path = {}
",
                toml_str(&p.display().to_string().replace('\\', "/"))
            ));
        }
    }
    t.push_str(&format!("netuid = {}\n\n", args.netuid));
    t.push_str(
        "[net]\n# Where peers reach this node: use a public address and an open port on a \
         server\n# (e.g. /ip4/0.0.0.0/tcp/4001); behind NAT list a relay in `relays`.\n\
         listen = \"/ip4/0.0.0.0/tcp/4001\"\nbootstrap = []\nrelays = []\n\n",
    );
    t.push_str(
        "[train]\n# A shard file or a directory of .txt / .jsonl / .parquet shards: every node \
         of the subnet\n# must use the same data (the dataset manifest hash is compared).\n\
         # This default is built into apiary: outside a checkout it is written to the data dir.\n\
         data = \"data/tinyshakespeare.txt\"\n# cpu, cuda, cuda:N or auto (CUDA needs a \
         `--features cuda` build).\ndevice = \"cpu\"\n",
    );
    if validator {
        t.push_str(
            "\n[validator]\n# Score smoothing and the score below which a miner's update is \
             not aggregated.\nema_alpha = 0.3\nmin_score = 0.5\nweights_every_windows = 1\n",
        );
    }
    Ok(t)
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Writes the config file (refusing to overwrite one unless `--force`) and says what next.
pub fn run(args: &InitArgs) -> Result<()> {
    let text = render(args)?;
    // The text must be a config apiary accepts.
    apiary_config::NodeConfig::from_toml_str(&text, &args.out)
        .and_then(|c| c.validate().map(|()| c))
        .context("the generated config does not validate (a bug: please report it)")?;
    if args.out.exists() && !args.force {
        bail!(
            "{} exists; pass --force to overwrite it or --out to write elsewhere",
            args.out.display()
        );
    }
    std::fs::write(&args.out, &text)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    println!(
        "next: apiary check-config {0}  then  apiary run --config {0}",
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RoleArg;

    fn args(role: RoleArg, endpoint: &str) -> InitArgs {
        InitArgs {
            role,
            wallet: "mywallet".into(),
            hotkey: "hk1".into(),
            endpoint: endpoint.into(),
            netuid: 3,
            wallet_path: None,
            data_dir: "/var/lib/apiary".into(),
            out: "apiary.toml".into(),
            force: false,
        }
    }

    #[test]
    fn init_writes_configs_that_load_with_the_asked_values() {
        for (role, endpoint) in [
            (RoleArg::Miner, "finney"),
            (RoleArg::Validator, "test"),
            (RoleArg::Miner, "wss://example.invalid:443"),
            (RoleArg::Validator, "embedded"),
        ] {
            let a = args(role, endpoint);
            let text = render(&a).expect("render");
            let cfg = apiary_config::NodeConfig::from_toml_str(&text, std::path::Path::new("x"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            cfg.validate().expect("valid");
            assert_eq!(cfg.chain.netuid, 3);
            assert_eq!(cfg.node.data_dir, PathBuf::from("/var/lib/apiary"));
            assert_eq!(
                cfg.node.role,
                match role {
                    RoleArg::Miner => apiary_config::Role::Miner,
                    RoleArg::Validator => apiary_config::Role::Validator,
                }
            );
            if endpoint == "embedded" {
                assert_eq!(cfg.chain.backend, apiary_config::ChainBackend::Local);
            } else {
                assert_eq!(cfg.chain.backend, apiary_config::ChainBackend::Subtensor);
                assert_eq!(cfg.chain.endpoint, endpoint);
                assert_eq!(cfg.chain.wallet, "mywallet");
                assert_eq!(cfg.chain.hotkey, "hk1");
                assert!(text.contains("--wallet.name mywallet --wallet.hotkey hk1"));
                // Both register hints in the file are complete for this chain (network,
                // netuid, wallet, hotkey): a btcli command without --network registers on finney.
                for hint in [
                    crate::hints::btcli_register(&cfg.chain).expect("subtensor"),
                    crate::hints::apiary_register(&cfg.chain),
                ] {
                    assert_eq!(
                        crate::hints::missing_parts(&hint, &cfg.chain),
                        Vec::<&str>::new()
                    );
                    assert!(
                        text.contains(&crate::hints::shell_line(&hint)),
                        "{endpoint}: {text}"
                    );
                }
            }
        }
    }

    #[test]
    fn init_refuses_bad_names_endpoints_and_overwriting() {
        let mut a = args(RoleArg::Miner, "finney");
        a.wallet = "../x".into();
        assert!(render(&a).is_err());
        let a = args(RoleArg::Miner, "http://nope");
        assert!(render(&a)
            .expect_err("endpoint")
            .to_string()
            .contains("--endpoint"));
        let dir = tempfile::tempdir().expect("tmp");
        let mut a = args(RoleArg::Miner, "embedded");
        a.out = dir.path().join("apiary.toml");
        run(&a).expect("first write");
        let err = run(&a).expect_err("exists");
        assert!(err.to_string().contains("--force"), "{err}");
        a.force = true;
        run(&a).expect("overwrite");
    }
}
