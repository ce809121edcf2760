//! [`SubtensorChain`]: the subtensor backend of [`ChainClient`], over subxt's dynamic API.
//!
//! ## Connection
//! One websocket per `SubtensorChain`, held in a slot that a background **follower** task owns:
//! it subscribes to new heads (`chain_subscribeNewHeads`), forwards each as a [`BlockInfo`] on a
//! bounded broadcast channel, and pings the node every few seconds. When the subscription ends,
//! a ping fails or the socket drops, it empties the slot and reconnects with exponential backoff
//! (250 ms doubling to 10 s), then resumes. Blocks produced while it was away (or heads the
//! subscription skipped) are **replayed** in order before the new head — up to
//! [`MAX_REPLAY`] blocks, so no window boundary is lost to a dropped socket; a longer outage
//! is skipped with a warning and counted in [`ChainHealth::skipped`]. A head with a lower
//! number than the last one (a restarted dev chain, a reorg) is forwarded as it is: the chain
//! watcher decides what it means. Calls made while disconnected try one reconnect themselves
//! and otherwise fail with [`ChainError::Unavailable`].
//!
//! ## Calls
//! Every call and storage entry is looked up by name in the runtime's metadata at the current
//! block (no generated code), so argument lists follow the runtime (`register_network` with or
//! without `mechid`). Submissions are serialized per signer (nonces), signed with sr25519 from
//! the hotkey's seed, and awaited until included in a block; failures become [`ChainError`]s
//! via [`crate::errors`].
//!
//! ## Weights
//! `set_weights` reads `WeightsSetRateLimit`, `LastUpdate`, `ValidatorPermit`,
//! `WeightsVersionKey` and `CommitRevealWeightsEnabled` first and refuses locally
//! (`RateLimited { blocks_left, limit }`, `NoValidatorPermit`, `NotRegistered`) rather than
//! paying for a doomed transaction. It also remembers its own last submission per hotkey so it
//! never submits twice inside one limit even if the chain view lags. With commit-reveal on, it
//! commits `blake2_256(SCALE(hotkey, netuid, uids, values, salt, version_key))` (the hash
//! pallet-subtensor's own tests use) and reveals pending commits on later calls
//! ([`SubtensorChain::reveal_pending`]).

use crate::errors::{self, Ctx};
use crate::values;
use apiary_chain::keys::{Hotkey, HotkeyId};
use apiary_chain::{
    BlockInfo, ChainClient, ChainError, Metagraph, Neuron, PeerRecord, Result, TxReceipt,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subxt::client::OnlineClientAtBlock;
use subxt::ext::scale_value::{Composite, Value};
use subxt::rpcs::client::RpcParams;
use subxt::rpcs::RpcClient;
use subxt::utils::AccountId32;
use subxt::{OnlineClient, PolkadotConfig};
use subxt_signer::sr25519::Keypair;
use tokio::sync::broadcast;

pub(crate) type Api = OnlineClient<PolkadotConfig>;
pub(crate) type At = OnlineClientAtBlock<PolkadotConfig>;

/// Well-known endpoints.
pub const FINNEY: &str = "wss://entrypoint-finney.opentensor.ai:443";
/// The public test network.
pub const TESTNET: &str = "wss://test.finney.opentensor.ai:443";
/// A node (or chopsticks) on this machine.
pub const LOCAL: &str = "ws://127.0.0.1:9944";

/// Resolves `finney`, `test`, `local` or a `ws://` / `wss://` URL.
pub fn resolve_endpoint(endpoint: &str) -> std::result::Result<String, String> {
    match endpoint {
        "finney" => Ok(FINNEY.into()),
        "test" | "testnet" => Ok(TESTNET.into()),
        "local" => Ok(LOCAL.into()),
        u if u.starts_with("ws://") || u.starts_with("wss://") => Ok(u.to_string()),
        other => Err(format!(
            "unknown endpoint `{other}`: use finney, test, local or a ws:// / wss:// URL"
        )),
    }
}

/// Which subxt RPC backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcBackend {
    /// The legacy RPC methods (`chain_*`, `state_*`, `author_*`): what chopsticks serves well.
    Legacy,
    /// subxt's default backend (the new `chainHead` methods with a legacy fallback): real nodes.
    Default,
}

/// How to reach the chain.
#[derive(Debug, Clone)]
pub struct SubtensorOptions {
    /// `ws://` or `wss://` URL (see [`resolve_endpoint`]).
    pub url: String,
    /// RPC backend.
    pub rpc: RpcBackend,
    /// Limit for one connection attempt.
    pub connect_timeout: Duration,
    /// Limit for one call (a read, or a submission until its inclusion).
    pub call_timeout: Duration,
    /// How often the follower pings the node to detect a dead connection.
    pub ping_every: Duration,
}

