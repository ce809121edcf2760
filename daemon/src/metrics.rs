//! The opt-in Prometheus endpoint (`[metrics]`, `metrics.listen`): `GET /metrics` over plain
//! HTTP/1.1, answered in the Prometheus text exposition format 0.0.4.
//!
//! It reads the same sources as the admin socket's `metrics` and `status` commands: the node's
//! counters ([`apiary_actors::Metrics`]), its status (block, window, losses), the network's
//! counters and per-peer standings, the validator's per-miner scores, the supervisor's
//! restarts, the chain's head (for the lag) and the store's size. Every metric is named
//! `apiary_*`, counters end in `_total`, sizes are bytes and times seconds; series about a miner
//! carry `uid` and `hotkey` labels, about a peer `peer` (bytes per peer also `direction`), about
//! an actor `actor`, gossip validation outcomes `outcome`.
//! The list with each metric's meaning is in the `# HELP` lines of a scrape.
//!
//! The server is small and bounded ([`MetricsLimits`]): one request per connection
//! (`Connection: close`), a request head of at most `max_request_bytes` read within
//! `request_timeout`, at most `max_conns` connections at once (more are answered
//! `503` at once and closed), and a scrape that cannot be gathered within `render_timeout`
//! answers `503`. Anything but `GET`/`HEAD /metrics` gets `404` (or `405`, `400`); nothing a
//! client sends can panic it or grow its memory.

use anyhow::{Context, Result};
use apiary_actors::context::NodeContext;
use apiary_actors::Handles;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long one source (the chain, the evaluator, the network, the store) may take to answer
/// during a scrape; a source that does not answer is left out and reported by
/// `apiary_metrics_source_up{source=…} 0`.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// The text exposition format.

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the process restarts); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample value: integers are written exactly, floats in Prometheus' spelling (`NaN`,
/// `+Inf`, `-Inf`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// An exact integer (counters, bytes).
    Int(u64),
    /// A float (losses, scores, seconds).
    Float(f64),
}

