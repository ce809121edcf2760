//! Commands apiary prints for the operator to run, built from the config they are about.
//!
//! Why one place: a btcli command without `--network` runs against finney (btcli's default), so
//! a register hint for a testnet or local subnet pasted as printed would burn mainnet TAO on the
//! same netuid. Every hint here is an argument list that names the network (or endpoint), the
//! subnet and the wallet and hotkey, and [`shell_line`] quotes it for pasting. The tests run each
//! hint through [`missing_parts`] for finney, test, a URL and the embedded chain.

use apiary_config::{ChainBackend, ChainConfig, ChainRpc};

/// The `--network` value btcli takes for the configured chain: `finney`, `test`, `local` or the
/// URL itself. `None` for apiary's embedded chain, which btcli cannot reach.
pub fn btcli_network(chain: &ChainConfig) -> Option<String> {
    match chain.backend {
        ChainBackend::Local => None,
        ChainBackend::Subtensor => Some(match chain.endpoint.as_str() {
            "testnet" => "test".to_string(),
            e => e.to_string(),
        }),
    }
}

/// btcli's wallet selectors: `--wallet.name`, `--wallet.hotkey` and, when set, `--wallet.path`.
fn btcli_wallet_args(chain: &ChainConfig) -> Vec<String> {
    let mut a = vec![
        "--wallet.name".to_string(),
        chain.wallet.clone(),
        "--wallet.hotkey".to_string(),
        chain.hotkey.clone(),
    ];
    if let Some(p) = &chain.wallet_path {
        a.push("--wallet.path".to_string());
        a.push(p.display().to_string());
    }
    a
}

fn btcli_subnet_args(chain: &ChainConfig, network: String) -> Vec<String> {
    let mut a = vec![
        "--network".to_string(),
        network,
        "--netuid".to_string(),
        chain.netuid.to_string(),
    ];
    a.extend(btcli_wallet_args(chain));
    a
}

fn with_prefix(prefix: &[&str], rest: Vec<String>) -> Vec<String> {
    prefix.iter().map(|s| s.to_string()).chain(rest).collect()
}

/// `btcli subnet register` for the configured chain, subnet, wallet and hotkey; `None` on the
/// embedded chain (there `chain.auto_register` registers).
pub fn btcli_register(chain: &ChainConfig) -> Option<Vec<String>> {
    let net = btcli_network(chain)?;
    Some(with_prefix(
        &["btcli", "subnet", "register"],
        btcli_subnet_args(chain, net),
    ))
}

/// `btcli stake add` to the configured hotkey on the configured chain and subnet (a validator
/// permit needs stake); `None` on the embedded chain.
pub fn btcli_stake_add(chain: &ChainConfig) -> Option<Vec<String>> {
    let net = btcli_network(chain)?;
    let mut a = with_prefix(&["btcli", "stake", "add"], btcli_subnet_args(chain, net));
    a.push("--amount".to_string());
    a.push("AMOUNT".to_string());
    Some(a)
}

/// `btcli wallet new_hotkey` for the configured wallet and hotkey (wallet files are local: no
/// network).
pub fn btcli_new_hotkey(chain: &ChainConfig) -> Vec<String> {
    with_prefix(&["btcli", "wallet", "new_hotkey"], btcli_wallet_args(chain))
}

/// `apiary chain register` with every selector spelled out (endpoint, RPC backend, subnet,
/// wallet, hotkey, wallets directory), so it targets what the config does from any directory
/// and without the config file.
pub fn apiary_register(chain: &ChainConfig) -> Vec<String> {
    let mut a = with_prefix(
        &["apiary", "chain", "register"],
        vec![
            "--endpoint".to_string(),
            chain.endpoint.clone(),
            "--netuid".to_string(),
            chain.netuid.to_string(),
            "--wallet".to_string(),
            chain.wallet.clone(),
            "--hotkey".to_string(),
            chain.hotkey.clone(),
        ],
    );
    if chain.rpc == ChainRpc::Legacy {
        a.push("--legacy-rpc".to_string());
    }
    if let Some(p) = &chain.wallet_path {
        a.push("--wallet-path".to_string());
        a.push(p.display().to_string());
    }
    a
}

/// The register hints for a subtensor config, as one sentence: apiary's command, then btcli's.
pub fn register_advice(chain: &ChainConfig) -> String {
    match btcli_register(chain) {
        Some(b) => format!(
            "register it: `{}` (or with btcli: `{}`)",
            shell_line(&apiary_register(chain)),
            shell_line(&b)
        ),
        None => "the embedded chain registers the hotkey at start (chain.auto_register = true)"
            .to_string(),
    }
}

/// What a validator without a permit can do, as one sentence (doctor and `apiary run` say it).
pub fn permit_advice(chain: &ChainConfig) -> String {
    match btcli_stake_add(chain) {
        Some(a) => format!(
            "stake more TAO to the hotkey (`{}`) and wait for the next epoch, or run as a miner",
            shell_line(&a)
        ),
        None => "on the embedded chain a permit goes to the top-stake hotkeys (`apiary devnet` \
                 stakes its validators); or run as a miner"
            .to_string(),
    }
}

