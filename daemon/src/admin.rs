//! The admin socket: newline-delimited JSON over a Unix socket in the data dir (mode 0600).
//!
//! Request: one JSON object per line, `{"cmd": "status"}`; commands are `status`, `peers`,
//! `scores`, `windows`, `metrics`, `store`, `weights`, and `export` (`{"cmd": "export", "path": DIR,
//! "dtype": "f32"|"bf16"}`: the current model as a Hugging Face directory). Reply: one line, `{"ok": true, "result": ...}` or
//! `{"ok": false, "error": "..."}`. A malformed request gets an error reply and the connection
//! (and the socket) keep serving.
//!
//! Nothing a client sends grows the node's memory past a bound ([`AdminLimits`]): a request
//! line is read in chunks into a buffer capped at `max_line`; a longer line gets an error reply
//! at once and the rest of it is discarded up to its newline, never accumulated. A request must
//! arrive whole within `request_timeout` of its first byte, and a connection that sends nothing
//! for `idle_timeout` is closed. At most `max_conns` connections are open; a new one beyond that
//! closes the connection that has been idle longest, or, when none is idle, is refused with an
//! error line. Each case is counted (`admin` in `apiary admin metrics`).

use anyhow::{Context, Result};
use apiary_actors::context::NodeContext;
use apiary_actors::trainer::AppliedWindow;
use apiary_actors::weights::WeightSubmission;
use apiary_actors::Handles;
use apiary_storage::Column;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

/// Bounds of the admin server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Longest request line accepted (bytes).
    pub max_line: usize,
    /// Open connections.
    pub max_conns: usize,
    /// Time from a request's first byte to its newline.
    pub request_timeout: Duration,
    /// Time a connection may wait between requests.
    pub idle_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_line: MAX_LINE,
            max_conns: 16,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters of the admin server.
#[derive(Debug, Default)]
pub struct AdminStats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Request lines longer than `max_line` (answered with an error, the rest discarded).
    pub oversize: AtomicU64,
    /// Connections closed because a request did not arrive whole in time, or because they
    /// stayed idle.
    pub timeouts: AtomicU64,
    /// Connections refused because `max_conns` busy connections were open.
    pub refused: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
}

impl AdminStats {
    /// Name → value.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BTreeMap::from([
            ("admin_requests", g(&self.requests)),
            ("admin_oversize", g(&self.oversize)),
            ("admin_timeouts", g(&self.timeouts)),
            ("admin_refused", g(&self.refused)),
            ("admin_evicted", g(&self.evicted)),
        ])
    }
}

/// What answers one parsed request.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Value> + Send>> + Send + Sync>;

