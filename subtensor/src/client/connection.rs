//! The websocket connection: one slot holding the live connection (empty while it is down),
//! connecting on demand (once, shared, when several callers find the slot empty), the call
//! timeout that drops a connection that stopped answering, the broadcast channel the follower
//! forwards blocks on, and the health counters ([`ChainHealth`]).

use super::options::{RpcBackend, SubtensorOptions};
use super::rpc::{unavailable, Api};
use super::sync::lock;
use apiary_chain::{BlockInfo, ChainError, Result};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use subxt::rpcs::RpcClient;
use subxt::{OnlineClient, PolkadotConfig};
use tokio::sync::broadcast;

/// How the connection is doing (for logs and the admin socket).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChainHealth {
    /// Connected now.
    pub connected: bool,
    /// Reconnections since start.
    pub reconnects: u64,
    /// Latest head seen.
    pub last_block: Option<u64>,
    /// Milliseconds since the latest head was seen.
    pub since_last_block_ms: Option<u64>,
    /// The last connection error, if any.
    pub last_error: Option<String>,
    /// Missed blocks replayed after reconnects (or skipped by the head subscription).
    pub replayed: u64,
    /// Missed blocks not replayed because the gap exceeded
    /// [`MAX_REPLAY`](crate::client::MAX_REPLAY).
    pub skipped: u64,
}

/// One open connection. `generation` tells a stale handle (from before a reconnect) apart, so
/// a failure seen on it does not drop its successor.
#[derive(Clone)]
pub(crate) struct Conn {
    /// The subxt client over `rpc`.
    pub(crate) api: Api,
    /// Raw JSON-RPC on the same socket.
    pub(crate) rpc: RpcClient,
    /// Which connection since start this is (1 for the first).
    pub(crate) generation: u64,
}

#[derive(Default)]
struct HealthState {
    reconnects: u64,
    last_block: Option<u64>,
    last_block_at: Option<Instant>,
    last_error: Option<String>,
    replayed: u64,
    skipped: u64,
}

/// The connection slot and everything the follower and the calls share about it.
pub(crate) struct Connection {
    /// Where and how to connect.
    pub(crate) opts: SubtensorOptions,
    conn: Mutex<Option<Conn>>,
    connect_lock: tokio::sync::Mutex<u64>,
    blocks: broadcast::Sender<BlockInfo>,
    health: Mutex<HealthState>,
}

impl Connection {
    /// A connection to `opts.url`, not opened yet.
    pub(crate) fn new(opts: SubtensorOptions) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self {
            opts,
            conn: Mutex::new(None),
            connect_lock: tokio::sync::Mutex::new(0),
            blocks: tx,
            health: Mutex::new(HealthState::default()),
        }
    }

    /// The open connection, if any.
    pub(crate) fn current(&self) -> Option<Conn> {
        lock(&self.conn).clone()
    }

    /// Empties the slot if it still holds connection `generation`.
    pub(crate) fn invalidate(&self, generation: u64, why: &str) {
        let mut c = lock(&self.conn);
        if c.as_ref().is_some_and(|c| c.generation == generation) {
            tracing::warn!(url = %self.opts.url, reason = why, "chain connection lost; reconnecting");
            *c = None;
            lock(&self.health).last_error = Some(why.to_string());
        }
    }

    async fn open(&self) -> std::result::Result<(Api, RpcClient), String> {
        let url = &self.opts.url;
        let rpc =
            tokio::time::timeout(self.opts.connect_timeout, RpcClient::from_insecure_url(url))
                .await
                .map_err(|_| format!("no answer within {:?}", self.opts.connect_timeout))?
                .map_err(|e| e.to_string())?;
        let api = match self.opts.rpc {
            RpcBackend::Legacy => {
                let backend =
                    subxt::backend::LegacyBackend::<PolkadotConfig>::builder().build(rpc.clone());
                tokio::time::timeout(
                    self.opts.connect_timeout,
                    OnlineClient::<PolkadotConfig>::from_backend(Arc::new(backend)),
                )
                .await
                .map_err(|_| "timed out reading the genesis hash".to_string())?
                .map_err(|e| e.to_string())?
            }
            RpcBackend::Default => tokio::time::timeout(
                self.opts.connect_timeout,
                OnlineClient::<PolkadotConfig>::from_rpc_client(rpc.clone()),
            )
            .await
            .map_err(|_| "timed out reading the genesis hash".to_string())?
            .map_err(|e| e.to_string())?,
        };
        Ok((api, rpc))
    }

    /// The live connection, connecting (once, shared) if there is none.
    pub(crate) async fn live(&self) -> Result<Conn> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let mut generation = self.connect_lock.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        match self.open().await {
            Ok((api, rpc)) => {
                *generation += 1;
                let conn = Conn {
                    api,
                    rpc,
                    generation: *generation,
                };
                *lock(&self.conn) = Some(conn.clone());
                let mut h = lock(&self.health);
                if *generation > 1 {
                    h.reconnects += 1;
                }
                h.last_error = None;
                tracing::info!(url = %self.opts.url, generation = *generation, "connected to the chain");
                Ok(conn)
            }
            Err(e) => {
                lock(&self.health).last_error = Some(e.clone());
                Err(unavailable(&self.opts.url, format!("cannot connect: {e}")))
            }
        }
    }

    /// Runs `f` on the connection with the call timeout; transport failures drop the connection.
    pub(crate) async fn with_conn<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let conn = self.live().await?;
        let generation = conn.generation;
        match tokio::time::timeout(self.opts.call_timeout, f(conn)).await {
            Err(_) => {
                self.invalidate(generation, "call timed out");
                Err(unavailable(
                    &self.opts.url,
                    format!("{what}: no answer within {:?}", self.opts.call_timeout),
                ))
            }
            Ok(Err(ChainError::Unavailable(m))) => {
                self.invalidate(generation, &m);
                Err(ChainError::Unavailable(m))
            }
            Ok(r) => r,
        }
    }

    /// Records `b` as the latest head and broadcasts it.
    pub(crate) fn emit(&self, b: BlockInfo) {
        {
            let mut h = lock(&self.health);
            h.last_block = Some(b.number);
            h.last_block_at = Some(Instant::now());
        }
        let _ = self.blocks.send(b);
    }

    /// A receiver of every block emitted from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<BlockInfo> {
        self.blocks.subscribe()
    }

    /// The latest head emitted, if any.
    pub(crate) fn last_block(&self) -> Option<u64> {
        lock(&self.health).last_block
    }

    /// Counts one missed block replayed.
    pub(crate) fn note_replayed(&self) {
        lock(&self.health).replayed += 1;
    }

    /// Counts `n` missed blocks skipped.
    pub(crate) fn note_skipped(&self, n: u64) {
        lock(&self.health).skipped += n;
    }

    /// Connected or not, reconnects, latest head and how long ago it came.
    pub(crate) fn health(&self) -> ChainHealth {
        let connected = self.current().is_some();
        let h = lock(&self.health);
        ChainHealth {
            connected,
            reconnects: h.reconnects,
            last_block: h.last_block,
            since_last_block_ms: h.last_block_at.map(|t| t.elapsed().as_millis() as u64),
            last_error: h.last_error.clone(),
            replayed: h.replayed,
            skipped: h.skipped,
        }
    }
}