/// An argument list as one line for a POSIX shell: arguments with anything but
/// `[A-Za-z0-9_./:=@%+,-]` are single-quoted.
pub fn shell_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a printed command lacks to act on `chain` exactly: for btcli the network, netuid,
/// wallet and hotkey (`--network` must be the configured one: btcli's default is finney); for
/// apiary the endpoint, netuid, wallet and hotkey. Empty when complete.
pub fn missing_parts(args: &[String], chain: &ChainConfig) -> Vec<&'static str> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut missing = Vec::new();
    let mut need = |flag: &'static str, want: Option<String>| {
        if value(flag).is_none() || (want.is_some() && value(flag) != want) {
            missing.push(flag);
        }
    };
    match args.first().map(String::as_str) {
        Some("btcli") => {
            let wallet_cmd = args.get(1).map(String::as_str) == Some("wallet");
            if !wallet_cmd {
                need("--network", btcli_network(chain));
                need("--netuid", Some(chain.netuid.to_string()));
            }
            need("--wallet.name", Some(chain.wallet.clone()));
            need("--wallet.hotkey", Some(chain.hotkey.clone()));
        }
        Some("apiary") => {
            need("--endpoint", Some(chain.endpoint.clone()));
            need("--netuid", Some(chain.netuid.to_string()));
            need("--wallet", Some(chain.wallet.clone()));
            need("--hotkey", Some(chain.hotkey.clone()));
        }
        _ => missing.push("a known program"),
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(endpoint: &str, backend: ChainBackend) -> ChainConfig {
        ChainConfig {
            backend,
            endpoint: endpoint.to_string(),
            netuid: 3,
            wallet: "miner wallet".to_string(),
            hotkey: "hk1".to_string(),
            ..ChainConfig::default()
        }
    }

    #[test]
    fn every_hint_is_complete_for_each_network() {
        for (endpoint, network) in [
            ("finney", "finney"),
            ("test", "test"),
            ("local", "local"),
            ("ws://127.0.0.1:9945", "ws://127.0.0.1:9945"),
            (
                "wss://entrypoint-finney.example:443",
                "wss://entrypoint-finney.example:443",
            ),
        ] {
            let c = chain(endpoint, ChainBackend::Subtensor);
            let register = btcli_register(&c).expect("subtensor has a btcli network");
            let stake = btcli_stake_add(&c).expect("subtensor has a btcli network");
            for hint in [
                register.clone(),
                stake,
                btcli_new_hotkey(&c),
                apiary_register(&c),
            ] {
                assert_eq!(
                    missing_parts(&hint, &c),
                    Vec::<&str>::new(),
                    "{endpoint}: {hint:?}"
                );
            }
            let i = register
                .iter()
                .position(|a| a == "--network")
                .expect("--network");
            assert_eq!(register[i + 1], network);
            // The advice sentence carries both commands, quoted for a shell.
            let advice = register_advice(&c);
            assert!(advice.contains(&shell_line(&register)), "{advice}");
            assert!(advice.contains("'miner wallet'"), "{advice}");
        }
    }

    #[test]
    fn the_embedded_chain_has_no_btcli_hint() {
        let c = chain("finney", ChainBackend::Local);
        assert_eq!(btcli_register(&c), None);
        assert_eq!(btcli_stake_add(&c), None);
        assert!(register_advice(&c).contains("auto_register"));
    }

    #[test]
    fn the_checker_catches_what_the_old_hints_lacked() {
        let c = chain("test", ChainBackend::Subtensor);
        // What doctor and init printed before: no --network, so btcli used finney.
        let old: Vec<String> =
            "btcli subnet register --netuid 3 --wallet.name w --wallet.hotkey hk1"
                .split(' ')
                .map(String::from)
                .collect();
        let missing = missing_parts(&old, &c);
        assert!(missing.contains(&"--network"), "{missing:?}");
        assert!(missing.contains(&"--wallet.name"), "{missing:?}");
        // `apiary chain register` alone targets wallet `default` on finney.
        let bare: Vec<String> = ["apiary", "chain", "register"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            missing_parts(&bare, &c),
            vec!["--endpoint", "--netuid", "--wallet", "--hotkey"]
        );
        // A finney hint is not complete for a test config.
        let finney = btcli_register(&chain("finney", ChainBackend::Subtensor)).expect("hint");
        assert_eq!(missing_parts(&finney, &c), vec!["--network"]);
    }

    #[test]
    fn shell_line_quotes_what_a_shell_would_split() {
        let a: Vec<String> = ["btcli", "a b", "it's", "", "ws://h:1/x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_line(&a), r"btcli 'a b' 'it'\''s' '' ws://h:1/x");
    }
}
