//! apiary-net's blob transfer throughput, gossip latency and catch-up time.
//!
//! Everything runs in this one process over 127.0.0.1 with real apiary-net swarms (TCP, TLS 1.3
//! or noise, yamux, gossipsub), configured with the daemon's defaults ([`NetConfig::default`])
//! except a longer request timeout (see [`params`]).
//!
//! 1. **Blob transfer**, `REPS` runs each, median reported. Every run of a scenario is paired
//!    with a plain single-stream tokio TCP copy of the whole blob over 127.0.0.1 measured right
//!    before it, and the ratio is against the median of those copies (a CI job may share the
//!    machine, so the baseline is taken next to what it is compared with).
//!    * `whole blob/1 1 -> 1 (before)`: node B fetches one 256 MiB blob of pseudo-random bytes
//!      from node A in one `/apiary/blob/1` response with `NetHandle::fetch_blob` (the only
//!      transfer before ranged downloads; blake3-verified after it arrived whole).
//!    * `ranged 1 -> 1`: the same blob with `NetHandle::download` (`/apiary/range/1`: the
//!      outboard, then 8 MiB ranges, 4 in flight per provider, each 1 MiB group verified on
//!      arrival) into a `MemorySink`.
//!    * `ranged 7 -> 1`: seven providers hold the blob; one download pulls ranges from all.
//!    * `ranged 1 -> 7`: one provider serves the blob to seven downloads at once. Rate = 7 x
//!      blob / time until the last finished (aggregate).
//! 2. **Gossip**: 16 nodes, each dialing its binary-tree parent and its predecessor (so the
//!    publisher, node 15, is 4 hops from node 0). After a warm-up that waits for the mesh to
//!    deliver, node 15 publishes 50 signed announcements one at a time, each waiting until all
//!    15 others received it; p50 / p99 / max of publish -> `NetEvent::Gossip` at each receiver.
//! 3. **Catch-up**: a joiner connected to four holders downloads a checkpoint of 10 MB, 100 MB
//!    and 1 GB into a real RocksDB store (`StoreBlobs`: verified 1 MiB parts, as a node catching
//!    up does); seconds, and windows at the config's default window length and at 12 s blocks.
//!
//! All nodes share one tokio runtime, so the numbers include scheduling on this machine's cores.
//!
//! Run: `cargo bench -p apiary-bench --bench transfer`. Prints tables and, last, one JSON line
//! (`{"bench":"transfer",...}`); never asserts timings. Needs about 8 GiB of free memory and
//! 1 GB of temp disk: `1 -> 7` holds seven 256 MiB blobs at once, catch-up writes 1 GB.

use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use apiary_chain::keys::Hotkey;
use apiary_config::NetConfig;
use apiary_net::{
    BlobProvider, DownloadOptions, GuardConfig, Keypair, MemorySink, Multiaddr, NetEvent,
    NetHandle, NetParams, Outboard, PeerId, Protocol, StoreBlobs, PART_LOG,
};
use apiary_storage::{ContentId, Store};
use futures::future::{join_all, try_join_all};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// The allocator the `apiary` binary uses (see apiary-alloc): response buffers of a few MiB are
/// reused instead of being mapped and zeroed by the kernel for every range.
#[global_allocator]
static ALLOC: apiary_alloc::CachingAlloc = apiary_alloc::CachingAlloc::new();