mod request;
pub use request::{parse_request, Request, RequestError, MAX_LINE};

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale admin socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| {
        format!(
            "cannot bind admin socket {}; set node.admin_socket to a writable path (max ~100 chars)",
            path.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(l)
}

/// Serves admin connections for a node until the task is aborted.
pub async fn serve(listener: UnixListener, ctx: Arc<NodeContext>, handles: Handles) {
    let stats = Arc::new(AdminStats::default());
    let st = Arc::clone(&stats);
    let handler: Handler = Arc::new(move |req: Request| {
        let (ctx, handles, st) = (Arc::clone(&ctx), handles.clone(), Arc::clone(&st));
        Box::pin(async move {
            match dispatch(&ctx, &handles, &st, &req).await {
                Ok(v) => json!({"ok": true, "result": v}),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            }
        })
    });
    serve_with(listener, AdminLimits::default(), stats, handler).await
}

/// One open connection, as the accept loop sees it.
struct Slot {
    /// Since when it waits for a request (`None`: a request is being read or answered).
    idle_since: Option<Instant>,
    kill: Arc<Notify>,
}

#[derive(Default)]
struct Conns {
    next: u64,
    open: BTreeMap<u64, Slot>,
}

fn lock(c: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes its slot when the connection ends.
struct SlotGuard {
    conns: Arc<Mutex<Conns>>,
    id: u64,
}

impl SlotGuard {
    fn set_idle(&self, idle: bool) {
        if let Some(s) = lock(&self.conns).open.get_mut(&self.id) {
            s.idle_since = idle.then(Instant::now);
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.conns).open.remove(&self.id);
    }
}

/// Serves connections on `listener` with `handler`, within `limits` (see the module docs).
pub async fn serve_with(
    listener: UnixListener,
    limits: AdminLimits,
    stats: Arc<AdminStats>,
    handler: Handler,
) {
    let conns = Arc::new(Mutex::new(Conns::default()));
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                // Out of file descriptors, typically: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = {
            let mut c = lock(&conns);
            if c.open.len() >= limits.max_conns {
                let oldest_idle = c
                    .open
                    .iter()
                    .filter_map(|(id, s)| s.idle_since.map(|t| (t, *id)))
                    .min();
                if let Some((_, id)) = oldest_idle {
                    if let Some(s) = c.open.remove(&id) {
                        s.kill.notify_one();
                        stats.evicted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(conn = id, "closed the longest idle admin connection");
                    }
                }
            }
            if c.open.len() >= limits.max_conns {
                None
            } else {
                let id = c.next;
                c.next += 1;
                let kill = Arc::new(Notify::new());
                c.open.insert(
                    id,
                    Slot {
                        idle_since: Some(Instant::now()),
                        kill: Arc::clone(&kill),
                    },
                );
                Some((
                    SlotGuard {
                        conns: Arc::clone(&conns),
                        id,
                    },
                    kill,
                ))
            }
        };
        let Some((guard, kill)) = admitted else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                max = limits.max_conns,
                "admin connection refused: every connection is busy"
            );
            tokio::spawn(async move {
                let line = format!(
                    "{}\n",
                    json!({"ok": false, "error": format!("too many admin connections (max {}); retry", limits.max_conns)})
                );
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), stream.write_all(line.as_bytes()))
                        .await;
            });
            continue;
        };
        let (handler, stats) = (Arc::clone(&handler), Arc::clone(&stats));
        tokio::spawn(async move {
            tokio::select! {
                res = handle_conn(stream, limits, &stats, &handler, &guard) => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                }
                _ = kill.notified() => {}
            }
            drop(guard);
        });
    }
}

async fn reply(w: &mut tokio::net::unix::OwnedWriteHalf, v: &Value) -> Result<()> {
    let mut out = serde_json::to_vec(v)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    Ok(())
}

async fn handle_conn(
    stream: UnixStream,
    limits: AdminLimits,
    stats: &AdminStats,
    handler: &Handler,
    slot: &SlotGuard,
) -> Result<()> {
    let (mut r, mut w) = stream.into_split();
    let mut chunk = vec![0u8; 16 * 1024];
    // The request being read (never more than `max_line` bytes), whether the rest of an
    // oversize line is being discarded, and when the request must be complete.
    let mut line: Vec<u8> = Vec::new();
    let mut discarding = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let wait = match deadline {
            Some(d) => tokio::time::timeout_at(d, r.read(&mut chunk)).await,
            None => tokio::time::timeout(limits.idle_timeout, r.read(&mut chunk)).await,
        };
        let n = match wait {
            Ok(n) => n?,
            Err(_) => {
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                if deadline.is_some() {
                    let _ = reply(
                        &mut w,
                        &json!({"ok": false, "error": format!("request not complete within {:?}; closing", limits.request_timeout)}),
                    )
                    .await;
                }
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            if deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + limits.request_timeout);
                slot.set_idle(false);
            }
            let (part, newline) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = if newline {
                &rest[part.len() + 1..]
            } else {
                &[]
            };
            if !discarding {
                if line.len() + part.len() > limits.max_line {
                    discarding = true;
                    line = Vec::new();
                    stats.oversize.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        max = limits.max_line,
                        "oversize admin request; discarding it"
                    );
                    reply(
                        &mut w,
                        &json!({"ok": false, "error": format!("request longer than {} bytes; discarded", limits.max_line)}),
                    )
                    .await?;
                } else {
                    line.extend_from_slice(part);
                }
            }
            if !newline {
                continue;
            }
            if !discarding {
                let out = match parse_request(&line) {
                    Ok(req) => {
                        stats.requests.fetch_add(1, Ordering::Relaxed);
                        handler(req).await
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed admin request");
                        json!({"ok": false, "error": e.to_string()})
                    }
                };
                reply(&mut w, &out).await?;
            }
            line.clear();
            discarding = false;
            deadline = None;
            slot.set_idle(true);
        }
    }
}

