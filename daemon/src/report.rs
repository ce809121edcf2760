//! What `apiary run` tells the person running it, on stdout and at every log level: who the node
//! is and where to reach it when it starts, then one status line per window.
//!
//! Logs (stderr, `--log`) are for diagnosis and default to warnings only; these lines are the
//! node saying what it is doing, like reth's and lighthouse's periodic status. The formatting is
//! pure ([`startup_lines`], [`status_line`], [`problems`]) and tested here; [`watch`] only feeds
//! it from the node's events.

use crate::admin::StatusReply;
use apiary_actors::context::{NodeContext, NodeEvent};
use apiary_actors::weights::WeightSubmission;
use apiary_actors::Handles;
use apiary_config::Role;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The version `--version`, the start-up line and `apiary_build_info` show: the crate version and
/// the commit it was built from (`unknown` outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("APIARY_COMMIT"), ")");

/// At most one status line per this long: a devnet's windows last a second or two.
pub const MIN_GAP: Duration = Duration::from_secs(10);

/// A status line even without a new window after this long (a stalled chain says so).
pub const QUIET: Duration = Duration::from_secs(120);

/// Where the node can be reached, besides what [`StatusReply`] holds.
#[derive(Debug, Clone)]
pub struct Endpoints<'a> {
    /// The admin socket.
    pub admin: &'a Path,
    /// The metrics endpoint's bound address, when on.
    pub metrics: Option<SocketAddr>,
    /// Whether the dashboard is served at the metrics address.
    pub dashboard: bool,
    /// `chain.netuid`.
    pub netuid: u16,
    /// `chain.endpoint` for subtensor; `None` on the embedded chain.
    pub endpoint: Option<&'a str>,
}

/// The lines printed once the node is up.
pub fn startup_lines(s: &StatusReply, at: &Endpoints<'_>) -> Vec<String> {
    let chain = match at.endpoint {
        Some(e) => format!("{} {e}", s.chain),
        None => s.chain.clone(),
    };
    let uid = s
        .uid
        .map_or("not registered".to_string(), |u| format!("uid {u}"));
    let mut lines = vec![
        format!(
            "apiary {VERSION}: node {:?}, {}, netuid {} on {chain}",
            s.name, s.role, at.netuid
        ),
        format!("  hotkey       {} ({uid})", s.hotkey),
        format!("  peer id      {}", s.peer_id),
    ];
    for a in &s.listen_addrs {
        lines.push(format!("  listening    {a}"));
    }
    lines.push(format!(
        "  admin socket {}  (apiary admin status --socket {})",
        at.admin.display(),
        at.admin.display()
    ));
    match at.metrics {
        Some(addr) => {
            lines.push(format!("  metrics      http://{addr}/metrics"));
            if at.dashboard {
                lines.push(format!("  dashboard    http://{addr}/"));
            }
        }
        None => lines.push("  metrics      off (set metrics.listen to serve them)".to_string()),
    }
    lines
}

/// What is wrong, each as a few words (the status line's tail). `permit` is the validator
/// permit of this node's uid in the latest metagraph (`None`: not known yet or not registered).
pub fn problems(
    s: &StatusReply,
    role: Role,
    permit: Option<bool>,
    weights: Option<&WeightSubmission>,
) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(f) = &s.fatal {
        p.push(format!("stopping: {f}"));
    }
    if s.uid.is_none() {
        p.push("not registered".to_string());
    }
    if role == Role::Validator && permit == Some(false) {
        p.push("no validator permit: the chain ignores this node's weights".to_string());
    }
    if s.connected_peers == 0 {
        p.push("no peers".to_string());
    }
    let newest = s.window.saturating_sub(1);
    let behind = s.model_window.map_or(0, |m| newest.saturating_sub(m));
    if behind > 2 {
        p.push(format!("model {behind} windows behind"));
    }
    if role == Role::Validator {
        if let Some(e) = weights.and_then(|w| w.error.as_deref()) {
            p.push(format!("last set_weights failed: {e}"));
        }
    }
    p
}

