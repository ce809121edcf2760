//! `apiary doctor`: checks a node's setup before it runs (and before TAO is committed to it),
//! line by line, each failure with what to do about it.

use crate::{chain_cmd, hints};
use apiary_config::{ChainBackend, NodeConfig, Role};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long reaching the chain may take before it counts as unreachable.
const CHAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Free disk below this (plus `node.disk_budget_mb`) is a failure.
const MIN_FREE_BYTES: u64 = 1 << 30;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but worth fixing.
    Warn,
    /// Blocks running (doctor exits non-zero).
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub what: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do (for warnings and failures).
    pub fix: Option<String>,
}

fn ok(what: &'static str, detail: impl Into<String>) -> Check {
    Check {
        what,
        verdict: Verdict::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn bad(
    verdict: Verdict,
    what: &'static str,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        what,
        verdict,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check that applies to `cfg` (loaded from `path`).
pub async fn check(cfg: &NodeConfig, path: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    match cfg.validate() {
        Ok(()) => out.push(ok("config", format!("{} is valid", path.display()))),
        Err(e) => out.push(bad(
            Verdict::Fail,
            "config",
            e.to_string(),
            format!(
                "edit {}; `apiary check-config FILE` shows every key",
                path.display()
            ),
        )),
    }
    out.push(data_dir(&cfg.node.data_dir));
    out.push(disk(&cfg.node.data_dir, cfg.node.disk_budget_mb));
    out.push(dataset(cfg));
    out.push(device(&cfg.train.device));
    // A node already running on this config holds the listen port and knows its reachability.
    let running = running_status(&cfg.admin_socket_path()).await;
    match &running {
        Some(st) => out.push(ok(
            "listen",
            format!(
                "held by the node running on this config (peer {}), listening on {}",
                st["peer_id"].as_str().unwrap_or("?"),
                listen_list(st)
            ),
        )),
        None => out.push(listen(&cfg.net.listen)),
    }
    match cfg.chain.backend {
        ChainBackend::Local => out.push(ok(
            "chain",
            "the embedded chain (chain.backend = \"local\"): no wallet or registration to check",
        )),
        ChainBackend::Subtensor => out.extend(subtensor(cfg).await),
    }
    out.push(
        if let Some(nat) = running.as_ref().and_then(|st| st["nat"].as_str()) {
            reachability(nat)
        } else if cfg.net.autonat {
            ok(
                "reachability",
                "net.autonat is on: `apiary admin status` shows whether peers can dial this node \
             once it runs (run `apiary doctor` again then)",
            )
        } else {
            bad(
            Verdict::Warn,
            "reachability",
            "not probed (net.autonat is off)",
            "set net.autonat = true to learn whether peers can dial this node; behind NAT list \
             a relay in net.relays",
        )
        },
    );
    out
}

fn data_dir(dir: &Path) -> Check {
    if dir.exists() {
        let probe = dir.join(".apiary-doctor-probe");
        match std::fs::write(&probe, b"probe") {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                ok("data dir", format!("{} is writable", dir.display()))
            }
            Err(e) => bad(
                Verdict::Fail,
                "data dir",
                format!("{} is not writable: {e}", dir.display()),
                "fix its owner or mode, or point node.data_dir elsewhere",
            ),
        }
    } else {
        match nearest_existing(dir) {
            Some(parent) if !readonly(&parent) => ok(
                "data dir",
                format!(
                    "{} will be created (in {})",
                    dir.display(),
                    parent.display()
                ),
            ),
            _ => bad(
                Verdict::Fail,
                "data dir",
                format!("{} does not exist and cannot be created", dir.display()),
                "create it (mkdir -p) or point node.data_dir at a writable path",
            ),
        }
    }
}

fn nearest_existing(p: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(p).ok()?;
    abs.ancestors().find(|a| a.exists()).map(Path::to_path_buf)
}

fn readonly(p: &Path) -> bool {
    std::fs::metadata(p).map_or(true, |m| m.permissions().readonly())
}

/// Free bytes of the file system holding `p` (POSIX `df -Pk`; `None` where it cannot tell).
fn free_bytes(p: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(p)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kb: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

fn disk(dir: &Path, budget_mb: u64) -> Check {
    let Some(at) = nearest_existing(dir) else {
        return bad(
            Verdict::Warn,
            "disk",
            "cannot tell (no existing parent)",
            "check the data dir path",
        );
    };
    let need = MIN_FREE_BYTES.saturating_add(budget_mb.saturating_mul(1 << 20));
    match free_bytes(&at) {
        Some(free) if free >= need => ok(
            "disk",
            format!("{:.1} GiB free at {}", gib(free), at.display()),
        ),
        Some(free) => bad(
            Verdict::Fail,
            "disk",
            format!(
                "{:.1} GiB free at {}, {:.1} GiB needed",
                gib(free),
                at.display(),
                gib(need)
            ),
            "free disk space, lower node.disk_budget_mb, or move node.data_dir",
        ),
        None => bad(
            Verdict::Warn,
            "disk",
            "cannot tell (no `df`)",
            "check free space by hand",
        ),
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn dataset(cfg: &NodeConfig) -> Check {
    let data = &cfg.train.data;
    if crate::corpus::uses_builtin(data) {
        return ok(
            "dataset",
            format!(
                "{} is not here: the copy built into apiary is used (written to {} at start)",
                data.display(),
                crate::corpus::builtin_path(&cfg.node.data_dir).display()
            ),
        );
    }
    if !data.exists() {
        return bad(
            Verdict::Fail,
            "dataset",
            format!("train.data {} does not exist", data.display()),
            "point train.data at a shard file or a directory of .txt / .jsonl / .parquet shards \
             (the subnet's data: every node must use the same)",
        );
    }
    if let Some(t) = &cfg.train.tokenizer {
        if !t.exists() {
            return bad(
                Verdict::Fail,
                "dataset",
                format!("train.tokenizer {} does not exist", t.display()),
                "point train.tokenizer at a Hugging Face tokenizer.json, or remove it for bytes",
            );
        }
    }
    let manifest = cfg.data_cache_path().join("manifest.json");
    let cached = std::fs::read(&manifest)
        .ok()
        .map(|b| {
            format!(
                "; page cache built ({} bytes of manifest, hash {})",
                b.len(),
                &blake3::hash(&b).to_hex()[..8]
            )
        })
        .unwrap_or_else(|| "; the page cache is built at first start".into());
    ok("dataset", format!("{}{cached}", data.display()))
}

fn device(choice: &str) -> Check {
    match apiary_model::select_device(choice) {
        Ok(d) => ok("device", format!("train.device = \"{choice}\": {d:?}")),
        Err(e) => bad(
            Verdict::Fail,
            "device",
            format!("train.device = \"{choice}\": {e}"),
            "set train.device = \"cpu\", or build with `--features cuda` on a machine with a GPU \
             (README: Building with CUDA)",
        ),
    }
}

/// The `status` of a node answering on `socket` (within two seconds), if one is running.
async fn running_status(socket: &Path) -> Option<serde_json::Value> {
    if !socket.exists() {
        return None;
    }
    let req = serde_json::json!({"cmd": "status"});
    let reply = crate::admin::request_timeout(socket, &req, std::time::Duration::from_secs(2))
        .await
        .ok()?;
    let status = reply.get("result")?;
    status.get("peer_id").is_some().then(|| status.clone())
}

fn listen_list(status: &serde_json::Value) -> String {
    let addrs: Vec<&str> = status["listen_addrs"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    if addrs.is_empty() {
        "no address yet".into()
    } else {
        addrs.join(", ")
    }
}

/// What the running node's AutoNAT says about dialing it from outside.
pub fn reachability(nat: &str) -> Check {
    if nat.starts_with("public") || nat.contains("through") {
        ok("reachability", format!("AutoNAT: {nat}"))
    } else if nat.starts_with("private") {
        bad(
            Verdict::Warn,
            "reachability",
            format!("AutoNAT: {nat}"),
            "forward net.listen's TCP port on the router, or list a relay in net.relays \
             (with net.hole_punching = true peers can then upgrade to a direct connection)",
        )
    } else if nat.starts_with("off") {
        bad(
            Verdict::Warn,
            "reachability",
            "the running node does not probe (net.autonat is off)",
            "set net.autonat = true and restart to learn whether peers can dial this node",
        )
    } else {
        ok(
            "reachability",
            format!("AutoNAT: {nat}; run `apiary doctor` again in a minute"),
        )
    }
}

fn listen(addr: &str) -> Check {
    let parsed: Result<apiary_net::Multiaddr, _> = addr.parse();
    let Ok(ma) = parsed else {
        return bad(
            Verdict::Fail,
            "listen",
            format!("net.listen `{addr}` is not a multiaddr"),
            "use e.g. /ip4/0.0.0.0/tcp/4001",
        );
    };
    let (mut ip, mut port) = (None, None);
    for p in ma.iter() {
        match p {
            apiary_net::Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            apiary_net::Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            apiary_net::Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) if port != 0 => match std::net::TcpListener::bind((ip, port)) {
            Ok(_) => {
                let note = if ip.is_loopback() {
                    " (loopback: only this machine can dial it; use 0.0.0.0 for peers)"
                } else {
                    ""
                };
                ok("listen", format!("{addr} is free{note}"))
            }
            Err(e) => bad(
                Verdict::Fail,
                "listen",
                format!("cannot bind {addr}: {e}"),
                "stop whatever holds the port (another apiary?) or pick another net.listen port",
            ),
        },
        _ => ok("listen", format!("{addr} (a free port is picked at start)")),
    }
}

/// The RPC backend `chain.rpc` picks for `chain.endpoint`. subxt's chainHead backend on a dev
/// chain on this machine (chopsticks) sees no new heads and crashes chopsticks on a submitted
/// extrinsic: a warning, with the fix.
fn rpc_check(chain: &apiary_config::ChainConfig) -> Check {
    use apiary_config::ChainRpc;
    let resolved = chain.rpc.resolve(&chain.endpoint);
    let name = |r: ChainRpc| match r {
        ChainRpc::Legacy => "legacy",
        ChainRpc::Default | ChainRpc::Auto => "chainHead",
    };
    let loopback = apiary_config::is_loopback_endpoint(&chain.endpoint);
    if chain.rpc == ChainRpc::Default && loopback {
        bad(
            Verdict::Warn,
            "rpc",
            format!(
                "chainHead RPC on {} (chain.rpc = \"default\"): a chopsticks dev chain needs the \
                 legacy RPC methods",
                chain.endpoint
            ),
            "remove chain.rpc (auto picks legacy on this machine's endpoints) or set chain.rpc = \
             \"legacy\"",
        )
    } else {
        let how = if chain.rpc == ChainRpc::Auto {
            if loopback {
                " (auto: an endpoint on this machine)"
            } else {
                " (auto)"
            }
        } else {
            ""
        };
        ok("rpc", format!("{}{how}", name(resolved)))
    }
}

/// Wallet, endpoint, registration, permit and the runtime's weight calls.
async fn subtensor(cfg: &NodeConfig) -> Vec<Check> {
    let mut out = Vec::new();
    let hotkey = match chain_cmd::wallet_of(cfg).and_then(|w| Ok((w.hotkey_path(), w.hotkey()?))) {
        Ok((path, key)) => {
            out.push(file_mode_check(&path, key.id().ss58()));
            Some(key)
        }
        Err(e) => {
            out.push(bad(
                Verdict::Fail,
                "wallet",
                format!(
                    "cannot read hotkey `{}` of wallet `{}`: {e:#}",
                    cfg.chain.hotkey, cfg.chain.wallet
                ),
                format!(
                    "create it with `{}` (or `apiary wallet new`), or set chain.wallet / \
                     chain.hotkey / chain.wallet_path to an existing one",
                    hints::shell_line(&hints::btcli_new_hotkey(&cfg.chain))
                ),
            ));
            None
        }
    };
    out.push(rpc_check(&cfg.chain));
    let chain = match tokio::time::timeout(CHAIN_TIMEOUT, chain_cmd::connect_subtensor(cfg)).await {
        Ok(Ok(c)) => {
            out.push(ok("endpoint", format!("{} answers", c.url())));
            c
        }
        Ok(Err(e)) => {
            out.push(bad(
                Verdict::Fail,
                "endpoint",
                format!("{e:#}"),
                "check chain.endpoint (finney, test, local or a ws:// URL) and the network; \
                 chopsticks needs chain.rpc = \"legacy\"",
            ));
            return out;
        }
        Err(_) => {
            out.push(bad(
                Verdict::Fail,
                "endpoint",
                format!(
                    "{} did not answer within {CHAIN_TIMEOUT:?}",
                    cfg.chain.endpoint
                ),
                "check chain.endpoint and the network (a firewall, a node still syncing)",
            ));
            return out;
        }
    };
    out.push(match chain.weight_calls().await {
        Err(e) => bad(
            Verdict::Fail,
            "runtime",
            format!("cannot read the runtime's metadata: {e}"),
            "check chain.endpoint",
        ),
        Ok(calls) => {
            let names = calls.names().join(", ");
            // What a validator submits without and with commit-reveal.
            let plain = apiary_subtensor::choose_weight_call(&calls, false, cfg.chain.mechanism);
            let commit = apiary_subtensor::choose_weight_call(&calls, true, cfg.chain.mechanism);
            match (plain, commit) {
                (Ok(p), Ok(c)) => ok(
                    "runtime",
                    format!("weight calls: {names}; this node uses {p} ({c} under commit-reveal)"),
                ),
                (Ok(p), Err(e)) => bad(
                    Verdict::Warn,
                    "runtime",
                    format!(
                        "weight calls: {names}; this node uses {p}, but under commit-reveal: {e}"
                    ),
                    "fine while the subnet has commit-reveal off",
                ),
                (Err(e), _) => bad(
                    Verdict::Fail,
                    "runtime",
                    format!("weight calls: {names}: {e}"),
                    "set chain.mechanism to one this runtime has (0), or use a newer apiary",
                ),
            }
        }
    });
    let Some(hotkey) = hotkey else {
        return out;
    };
    let netuid = cfg.chain.netuid;
    match apiary_chain::ChainClient::metagraph(chain.as_ref(), netuid).await {
        Err(e) => out.push(bad(
            Verdict::Fail,
            "registration",
            format!("cannot read subnet {netuid}: {e}"),
            "check chain.netuid: the subnet must exist on this chain",
        )),
        Ok(mg) => match mg.neurons.iter().find(|n| n.hotkey == hotkey.id()) {
            None => out.push(bad(
                Verdict::Fail,
                "registration",
                format!(
                    "hotkey {} is not registered on netuid {netuid}",
                    hotkey.id().ss58()
                ),
                hints::register_advice(&cfg.chain),
            )),
            Some(n) => {
                out.push(ok(
                    "registration",
                    format!("uid {} on netuid {netuid}", n.uid),
                ));
                if cfg.node.role == Role::Validator {
                    out.push(if n.validator_permit {
                        ok("validator permit", format!("uid {} has one", n.uid))
                    } else {
                        bad(
                            Verdict::Fail,
                            "validator permit",
                            format!(
                                "uid {} has no validator permit: its weights would be ignored",
                                n.uid
                            ),
                            hints::permit_advice(&cfg.chain),
                        )
                    });
                }
            }
        },
    }
    out
}

/// The hotkey file must not be readable by others.
fn file_mode_check(path: &Path, ss58: String) -> Check {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return bad(
                    Verdict::Warn,
                    "wallet",
                    format!(
                        "hotkey {ss58} readable by others ({} mode {mode:o})",
                        path.display()
                    ),
                    format!("chmod 600 {}", path.display()),
                );
            }
        }
    }
    ok("wallet", format!("hotkey {ss58} ({})", path.display()))
}

/// The report as lines: `ok`, `warn` or `FAIL`, what, detail, and the fix indented below.
pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let tag = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        s.push_str(&format!("{tag}  {:<16} {}\n", c.what, c.detail));
        if let Some(f) = &c.fix {
            s.push_str(&format!("      {:<16} fix: {f}\n", ""));
        }
    }
    let fails = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warns = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    s.push_str(&match fails {
        0 => format!("ready to run ({warns} warning(s))\n"),
        n => format!("{n} problem(s) block running; fix them and run `apiary doctor` again\n"),
    });
    s
}

/// Whether the report blocks running.
pub fn blocks(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.verdict == Verdict::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rpc_line_names_the_backend_and_warns_on_chain_head_against_this_machine() {
        use apiary_config::{ChainConfig, ChainRpc};
        let chain = |endpoint: &str, rpc| ChainConfig {
            endpoint: endpoint.to_string(),
            rpc,
            ..ChainConfig::default()
        };
        let c = rpc_check(&chain("ws://127.0.0.1:9944", ChainRpc::Auto));
        assert_eq!(c.verdict, Verdict::Ok);
        assert_eq!(c.detail, "legacy (auto: an endpoint on this machine)");
        let c = rpc_check(&chain("finney", ChainRpc::Auto));
        assert_eq!(
            (c.verdict, c.detail.as_str()),
            (Verdict::Ok, "chainHead (auto)")
        );
        let c = rpc_check(&chain("local", ChainRpc::Default));
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(
            c.fix.as_deref().unwrap_or("").contains("chain.rpc"),
            "{c:?}"
        );
        let c = rpc_check(&chain("wss://entrypoint.example:443", ChainRpc::Legacy));
        assert_eq!((c.verdict, c.detail.as_str()), (Verdict::Ok, "legacy"));
    }

    fn local_cfg(dir: &Path) -> NodeConfig {
        let mut c = NodeConfig::default();
        c.node.data_dir = dir.join("node");
        c.train.data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tinyshakespeare.txt");
        c
    }

    #[test]
    fn reachability_follows_autonat() {
        assert_eq!(
            reachability("public at /ip4/1.2.3.4/tcp/4001").verdict,
            Verdict::Ok
        );
        assert_eq!(
            reachability("private: peers cannot dial this node; set net.relays; reachable through 1 relay(s)").verdict,
            Verdict::Ok
        );
        let private = reachability("private: peers cannot dial this node; set net.relays");
        assert_eq!(private.verdict, Verdict::Warn);
        assert!(private.fix.expect("fix").contains("net.relays"));
        assert_eq!(reachability("off (net.autonat)").verdict, Verdict::Warn);
        assert_eq!(
            reachability("unknown (not probed yet)").verdict,
            Verdict::Ok
        );
    }

    #[tokio::test]
    async fn a_good_local_setup_is_ready() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = local_cfg(dir.path());
        let checks = check(&cfg, Path::new("node.toml")).await;
        assert!(!blocks(&checks), "{}", render(&checks));
        assert!(render(&checks).contains("ready to run"));
    }

    #[tokio::test]
    async fn missing_data_a_gpu_without_cuda_and_a_taken_port_fail_with_advice() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cfg = local_cfg(dir.path());
        cfg.train.data = dir.path().join("nope.txt");
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        cfg.net.listen = format!("/ip4/127.0.0.1/tcp/{port}");
        if !cfg!(feature = "cuda") {
            cfg.train.device = "cuda".into();
        }
        let checks = check(&cfg, Path::new("node.toml")).await;
        assert!(blocks(&checks));
        let report = render(&checks);
        let fail = |what: &str| {
            checks
                .iter()
                .find(|c| c.what == what && c.verdict == Verdict::Fail)
                .unwrap_or_else(|| panic!("no failed {what} check:\n{report}"))
                .clone()
        };
        assert!(fail("dataset").fix.expect("fix").contains("train.data"));
        assert!(fail("listen").fix.expect("fix").contains("net.listen"));
        if !cfg!(feature = "cuda") {
            assert!(fail("device").fix.expect("fix").contains("--features cuda"));
        }
        assert!(report.contains("problem(s) block running"));
    }

    #[tokio::test]
    async fn a_missing_wallet_and_an_unreachable_endpoint_fail_with_advice() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cfg = local_cfg(dir.path());
        cfg.chain.backend = ChainBackend::Subtensor;
        cfg.chain.wallet_path = Some(dir.path().join("wallets"));
        cfg.chain.wallet = "w".into();
        cfg.chain.hotkey = "h".into();
        // Nothing listens on port 1 of 127.0.0.1.
        cfg.chain.endpoint = "ws://127.0.0.1:1".into();
        let checks = check(&cfg, Path::new("node.toml")).await;
        let report = render(&checks);
        let wallet = checks
            .iter()
            .find(|c| c.what == "wallet")
            .unwrap_or_else(|| panic!("{report}"));
        assert_eq!(wallet.verdict, Verdict::Fail, "{report}");
        assert_eq!(
            wallet.fix.as_deref(),
            Some(
                format!(
                    "create it with `btcli wallet new_hotkey --wallet.name w --wallet.hotkey h \
                     --wallet.path {}` (or `apiary wallet new`), or set chain.wallet / \
                     chain.hotkey / chain.wallet_path to an existing one",
                    dir.path().join("wallets").display()
                )
                .as_str()
            )
        );
        let endpoint = checks
            .iter()
            .find(|c| c.what == "endpoint")
            .unwrap_or_else(|| panic!("{report}"));
        assert_eq!(endpoint.verdict, Verdict::Fail, "{report}");
        assert!(endpoint
            .fix
            .as_deref()
            .is_some_and(|f| f.starts_with("check chain.endpoint")));
    }
}