/// The `status` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Hotkey SS58.
    pub hotkey: String,
    /// libp2p peer id.
    pub peer_id: String,
    /// The addresses this node listens on, with the bound port and its peer id
    /// (`/ip4/…/tcp/…/p2p/…`): what another node's `net.bootstrap` takes.
    pub listen_addrs: Vec<String>,
    /// uid on the subnet.
    pub uid: Option<u16>,
    /// Chain backend.
    pub chain: String,
    /// Latest block.
    pub block: u64,
    /// Current window.
    pub window: u64,
    /// Connected peers.
    pub connected_peers: usize,
    /// Model hash.
    pub model_hash: Option<String>,
    /// Window of the model.
    pub model_window: Option<u64>,
    /// Last training loss.
    pub last_loss: Option<f32>,
    /// Held-out loss.
    pub held_out_loss: Option<f32>,
    /// The dataset's manifest hash (shards, tokenizer, pages, split): equal on every node that
    /// trains on the same data.
    pub dataset: String,
    /// Fatal error, if stopping.
    pub fatal: Option<String>,
    /// Chain connection health (subtensor: connected, reconnects, latest head, ms since it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_health: Option<Value>,
    /// Blobs downloading now (checkpoints, model pieces): bytes held of the total, providers,
    /// rate and ETA.
    #[serde(default)]
    pub downloads: Vec<apiary_net::DownloadStatus>,
    /// Reachability as AutoNAT sees it (`net.autonat`), and relays held.
    #[serde(default)]
    pub nat: String,
    /// `http://ADDR/metrics` when the metrics endpoint is on (`metrics.listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_url: Option<String>,
    /// `http://ADDR/` when the dashboard is served (`metrics.dashboard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
    /// The last weight submission the chain included (validators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_set: Option<apiary_actors::context::WeightsSet>,
}

/// The `sync` reply: how far the node's model is behind the chain's window and what it is
/// downloading to catch up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncReply {
    /// Current window (from the chain).
    pub window: u64,
    /// Window of the node's model (None before it has one).
    pub model_window: Option<u64>,
    /// Windows the model is behind the previous window (the newest it can have applied).
    pub behind: u64,
    /// Blobs downloading now.
    pub downloads: Vec<apiary_net::DownloadStatus>,
}

/// AutoNAT's verdict and the relays this node holds a reservation at.
async fn nat_line(ctx: &NodeContext) -> String {
    let status = ctx.net.nat_status().await;
    let relays = ctx.net.stats().snapshot().relay_reservations;
    if relays > 0 {
        format!("{status}; reachable through {relays} relay(s)")
    } else {
        status
    }
}

/// Builds the `sync` reply.
pub fn sync(ctx: &NodeContext) -> SyncReply {
    let s = ctx.status();
    let newest = s.window.saturating_sub(1);
    SyncReply {
        window: s.window,
        model_window: s.model_window,
        behind: s.model_window.map_or(newest, |m| newest.saturating_sub(m)),
        downloads: ctx.net.downloads(),
    }
}

