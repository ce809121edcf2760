//! The admin socket: newline-delimited JSON over a Unix socket in the data dir (mode 0600).
//!
//! Request: one JSON object per line, `{"cmd": "status"}`; commands are `status`, `peers`,
//! `scores`, `windows`, `metrics`, `weights`, and `export` (`{"cmd": "export", "path": DIR,
//! "dtype": "f32"|"bf16"}`: the current model as a Hugging Face directory). Reply: one line, `{"ok": true, "result": ...}` or
//! `{"ok": false, "error": "..."}`. A malformed request gets an error reply and the connection
//! (and the socket) keep serving. Connections are limited by a semaphore; lines by a size cap.

use anyhow::{Context, Result};
use apiary_actors::context::NodeContext;
use apiary_actors::trainer::AppliedWindow;
use apiary_actors::weights::WeightSubmission;
use apiary_actors::Handles;
use apiary_storage::Column;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Concurrent admin connections.
const MAX_CONNS: usize = 16;

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

/// Serves admin connections until the task is aborted.
pub async fn serve(listener: UnixListener, ctx: Arc<NodeContext>, handles: Handles) {
    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
            return;
        };
        let ctx = Arc::clone(&ctx);
        let handles = handles.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_conn(stream, ctx, handles).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
            drop(permit);
        });
    }
}

async fn handle_conn(stream: UnixStream, ctx: Arc<NodeContext>, handles: Handles) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let reply = if line.len() > MAX_LINE {
            // Skip the rest of the oversize line.
            let mut rest = Vec::new();
            r.read_until(b'\n', &mut rest).await?;
            json!({"ok": false, "error": format!("request longer than {MAX_LINE} bytes")})
        } else {
            match parse_request(&line) {
                Ok(req) => match dispatch(&ctx, &handles, &req).await {
                    Ok(v) => json!({"ok": true, "result": v}),
                    Err(e) => json!({"ok": false, "error": e.to_string()}),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "malformed admin request");
                    json!({"ok": false, "error": e.to_string()})
                }
            }
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        w.write_all(&out).await?;
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
    }
}

async fn dispatch(ctx: &Arc<NodeContext>, handles: &Handles, req: &Request) -> Result<Value> {
    let limit = req.limit.unwrap_or(20);
    Ok(match req.cmd.as_str() {
        "status" => serde_json::to_value(status(ctx).await)?,
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
                anyhow::bail!("unban needs a peer id: {{\"cmd\": \"unban\", \"peer\": \"12D3KooW…\"}}");
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
            m
        }
        "export" => export(ctx, handles, req).await?,
        other => anyhow::bail!(
            "unknown command `{other}`; use status, peers, unban, scores, windows, weights, metrics or \
             export"
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

/// Sends one request line and returns the parsed reply.
pub async fn request(socket: &Path, req: &Value) -> Result<Value> {
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
    let mut r = BufReader::new(r);
    let mut reply = String::new();
    r.read_line(&mut reply).await?;
    serde_json::from_str(&reply).context("admin reply is not JSON")
}

/// Renders a reply for humans: objects as key/value tables, arrays of objects as tables.
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