impl From<u64> for Num {
    fn from(v: u64) -> Self {
        Num::Int(v)
    }
}
impl From<usize> for Num {
    fn from(v: usize) -> Self {
        Num::Int(v as u64)
    }
}
impl From<u16> for Num {
    fn from(v: u16) -> Self {
        Num::Int(v.into())
    }
}
impl From<bool> for Num {
    fn from(v: bool) -> Self {
        Num::Int(v.into())
    }
}
impl From<f64> for Num {
    fn from(v: f64) -> Self {
        Num::Float(v)
    }
}
impl From<f32> for Num {
    fn from(v: f32) -> Self {
        Num::Float(v.into())
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Num::Int(v) => write!(f, "{v}"),
            Num::Float(v) if v.is_nan() => f.write_str("NaN"),
            Num::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Num::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Num::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Escapes a label value: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a `# HELP` text: `\` → `\\`, newline → `\n`.
pub fn escape_help(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A valid metric (or, with `colon` false, label) name: every character outside
/// `[a-zA-Z0-9_:]` becomes `_`, and a leading digit gets a `_` before it.
pub fn sanitize_name(name: &str, colon: bool) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// One family: its header and its sample lines.
#[derive(Debug)]
struct Family {
    name: String,
    kind: Kind,
    help: String,
    samples: Vec<String>,
}

/// A scrape being written: metric families in the order first named, each written once with
/// its `# HELP` and `# TYPE` lines and then all its samples (samples added to a family named
/// before join it).
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

impl Exposition {
    /// An empty scrape.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a family (no sample yet); returns its index.
    fn family(&mut self, name: &str, kind: Kind, help: &str) -> usize {
        let name = sanitize_name(name, true);
        if let Some(&i) = self.index.get(&name) {
            return i;
        }
        self.families.push(Family {
            name: name.clone(),
            kind,
            help: escape_help(help),
            samples: Vec::new(),
        });
        self.index.insert(name, self.families.len() - 1);
        self.families.len() - 1
    }

    /// Declares family `name` with its `# HELP` and `# TYPE` lines even if no sample follows
    /// (a labelled family whose first series has not appeared yet).
    pub fn declare(&mut self, name: &str, kind: Kind, help: &str) {
        self.family(name, kind, help);
    }

    /// Adds one sample of family `name` (declared with `kind` and `help` the first time).
    pub fn sample(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        labels: &[(&str, &str)],
        value: impl Into<Num>,
    ) {
        let i = self.family(name, kind, help);
        let fam = &mut self.families[i];
        let mut line = fam.name.clone();
        if !labels.is_empty() {
            line.push('{');
            for (n, (k, v)) in labels.iter().enumerate() {
                if n > 0 {
                    line.push(',');
                }
                let _ = write!(
                    line,
                    "{}=\"{}\"",
                    sanitize_name(k, false),
                    escape_label_value(v)
                );
            }
            line.push('}');
        }
        let _ = write!(line, " {}", value.into());
        fam.samples.push(line);
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.sample(name, Kind::Counter, help, &[], value);
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Into<Num>) {
        self.sample(name, Kind::Gauge, help, &[], value);
    }

    /// The text: each family's `# HELP`, `# TYPE` and samples, one per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for s in &f.samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// What a scrape shows.

/// Help of the node counters ([`apiary_actors::Metrics`]) shown as `apiary_<name>_total`;
/// a counter not listed gets a generic help. The gossip refusals and restarts are exported under
/// their own names (see [`collect`]).
const NODE_COUNTERS: &[(&str, &str)] = &[
    (
        "gossip_queue_full",
        "Times network events waited because the gossip actor's queue was full.",
    ),
    (
        "updates_received",
        "Update announcements accepted for evaluation.",
    ),
    ("updates_evaluated", "Updates scored."),
    (
        "updates_sampled_out",
        "Updates that passed the cheap checks but were not recomputed (recompute budget).",
    ),
    (
        "updates_bad",
        "Updates rejected as malformed (bad shapes, NaN/Inf, undecodable).",
    ),
    (
        "updates_wrong_base",
        "Updates computed on another base model.",
    ),
    (
        "updates_copied",
        "Updates whose id another uid announced first in the same window.",
    ),
    (
        "updates_out_of_sync",
        "Updates rejected because the miner's sync proof did not match.",
    ),
    (
        "blob_fetch_failed",
        "Blob downloads that failed (no provider, timeout, hash mismatch).",
    ),
    ("blobs_fetched", "Blobs downloaded and verified."),
    ("records_applied", "Window records applied by aggregation."),
    ("records_rejected", "Window records rejected."),
    ("catchups", "Checkpoints downloaded to catch up."),
    (
        "events_lagged",
        "Node events dropped because an actor lagged.",
    ),
    ("updates_published", "Updates this miner published."),
    (
        "dataset_mismatch",
        "Window records whose dataset manifest differs from this node's data.",
    ),
    (
        "blocks_missed",
        "Block numbers the chain watcher never saw.",
    ),
    (
        "chain_rewinds",
        "Times the chain head went backwards (reorg or restarted chain).",
    ),
    ("gc_sweeps", "Blob sweeps run."),
    ("blobs_swept", "Unreferenced blobs deleted by sweeps."),
    (
        "disk_over_budget",
        "Applied windows after which the store was over node.disk_budget_mb.",
    ),
    ("competition_refused", "Competition models refused."),
    ("competition_rounds", "Competition evaluation rounds run."),
    (
        "weights_set",
        "Weight submissions the chain included (validators).",
    ),
    (
        "weights_failed",
        "Weight submission attempts the chain refused or that failed (validators; retries count).",
    ),
];

/// Help of the network counters ([`apiary_net::NetStatsSnapshot`]) shown as
/// `apiary_net_<name>_total`; the gossip validation outcomes are exported as
/// `apiary_gossip_validation_total{outcome}` instead.
const NET_COUNTERS: &[(&str, &str)] = &[
    (
        "bytes_sent",
        "Blob payload bytes sent to peers (all peers together).",
    ),
    (
        "bytes_received",
        "Blob payload bytes received from peers, verified or not (all peers together).",
    ),
    (
        "events_dropped",
        "Network events dropped because the application's channel was full.",
    ),
    (
        "blobs_served",
        "Blob requests answered with the blob's bytes.",
    ),
    (
        "blob_requests_not_found",
        "Blob requests for ids this node did not have.",
    ),
    (
        "blobs_fetched",
        "Blobs fetched from peers whose hash matched.",
    ),
    (
        "bad_blob_hash",
        "Blobs fetched from peers whose bytes did not match their id.",
    ),
    ("peers_banned", "Peers banned."),
    (
        "blob_requests_throttled",
        "Blob requests refused by the per-peer meter or the serving cap.",
    ),
    (
        "connections_refused_banned",
        "Connections closed or refused because the peer is banned.",
    ),
    ("ranges_served", "Range requests answered."),
    (
        "ranges_fetched",
        "Ranges fetched from peers whose groups matched their hashes.",
    ),
    (
        "bad_ranges",
        "Ranges fetched from peers that did not match their hashes.",
    ),
    (
        "downloads_completed",
        "Blobs completed by the ranged downloader.",
    ),
    (
        "relay_reservations",
        "Relays that accepted a reservation for this node.",
    ),
    ("relayed_connections", "Connections made through a relay."),
    (
        "circuits_relayed",
        "Circuits this node relayed for other peers.",
    ),
    (
        "hole_punches_succeeded",
        "Relayed connections upgraded to direct ones by hole punching.",
    ),
    ("hole_punches_failed", "Hole punching attempts that failed."),
];

/// Network counters that are gossip validation outcomes (`outcome` label), or otherwise named.
const NET_GOSSIP: &[&str] = &[
    "gossip_published",
    "gossip_received",
    "gossip_rejected",
    "gossip_ignored",
    "gossip_unknown_hotkey",
    "bad_signature",
    "oversize",
    "malformed",
];

/// Node counters that are gossip refusals by the application (`reason` label).
const NODE_GOSSIP_REFUSALS: &[(&str, &str)] = &[
    ("gossip_malformed", "payload_malformed"),
    ("gossip_unregistered", "unregistered"),
    ("gossip_impersonation", "impersonation"),
    ("gossip_stale", "stale"),
    ("gossip_replayed", "replayed"),
];

/// HTTP status codes the server answers with, counted in `apiary_metrics_requests_total`.
const CODES: [u16; 7] = [200, 400, 404, 405, 408, 431, 503];

/// Counters of the metrics server itself.
#[derive(Debug, Default)]
pub struct HttpStats {
    answered: [AtomicU64; CODES.len()],
}

impl HttpStats {
    fn count(&self, code: u16) {
        if let Some(i) = CODES.iter().position(|&c| c == code) {
            self.answered[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Responses sent, by status code.
    pub fn snapshot(&self) -> BTreeMap<u16, u64> {
        CODES
            .iter()
            .zip(&self.answered)
            .map(|(&c, n)| (c, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// What a scrape of a node reads, and what it keeps between scrapes.
pub struct Exporter {
    ctx: Arc<NodeContext>,
    handles: Handles,
    http: Arc<HttpStats>,
    /// The largest `outcome="accepted"` value shown so far: it is derived from two counters
    /// read one after the other, and a counter must never go down.
    accepted: AtomicU64,
}

impl Exporter {
    /// An exporter for a node; `http` are the server's own counters.
    pub fn new(ctx: Arc<NodeContext>, handles: Handles, http: Arc<HttpStats>) -> Self {
        Exporter {
            ctx,
            handles,
            http,
            accepted: AtomicU64::new(0),
        }
    }

    /// Gathers a scrape.
    pub async fn collect(&self) -> Exposition {
        collect(self).await
    }
}

/// `Some(value)` if `fut` answers within [`SOURCE_TIMEOUT`].
async fn within<T>(fut: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(SOURCE_TIMEOUT, fut).await.ok()
}

/// Gathers every metric of the node (see the module docs).
async fn collect(ex: &Exporter) -> Exposition {
    let ctx = &ex.ctx;
    let mut e = Exposition::new();
    let mut sources: Vec<(&str, bool)> = Vec::new();
    let status = ctx.status();
    let mg = ctx.metagraph();
    let hotkey_of = |uid: u16| {
        mg.as_ref()
            .and_then(|m| m.by_uid(uid))
            .map(|n| n.hotkey.ss58())
            .unwrap_or_default()
    };

    // Who this node is.
    let uid = status.uid.map(|u| u.to_string()).unwrap_or_default();
    let (hotkey, peer_id) = (ctx.hotkey.id().ss58(), ctx.net.local_peer_id().to_string());
    let role = ctx.cfg.node.role.to_string();
    e.sample(
        "apiary_node_info",
        Kind::Gauge,
        "The node's identity as labels (name, role, hotkey, uid, libp2p peer id, chain backend, netuid); always 1.",
        &[
            ("name", &ctx.cfg.node.name),
            ("role", &role),
            ("hotkey", &hotkey),
            ("uid", &uid),
            ("peer_id", &peer_id),
            ("chain", ctx.chain.backend_name()),
            ("netuid", &ctx.cfg.chain.netuid.to_string()),
        ],
        1u64,
    );
    e.sample(
        "apiary_build_info",
        Kind::Gauge,
        "The binary's version and the commit it was built from, as labels; always 1.",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("APIARY_COMMIT")),
        ],
        1u64,
    );
    e.gauge(
        "apiary_fatal",
        "1 when the node is stopping on an unrecoverable error (see the log or `apiary admin status`).",
        status.fatal.is_some(),
    );

    // Windows and chain.
    e.gauge(
        "apiary_block_number",
        "Latest block this node has seen.",
        status.block,
    );
    e.gauge(
        "apiary_window",
        "Current window (from the chain).",
        status.window,
    );
    e.gauge(
        "apiary_model_window",
        "Window whose record produced this node's model (-1: the genesis model).",
        status.model_window.map_or(-1.0, |w| w as f64),
    );
    let newest = status.window.saturating_sub(1);
    e.gauge(
        "apiary_model_windows_behind",
        "Windows this node's model is behind the newest it can have applied (the previous window).",
        status
            .model_window
            .map_or(newest, |m| newest.saturating_sub(m)),
    );
    match within(ctx.chain.best_block()).await {
        Some(Ok(head)) => {
            sources.push(("chain", true));
            e.gauge(
                "apiary_chain_head_block_number",
                "The chain's best block.",
                head.number,
            );
            e.gauge(
                "apiary_chain_head_timestamp_seconds",
                "Unix time the chain's best block was produced at (age: time() - this).",
                head.timestamp_ms as f64 / 1000.0,
            );
            e.gauge(
                "apiary_chain_lag_blocks",
                "Blocks between the chain's best block and the latest block this node has seen.",
                head.number.saturating_sub(status.block),
            );
        }
        Some(Err(err)) => {
            tracing::debug!(error = %err, "metrics: the chain's head is unknown");
            sources.push(("chain", false));
        }
        None => sources.push(("chain", false)),
    }

    // Losses.
    if let Some(l) = status.held_out_loss {
        e.gauge(
            "apiary_held_out_loss",
            "Mean loss of this node's model on the held-out pages (nats per token).",
            l,
        );
    }
    if let Some(l) = status.last_loss {
        e.gauge(
            "apiary_train_loss",
            "This miner's last training loss (nats per token).",
            l,
        );
    }

    // Per-miner scores (validators).
    if ctx.cfg.node.role == apiary_config::Role::Validator {
        match within(ex.handles.evaluator.scores()).await {
            Some(Ok(scores)) => {
                sources.push(("evaluator", true));
                for s in &scores {
                    let uid = s.uid.to_string();
                    let hk = hotkey_of(s.uid);
                    let l: &[(&str, &str)] = &[("uid", &uid), ("hotkey", &hk)];
                    e.sample(
                        "apiary_miner_score",
                        Kind::Gauge,
                        "A miner's smoothed score (EMA) on this validator, in [0, 1].",
                        l,
                        s.ema,
                    );
                    e.sample(
                        "apiary_miner_last_score",
                        Kind::Gauge,
                        "A miner's score in the last window this validator closed.",
                        l,
                        s.last,
                    );
                    e.sample(
                        "apiary_miner_last_window",
                        Kind::Gauge,
                        "The last window this validator closed with the miner listed.",
                        l,
                        s.window,
                    );
                    e.sample(
                        "apiary_miner_windows_total",
                        Kind::Counter,
                        "Windows this validator closed with the miner listed.",
                        l,
                        s.windows,
                    );
                    e.sample(
                        "apiary_miner_recomputed_windows_total",
                        Kind::Counter,
                        "Windows in which this validator checked the miner's update in full.",
                        l,
                        s.recomputed,
                    );
                }
            }
            Some(Err(err)) => {
                tracing::debug!(error = %err, "metrics: scores unavailable");
                sources.push(("evaluator", false));
            }
            None => sources.push(("evaluator", false)),
        }
        // What the chain holds from this validator: 0 before its first included submission.
        let set = status.weights_set.as_ref();
        e.gauge(
            "apiary_weights_last_block",
            "Inclusion block of the last weight submission the chain accepted from this validator (0: none yet).",
            set.map_or(0, |w| w.block),
        );
        e.gauge(
            "apiary_weights_last_window",
            "The window that triggered the last weight submission the chain accepted (0: none yet).",
            set.map_or(0, |w| w.window),
        );
        const WEIGHT: &str = "apiary_miner_weight";
        e.declare(
            WEIGHT,
            Kind::Gauge,
            "A miner's share of the last weights the chain accepted from this validator, in [0, 1].",
        );
        if let Some(w) = set {
            let total: f64 = w.weights.iter().map(|(_, x)| f64::from(*x)).sum();
            for (uid, x) in &w.weights {
                let (u, hk) = (uid.to_string(), hotkey_of(*uid));
                let share = if total > 0.0 {
                    f64::from(*x) / total
                } else {
                    0.0
                };
                e.sample(
                    WEIGHT,
                    Kind::Gauge,
                    "",
                    &[("uid", &u), ("hotkey", &hk)],
                    share,
                );
            }
        }
        if let Some(Ok(Some(w))) = within(ex.handles.evaluator.last_closed()).await {
            e.gauge(
                "apiary_validator_last_closed_window",
                "The latest window this validator closed (scored and published the record of).",
                w,
            );
        }
    }

    // Node counters.
    let counters = ctx.metrics.snapshot();
    const RESTARTS: &str = "apiary_actor_restarts_total";
    const RESTARTS_HELP: &str = "Actor restarts by the supervisor, by actor (every actor the node \
         runs is listed from the start; sum them for the node's total: past \
         supervisor.max_restarts within the window the node stops).";
    e.declare(RESTARTS, Kind::Counter, RESTARTS_HELP);
    for (actor, n) in ctx.actor_restarts.snapshot() {
        e.sample(
            RESTARTS,
            Kind::Counter,
            RESTARTS_HELP,
            &[("actor", actor)],
            n,
        );
    }
    for (name, reason) in NODE_GOSSIP_REFUSALS {
        e.sample(
            "apiary_gossip_refused_total",
            Kind::Counter,
            "Gossip the node's own checks refused or ignored, by reason.",
            &[("reason", reason)],
            counters.get(name).copied().unwrap_or(0),
        );
    }
    let help: HashMap<&str, &str> = NODE_COUNTERS.iter().copied().collect();
    for (name, v) in &counters {
        if *name == "restarts" || NODE_GOSSIP_REFUSALS.iter().any(|(n, _)| n == name) {
            continue;
        }
        let h = help.get(name).map_or_else(
            || format!("Node counter `{name}` (as in `apiary admin metrics`)."),
            |h| (*h).to_string(),
        );
        e.counter(&format!("apiary_{name}_total"), &h, *v);
    }
    const REJECTED: &str = "apiary_submissions_rejected_total";
    const REJECTED_HELP: &str =
        "Submissions refused by the incentive mechanism's checks, by check.";
    e.declare(REJECTED, Kind::Counter, REJECTED_HELP);
    for (check, v) in ctx.rejections.snapshot() {
        e.sample(
            REJECTED,
            Kind::Counter,
            REJECTED_HELP,
            &[("check", check)],
            v,
        );
    }

    // Network: gossip validation outcomes, bytes, the other counters.
    let net = ctx.net.stats().snapshot();
    let net_map: BTreeMap<String, u64> = match serde_json::to_value(net) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|v| (k, v)))
            .collect(),
        _ => BTreeMap::new(),
    };
    let net_get = |k: &str| net_map.get(k).copied().unwrap_or(0);
    e.counter(
        "apiary_gossip_published_total",
        "Gossip messages this node published.",
        net_get("gossip_published"),
    );
    let delivered = net_get("gossip_received");
    let unknown = net_get("gossip_unknown_hotkey");
    let accepted = ex
        .accepted
        .fetch_max(delivered.saturating_sub(unknown), Ordering::Relaxed)
        .max(delivered.saturating_sub(unknown));
    let outcomes = [
        ("accepted", accepted),
        ("unknown_hotkey", unknown),
        ("rejected", net_get("gossip_rejected")),
        ("ignored", net_get("gossip_ignored")),
        ("bad_signature", net_get("bad_signature")),
        ("oversize", net_get("oversize")),
        ("malformed", net_get("malformed")),
    ];
    for (outcome, v) in outcomes {
        e.sample(
            "apiary_gossip_validation_total",
            Kind::Counter,
            "Gossip messages received, by validation outcome: accepted and relayed; from an \
             unknown hotkey (delivered, not relayed); rejected or ignored by admission; or \
             refused by the network layer (bad signature, oversize, malformed envelope).",
            &[("outcome", outcome)],
            v,
        );
    }
    let net_help: HashMap<&str, &str> = NET_COUNTERS.iter().copied().collect();
    for (name, v) in &net_map {
        if NET_GOSSIP.contains(&name.as_str()) {
            continue;
        }
        let h = net_help.get(name.as_str()).map_or_else(
            || format!("Network counter `{name}` (as in `apiary admin metrics`)."),
            |h| (*h).to_string(),
        );
        e.counter(&format!("apiary_net_{name}_total"), &h, *v);
    }
    const PEER_BYTES: &str = "apiary_peer_bytes_total";
    let peer_bytes_help = format!(
        "Bytes of apiary's protocols moved with a peer, by direction: gossip received from it \
         (as propagation source) and published to it (each published message counted once per \
         subscribed peer; relays and gossipsub control traffic not counted), and the payloads \
         of /apiary/blob/1 and /apiary/range/1 requests and responses. At most {} peers are \
         listed; peer=\"other\" sums those evicted (disconnected ones with the fewest bytes \
         first).",
        apiary_net::PEER_BYTES_CAP
    );
    e.declare(PEER_BYTES, Kind::Counter, &peer_bytes_help);
    let peer_bytes = ctx.net.stats().peer_bytes.snapshot();
    let other = (peer_bytes.other != apiary_net::Traffic::default())
        .then(|| ("other".to_string(), peer_bytes.other));
    for (peer, t) in peer_bytes
        .peers
        .iter()
        .map(|(p, t)| (p.to_string(), *t))
        .chain(other)
    {
        for (direction, v) in [("in", t.bytes_in), ("out", t.bytes_out)] {
            e.sample(
                PEER_BYTES,
                Kind::Counter,
                &peer_bytes_help,
                &[("peer", &peer), ("direction", direction)],
                v,
            );
        }
    }
    let downloads = ctx.net.downloads();
    e.gauge(
        "apiary_downloads_in_flight",
        "Blobs downloading now (checkpoints, model pieces).",
        downloads.len(),
    );
    e.gauge(
        "apiary_downloads_remaining_bytes",
        "Bytes still to fetch of the downloads in flight (of those whose size is known).",
        downloads
            .iter()
            .map(|d| d.total_bytes.saturating_sub(d.done_bytes))
            .sum::<u64>(),
    );

    // Peers.
    match within(ctx.net.standings()).await {
        Some(standings) => {
            sources.push(("peers", true));
            e.gauge(
                "apiary_connected_peers",
                "Peers connected now.",
                standings.iter().filter(|s| s.connected).count(),
            );
            for s in &standings {
                let peer = s.peer.to_string();
                let l: &[(&str, &str)] = &[("peer", &peer)];
                e.sample(
                    "apiary_peer_connected",
                    Kind::Gauge,
                    "1 while the peer is connected.",
                    l,
                    s.connected,
                );
                if let Some(score) = s.gossip_score {
                    e.sample(
                        "apiary_peer_gossip_score",
                        Kind::Gauge,
                        "The peer's gossipsub score.",
                        l,
                        score,
                    );
                }
                e.sample(
                    "apiary_peer_strikes",
                    Kind::Gauge,
                    "The peer's strikes (decaying; at net.ban_after_strikes it is banned).",
                    l,
                    s.strikes,
                );
                e.sample(
                    "apiary_peer_ban_remaining_seconds",
                    Kind::Gauge,
                    "Seconds left of the peer's ban (0: not banned).",
                    l,
                    s.banned.as_ref().map_or(0, |(secs, _)| *secs),
                );
            }
        }
        None => sources.push(("peers", false)),
    }
    if let Some(m) = &mg {
        for n in &m.neurons {
            if let Some(p) = &n.peer {
                let uid = n.uid.to_string();
                let hk = n.hotkey.ss58();
                e.sample(
                    "apiary_peer_info",
                    Kind::Gauge,
                    "A subnet member's libp2p peer id, from its on-chain peer record (join on `peer`).",
                    &[("peer", &p.peer_id), ("uid", &uid), ("hotkey", &hk)],
                    1u64,
                );
            }
        }
        e.gauge(
            "apiary_subnet_neurons",
            "Uids registered on the subnet (latest metagraph).",
            m.neurons.len(),
        );
    }

    // Store and memory.
    let store = ctx.store.clone();
    match within(tokio::task::spawn_blocking(move || store.disk_bytes())).await {
        Some(Ok(bytes)) => {
            sources.push(("store", true));
            e.gauge(
                "apiary_store_disk_bytes",
                "Bytes of every file of the node's store (SSTs, blob files, WAL).",
                bytes,
            );
        }
        _ => sources.push(("store", false)),
    }
    if ctx.cfg.node.disk_budget_mb > 0 {
        e.gauge(
            "apiary_store_disk_budget_bytes",
            "The store's disk budget (node.disk_budget_mb).",
            ctx.cfg.node.disk_budget_mb.saturating_mul(1 << 20),
        );
    }
    let mem = crate::admin::memory();
    if let Some(kb) = mem["vmrss_kb"].as_u64() {
        e.gauge(
            "apiary_process_resident_memory_bytes",
            "Resident memory of the process (VmRSS).",
            kb.saturating_mul(1024),
        );
    }
    if let Some(b) = mem["alloc_cached_bytes"].as_u64() {
        e.gauge(
            "apiary_alloc_cached_bytes",
            "Freed large blocks the allocator keeps for reuse.",
            b,
        );
    }

    // The exporter itself.
    for (source, up) in sources {
        e.sample(
            "apiary_metrics_source_up",
            Kind::Gauge,
            "1 when the source answered this scrape in time (0: its series are missing).",
            &[("source", source)],
            up,
        );
    }
    for (code, n) in ex.http.snapshot() {
        e.sample(
            "apiary_metrics_requests_total",
            Kind::Counter,
            "Requests the metrics endpoint answered, by HTTP status code.",
            &[("code", &code.to_string())],
            n,
        );
    }
    e
}

// ---------------------------------------------------------------------------------------------
// The HTTP server.

/// Bounds of the metrics server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsLimits {
    /// Connections served at once; more are answered `503` and closed.
    pub max_conns: usize,
    /// Longest request head (request line and headers) accepted; longer gets `431`.
    pub max_request_bytes: usize,
    /// Time from accepting a connection to the end of its request head; past it `408`.
    pub request_timeout: Duration,
    /// Time a scrape may take to gather; past it `503`.
    pub render_timeout: Duration,
    /// Time to write the response to a slow reader before the connection is dropped.
    pub write_timeout: Duration,
}

impl Default for MetricsLimits {
    fn default() -> Self {
        MetricsLimits {
            max_conns: 8,
            max_request_bytes: 8 * 1024,
            request_timeout: Duration::from_secs(5),
            render_timeout: Duration::from_secs(8),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// What renders a scrape's body.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Binds the endpoint's TCP listener (`metrics.listen`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on metrics.listen = \"{addr}\"; pick a free port (0 picks one), or set \
             metrics.listen = \"\" to turn the endpoint off"
        )
    })
}

/// Serves a node's metrics on `listener` until the task is aborted (which also ends every
/// connection in progress).
pub async fn serve(listener: TcpListener, ctx: Arc<NodeContext>, handles: Handles) {
    let (ctx2, handles2) = (Arc::clone(&ctx), handles.clone());
    let http = Arc::new(HttpStats::default());
    let exporter = Arc::new(Exporter::new(ctx, handles, Arc::clone(&http)));
    let render: Render = Arc::new(move || {
        let ex = Arc::clone(&exporter);
        Box::pin(async move { ex.collect().await.render() })
    });
    let dashboard: Option<Render> = ctx2.cfg.metrics.dashboard.then(|| -> Render {
        Arc::new(move || {
            let (ctx, handles) = (Arc::clone(&ctx2), handles2.clone());
            Box::pin(async move { crate::dashboard::data(&ctx, &handles).await.to_string() })
        })
    });
    serve_with(listener, MetricsLimits::default(), http, render, dashboard).await
}

/// Serves `render`'s text on `listener` within `limits` (see the module docs), and with
/// `dashboard` the dashboard page at `/` and its data (`dashboard`'s JSON) at `/api/dashboard`.
pub async fn serve_with(
    listener: TcpListener,
    limits: MetricsLimits,
    stats: Arc<HttpStats>,
    render: Render,
    dashboard: Option<Render>,
) {
    // Dropped with this future: aborting the server aborts its connections too.
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                // Out of file descriptors, typically: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= limits.max_conns {
            stats.count(503);
            tracing::debug!(
                max = limits.max_conns,
                "metrics connection refused: too many"
            );
            // Never waits: what the client sent so far is read (so closing does not reset the
            // connection), and a fresh socket's send buffer has room for the answer. A client
            // whose request arrives after this may see a reset instead of the 503.
            let mut scratch = [0u8; 1024];
            for _ in 0..16 {
                if !matches!(stream.try_read(&mut scratch), Ok(n) if n > 0) {
                    break;
                }
            }
            let _ = stream.try_write(
                response(
                    503,
                    "text/plain",
                    b"too many metrics connections; retry\n",
                    false,
                )
                .as_slice(),
            );
            continue;
        }
        let (render, stats, dashboard) =
            (Arc::clone(&render), Arc::clone(&stats), dashboard.clone());
        conns.spawn(async move {
            if let Err(e) = handle_conn(stream, limits, &stats, &render, dashboard.as_ref()).await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

/// An HTTP/1.1 response with `Connection: close` (`head`: no body, its length still given).
fn response(code: u16, content_type: &str, body: &[u8], head: bool) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

/// How a request head ended.
enum Head {
    /// Complete (its bytes).
    Complete(Vec<u8>),
    /// Longer than the limit.
    TooLarge,
    /// The client closed before finishing it.
    Closed,
}

/// Reads a request head (up to its blank line) of at most `max` bytes.
async fn read_head(stream: &mut TcpStream, max: usize) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        // Search from a little before the new bytes (the terminator may straddle reads).
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() > max {
            return Ok(Head::TooLarge);
        }
    }
}

/// The end of a request head (`\r\n\r\n`, or `\n\n` from lenient clients) in `b`.
fn find_head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (`head`: `HEAD /metrics`).
    Metrics {
        /// No body wanted.
        head: bool,
    },
    /// `GET /`: the dashboard page.
    Dashboard {
        /// No body wanted.
        head: bool,
    },
    /// `GET /api/dashboard`: the dashboard's data.
    DashboardData {
        /// No body wanted.
        head: bool,
    },
    /// Another path.
    NotFound,
    /// Another method on `/metrics`.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    BadRequest,
}

/// Routes a request head by its request line.
fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ if ["/metrics", "/", "/api/dashboard"].contains(&path) => return Route::MethodNotAllowed,
        _ => return Route::NotFound,
    };
    match path {
        "/metrics" => Route::Metrics { head },
        "/" => Route::Dashboard { head },
        "/api/dashboard" => Route::DashboardData { head },
        _ => Route::NotFound,
    }
}