/// One line that shows a sync in progress: a bar over the bytes of every download in flight,
/// the rate, the ETA, and the windows still to apply (for `apiary admin sync --watch`).
pub fn sync_line(r: &SyncReply, width: usize) -> String {
    let total: u64 = r.downloads.iter().map(|d| d.total_bytes).sum();
    let done: u64 = r.downloads.iter().map(|d| d.done_bytes).sum();
    let rate: f64 = r.downloads.iter().map(|d| d.rate_bps).sum();
    let eta = r
        .downloads
        .iter()
        .filter_map(|d| d.eta_s)
        .fold(None::<f64>, |m, e| Some(m.map_or(e, |m| m.max(e))));
    let frac = if total == 0 {
        if r.behind == 0 {
            1.0
        } else {
            0.0
        }
    } else {
        done as f64 / total as f64
    };
    let filled = ((frac * width as f64).round() as usize).min(width);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let model = r.model_window.map_or("none".to_string(), |m| m.to_string());
    let mut line = format!(
        "[{}{}] {:>3.0}% ",
        "#".repeat(filled),
        ".".repeat(width - filled),
        frac * 100.0
    );
    if r.downloads.is_empty() {
        line.push_str("no download in flight");
    } else {
        line.push_str(&format!(
            "{:.1}/{:.1} MiB, {} download(s), {:.1} MiB/s, ETA {}",
            mib(done),
            mib(total),
            r.downloads.len(),
            rate / (1u64 << 20) as f64,
            eta.map_or("?".to_string(), |e| format!("{e:.0}s"))
        ));
    }
    line.push_str(&format!(
        " | model window {model}, chain window {}, {} behind",
        r.window, r.behind
    ));
    line
}

/// Builds the status reply.
pub async fn status(ctx: &NodeContext) -> StatusReply {
    let s = ctx.status();
    StatusReply {
        name: ctx.cfg.node.name.clone(),
        role: ctx.cfg.node.role.to_string(),
        hotkey: ctx.hotkey.id().ss58(),
        peer_id: ctx.net.local_peer_id().to_string(),
        listen_addrs: ctx
            .net
            .listen_addrs()
            .await
            .iter()
            .map(|a| format!("{a}/p2p/{}", ctx.net.local_peer_id()))
            .collect(),
        uid: s.uid,
        chain: ctx.chain.backend_name().to_string(),
        block: s.block,
        window: s.window,
        connected_peers: ctx.net.connected_peers().await.len(),
        model_hash: s.model_hash,
        model_window: s.model_window,
        last_loss: s.last_loss,
        held_out_loss: s.held_out_loss,
        dataset: hex::encode(ctx.dataset.hash()),
        fatal: s.fatal,
        chain_health: ctx.chain.connection_health(),
        downloads: ctx.net.downloads(),
        nat: nat_line(ctx).await,
        metrics_url: ctx
            .metrics_addr
            .get()
            .map(|a| format!("http://{a}/metrics")),
        dashboard_url: ctx
            .metrics_addr
            .get()
            .filter(|_| ctx.cfg.metrics.dashboard)
            .map(|a| format!("http://{a}/")),
        weights_set: s.weights_set,
    }
}