/// Size of the blob moved in every transfer scenario (capped by `net.max_blob_bytes`).
const BLOB_BYTES: usize = 256 << 20;
/// Providers in `7 -> 1`, fetchers in `1 -> 7`.
const FANOUT: usize = 7;
/// Runs per transfer scenario; the median is reported.
const REPS: usize = 3;
/// Nodes in the gossip mesh.
const GOSSIP_NODES: usize = 16;
/// The node that publishes (a leaf of the dial tree, far from node 0).
const PUBLISHER: usize = GOSSIP_NODES - 1;
/// Announcements measured.
const ANNOUNCEMENTS: u64 = 50;
/// Payload size of one announcement (sequence number plus filler).
const ANNOUNCEMENT_BYTES: usize = 256;
/// Warm-up probes that must reach every node, in a row, before measuring.
const WARMUP_DELIVERED: usize = 3;
/// Warm-up probes sent at most before giving up on the mesh.
const WARMUP_MAX_PROBES: usize = 60;
/// Probe sequence numbers start here, far from the measured ones.
const PROBE_SEQ: u64 = 1 << 32;
/// How long one probe may take to reach everyone (a few 500 ms heartbeats).
const PROBE_WAIT: Duration = Duration::from_secs(2);
/// How long a measured announcement may take before it counts as lost.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// Bound on waiting for connections and subscriptions.
const SETUP_WAIT: Duration = Duration::from_secs(60);
/// Blob request timeout used instead of the daemon's 30 s: `1 -> 7` moves 1.75 GiB through
/// one node on a loaded 2-core machine, and this bench measures throughput, not the timeout.
const BLOB_TIMEOUT: Duration = Duration::from_secs(600);
/// Any subnet id; every node uses the same one.
const NETUID: u16 = 1;
/// Bytes per MB in every rate printed.
const MB: f64 = 1e6;

/// Serves blobs from memory. The trait hands out an owned `Vec`, so every serve copies the
/// blob (or the range), as the daemon's RocksDB read does. Outboards are computed once, as the
/// store keeps them.
struct MapProvider(HashMap<[u8; 32], (Arc<Vec<u8>>, Outboard)>);

impl BlobProvider for MapProvider {
    fn get_blob(&self, id: &[u8; 32]) -> Option<Vec<u8>> {
        self.0.get(id).map(|(bytes, _)| bytes.as_ref().clone())
    }

    fn outboard(&self, id: &[u8; 32]) -> Option<Outboard> {
        self.0.get(id).map(|(_, ob)| ob.clone())
    }

    fn get_range(&self, id: &[u8; 32], offset: u64, len: u64) -> Option<Vec<u8>> {
        let (bytes, _) = self.0.get(id)?;
        let start = usize::try_from(offset).ok()?;
        bytes
            .get(start..start.checked_add(usize::try_from(len).ok()?)?)
            .map(<[u8]>::to_vec)
    }
}

/// A running node and its event receiver (kept so events are not counted as dropped).
struct Node {
    net: NetHandle,
    events: mpsc::Receiver<NetEvent>,
}

/// The daemon's default `[net]` settings as `NetParams` (mirrors `apiary-daemon`'s mapping),
/// listening on a free port of 127.0.0.1, with [`BLOB_TIMEOUT`].
fn params(label: &str, cfg: &NetConfig) -> Result<NetParams> {
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().context("listen address")?;
    let mut p = NetParams::new(
        listen,
        Keypair::generate_ed25519(),
        Hotkey::from_dev_label(label),
        NETUID,
    );
    p.max_message_bytes = cfg.max_message_bytes;
    p.max_blob_bytes = cfg.max_blob_bytes;
    p.heartbeat = Duration::from_millis(cfg.heartbeat_ms);
    p.request_timeout = BLOB_TIMEOUT;
    p.guard = GuardConfig {
        scoring: cfg.peer_scoring,
        ban_after: cfg.ban_after_strikes,
        ban_duration: Duration::from_secs(cfg.ban_secs),
        strike_half_life: Duration::from_secs(60),
        serve_burst: cfg.serve_burst,
        serve_per_sec: cfg.serve_requests_per_sec,
        max_concurrent_serves: cfg.max_concurrent_serves,
        unregistered_share: cfg.serve_unregistered_share,
    };
    Ok(p)
}

/// Starts a node serving `blobs`.
async fn start(label: &str, blobs: &[Arc<Vec<u8>>]) -> Result<Node> {
    let mut map = HashMap::new();
    for b in blobs {
        let ob = Outboard::compute(b, PART_LOG).context("outboard")?;
        map.insert(blob_id(b), (b.clone(), ob));
    }
    let provider = MapProvider(map);
    let (net, events) =
        apiary_net::spawn(params(label, &NetConfig::default())?, Arc::new(provider))
            .await
            .with_context(|| format!("starting node {label}"))?;
    Ok(Node { net, events })
}