/// Serves one request on one connection, then closes it.
async fn handle_conn(
    mut stream: TcpStream,
    limits: MetricsLimits,
    stats: &HttpStats,
    render: &Render,
    dashboard: Option<&Render>,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(
        limits.request_timeout,
        read_head(&mut stream, limits.max_request_bytes),
    )
    .await;
    let (code, ctype, body, head_only) = match head {
        Err(_) => (
            408,
            "text/plain",
            format!("request not complete within {:?}\n", limits.request_timeout),
            false,
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::TooLarge)) => (
            431,
            "text/plain",
            format!(
                "request head longer than {} bytes\n",
                limits.max_request_bytes
            ),
            false,
        ),
        Ok(Ok(Head::Complete(h))) => match route(&h) {
            Route::Metrics { head } => {
                match tokio::time::timeout(limits.render_timeout, render()).await {
                    Ok(text) => (200, CONTENT_TYPE, text, head),
                    Err(_) => (
                        503,
                        "text/plain",
                        format!(
                            "the node did not gather its metrics within {:?}; retry\n",
                            limits.render_timeout
                        ),
                        false,
                    ),
                }
            }
            Route::Dashboard { head } if dashboard.is_some() => (
                200,
                "text/html; charset=utf-8",
                crate::dashboard::PAGE.to_string(),
                head,
            ),
            Route::DashboardData { head } if dashboard.is_some() => {
                let data = dashboard.map(|d| d());
                match data {
                    Some(fut) => match tokio::time::timeout(limits.render_timeout, fut).await {
                        Ok(json) => (200, "application/json", json, head),
                        Err(_) => (
                            503,
                            "text/plain",
                            "the node did not gather the dashboard's data in time; retry\n"
                                .to_string(),
                            false,
                        ),
                    },
                    None => (404, "text/plain", "no dashboard\n".to_string(), false),
                }
            }
            Route::NotFound | Route::Dashboard { .. } | Route::DashboardData { .. } => (
                404,
                "text/plain",
                "not found; metrics are at GET /metrics\n".to_string(),
                false,
            ),
            Route::MethodNotAllowed => (405, "text/plain", "use GET /metrics\n".to_string(), false),
            Route::BadRequest => (
                400,
                "text/plain",
                "not an HTTP/1.1 request; use GET /metrics\n".to_string(),
                false,
            ),
        },
    };
    stats.count(code);
    let out = response(code, ctype, body.as_bytes(), head_only);
    match tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    }
    linger(&mut stream).await;
    Ok(())
}