impl SubtensorOptions {
    /// Options for `url` with default timeouts.
    pub fn new(url: impl Into<String>, rpc: RpcBackend) -> Self {
        Self {
            url: url.into(),
            rpc,
            connect_timeout: Duration::from_secs(15),
            call_timeout: Duration::from_secs(90),
            ping_every: Duration::from_secs(3),
        }
    }
}

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
    /// Missed blocks not replayed because the gap exceeded [`MAX_REPLAY`].
    pub skipped: u64,
}

/// The most missed blocks the follower replays after a gap (about 2 hours of 12 s blocks).
pub const MAX_REPLAY: u64 = 600;

#[derive(Clone)]
struct Conn {
    api: Api,
    rpc: RpcClient,
    generation: u64,
}

struct HealthState {
    reconnects: u64,
    last_block: Option<u64>,
    last_block_at: Option<Instant>,
    last_error: Option<String>,
    replayed: u64,
    skipped: u64,
}

/// A commit whose reveal is pending.
#[derive(Debug, Clone)]
struct PendingCommit {
    netuid: u16,
    uids: Vec<u16>,
    values: Vec<u16>,
    salt: Vec<u16>,
    version_key: u64,
}

pub(crate) struct Shared {
    opts: SubtensorOptions,
    conn: Mutex<Option<Conn>>,
    connect_lock: tokio::sync::Mutex<u64>,
    blocks: broadcast::Sender<BlockInfo>,
    health: Mutex<HealthState>,
    signer_locks: Mutex<HashMap<HotkeyId, Arc<tokio::sync::Mutex<()>>>>,
    /// Our own last `set_weights` inclusion block per (netuid, hotkey).
    last_weights: Mutex<HashMap<(u16, HotkeyId), u64>>,
    pending_commits: Mutex<HashMap<HotkeyId, Vec<PendingCommit>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The subtensor chain client. Cheap to share behind an `Arc`; dropping it stops the follower.
pub struct SubtensorChain {
    pub(crate) shared: Arc<Shared>,
    _follower: AbortOnDrop,
}

impl std::fmt::Debug for SubtensorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubtensorChain({})", self.shared.opts.url)
    }
}

/// The sr25519 signer of a hotkey (same key: the seed is the mini secret).
pub fn signer(hotkey: &Hotkey) -> Result<Keypair> {
    Keypair::from_secret_key(*hotkey.seed()).map_err(|e| {
        ChainError::BadTransaction(format!("hotkey seed is not a valid sr25519 secret: {e}"))
    })
}

pub(crate) fn account(id: &HotkeyId) -> AccountId32 {
    AccountId32(id.0)
}

fn unavailable(url: &str, e: impl std::fmt::Display) -> ChainError {
    ChainError::Unavailable(format!("{url}: {e}"))
}

fn params(values: Vec<serde_json::Value>) -> RpcParams {
    let mut p = RpcParams::new();
    for v in values {
        // Pushing a serde_json::Value cannot fail to serialize.
        let _ = p.push(v);
    }
    p
}