/// `to`'s dialable address, with its `/p2p` suffix.
async fn addr_of(to: &NetHandle) -> Result<Multiaddr> {
    let addr = to
        .listen_addrs()
        .await
        .into_iter()
        .next()
        .context("node has no listen address")?;
    Ok(addr.with(Protocol::P2p(to.local_peer_id())))
}

/// Connects `from` to `to`; returns once the connection is up.
async fn connect(from: &NetHandle, to: &NetHandle) -> Result<()> {
    from.dial(addr_of(to).await?)
        .await
        .with_context(|| format!("{} dialing {}", from.local_peer_id(), to.local_peer_id()))
}

/// Stops every node and waits until their swarms are gone.
async fn shutdown(nodes: Vec<Node>) {
    join_all(nodes.iter().map(|n| n.net.shutdown())).await;
}

fn blob_id(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// `len` pseudo-random, incompressible bytes (blake3's XOF, far faster than a CSPRNG here).
fn random_bytes(len: usize, seed: &str) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted `xs`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Copies `data` over one plain tokio TCP connection on 127.0.0.1; seconds from connect until
/// the receiver has read every byte (EOF).
async fn tcp_copy(data: &Arc<Vec<u8>>) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("tcp bind")?;
    let addr = listener.local_addr().context("tcp local addr")?;
    let served = data.clone();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await?;
        sock.write_all(&served).await?;
        sock.shutdown().await
    });
    let start = Instant::now();
    let mut sock = TcpStream::connect(addr).await.context("tcp connect")?;
    let mut got = Vec::with_capacity(data.len());
    sock.read_to_end(&mut got).await.context("tcp read")?;
    let secs = start.elapsed().as_secs_f64();
    server
        .await
        .context("tcp server task panicked")?
        .context("tcp server")?;
    ensure!(got == **data, "the TCP copy delivered other bytes");
    Ok(secs)
}

/// One blob fetch: who fetches, from whom, what, and how.
struct Fetch<'a> {
    by: &'a NetHandle,
    /// The provider (`/apiary/blob/1`), or the first of the providers (ranged).
    from: PeerId,
    id: [u8; 32],
    len: usize,
    /// Ranged download from every connected holder (`/apiary/range/1`) instead of the whole
    /// blob from `from` in one response.
    ranged: bool,
}