/// Reads (and drops) what the client still sends, until it closes, for at most
/// [`LINGER`] and [`LINGER_BYTES`]: closing a socket with unread bytes resets the connection,
/// and the client could lose the answer it has not read yet.
async fn linger(stream: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// How long [`linger`] waits for the client to close.
const LINGER: Duration = Duration::from_secs(1);
/// How many bytes [`linger`] discards at most.
const LINGER_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_and_type_once_and_their_samples_together() {
        let mut e = Exposition::new();
        e.counter("apiary_a_total", "A counter.", 3);
        e.sample(
            "apiary_b",
            Kind::Gauge,
            "A gauge\nwith a \\ in its help.",
            &[("uid", "1")],
            0.5f64,
        );
        e.counter("apiary_a_total", "ignored: declared already", 4);
        e.declare("apiary_e_total", Kind::Counter, "No sample yet.");
        e.sample("apiary_b", Kind::Gauge, "", &[("uid", "2")], f64::NAN);
        e.gauge("apiary_c", "Infinities.", f64::INFINITY);
        e.gauge("apiary_d", "Negative infinity.", f64::NEG_INFINITY);
        assert_eq!(
            e.render(),
            "# HELP apiary_a_total A counter.\n\
             # TYPE apiary_a_total counter\n\
             apiary_a_total 3\n\
             apiary_a_total 4\n\
             # HELP apiary_b A gauge\\nwith a \\\\ in its help.\n\
             # TYPE apiary_b gauge\n\
             apiary_b{uid=\"1\"} 0.5\n\
             apiary_b{uid=\"2\"} NaN\n\
             # HELP apiary_e_total No sample yet.\n\
             # TYPE apiary_e_total counter\n\
             # HELP apiary_c Infinities.\n\
             # TYPE apiary_c gauge\n\
             apiary_c +Inf\n\
             # HELP apiary_d Negative infinity.\n\
             # TYPE apiary_d gauge\n\
             apiary_d -Inf\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        assert_eq!(escape_label_value("plain-5Grw…"), "plain-5Grw…");
        let mut e = Exposition::new();
        e.sample(
            "apiary_x",
            Kind::Gauge,
            "h",
            &[("peer", "a\"b"), ("hotkey", "c\\d\ne")],
            1u64,
        );
        assert!(
            e.render()
                .contains("apiary_x{peer=\"a\\\"b\",hotkey=\"c\\\\d\\ne\"} 1\n"),
            "{}",
            e.render()
        );
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(
            sanitize_name("apiary_net_a-b.c_total", true),
            "apiary_net_a_b_c_total"
        );
        assert_eq!(sanitize_name("a:b", true), "a:b");
        assert_eq!(sanitize_name("a:b", false), "a_b");
        assert_eq!(sanitize_name("9lives", false), "_9lives");
        assert_eq!(sanitize_name("", false), "_");
    }

    #[test]
    fn integers_are_exact_and_floats_plain() {
        assert_eq!(Num::from(u64::MAX).to_string(), "18446744073709551615");
        assert_eq!(Num::from(2.0f64).to_string(), "2");
        assert_eq!(Num::from(0.25f32).to_string(), "0.25");
        assert_eq!(Num::from(true).to_string(), "1");
    }

    #[test]
    fn request_lines_are_routed() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(
            route(b"GET / HTTP/1.1\r\n\r\n"),
            Route::Dashboard { head: false }
        );
        assert_eq!(route(b"GET /nope HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
            b"",
        ] {
            assert_eq!(route(bad), Route::BadRequest, "{bad:?}");
        }
    }

    /// A server whose scrape is `body`, on 127.0.0.1 port 0.
    async fn server(limits: MetricsLimits, body: &'static str) -> (SocketAddr, Arc<HttpStats>) {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(HttpStats::default());
        let render: Render = Arc::new(move || Box::pin(async move { body.to_string() }));
        tokio::spawn(serve_with(
            listener,
            limits,
            Arc::clone(&stats),
            render,
            None,
        ));
        (addr, stats)
    }

    /// Sends `req` and reads the whole response (the server closes the connection).
    async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(req).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
            .await
            .expect("answered in time")
            .expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn get_metrics_is_served_and_everything_else_refused() {
        let (addr, stats) = server(MetricsLimits::default(), "apiary_x 1\n").await;
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 11\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\napiary_x 1\n"), "{ok}");
        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "no body: {head}");
        let nf = exchange(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.1 404 "), "{nf}");
        let na = exchange(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            na.starts_with("HTTP/1.1 405 ") && na.contains("Allow: GET"),
            "{na}"
        );
        let bad = exchange(addr, b"\x00\x01garbage\n\n").await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        // A head that never ends, longer than the limit.
        let big = vec![b'a'; 64 * 1024];
        let tl = exchange(addr, &big).await;
        assert!(tl.starts_with("HTTP/1.1 431 "), "{tl}");
        let s = stats.snapshot();
        assert_eq!(
            (s[&200], s[&404], s[&405], s[&400], s[&431]),
            (2, 1, 1, 1, 1),
            "{s:?}"
        );
        // Still serving.
        let ok = exchange(addr, b"GET /metrics HTTP/1.0\n\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    }

    #[tokio::test]
    async fn slow_clients_time_out_and_too_many_are_refused() {
        let limits = MetricsLimits {
            max_conns: 2,
            request_timeout: Duration::from_millis(300),
            ..MetricsLimits::default()
        };
        let (addr, stats) = server(limits, "apiary_x 1\n").await;
        // Two clients that never finish their request hold both slots…
        let mut slow = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\n")
                .await
                .expect("write");
            slow.push(s);
        }
        // …until they time out with 408; meanwhile a third is refused with 503 (or, if a slot
        // freed first, served). It sends nothing: the refusal is written at once on accept.
        let third = exchange(addr, b"").await;
        assert!(
            third.starts_with("HTTP/1.1 503 ") || third.starts_with("HTTP/1.1 200 "),
            "{third}"
        );
        for mut s in slow {
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
                .await
                .expect("closed in time")
                .expect("read");
            let out = String::from_utf8_lossy(&out);
            assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        }
        assert_eq!(stats.snapshot()[&408], 2);
        // Both slots are free again.
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    }
}