fn parse_number(header: &serde_json::Value) -> Option<u64> {
    match &header["number"] {
        serde_json::Value::String(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn parse_hash(v: &serde_json::Value) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Some(s) = v.as_str() {
        if let Ok(b) = hex::decode(s.trim_start_matches("0x")) {
            if b.len() == 32 {
                out.copy_from_slice(&b);
            }
        }
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shared {
    fn current(&self) -> Option<Conn> {
        lock(&self.conn).clone()
    }

    fn invalidate(&self, generation: u64, why: &str) {
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
    async fn connection(&self) -> Result<Conn> {
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
    async fn with_conn<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let conn = self.connection().await?;
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

    fn emit(&self, b: BlockInfo) {
        {
            let mut h = lock(&self.health);
            h.last_block = Some(b.number);
            h.last_block_at = Some(Instant::now());
        }
        let _ = self.blocks.send(b);
    }
}

async fn head(rpc: &RpcClient) -> std::result::Result<BlockInfo, String> {
    let h: serde_json::Value = rpc
        .request("chain_getHeader", params(vec![]))
        .await
        .map_err(|e| e.to_string())?;
    let number = parse_number(&h).ok_or("header without a number")?;
    block_info(rpc, number).await
}

async fn block_info(rpc: &RpcClient, number: u64) -> std::result::Result<BlockInfo, String> {
    let hash: serde_json::Value = rpc
        .request("chain_getBlockHash", params(vec![number.into()]))
        .await
        .map_err(|e| e.to_string())?;
    Ok(BlockInfo {
        number,
        hash: parse_hash(&hash),
        timestamp_ms: now_ms(),
    })
}

/// Forwards head `b`, first replaying the blocks between the last forwarded one and `b` (at
/// most [`MAX_REPLAY`]). A repeat of the last head is dropped; a lower number is forwarded.
async fn forward(
    shared: &Shared,
    rpc: &RpcClient,
    last: &mut Option<u64>,
    b: BlockInfo,
) -> std::result::Result<(), String> {
    if let Some(l) = *last {
        if b.number == l {
            return Ok(());
        }
        if b.number > l + 1 {
            let missed = b.number - l - 1;
            let from = b.number - missed.min(MAX_REPLAY);
            if from > l + 1 {
                let skipped = from - l - 1;
                tracing::warn!(
                    last = l,
                    head = b.number,
                    skipped,
                    "too many blocks missed to replay them all; windows in the gap are lost"
                );
                lock(&shared.health).skipped += skipped;
            }
            for n in from..b.number {
                let missed = block_info(rpc, n)
                    .await
                    .map_err(|e| format!("replaying block {n}: {e}"))?;
                lock(&shared.health).replayed += 1;
                shared.emit(missed);
                *last = Some(n);
            }
            tracing::info!(from, to = b.number - 1, "replayed missed blocks");
        }
    }
    *last = Some(b.number);
    shared.emit(b);
    Ok(())
}

/// The follower: subscribe, forward heads, ping, reconnect with backoff. Never returns.
async fn follow(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let conn = match shared.connection().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, ?backoff, "chain reconnect failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        let sub = conn
            .rpc
            .subscribe::<serde_json::Value>(
                "chain_subscribeNewHeads",
                params(vec![]),
                "chain_unsubscribeNewHeads",
            )
            .await;
        let mut sub = match sub {
            Ok(s) => s,
            Err(e) => {
                shared.invalidate(conn.generation, &format!("subscribe failed: {e}"));
                continue;
            }
        };
        // The head now, so a reconnect resumes at once (after replaying what it missed).
        let mut last = lock(&shared.health).last_block;
        if let Ok(b) = head(&conn.rpc).await {
            if let Err(e) = forward(&shared, &conn.rpc, &mut last, b).await {
                shared.invalidate(conn.generation, &e);
                continue;
            }
        }
        let why = loop {
            tokio::select! {
                item = sub.next() => match item {
                    Some(Ok(h)) => {
                        let Some(n) = parse_number(&h) else { continue };
                        let b = match block_info(&conn.rpc, n).await {
                            Ok(b) => b,
                            Err(e) => break format!("reading block {n}: {e}"),
                        };
                        if let Err(e) = forward(&shared, &conn.rpc, &mut last, b).await {
                            break e;
                        }
                    }
                    Some(Err(e)) => break format!("head subscription failed: {e}"),
                    None => break "head subscription ended".to_string(),
                },
                _ = tokio::time::sleep(shared.opts.ping_every) => {
                    match tokio::time::timeout(shared.opts.ping_every * 3, head(&conn.rpc)).await {
                        // A head the subscription did not deliver (or a restarted chain).
                        Ok(Ok(b)) => if let Err(e) = forward(&shared, &conn.rpc, &mut last, b).await {
                            break e;
                        },
                        Ok(Err(e)) => break format!("ping failed: {e}"),
                        Err(_) => break "ping timed out".to_string(),
                    }
                }
            }
        };
        shared.invalidate(conn.generation, &why);
    }
}

impl SubtensorChain {
    /// Connects to `opts.url` and starts following blocks. Fails if the first connection fails
    /// (later drops are survived).
    pub async fn connect(opts: SubtensorOptions) -> Result<Arc<Self>> {
        let (tx, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            opts,
            conn: Mutex::new(None),
            connect_lock: tokio::sync::Mutex::new(0),
            blocks: tx,
            health: Mutex::new(HealthState {
                reconnects: 0,
                last_block: None,
                last_block_at: None,
                last_error: None,
                replayed: 0,
                skipped: 0,
            }),
            signer_locks: Mutex::new(HashMap::new()),
            last_weights: Mutex::new(HashMap::new()),
            pending_commits: Mutex::new(HashMap::new()),
        });
        shared.connection().await?;
        let follower = tokio::spawn(follow(Arc::clone(&shared)));
        Ok(Arc::new(SubtensorChain {
            shared,
            _follower: AbortOnDrop(follower),
        }))
    }

    /// The endpoint URL.
    pub fn url(&self) -> &str {
        &self.shared.opts.url
    }

    /// Connection health: connected, reconnects, latest head and how long ago it came.
    pub fn health(&self) -> ChainHealth {
        let connected = self.shared.current().is_some();
        let h = lock(&self.shared.health);
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

    /// A raw JSON-RPC request (e.g. chopsticks' `dev_newBlock`).
    pub async fn rpc_request(
        &self,
        method: &str,
        args: Vec<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = self.shared.opts.url.clone();
        self.shared
            .with_conn(method, |c| async move {
                c.rpc
                    .request::<serde_json::Value>(method, params(args))
                    .await
                    .map_err(|e| from_rpc(&url, e))
            })
            .await
    }

    /// A client at the latest block.
    pub(crate) async fn at_latest(&self) -> Result<At> {
        let url = self.shared.opts.url.clone();
        self.shared
            .with_conn("reading the latest block", |c| async move {
                // The best (not finalized) head: reads and rate limits follow what blocks show.
                let h: serde_json::Value = c
                    .rpc
                    .request("chain_getHeader", params(vec![]))
                    .await
                    .map_err(|e| from_rpc(&url, e))?;
                let n =
                    parse_number(&h).ok_or_else(|| unavailable(&url, "header without a number"))?;
                c.api
                    .at_block(n)
                    .await
                    .map_err(|e| ChainError::Unavailable(format!("{url}: {e}")))
            })
            .await
    }

    /// Fetches one storage value (`None` if absent and without a default).
    pub(crate) async fn fetch<K, V>(
        &self,
        at: &At,
        pallet: &str,
        entry: &str,
        keys: K,
    ) -> Result<Option<V>>
    where
        K: subxt::ext::frame_decode::storage::IntoEncodableValues
            + subxt::ext::frame_decode::storage::IntoDecodableValues,
        V: subxt::ext::scale_decode::DecodeAsType,
    {
        if !values::has_storage(at.metadata_ref(), pallet, entry) {
            return Err(ChainError::MissingCall(format!("storage {pallet}.{entry}")));
        }
        let addr = subxt::dynamic::storage::<K, V>(pallet, entry);
        let v = at
            .storage()
            .try_fetch(addr, keys)
            .await
            .map_err(|e| storage_err(pallet, entry, e))?;
        match v {
            None => Ok(None),
            Some(v) => v
                .decode()
                .map(Some)
                .map_err(|e| ChainError::Runtime(format!("cannot decode {pallet}.{entry}: {e}"))),
        }
    }

    /// Iterates a double map under its first key; returns `(second key, value)` pairs.
    pub(crate) async fn iter_under<K2, V>(
        &self,
        at: &At,
        pallet: &str,
        entry: &str,
        netuid: u16,
    ) -> Result<Vec<(K2, V)>>
    where
        K2: subxt::ext::scale_decode::DecodeAsType + subxt::ext::scale_encode::EncodeAsType + Send,
        V: subxt::ext::scale_decode::DecodeAsType,
    {
        if !values::has_storage(at.metadata_ref(), pallet, entry) {
            return Err(ChainError::MissingCall(format!("storage {pallet}.{entry}")));
        }
        let addr = subxt::dynamic::storage::<(u16, K2), V>(pallet, entry);
        let mut it = at
            .storage()
            .iter(addr, (netuid,))
            .await
            .map_err(|e| storage_err(pallet, entry, e))?;
        let mut out = Vec::new();
        while let Some(kv) = it.next().await {
            let kv = kv.map_err(|e| storage_err(pallet, entry, e))?;
            let key = kv
                .key()
                .map_err(|e| ChainError::Runtime(format!("{pallet}.{entry} key: {e}")))?;
            let Some(part) = key.part(1) else { continue };
            let Ok(Some(k2)) = part.decode_as::<K2>() else {
                continue;
            };
            let v = kv
                .value()
                .decode()
                .map_err(|e| ChainError::Runtime(format!("cannot decode {pallet}.{entry}: {e}")))?;
            out.push((k2, v));
        }
        Ok(out)
    }

    /// The uid of `who` on `netuid`, if registered.
    pub async fn uid_of(&self, at: &At, netuid: u16, who: &HotkeyId) -> Result<Option<u16>> {
        self.fetch::<_, u16>(at, "SubtensorModule", "Uids", (netuid, account(who)))
            .await
    }

    pub(crate) async fn signer_lock(&self, who: HotkeyId) -> tokio::sync::OwnedMutexGuard<()> {
        let l = Arc::clone(
            lock(&self.shared.signer_locks)
                .entry(who)
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(()))),
        );
        l.lock_owned().await
    }

    /// Signs `pallet.call(args)` with `key` and waits until it is in a block; maps failures.
    pub async fn submit(
        &self,
        key: &Hotkey,
        netuid: u16,
        pallet: &str,
        call: &str,
        args: &[(&str, Value)],
    ) -> Result<TxReceipt> {
        let ctx = Ctx {
            who: key.id(),
            netuid,
        };
        let kp = signer(key)?;
        let _guard = self.signer_lock(key.id()).await;
        let at = self.at_latest().await?;
        let fields = values::call_args(at.metadata_ref(), pallet, call, args)?;
        self.submit_payload(at, &kp, ctx, subxt::dynamic::tx(pallet, call, fields))
            .await
    }

    /// Submits a ready payload signed by `kp`.
    pub(crate) async fn submit_payload(
        &self,
        at: At,
        kp: &Keypair,
        ctx: Ctx,
        payload: subxt::tx::DynamicPayload<Composite<()>>,
    ) -> Result<TxReceipt> {
        let url = self.shared.opts.url.clone();
        let what = format!("{}.{}", payload.pallet_name(), payload.call_name());
        let run = async move {
            let mut txs = at.transactions();
            let mut progress = txs
                .sign_and_submit_then_watch_default(&payload, kp)
                .await
                .map_err(|e| errors::from_message(&e.to_string(), ctx))?;
            let tx_hash = format!("0x{}", hex::encode(progress.extrinsic_hash().0));
            while let Some(st) = progress.next().await {
                use subxt::tx::TransactionStatus as S;
                let st = st.map_err(|e| errors::from_message(&e.to_string(), ctx))?;
                let inb = match st {
                    S::InBestBlock(b) | S::InFinalizedBlock(b) => b,
                    S::Invalid { message } | S::Error { message } | S::Dropped { message } => {
                        return Err(errors::from_message(&message, ctx))
                    }
                    _ => continue,
                };
                if let Err(e) = inb.wait_for_success().await {
                    return Err(match e {
                        subxt::error::TransactionEventsError::ExtrinsicFailed(d) => {
                            errors::from_dispatch(&d, ctx)
                        }
                        other => errors::from_message(&other.to_string(), ctx),
                    });
                }
                let block = match inb.at().await {
                    Ok(a) => a.block_number(),
                    Err(_) => 0,
                };
                return Ok(TxReceipt { block, tx_hash });
            }
            Err(ChainError::Unavailable(format!(
                "{url}: the transaction status stream ended before inclusion"
            )))
        };
        match tokio::time::timeout(self.shared.opts.call_timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(ChainError::Unavailable(format!(
                "{}: {what} was not included within {:?}",
                self.shared.opts.url, self.shared.opts.call_timeout
            ))),
        }
    }

    /// Reveals this hotkey's pending commit-reveal commits whose reveal the chain accepts now;
    /// returns how many were revealed. Commits the chain says are too early stay pending.
    pub async fn reveal_pending(&self, hotkey: &Hotkey) -> Result<usize> {
        let pending = lock(&self.shared.pending_commits)
            .get(&hotkey.id())
            .cloned()
            .unwrap_or_default();
        let mut revealed = 0;
        let mut keep = Vec::new();
        for p in pending {
            let r = self
                .submit(
                    hotkey,
                    p.netuid,
                    "SubtensorModule",
                    "reveal_weights",
                    &[
                        ("netuid", Value::u128(p.netuid.into())),
                        ("uids", u16s(&p.uids)),
                        ("values", u16s(&p.values)),
                        ("salt", u16s(&p.salt)),
                        ("version_key", Value::u128(p.version_key.into())),
                    ],
                )
                .await;
            match r {
                Ok(_) => revealed += 1,
                Err(ChainError::Runtime(m)) if m.contains("RevealTooEarly") => keep.push(p),
                Err(ChainError::Runtime(m))
                    if m.contains("Expired") || m.contains("NoWeightsCommitFound") =>
                {
                    tracing::warn!(reason = %m, "dropping a weights commit the chain will not reveal");
                }
                Err(e) => {
                    keep.push(p);
                    lock(&self.shared.pending_commits).insert(hotkey.id(), keep);
                    return Err(e);
                }
            }
        }
        lock(&self.shared.pending_commits).insert(hotkey.id(), keep);
        Ok(revealed)
    }

    /// Reads the subnet's weight rules for `hotkey` and refuses locally what the runtime would.
    async fn check_weights(
        &self,
        at: &At,
        netuid: u16,
        hotkey: &HotkeyId,
        uids: &[u16],
    ) -> Result<(u16, u64, bool)> {
        let uid = self
            .uid_of(at, netuid, hotkey)
            .await?
            .ok_or(ChainError::NotRegistered(*hotkey, netuid))?;
        let limit: u64 = self
            .fetch(at, "SubtensorModule", "WeightsSetRateLimit", (netuid,))
            .await?
            .unwrap_or(0);
        let last_updates: Vec<u64> = self
            .fetch(at, "SubtensorModule", "LastUpdate", (netuid,))
            .await?
            .unwrap_or_default();
        let on_chain = last_updates.get(uid as usize).copied().unwrap_or(0);
        let ours = lock(&self.shared.last_weights)
            .get(&(netuid, *hotkey))
            .copied()
            .unwrap_or(0);
        let last = on_chain.max(ours);
        // The extrinsic lands in the next block; the runtime allows it once
        // `block - last >= limit`.
        let next = at.block_number() + 1;
        if limit > 0 && last > 0 {
            let since = next.saturating_sub(last);
            if since < limit {
                return Err(ChainError::RateLimited {
                    blocks_left: limit - since,
                    limit,
                });
            }
        }
        let permits: Vec<bool> = self
            .fetch(at, "SubtensorModule", "ValidatorPermit", (netuid,))
            .await?
            .unwrap_or_default();
        let self_only = uids.iter().all(|u| *u == uid);
        if !self_only && !permits.get(uid as usize).copied().unwrap_or(false) {
            return Err(ChainError::NoValidatorPermit(*hotkey, netuid));
        }
        let chain_key: u64 = self
            .fetch(at, "SubtensorModule", "WeightsVersionKey", (netuid,))
            .await?
            .unwrap_or(0);
        let cr: bool = if values::has_storage(
            at.metadata_ref(),
            "SubtensorModule",
            "CommitRevealWeightsEnabled",
        ) {
            self.fetch(
                at,
                "SubtensorModule",
                "CommitRevealWeightsEnabled",
                (netuid,),
            )
            .await?
            .unwrap_or(false)
        } else {
            false
        };
        Ok((uid, chain_key, cr))
    }

    /// All weights on a subnet as `uid -> [(dest, weight)]` (raw storage `Weights`).
    pub async fn all_weights(&self, netuid: u16) -> Result<BTreeMap<u16, Vec<(u16, u16)>>> {
        let at = self.at_latest().await?;
        Ok(self
            .iter_under::<u16, Vec<(u16, u16)>>(&at, "SubtensorModule", "Weights", netuid)
            .await?
            .into_iter()
            .collect())
    }
}

pub(crate) fn u16s(v: &[u16]) -> Value {
    Value::unnamed_composite(v.iter().map(|x| Value::u128((*x).into())))
}

fn from_rpc(url: &str, e: subxt::rpcs::Error) -> ChainError {
    match e {
        subxt::rpcs::Error::Client(_) | subxt::rpcs::Error::DisconnectedWillReconnect(_) => {
            unavailable(url, e)
        }
        other => ChainError::Runtime(other.to_string()),
    }
}

fn storage_err(pallet: &str, entry: &str, e: subxt::error::StorageError) -> ChainError {
    let s = e.to_string();
    if s.contains("fetch") || s.contains("iterate") || s.contains("RPC") {
        ChainError::Unavailable(format!("reading {pallet}.{entry}: {s}"))
    } else {
        ChainError::Runtime(format!("reading {pallet}.{entry}: {s}"))
    }
}

/// The commit hash pallet-subtensor checks on reveal:
/// `blake2_256(SCALE(hotkey, netuid, uids, values, salt, version_key))`.
pub fn commit_hash(
    hotkey: &HotkeyId,
    netuid: u16,
    uids: &[u16],
    values: &[u16],
    salt: &[u16],
    version_key: u64,
) -> [u8; 32] {
    use blake2::digest::consts::U32;
    use blake2::{Blake2b, Digest};
    use subxt::ext::codec::Encode;
    let enc = (
        hotkey.0,
        netuid,
        uids.to_vec(),
        values.to_vec(),
        salt.to_vec(),
        version_key,
    )
        .encode();
    let mut h = Blake2b::<U32>::new();
    h.update(&enc);
    h.finalize().into()
}

/// Largest commitment apiary writes: three `Raw128` fields.
pub const MAX_COMMITMENT_BYTES: usize = 3 * 128;

/// Fits a peer record into [`MAX_COMMITMENT_BYTES`], dropping addresses from the end if needed.
pub fn fit_commitment(data: Vec<u8>) -> Result<Vec<u8>> {
    if data.len() <= MAX_COMMITMENT_BYTES {
        return Ok(data);
    }
    if let Some(mut rec) = PeerRecord::decode(&data) {
        while rec.addrs.len() > 1 {
            rec.addrs.pop();
            let enc = rec.encode();
            if enc.len() <= MAX_COMMITMENT_BYTES {
                return Ok(enc);
            }
        }
    }
    Err(ChainError::CommitmentTooLarge(
        data.len(),
        MAX_COMMITMENT_BYTES,
    ))
}

#[async_trait::async_trait]
impl ChainClient for SubtensorChain {
    fn backend_name(&self) -> &'static str {
        "subtensor"
    }

    async fn best_block(&self) -> Result<BlockInfo> {
        let url = self.shared.opts.url.clone();
        self.shared
            .with_conn("reading the best block", |c| async move {
                head(&c.rpc).await.map_err(|e| unavailable(&url, e))
            })
            .await
    }

    fn connection_health(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.health()).ok()
    }

    fn subscribe_blocks(&self) -> broadcast::Receiver<BlockInfo> {
        self.shared.blocks.subscribe()
    }

    async fn block_hash(&self, number: u64) -> Result<Option<[u8; 32]>> {
        let url = self.shared.opts.url.clone();
        self.shared
            .with_conn("reading a block hash", |c| async move {
                let hash: serde_json::Value = c
                    .rpc
                    .request("chain_getBlockHash", params(vec![number.into()]))
                    .await
                    .map_err(|e| from_rpc(&url, e))?;
                // `null` for a block the chain does not have yet.
                Ok((!hash.is_null()).then(|| parse_hash(&hash)))
            })
            .await
    }

    async fn metagraph(&self, netuid: u16) -> Result<Metagraph> {
        let at = self.at_latest().await?;
        let exists: bool = self
            .fetch(&at, "SubtensorModule", "NetworksAdded", (netuid,))
            .await?
            .unwrap_or(false);
        if !exists {
            return Err(ChainError::UnknownSubnet(netuid));
        }
        let keys: Vec<(u16, AccountId32)> = self
            .iter_under(&at, "SubtensorModule", "Keys", netuid)
            .await?;
        let permits: Vec<bool> = self
            .fetch(&at, "SubtensorModule", "ValidatorPermit", (netuid,))
            .await?
            .unwrap_or_default();
        let last_update: Vec<u64> = self
            .fetch(&at, "SubtensorModule", "LastUpdate", (netuid,))
            .await?
            .unwrap_or_default();
        let registered: BTreeMap<u16, u64> = self
            .iter_under(&at, "SubtensorModule", "BlockAtRegistration", netuid)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let commitments: HashMap<[u8; 32], Vec<u8>> =
            if values::has_storage(at.metadata_ref(), "Commitments", "CommitmentOf") {
                self.iter_under::<AccountId32, Value>(&at, "Commitments", "CommitmentOf", netuid)
                    .await?
                    .into_iter()
                    .filter_map(|(k, v)| values::commitment_bytes(&v).map(|b| (k.0, b)))
                    .collect()
            } else {
                HashMap::new()
            };
        let md = at.metadata_ref();
        let stake_entry = if values::has_storage(md, "SubtensorModule", "TotalHotkeyAlpha") {
            Some(("TotalHotkeyAlpha", true))
        } else if values::has_storage(md, "SubtensorModule", "TotalHotkeyStake") {
            Some(("TotalHotkeyStake", false))
        } else {
            None
        };
        let stakes = futures::future::join_all(keys.iter().map(|(_, acc)| {
            let at = &at;
            async move {
                match stake_entry {
                    Some((e, true)) => self
                        .fetch::<_, u64>(at, "SubtensorModule", e, (*acc, netuid))
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(0),
                    Some((e, false)) => self
                        .fetch::<_, u64>(at, "SubtensorModule", e, (*acc,))
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(0),
                    None => 0,
                }
            }
        }))
        .await;
        let mut neurons: Vec<Neuron> = keys
            .iter()
            .zip(stakes)
            .map(|((uid, acc), stake)| Neuron {
                uid: *uid,
                hotkey: HotkeyId(acc.0),
                stake,
                validator_permit: permits.get(*uid as usize).copied().unwrap_or(false),
                peer: commitments.get(&acc.0).and_then(|b| PeerRecord::decode(b)),
                last_update: last_update.get(*uid as usize).copied().unwrap_or(0),
                registered_at: registered.get(uid).copied().unwrap_or(0),
            })
            .collect();
        neurons.sort_by_key(|n| n.uid);
        Ok(Metagraph {
            netuid,
            block: at.block_number(),
            neurons,
        })
    }

    async fn register(&self, netuid: u16, hotkey: &Hotkey) -> Result<u16> {
        let at = self.at_latest().await?;
        if let Some(uid) = self.uid_of(&at, netuid, &hotkey.id()).await? {
            return Ok(uid);
        }
        let exists: bool = self
            .fetch(&at, "SubtensorModule", "NetworksAdded", (netuid,))
            .await?
            .unwrap_or(false);
        if !exists {
            return Err(ChainError::UnknownSubnet(netuid));
        }
        drop(at);
        // Burned registration paid by the hotkey itself (it is its own coldkey here); an
        // operator with a separate coldkey registers with `apiary chain register`.
        self.submit(
            hotkey,
            netuid,
            "SubtensorModule",
            "burned_register",
            &[
                ("netuid", Value::u128(netuid.into())),
                ("hotkey", Value::from_bytes(hotkey.id().0)),
            ],
        )
        .await?;
        let at = self.at_latest().await?;
        self.uid_of(&at, netuid, &hotkey.id())
            .await?
            .ok_or(ChainError::NotRegistered(hotkey.id(), netuid))
    }

    async fn set_commitment(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        data: Vec<u8>,
    ) -> Result<TxReceipt> {
        let data = fit_commitment(data)?;
        self.submit(
            hotkey,
            netuid,
            "Commitments",
            "set_commitment",
            &[
                ("netuid", Value::u128(netuid.into())),
                ("info", values::commitment_info(&data, 128)),
            ],
        )
        .await
    }

    async fn set_weights(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<TxReceipt> {
        if uids.len() != weights.len() {
            return Err(ChainError::InvalidWeights(format!(
                "{} uids but {} weights",
                uids.len(),
                weights.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        if !uids.iter().all(|u| seen.insert(*u)) {
            return Err(ChainError::InvalidWeights("duplicate uids".into()));
        }
        let has_pending = lock(&self.shared.pending_commits)
            .get(&hotkey.id())
            .is_some_and(|p| !p.is_empty());
        if has_pending {
            if let Err(e) = self.reveal_pending(hotkey).await {
                tracing::warn!(error = %e, "revealing pending weight commits failed");
            }
        }
        let at = self.at_latest().await?;
        let (_uid, chain_key, commit_reveal) =
            self.check_weights(&at, netuid, &hotkey.id(), uids).await?;
        let version_key = version_key.max(chain_key);
        drop(at);
        let receipt = if commit_reveal {
            let salt: Vec<u16> = (0..8).map(|_| rand::random::<u16>()).collect();
            let hash = commit_hash(&hotkey.id(), netuid, uids, weights, &salt, version_key);
            let r = self
                .submit(
                    hotkey,
                    netuid,
                    "SubtensorModule",
                    "commit_weights",
                    &[
                        ("netuid", Value::u128(netuid.into())),
                        ("commit_hash", Value::from_bytes(hash)),
                    ],
                )
                .await?;
            lock(&self.shared.pending_commits)
                .entry(hotkey.id())
                .or_default()
                .push(PendingCommit {
                    netuid,
                    uids: uids.to_vec(),
                    values: weights.to_vec(),
                    salt,
                    version_key,
                });
            r
        } else {
            self.submit(
                hotkey,
                netuid,
                "SubtensorModule",
                "set_weights",
                &[
                    ("netuid", Value::u128(netuid.into())),
                    ("dests", u16s(uids)),
                    ("weights", u16s(weights)),
                    ("version_key", Value::u128(version_key.into())),
                ],
            )
            .await?
        };
        lock(&self.shared.last_weights).insert((netuid, hotkey.id()), receipt.block);
        Ok(receipt)
    }

    async fn reveal_pending(&self, hotkey: &Hotkey) -> Result<usize> {
        SubtensorChain::reveal_pending(self, hotkey).await
    }

    async fn neuron_count(&self, netuid: u16) -> Result<u16> {
        let at = self.at_latest().await?;
        Ok(self
            .fetch(&at, "SubtensorModule", "SubnetworkN", (netuid,))
            .await?
            .unwrap_or(0))
    }

    fn pending_reveals(&self, hotkey: &HotkeyId) -> usize {
        lock(&self.shared.pending_commits)
            .get(hotkey)
            .map_or(0, Vec::len)
    }

    async fn weights(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>> {
        let at = self.at_latest().await?;
        Ok(self
            .fetch(&at, "SubtensorModule", "Weights", (netuid, uid))
            .await?
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_matches_hotkey_address() {
        for label in ["a", "b", "validator-0"] {
            let hk = Hotkey::from_dev_label(label);
            let kp = signer(&hk).expect("signer");
            assert_eq!(kp.public_key().0, hk.id().0);
            // A signature by one verifies under the other.
            let sig = kp.sign(b"apiary");
            hk.id().verify(b"apiary", &sig.0).expect("verifies");
        }
    }

    #[test]
    fn endpoints_resolve() {
        assert_eq!(resolve_endpoint("finney").as_deref(), Ok(FINNEY));
        assert_eq!(resolve_endpoint("local").as_deref(), Ok(LOCAL));
        assert_eq!(
            resolve_endpoint("ws://127.0.0.1:1234").as_deref(),
            Ok("ws://127.0.0.1:1234")
        );
        assert!(resolve_endpoint("http://x").is_err());
    }

    #[test]
    fn commitments_fit() {
        let rec = PeerRecord {
            peer_id: "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo".into(),
            addrs: (0..10)
                .map(|i| format!("/ip4/10.0.0.{i}/tcp/40000"))
                .collect(),
        };
        let fitted = fit_commitment(rec.encode()).expect("fits");
        assert!(fitted.len() <= MAX_COMMITMENT_BYTES);
        let back = PeerRecord::decode(&fitted).expect("decodes");
        assert!(!back.addrs.is_empty());
        assert!(fit_commitment(vec![b'x'; 1000]).is_err());
    }

    #[test]
    fn commit_hash_is_scale_of_the_tuple() {
        let h = commit_hash(&HotkeyId([1; 32]), 1, &[0, 1], &[10, 10], &[1, 2], 0);
        assert_ne!(h, [0u8; 32]);
        assert_ne!(
            h,
            commit_hash(&HotkeyId([1; 32]), 1, &[0, 1], &[10, 10], &[1, 3], 0)
        );
    }
}