/// One status line: window, block, peers, model, losses, the last weight submission
/// (validators), then the problems or `ok`.
pub fn status_line(
    s: &StatusReply,
    role: Role,
    weights: Option<&WeightSubmission>,
    problems: &[String],
) -> String {
    let mut parts = vec![
        format!("window {} block {}", s.window, s.block),
        format!("peers {}", s.connected_peers),
        match s.model_window {
            Some(w) => format!("model window {w}"),
            None => "model genesis".to_string(),
        },
    ];
    if let Some(l) = s.last_loss {
        parts.push(format!("train loss {l:.4}"));
    }
    if let Some(l) = s.held_out_loss {
        parts.push(format!("held-out {l:.4}"));
    }
    if role == Role::Validator {
        parts.push(match weights {
            None => "weights not set yet".to_string(),
            Some(w) => match (w.block, &w.error) {
                (Some(b), None) => format!("weights set at block {b} (window {})", w.window),
                (_, Some(_)) => format!("weights for window {} refused", w.window),
                (None, None) => format!("weights for window {} pending", w.window),
            },
        });
    }
    parts.push(if problems.is_empty() {
        "ok".to_string()
    } else {
        problems.join("; ")
    });
    parts.join(" | ")
}

/// This node's validator permit in the latest metagraph.
fn permit(ctx: &NodeContext) -> Option<bool> {
    let uid = ctx.status().uid?;
    let mg = ctx.metagraph()?;
    mg.by_uid(uid).map(|n| n.validator_permit)
}

/// Writes lines, ignoring a closed stdout: the node runs on without a reader.
fn emit(out: &mut (dyn Write + Send), lines: &[String]) {
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
}