async fn dispatch(
    ctx: &Arc<NodeContext>,
    handles: &Handles,
    admin: &AdminStats,
    req: &Request,
) -> Result<Value> {
    let limit = req.limit.unwrap_or(20);
    Ok(match req.cmd.as_str() {
        "status" => serde_json::to_value(status(ctx).await)?,
        "sync" => serde_json::to_value(sync(ctx))?,
        "peers" => {
            let connected = ctx.net.connected_peers().await;
            let mg = ctx.metagraph();
            let neurons: Vec<Value> = mg
                .iter()
                .flat_map(|m| m.neurons.iter())
                .map(|n| {
                    let pid = n.peer.as_ref().map(|p| p.peer_id.clone());
                    let is_connected = pid
                        .as_ref()
                        .is_some_and(|p| connected.iter().any(|c| &c.to_string() == p));
                    json!({"uid": n.uid, "hotkey": n.hotkey.ss58(), "stake": n.stake,
                           "validator_permit": n.validator_permit, "peer_id": pid,
                           "connected": is_connected})
                })
                .collect();
            // Each connected or banned peer's gossipsub score, strikes and ban.
            let standings: Vec<Value> = ctx
                .net
                .standings()
                .await
                .into_iter()
                .map(|s| {
                    json!({"peer_id": s.peer.to_string(), "connected": s.connected,
                           "gossip_score": s.gossip_score, "strikes": s.strikes,
                           "banned": s.banned.as_ref().map(|(secs, why)|
                               json!({"secs_left": secs, "reason": why}))})
                })
                .collect();
            let banned: Vec<Value> = standings
                .iter()
                .filter(|s| !s["banned"].is_null())
                .cloned()
                .collect();
            json!({"connected": connected.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                   "neurons": neurons, "standings": standings, "banned": banned})
        }
        "unban" => {
            let Some(peer) = &req.peer else {
                anyhow::bail!(
                    "unban needs a peer id: {{\"cmd\": \"unban\", \"peer\": \"12D3KooW…\"}}"
                );
            };
            let peer: apiary_net::PeerId = peer
                .parse()
                .map_err(|e| anyhow::anyhow!("`{peer}` is not a peer id: {e}"))?;
            json!({"peer_id": peer.to_string(), "lifted": ctx.net.unban(peer).await?})
        }
        "scores" => {
            if ctx.cfg.node.role != apiary_config::Role::Validator {
                anyhow::bail!("this node is a miner; scores live on validators");
            }
            serde_json::to_value(handles.evaluator.scores().await?)?
        }
        "windows" => {
            let all = ctx.store.scan::<AppliedWindow>(Column::Windows)?;
            let v: Vec<AppliedWindow> = all.into_iter().rev().take(limit).map(|(_, w)| w).collect();
            serde_json::to_value(v)?
        }
        "weights" => {
            let all = ctx.store.scan::<WeightSubmission>(Column::Weights)?;
            let v: Vec<WeightSubmission> =
                all.into_iter().rev().take(limit).map(|(_, w)| w).collect();
            serde_json::to_value(v)?
        }
        "metrics" => {
            let mut m = serde_json::to_value(ctx.metrics.snapshot())?;
            m["net"] = serde_json::to_value(ctx.net.stats().snapshot())?;
            // Submissions refused by the mechanism's checks, per check.
            m["rejected"] = serde_json::to_value(ctx.rejections.snapshot())?;
            m["admin"] = serde_json::to_value(admin.snapshot())?;
            m["memory"] = memory();
            m
        }
        "store" => {
            let store = ctx.store.clone();
            let usage = tokio::task::spawn_blocking(move || store.usage()).await??;
            let mut v = serde_json::to_value(usage)?;
            v["disk_budget_mb"] = ctx.cfg.node.disk_budget_mb.into();
            v["gc_every_windows"] = ctx.cfg.node.gc_every_windows.into();
            v
        }
        "export" => export(ctx, handles, req).await?,
        "leaderboard" => serde_json::to_value(handles.competitions.board.leaderboards())?,
        "compete_submit" => {
            let (Some(path), Some(id)) = (&req.path, &req.competition) else {
                anyhow::bail!(
                    "compete_submit needs `path` (the model directory) and `competition`"
                );
            };
            let done =
                apiary_actors::competition::submit(ctx, id, std::path::Path::new(path)).await?;
            serde_json::to_value(done)?
        }
        other => anyhow::bail!(
            "unknown command `{other}`; use status, peers, unban, scores, windows, weights, \
             metrics, store, export, leaderboard or compete_submit"
        ),
    })
}

/// Writes the node's current model as a Hugging Face LLaMA directory (`model.safetensors`,
/// `config.json`, and `tokenizer.json` when the node uses one).
async fn export(ctx: &Arc<NodeContext>, handles: &Handles, req: &Request) -> Result<Value> {
    let dir = req
        .path
        .as_deref()
        .context("export needs a `path`: the directory to write the model into")?;
    let dtype = match req.dtype.as_deref().unwrap_or("f32") {
        "f32" | "float32" => apiary_model::HfDtype::F32,
        "bf16" | "bfloat16" => apiary_model::HfDtype::BF16,
        other => anyhow::bail!("unknown dtype `{other}`; use f32 or bf16"),
    };
    let snap = handles.trainer.snapshot().await?;
    let dir = std::path::PathBuf::from(dir);
    let (cfg, tok) = (ctx.cfg.model.clone(), ctx.cfg.train.tokenizer.clone());
    let out = dir.clone();
    tokio::task::spawn_blocking(move || {
        apiary_model::export_hf_dir(&snap.params, &cfg, &out, dtype, tok.as_deref())
    })
    .await??;
    Ok(
        json!({"path": dir.display().to_string(), "model": snap.id.to_hex(),
              "window": snap.window, "dtype": format!("{dtype:?}").to_lowercase()}),
    )
}