/// Runs `fetches` concurrently; seconds until the last one returned verified bytes.
async fn timed_fetches(fetches: &[Fetch<'_>]) -> Result<f64> {
    let start = Instant::now();
    try_join_all(fetches.iter().map(|f| async move {
        // The bytes are checked (length here, blake3 inside fetch_blob or per group in the
        // download) and dropped at once, so at most one copy per fetch stays alive.
        let bytes = if f.ranged {
            let sink = Arc::new(MemorySink::default());
            f.by.download(f.id, &[f.from], sink.clone(), &DownloadOptions::default())
                .await
                .context("ranged download")?;
            sink.take(&f.id)
                .context("the download left nothing in the sink")?
        } else {
            f.by.fetch_blob(f.from, f.id).await.context("blob fetch")?
        };
        ensure!(
            bytes.len() == f.len,
            "fetched {} bytes, expected {}",
            bytes.len(),
            f.len
        );
        anyhow::Ok(())
    }))
    .await?;
    Ok(start.elapsed().as_secs_f64())
}

/// One transfer scenario's runs, each with the TCP copy measured just before it.
struct Measured {
    /// Row label.
    name: &'static str,
    /// Key in the JSON line.
    key: &'static str,
    bytes_per_run: usize,
    secs: Vec<f64>,
    tcp_secs: Vec<f64>,
}

impl Measured {
    fn mbps(&self) -> f64 {
        self.bytes_per_run as f64 / median(&self.secs) / MB
    }

    fn tcp_mbps(&self, blob: usize) -> f64 {
        blob as f64 / median(&self.tcp_secs) / MB
    }
}

/// `REPS` times: a TCP copy of `blob`, then the fetches.
async fn measure(
    (name, key): (&'static str, &'static str),
    blob: &Arc<Vec<u8>>,
    fetches: &[Fetch<'_>],
) -> Result<Measured> {
    let mut m = Measured {
        name,
        key,
        bytes_per_run: fetches.iter().map(|f| f.len).sum(),
        secs: Vec::new(),
        tcp_secs: Vec::new(),
    };
    for _ in 0..REPS {
        m.tcp_secs.push(tcp_copy(blob).await?);
        m.secs
            .push(timed_fetches(fetches).await.with_context(|| name)?);
    }
    Ok(m)
}

/// `1 -> 1`: B fetches the blob from A, whole (`/apiary/blob/1`, the baseline before ranged
/// transfers) or ranged.
async fn one_to_one(blob: &Arc<Vec<u8>>, ranged: bool) -> Result<Measured> {
    let a = start("provider", std::slice::from_ref(blob)).await?;
    let b = start("fetcher", &[]).await?;
    connect(&b.net, &a.net).await?;
    let fetch = Fetch {
        by: &b.net,
        from: a.net.local_peer_id(),
        id: blob_id(blob),
        len: blob.len(),
        ranged,
    };
    let label = if ranged {
        ("ranged 1 -> 1", "one_to_one")
    } else {
        ("whole blob/1 1 -> 1 (before)", "one_to_one_whole")
    };
    let m = measure(label, blob, &[fetch]).await;
    shutdown(vec![a, b]).await;
    m
}

/// `7 -> 1`: seven providers hold the blob; one ranged download pulls it from all of them.
async fn many_to_one(blob: &Arc<Vec<u8>>) -> Result<Measured> {
    let mut providers = Vec::new();
    for i in 0..FANOUT {
        providers.push(start(&format!("provider-{i}"), std::slice::from_ref(blob)).await?);
    }
    let fetcher = start("fetcher", &[]).await?;
    for p in &providers {
        connect(&fetcher.net, &p.net).await?;
    }
    let fetch = Fetch {
        by: &fetcher.net,
        from: providers[0].net.local_peer_id(),
        id: blob_id(blob),
        len: blob.len(),
        ranged: true,
    };
    let m = measure(("ranged 7 -> 1", "seven_to_one"), blob, &[fetch]).await;
    providers.push(fetcher);
    shutdown(providers).await;
    m
}

/// `1 -> 7`: seven nodes fetch the whole blob from one provider at once.
async fn one_to_many(blob: &Arc<Vec<u8>>) -> Result<Measured> {
    let provider = start("provider", std::slice::from_ref(blob)).await?;
    let mut fetchers = Vec::new();
    for i in 0..FANOUT {
        let f = start(&format!("fetcher-{i}"), &[]).await?;
        connect(&f.net, &provider.net).await?;
        fetchers.push(f);
    }
    let fetches: Vec<Fetch<'_>> = fetchers
        .iter()
        .map(|f| Fetch {
            by: &f.net,
            from: provider.net.local_peer_id(),
            id: blob_id(blob),
            len: blob.len(),
            ranged: true,
        })
        .collect();
    let m = measure(
        ("ranged 1 -> 7 (aggregate)", "one_to_seven"),
        blob,
        &fetches,
    )
    .await;
    drop(fetches);
    fetchers.push(provider);
    shutdown(fetchers).await;
    m
}

/// Polls `cond` every 20 ms until it holds, for at most `timeout`. apiary-net emits no event
/// when a peer's topic subscription arrives, so readiness is read from the loop's own state:
/// this waits on a condition, never for a guessed duration.
async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        if Instant::now() >= deadline {
            bail!("{what} did not happen within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The nodes node `i` dials: its binary-tree parent and its predecessor.
fn neighbours(i: usize) -> Vec<usize> {
    let mut n = vec![(i - 1) / 2, i - 1];
    n.dedup();
    n
}

/// An announcement: the sequence number, then filler up to [`ANNOUNCEMENT_BYTES`].
fn announcement(seq: u64) -> Vec<u8> {
    let mut payload = seq.to_le_bytes().to_vec();
    payload.resize(ANNOUNCEMENT_BYTES, 0xa5);
    payload
}

fn seq_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Receipts: (receiving node, sequence number, when the receiver task saw it).
type Receipts = mpsc::UnboundedReceiver<(usize, u64, Instant)>;

/// Publishes announcement `seq` and waits until every other node received it, or `timeout`.
/// Returns each receiver's publish -> receipt latency in ms, or `None` when some node missed it.
async fn deliver(
    publisher: &NetHandle,
    seq: u64,
    receipts: &mut Receipts,
    timeout: Duration,
) -> Result<Option<Vec<f64>>> {
    let payload = announcement(seq);
    let t0 = Instant::now();
    publisher
        .publish(payload)
        .await
        .with_context(|| format!("publishing announcement {seq}"))?;
    let deadline = t0 + timeout;
    let mut got: HashMap<usize, f64> = HashMap::new();
    while got.len() < GOSSIP_NODES - 1 {
        match tokio::time::timeout_at(deadline.into(), receipts.recv()).await {
            Ok(Some((node, s, at))) if s == seq => {
                got.entry(node).or_insert((at - t0).as_secs_f64() * 1e3);
            }
            Ok(Some(_)) => {} // a late copy of an earlier probe or lost announcement
            Ok(None) => bail!("every receiver task stopped"),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(got.into_values().collect()))
}

/// Gossip results: latencies of delivered announcements (ms) and how many were not delivered
/// to every node within [`DELIVERY_WAIT`].
struct Gossip {
    latencies_ms: Vec<f64>,
    lost: u64,
    warmup_probes: usize,
}

async fn gossip() -> Result<Gossip> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..GOSSIP_NODES {
        let node = start(&format!("gossip-{i}"), &[]).await?;
        if i > 0 {
            for j in neighbours(i) {
                connect(&node.net, &nodes[j].net).await?;
            }
        }
        nodes.push(node);
    }
    // Every node must know that each of its peers subscribed before anything is published.
    for n in &nodes {
        wait_until(SETUP_WAIT, "topic subscriptions", || async {
            n.net.gossip_peers().await >= n.net.connected_peers().await.len()
        })
        .await?;
    }

    // One task per receiving node timestamps each gossip event the moment it is read.
    let (tx, mut receipts) = mpsc::unbounded_channel();
    let mut handles = Vec::new();
    for (i, node) in nodes.into_iter().enumerate() {
        let Node { net, mut events } = node;
        handles.push(net);
        if i == PUBLISHER {
            continue;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let NetEvent::Gossip { payload, .. } = event {
                    let at = Instant::now();
                    if let Some(seq) = seq_of(&payload) {
                        if tx.send((i, seq, at)).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    let publisher = &handles[PUBLISHER];

    // The mesh is grafted at heartbeats after the connections came up; measure only once
    // probes reach every node, several in a row.
    let (mut in_a_row, mut probes) = (0, 0);
    while in_a_row < WARMUP_DELIVERED {
        ensure!(
            probes < WARMUP_MAX_PROBES,
            "the gossip mesh did not deliver to all {} nodes after {probes} probes",
            GOSSIP_NODES - 1
        );
        let seq = PROBE_SEQ + probes as u64;
        probes += 1;
        match deliver(publisher, seq, &mut receipts, PROBE_WAIT).await? {
            Some(_) => in_a_row += 1,
            None => in_a_row = 0,
        }
    }

    let mut out = Gossip {
        latencies_ms: Vec::new(),
        lost: 0,
        warmup_probes: probes,
    };
    for seq in 0..ANNOUNCEMENTS {
        match deliver(publisher, seq, &mut receipts, DELIVERY_WAIT).await? {
            Some(ms) => out.latencies_ms.extend(ms),
            None => out.lost += 1,
        }
    }
    join_all(handles.iter().map(|h| h.shutdown())).await;
    Ok(out)
}

/// Checkpoint sizes a late joiner catches up on (bench 3).
const CATCH_UP_BYTES: [usize; 3] = [10_000_000, 100_000_000, 1_000_000_000];
/// Peers that hold the checkpoint when the joiner arrives.
const HOLDERS: usize = 4;
/// Block time of Bittensor's chain, for windows in chain time.
const CHAIN_BLOCK_SECS: f64 = 12.0;

/// One catch-up: a joiner downloads a checkpoint of `bytes` from [`HOLDERS`] peers into a
/// real RocksDB store (verified 1 MiB parts, as the node does when it catches up).
struct CatchUp {
    bytes: usize,
    secs: f64,
    providers: usize,
}

async fn catch_up(bytes: usize) -> Result<CatchUp> {
    let blob = Arc::new(random_bytes(
        bytes,
        &format!("apiary-bench checkpoint {bytes}"),
    ));
    let id = blob_id(&blob);
    let mut nodes = Vec::new();
    for i in 0..HOLDERS {
        nodes.push(start(&format!("holder-{i}"), std::slice::from_ref(&blob)).await?);
    }
    let joiner = start("joiner", &[]).await?;
    for h in &nodes {
        connect(&joiner.net, &h.net).await?;
    }
    let dir = tempfile::tempdir().context("temp dir for the joiner's store")?;
    let store = Store::open(&dir.path().join("db")).context("joiner store")?;
    let t0 = Instant::now();
    let report = joiner
        .net
        .download(
            id,
            &[],
            Arc::new(StoreBlobs(store.clone())),
            &DownloadOptions::default(),
        )
        .await
        .context("catch-up download")?;
    let secs = t0.elapsed().as_secs_f64();
    ensure!(
        store.blob_len(ContentId(id))? == Some(bytes as u64),
        "the joiner's store does not hold the checkpoint"
    );
    ensure!(
        store.outboard(ContentId(id))? == Some(Outboard::compute(&blob, PART_LOG)?),
        "the joiner's store holds another checkpoint"
    );
    nodes.push(joiner);
    shutdown(nodes).await;
    Ok(CatchUp {
        bytes,
        secs,
        providers: report.providers.len(),
    })
}

/// Median seconds of blake3 over the blob on one thread: the hash `fetch_blob` adds per blob.
fn blake3_secs(blob: &[u8]) -> f64 {
    let secs: Vec<f64> = (0..REPS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(blake3::hash(std::hint::black_box(blob)));
            start.elapsed().as_secs_f64()
        })
        .collect();
    median(&secs)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cfg = NetConfig::default();
    // The node's allocator cache, as `apiary` sets it from `node.alloc_cache_mb`.
    let cache_mb = apiary_config::NodeConfig::default().node.alloc_cache_mb;
    apiary_alloc::set_cache_limit(usize::try_from(cache_mb << 20).unwrap_or(usize::MAX));
    let blob_bytes = BLOB_BYTES.min(cfg.max_blob_bytes);
    let blob = Arc::new(random_bytes(blob_bytes, "apiary-bench transfer"));

    // `APIARY_TRANSFER_ONLY=ranged|seven` (for profiling) runs the ranged 1 -> 1 or 7 -> 1
    // scenario alone.
    if let Ok(only) = std::env::var("APIARY_TRANSFER_ONLY") {
        let m = match only.as_str() {
            "ranged" => one_to_one(&blob, true).await?,
            "seven" => many_to_one(&blob).await?,
            other => bail!("APIARY_TRANSFER_ONLY={other}: use ranged or seven"),
        };
        println!(
            "{}: {:.1} MB/s, TCP {:.1} MB/s",
            m.name,
            m.mbps(),
            m.tcp_mbps(blob_bytes)
        );
        return Ok(());
    }
    let runs = vec![
        one_to_one(&blob, false).await?,
        one_to_one(&blob, true).await?,
        many_to_one(&blob).await?,
        one_to_many(&blob).await?,
    ];
    let hash_secs = blake3_secs(&blob);
    let g = gossip().await?;
    let mut catch_ups = Vec::new();
    for bytes in CATCH_UP_BYTES {
        catch_ups.push(catch_up(bytes).await?);
    }

    println!("apiary-net transfers: 127.0.0.1, median of {REPS} runs, MB = 10^6 bytes");
    println!(
        "blob {blob_bytes} bytes ({} MiB; net.max_blob_bytes {}); TCP = one tokio stream of the \
         blob, measured before each run",
        blob_bytes >> 20,
        cfg.max_blob_bytes
    );
    println!();
    println!(
        "{:<28} {:>12} {:>9} {:>9} {:>9} {:>8}",
        "scenario", "bytes/run", "median s", "MB/s", "TCP MB/s", "vs TCP"
    );
    let mut json_runs = serde_json::Map::new();
    for m in &runs {
        let (mbps, tcp) = (m.mbps(), m.tcp_mbps(blob_bytes));
        println!(
            "{:<28} {:>12} {:>9.3} {:>9.1} {:>9.1} {:>7.3}x",
            m.name,
            m.bytes_per_run,
            median(&m.secs),
            mbps,
            tcp,
            mbps / tcp
        );
        json_runs.insert(
            m.key.to_string(),
            json!({
                "bytes_per_run": m.bytes_per_run,
                "secs": m.secs,
                "tcp_secs": m.tcp_secs,
                "mb_per_s": mbps,
                "tcp_mb_per_s": tcp,
                "ratio_vs_tcp": mbps / tcp,
            }),
        );
    }
    let hash_mbps = blob_bytes as f64 / hash_secs / MB;
    println!(
        "{:<28} {:>12} {:>9.3} {:>9.1}   (context: the hash fetch_blob adds)",
        "blake3, 1 thread", blob_bytes, hash_secs, hash_mbps
    );

    let mut lat = g.latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    ensure!(!lat.is_empty(), "no announcement reached every node");
    let (p50, p99, max) = (
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat[lat.len() - 1],
    );
    println!();
    println!(
        "gossip: {GOSSIP_NODES} nodes (tree + predecessor dials), publisher node {PUBLISHER}, \
         {ANNOUNCEMENTS} x {ANNOUNCEMENT_BYTES}-byte announcements, heartbeat {} ms, \
         {} warm-up probes",
        cfg.heartbeat_ms, g.warmup_probes
    );
    println!(
        "publish -> receipt over {} samples: p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.2} ms  \
         (lost: {})",
        lat.len(),
        g.lost
    );

    let defaults = apiary_config::NodeConfig::default();
    let window_secs =
        defaults.chain.blocks_per_window as f64 * defaults.chain.block_time_ms as f64 / 1e3;
    let chain_window_secs = defaults.chain.blocks_per_window as f64 * CHAIN_BLOCK_SECS;
    println!();
    println!(
        "catch-up: a joiner downloads the checkpoint from {HOLDERS} holders into a RocksDB \
         store; windows of {window_secs} s (config default: {} blocks x {} ms) and of \
         {chain_window_secs} s ({} blocks of {CHAIN_BLOCK_SECS} s)",
        defaults.chain.blocks_per_window,
        defaults.chain.block_time_ms,
        defaults.chain.blocks_per_window
    );
    println!(
        "{:>14} {:>9} {:>9} {:>10} {:>14} {:>14}",
        "checkpoint", "seconds", "MB/s", "providers", "windows (dev)", "windows (12s)"
    );
    let mut json_catch = Vec::new();
    for c in &catch_ups {
        println!(
            "{:>11} MB {:>9.2} {:>9.1} {:>10} {:>14.2} {:>14.3}",
            c.bytes / 1_000_000,
            c.secs,
            c.bytes as f64 / c.secs / MB,
            c.providers,
            c.secs / window_secs,
            c.secs / chain_window_secs
        );
        json_catch.push(json!({
            "bytes": c.bytes,
            "secs": c.secs,
            "providers": c.providers,
            "windows_dev": c.secs / window_secs,
            "windows_12s_blocks": c.secs / chain_window_secs,
        }));
    }

    let line = json!({
        "bench": "transfer",
        "catch_up": json_catch,
        "blob_bytes": blob_bytes,
        "reps": REPS,
        "transfer": json_runs,
        "blake3_mb_per_s": hash_mbps,
        "gossip": {
            "nodes": GOSSIP_NODES,
            "announcements": ANNOUNCEMENTS,
            "samples": lat.len(),
            "lost": g.lost,
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": max,
        },
    });
    println!("{line}");
    Ok(())
}