/// Prints the start-up lines, then a status line per window (at most one per [`MIN_GAP`], and
/// one after [`QUIET`] without a new window), and the permit advice whenever a validator's permit
/// is found missing. Runs until the node's event channel closes.
pub async fn watch(
    ctx: Arc<NodeContext>,
    handles: Handles,
    at: Endpoints<'_>,
    out: &mut (dyn Write + Send),
) {
    let mut events = ctx.events.subscribe();
    let role = ctx.cfg.node.role;
    emit(out, &startup_lines(&crate::admin::status(&ctx).await, &at));
    let mut last_line: Option<Instant> = None;
    let mut permit_said: Option<bool> = None;
    loop {
        let due = last_line.map_or(Instant::now(), |t| t + QUIET);
        let print = tokio::select! {
            ev = events.recv() => match ev {
                Ok(NodeEvent::WindowStarted { .. }) => {
                    last_line.is_none_or(|t| t.elapsed() >= MIN_GAP)
                }
                Ok(_) => false,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => false,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = tokio::time::sleep_until(due) => true,
        };
        let now_permit = (role == Role::Validator).then(|| permit(&ctx)).flatten();
        if now_permit == Some(false) && permit_said != Some(false) {
            emit(
                out,
                &[format!(
                    "warning: this validator (uid {}) has no validator permit on netuid {}: its \
                     weights are ignored; {}",
                    ctx.status().uid.unwrap_or_default(),
                    ctx.cfg.chain.netuid,
                    crate::hints::permit_advice(&ctx.cfg.chain)
                )],
            );
        }
        if now_permit.is_some() {
            permit_said = now_permit;
        }
        if !print {
            continue;
        }
        let status = crate::admin::status(&ctx).await;
        let weights = if role == Role::Validator {
            handles.weight_setter.last().await.ok().flatten()
        } else {
            None
        };
        let p = problems(&status, role, now_permit, weights.as_ref());
        emit(out, &[status_line(&status, role, weights.as_ref(), &p)]);
        last_line = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> StatusReply {
        StatusReply {
            name: "v".into(),
            role: "validator".into(),
            hotkey: "5Fhk".into(),
            peer_id: "12D3peer".into(),
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001/p2p/12D3peer".into()],
            uid: Some(3),
            chain: "subtensor".into(),
            block: 120,
            window: 12,
            connected_peers: 4,
            model_hash: None,
            model_window: Some(11),
            last_loss: None,
            held_out_loss: Some(2.5),
            dataset: String::new(),
            fatal: None,
            chain_health: None,
            downloads: Vec::new(),
            nat: String::new(),
            metrics_url: None,
            dashboard_url: None,
            weights_set: None,
        }
    }

    #[test]
    fn startup_names_the_chain_and_every_place_to_reach_the_node() {
        let admin = Path::new("/var/lib/apiary/admin.sock");
        let lines = startup_lines(
            &reply(),
            &Endpoints {
                admin,
                metrics: Some("127.0.0.1:9615".parse().expect("addr")),
                dashboard: true,
                netuid: 3,
                endpoint: Some("test"),
            },
        );
        let all = lines.join("\n");
        assert!(lines[0].contains("netuid 3 on subtensor test"), "{all}");
        assert!(lines[0].contains(VERSION), "{all}");
        assert!(all.contains("uid 3"), "{all}");
        assert!(all.contains("12D3peer"), "{all}");
        assert!(all.contains("/tcp/4001/"), "{all}");
        assert!(
            all.contains("apiary admin status --socket /var/lib/apiary/admin.sock"),
            "{all}"
        );
        assert!(all.contains("http://127.0.0.1:9615/metrics"), "{all}");
        assert!(all.contains("dashboard    http://127.0.0.1:9615/"), "{all}");
        let off = startup_lines(
            &reply(),
            &Endpoints {
                admin,
                metrics: None,
                dashboard: true,
                netuid: 3,
                endpoint: None,
            },
        );
        assert!(off.iter().any(|l| l.contains("metrics      off")));
        assert!(!off.iter().any(|l| l.contains("dashboard")));
    }

    #[test]
    fn a_healthy_validator_says_ok_and_where_its_weights_are() {
        let w = WeightSubmission {
            window: 10,
            weights: vec![(1, 65535)],
            block: Some(118),
            tx_hash: None,
            error: None,
        };
        let s = reply();
        let p = problems(&s, Role::Validator, Some(true), Some(&w));
        assert!(p.is_empty(), "{p:?}");
        let line = status_line(&s, Role::Validator, Some(&w), &p);
        assert_eq!(
            line,
            "window 12 block 120 | peers 4 | model window 11 | held-out 2.5000 | weights set at \
             block 118 (window 10) | ok"
        );
    }

    #[test]
    fn problems_are_named() {
        let mut s = reply();
        s.connected_peers = 0;
        s.model_window = Some(5);
        s.uid = None;
        let refused = WeightSubmission {
            window: 10,
            weights: vec![],
            block: None,
            tx_hash: None,
            error: Some("rate limited".into()),
        };
        let p = problems(&s, Role::Validator, Some(false), Some(&refused));
        assert_eq!(
            p,
            vec![
                "not registered".to_string(),
                "no validator permit: the chain ignores this node's weights".to_string(),
                "no peers".to_string(),
                "model 6 windows behind".to_string(),
                "last set_weights failed: rate limited".to_string(),
            ]
        );
        let line = status_line(&s, Role::Validator, Some(&refused), &p);
        assert!(line.contains("weights for window 10 refused"), "{line}");
        assert!(
            line.ends_with("last set_weights failed: rate limited"),
            "{line}"
        );
        // A miner has no permit or weights to worry about.
        let p = problems(&reply(), Role::Miner, Some(false), None);
        assert!(p.is_empty(), "{p:?}");
        let line = status_line(&reply(), Role::Miner, None, &p);
        assert!(!line.contains("weights"), "{line}");
    }
}