/// Longest reply the client reads.
const MAX_REPLY: u64 = 256 << 20;

/// How long [`request`] waits for a reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request line and returns the parsed reply, giving up after [`CLIENT_TIMEOUT`].
pub async fn request(socket: &Path, req: &Value) -> Result<Value> {
    request_timeout(socket, req, CLIENT_TIMEOUT).await
}

/// Sends one request line and returns the parsed reply, giving up after `timeout`.
pub async fn request_timeout(socket: &Path, req: &Value, timeout: Duration) -> Result<Value> {
    tokio::time::timeout(timeout, request_inner(socket, req))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the node did not answer on {} within {timeout:?}; is it stuck or overloaded?",
                socket.display()
            )
        })?
}

async fn request_inner(socket: &Path, req: &Value) -> Result<Value> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot connect to admin socket {}; is the node running? (see node.admin_socket)",
            socket.display()
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut reply = Vec::new();
    BufReader::new(r)
        .take(MAX_REPLY)
        .read_until(b'\n', &mut reply)
        .await?;
    serde_json::from_slice(&reply).context("admin reply is not JSON")
}

/// The process's resident memory (`VmRSS`, `VmHWM` from `/proc/self/status`, in KiB) and the
/// allocator's cache.
pub fn memory() -> Value {
    let mut v = json!({});
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        for l in s.lines() {
            for key in ["VmRSS", "VmHWM"] {
                if let Some(rest) = l.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
                    let kb = rest.trim().trim_end_matches("kB").trim();
                    if let Ok(n) = kb.parse::<u64>() {
                        v[format!("{}_kb", key.to_lowercase())] = n.into();
                    }
                }
            }
        }
    }
    if let Some(a) = apiary_alloc::stats() {
        v["alloc_cached_bytes"] = a.cached_bytes.into();
        v["alloc_limit_bytes"] = a.limit_bytes.into();
        v["alloc_hits"] = a.hits.into();
        v["alloc_misses"] = a.misses.into();
    }
    v
}

/// Renders a reply for humans: objects as key/value tables, arrays of objects as tables.
/// `v` with the long identifiers a person does not read whole shortened: blake3 hashes (64 hex
/// digits) to their first 8 digits, libp2p peer ids and SS58 addresses to their first and last
/// characters (`12D3Ko…x9QvTb`, `5Grwva…utQY`). Multiaddrs stay whole: they are copied into
/// configs. `apiary admin --wide` (or `--json`) shows everything in full.
pub fn short_ids(v: &Value) -> Value {
    fn base58(s: &str) -> bool {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() && !matches!(c, '0' | 'O' | 'I' | 'l'))
    }
    fn shorten(s: &str) -> Option<String> {
        let hex = s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
        if hex {
            return Some(format!("{}…", &s[..8]));
        }
        let peer = s.starts_with("12D3KooW") && s.len() == 52 && base58(s);
        let ss58 = s.starts_with('5') && (47..=48).contains(&s.len()) && base58(s);
        (peer || ss58).then(|| format!("{}…{}", &s[..6], &s[s.len() - 6..]))
    }
    match v {
        Value::String(s) => shorten(s).map_or_else(|| v.clone(), Value::String),
        Value::Array(a) => Value::Array(a.iter().map(short_ids).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), short_ids(v))).collect())
        }
        other => other.clone(),
    }
}

/// Renders an admin reply as text: key/value lines for an object, a table for an array of
/// objects.
pub fn render_table(v: &Value) -> String {
    fn cell(v: &Value) -> String {
        match v {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() => format!("{f:.4}"),
                _ => n.to_string(),
            },
            other => other.to_string(),
        }
    }
    let mut out = String::new();
    match v {
        Value::Object(m) => {
            let w = m.keys().map(|k| k.len()).max().unwrap_or(0);
            for (k, val) in m {
                if let Value::Array(a) = val {
                    if a.first().is_some_and(|x| x.is_object()) {
                        out.push_str(&format!("{k}:\n{}", render_table(val)));
                        continue;
                    }
                }
                out.push_str(&format!("{k:w$}  {}\n", cell(val)));
            }
        }
        Value::Array(rows) if rows.iter().all(|r| r.is_object()) && !rows.is_empty() => {
            let mut cols: Vec<String> = Vec::new();
            for r in rows {
                if let Value::Object(m) = r {
                    for k in m.keys() {
                        if !cols.contains(k) {
                            cols.push(k.clone());
                        }
                    }
                }
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| cols.iter().map(|c| cell(&r[c.as_str()])).collect())
                .collect();
            let widths: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].len())
                        .max()
                        .unwrap_or(0)
                        .max(c.len())
                })
                .collect();
            let line = |vals: &[String]| {
                vals.iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
            };
            out.push_str(&line(&cols));
            out.push('\n');
            for r in &cells {
                out.push_str(&line(r));
                out.push('\n');
            }
        }
        Value::Array(rows) => {
            for r in rows {
                out.push_str(&cell(r));
                out.push('\n');
            }
        }
        other => {
            out.push_str(&cell(other));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn short_ids_shorten_hashes_peers_and_addresses_but_not_multiaddrs() {
        let hash = "8b1aac08ac71b512ba150a97eacbe999f698e09c9752dac77d2d808a7884efa7";
        let peer = "12D3KooW9woM3KbZGpSNvtGdKVCNGeHLKPK3cC1HhJztFgtJgveG";
        let ss58 = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
        let addr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}");
        let v = json!({"model_hash": hash, "rows": [{"peer": peer, "hotkey": ss58}],
                       "listen_addrs": [addr.clone()], "name": "validator", "n": 3});
        let s = short_ids(&v);
        assert_eq!(s["model_hash"], "8b1aac08…");
        assert_eq!(
            s["rows"][0]["peer"],
            "12D3Ko…JgveG".replace("JgveG", "tJgveG")
        );
        assert_eq!(s["rows"][0]["hotkey"], "5Grwva…GKutQY");
        assert_eq!(s["listen_addrs"][0], addr.as_str());
        assert_eq!(s["name"], "validator");
        assert_eq!(s["n"], 3);
    }

    #[test]
    fn sync_line_shows_bytes_rate_eta_and_windows() {
        let dl = |total: u64, done: u64, rate: f64, eta: Option<f64>| apiary_net::DownloadStatus {
            id: "ab".repeat(32),
            total_bytes: total,
            done_bytes: done,
            resumed_bytes: 0,
            providers: 3,
            elapsed_s: 1.0,
            rate_bps: rate,
            eta_s: eta,
        };
        let r = SyncReply {
            window: 14,
            model_window: Some(11),
            behind: 2,
            downloads: vec![
                dl(100 << 20, 50 << 20, 25.0 * (1 << 20) as f64, Some(2.0)),
                dl(100 << 20, 100 << 20, 5.0 * (1 << 20) as f64, Some(0.0)),
            ],
        };
        assert_eq!(
            sync_line(&r, 10),
            "[########..]  75% 150.0/200.0 MiB, 2 download(s), 30.0 MiB/s, ETA 2s \
             | model window 11, chain window 14, 2 behind"
        );
        let idle = SyncReply {
            window: 3,
            model_window: Some(2),
            behind: 0,
            downloads: vec![],
        };
        assert_eq!(
            sync_line(&idle, 4),
            "[####] 100% no download in flight | model window 2, chain window 3, 0 behind"
        );
    }

    fn rss_kb() -> u64 {
        memory()["vmrss_kb"]
            .as_u64()
            .expect("VmRSS in /proc/self/status")
    }

    /// A server answering every request with its command, on a socket in a temp dir.
    fn server(limits: AdminLimits) -> (tempfile::TempDir, std::path::PathBuf, Arc<AdminStats>) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("admin.sock");
        let listener = bind(&path).expect("bind");
        let stats = Arc::new(AdminStats::default());
        let handler: Handler = Arc::new(|req: Request| {
            Box::pin(async move { json!({"ok": true, "result": req.cmd}) })
        });
        tokio::spawn(serve_with(listener, limits, Arc::clone(&stats), handler));
        (dir, path, stats)
    }

    /// Lines read from a connection, as they come.
    fn lines(r: tokio::net::unix::OwnedReadHalf) -> mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(r);
            loop {
                let mut l = Vec::new();
                match r.read_until(b'\n', &mut l).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let v = serde_json::from_slice(&l).unwrap_or(Value::Null);
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        rx
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Value>) -> Option<Value> {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a reply in time")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_100_mb_line_without_newline_is_refused_at_once_and_never_buffered() {
        let (_d, path, stats) = server(AdminLimits::default());
        let before = rss_kb();
        let (r, mut w) = UnixStream::connect(&path)
            .await
            .expect("connect")
            .into_split();
        let mut rx = lines(r);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            w.write_all(&chunk).await.expect("write");
        }
        let reply = next(&mut rx).await.expect("error reply");
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(
            reply["error"]
                .as_str()
                .is_some_and(|e| e.contains("longer than")),
            "{reply}"
        );
        let grown = rss_kb().saturating_sub(before);
        println!("RSS after a 100 MB admin line: +{grown} KiB");
        assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
        // The rest of the line is discarded; the next request is served.
        w.write_all(b"\n{\"cmd\":\"status\"}\n")
            .await
            .expect("write");
        let reply = next(&mut rx).await.expect("reply");
        assert_eq!(reply["result"], "status", "{reply}");
        assert_eq!(stats.oversize.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_never_block_a_status_request() {
        let (_d, path, stats) = server(AdminLimits::default());
        let mut idle = Vec::new();
        for _ in 0..32 {
            idle.push(UnixStream::connect(&path).await.expect("connect"));
        }
        let reply = request_timeout(&path, &json!({"cmd": "status"}), Duration::from_secs(5))
            .await
            .expect("status answered");
        assert_eq!(reply["result"], "status", "{reply}");
        assert!(stats.evicted.load(Ordering::Relaxed) >= 17);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_and_idle_clients_time_out_and_busy_ones_refuse_the_rest() {
        let limits = AdminLimits {
            max_conns: 2,
            request_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            ..AdminLimits::default()
        };
        let (_d, path, stats) = server(limits);
        // Two clients in the middle of a request: busy, not idle.
        let mut slow = Vec::new();
        for _ in 0..2 {
            let (r, mut w) = UnixStream::connect(&path)
                .await
                .expect("connect")
                .into_split();
            w.write_all(b"{\"cmd\":").await.expect("write");
            slow.push((lines(r), w));
        }
        // Let the server read both partial requests before the third client comes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (r, _w) = UnixStream::connect(&path)
            .await
            .expect("connect")
            .into_split();
        let mut third = lines(r);
        let refused = next(&mut third).await.expect("refusal");
        assert!(
            refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("too many")),
            "{refused}"
        );
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        // The slow requests time out with an error line, then the connection closes.
        for (rx, _w) in &mut slow {
            let reply = next(rx).await.expect("timeout reply");
            assert!(
                reply["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not complete")),
                "{reply}"
            );
            assert!(next(rx).await.is_none(), "closed after the timeout");
        }
        // An idle connection is closed after idle_timeout.
        let (r, _w) = UnixStream::connect(&path)
            .await
            .expect("connect")
            .into_split();
        let mut idle = lines(r);
        assert!(next(&mut idle).await.is_none(), "idle connection closed");
        assert_eq!(stats.timeouts.load(Ordering::Relaxed), 3);
    }
}
