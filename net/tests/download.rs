//! Ranged, verified downloads from many providers over real TCP sockets on 127.0.0.1: several
//! providers at once, a provider killed mid-transfer, a provider that corrupts a group, a
//! download resumed after every provider left, providers found through the DHT.
//!
//! Every wait is bounded and driven by observable state (counters, progress, peer lists).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use apiary_chain::keys::Hotkey;
use apiary_net::{
    spawn, BlobProvider, DownloadOptions, Keypair, MemorySink, Multiaddr, NetError, NetHandle,
    NetParams, Outboard, PeerId, StoreBlobs, PART_LOG,
};
use apiary_storage::{ContentId, Store};
use libp2p::multiaddr::Protocol;

const WAIT: Duration = Duration::from_secs(20);
const GROUP: usize = 1 << PART_LOG;

/// Pseudo-random bytes (xorshift), different per `seed`.
fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Holds one blob with its outboard; can be slowed down, and can corrupt what it serves.
struct Holder {
    id: [u8; 32],
    bytes: Vec<u8>,
    outboard: Outboard,
    /// Range reads served.
    reads: AtomicU64,
    /// Sleep this long in every range read (lets a test act while ranges are in flight).
    delay: Duration,
    /// Flip a byte of every range served.
    corrupt: AtomicBool,
}

impl Holder {
    fn new(bytes: Vec<u8>, delay: Duration) -> Arc<Self> {
        Arc::new(Holder {
            id: *blake3::hash(&bytes).as_bytes(),
            outboard: Outboard::compute(&bytes, PART_LOG).expect("outboard"),
            bytes,
            reads: AtomicU64::new(0),
            delay,
            corrupt: AtomicBool::new(false),
        })
    }
}

impl BlobProvider for Holder {
    fn get_blob(&self, id: &[u8; 32]) -> Option<Vec<u8>> {
        (*id == self.id).then(|| self.bytes.clone())
    }

    fn outboard(&self, id: &[u8; 32]) -> Option<Outboard> {
        (*id == self.id).then(|| self.outboard.clone())
    }

    fn get_range(&self, id: &[u8; 32], offset: u64, len: u64) -> Option<Vec<u8>> {
        if *id != self.id {
            return None;
        }
        std::thread::sleep(self.delay);
        self.reads.fetch_add(1, Ordering::Relaxed);
        let start = usize::try_from(offset).ok()?;
        let mut out = self
            .bytes
            .get(start..start + usize::try_from(len).ok()?)?
            .to_vec();
        if self.corrupt.load(Ordering::Relaxed) {
            if let Some(b) = out.last_mut() {
                *b ^= 0x5a;
            }
        }
        Some(out)
    }
}

/// Holds nothing.
struct Nothing;

impl BlobProvider for Nothing {
    fn get_blob(&self, _: &[u8; 32]) -> Option<Vec<u8>> {
        None
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start(label: &str, blobs: Arc<dyn BlobProvider>, bootstrap: Vec<Multiaddr>) -> NetHandle {
    init_tracing();
    let mut p = NetParams::new(
        "/ip4/127.0.0.1/tcp/0".parse().expect("listen addr"),
        Keypair::generate_ed25519(),
        Hotkey::from_dev_label(label),
        7,
    );
    p.bootstrap = bootstrap;
    p.heartbeat = Duration::from_millis(100);
    p.request_timeout = Duration::from_secs(10);
    let (net, _events) = spawn(p, blobs).await.expect("network starts");
    net
}

async fn addr_of(net: &NetHandle) -> Multiaddr {
    let addr = net.listen_addrs().await.first().cloned().expect("listens");
    addr.with(Protocol::P2p(net.local_peer_id()))
}

/// Waits (bounded) until `net` is connected to every one of `peers`.
async fn connected(net: &NetHandle, peers: &[PeerId]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = net.connected_peers().await;
        if peers.iter().all(|p| now.contains(p)) {
            return;
        }
        assert!(Instant::now() < deadline, "peers did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fetcher dialed to every provider.
async fn fetcher_of(providers: &[&NetHandle]) -> NetHandle {
    let mut boot = Vec::new();
    for p in providers {
        boot.push(addr_of(p).await);
    }
    let net = start("fetcher", Arc::new(Nothing), boot).await;
    let ids: Vec<PeerId> = providers.iter().map(|p| p.local_peer_id()).collect();
    connected(&net, &ids).await;
    net
}

fn opts(range_groups: u32) -> DownloadOptions {
    DownloadOptions {
        range_groups,
        ..DownloadOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_from_several_providers_and_verifies_every_group() {
    let bytes = blob(12 * GROUP + 777, 1);
    let holder = Holder::new(bytes.clone(), Duration::ZERO);
    let id = holder.id;
    let mut provs = Vec::new();
    for i in 0..3 {
        provs.push(start(&format!("p{i}"), holder.clone(), vec![]).await);
    }
    let fetcher = fetcher_of(&provs.iter().collect::<Vec<_>>()).await;
    let sink = Arc::new(MemorySink::default());
    let report = fetcher
        .download(id, &[], sink.clone(), &opts(1))
        .await
        .expect("download");
    assert_eq!(sink.take(&id).expect("bytes"), bytes);
    assert_eq!(report.len, bytes.len() as u64);
    assert_eq!(report.fetched_bytes, bytes.len() as u64);
    assert_eq!(report.bad_ranges, 0);
    assert!(
        report.providers.len() >= 2,
        "ranges should come from several providers: {:?}",
        report.providers
    );
    let s = fetcher.stats().snapshot();
    assert_eq!(s.ranges_fetched, 13);
    assert_eq!(s.downloads_completed, 1);
    assert!(
        fetcher.downloads().is_empty(),
        "finished downloads leave the list"
    );

    // A blob of one group comes inline with its outboard: one request.
    let small = blob(5000, 2);
    let small_holder = Holder::new(small.clone(), Duration::ZERO);
    let p = start("small", small_holder.clone(), vec![]).await;
    let f = fetcher_of(&[&p]).await;
    let report = f
        .download(small_holder.id, &[], sink.clone(), &opts(4))
        .await
        .expect("small download");
    assert_eq!(report.len, 5000);
    assert_eq!(sink.take(&small_holder.id).expect("bytes"), small);
    assert_eq!(small_holder.reads.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_mid_transfer_leaves_the_rest_to_the_others() {
    let bytes = blob(24 * GROUP, 3);
    // Slow enough that the doomed provider has ranges in flight when it dies.
    let doomed_holder = Holder::new(bytes.clone(), Duration::from_millis(40));
    let other_holder = Holder::new(bytes.clone(), Duration::from_millis(10));
    let id = doomed_holder.id;
    let doomed = start("doomed", doomed_holder.clone(), vec![]).await;
    let a = start("a", other_holder.clone(), vec![]).await;
    let b = start("b", other_holder.clone(), vec![]).await;
    let fetcher = fetcher_of(&[&doomed, &a, &b]).await;
    let sink = Arc::new(MemorySink::default());
    let task = {
        let (f, s) = (fetcher.clone(), sink.clone());
        let hints = vec![doomed.local_peer_id()];
        tokio::spawn(async move { f.download(id, &hints, s, &opts(1)).await })
    };
    // Kill it once it served something and the download is under way.
    let deadline = Instant::now() + WAIT;
    while doomed_holder.reads.load(Ordering::Relaxed) < 2 {
        assert!(
            Instant::now() < deadline,
            "the doomed provider was never asked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let progress = fetcher.downloads();
    assert_eq!(progress.len(), 1, "the download is listed while in flight");
    assert_eq!(progress[0].total_bytes, bytes.len() as u64);
    doomed.shutdown().await;

    let report = task.await.expect("join").expect("download completes");
    assert_eq!(sink.take(&id).expect("bytes"), bytes);
    let served_by_doomed = report
        .providers
        .iter()
        .find(|(p, _)| *p == doomed.local_peer_id())
        .map_or(0, |(_, n)| *n);
    assert!(
        served_by_doomed < bytes.len() as u64,
        "the others served the rest"
    );
    assert!(
        report.retries > 0,
        "ranges in flight at the dead provider were asked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_group_is_caught_on_arrival_reported_and_fetched_elsewhere() {
    let bytes = blob(10 * GROUP + 3, 4);
    let liar_holder = Holder::new(bytes.clone(), Duration::from_millis(5));
    liar_holder.corrupt.store(true, Ordering::Relaxed);
    let honest_holder = Holder::new(bytes.clone(), Duration::from_millis(5));
    let id = liar_holder.id;
    let liar = start("liar", liar_holder.clone(), vec![]).await;
    let honest = start("honest", honest_holder, vec![]).await;
    let fetcher = fetcher_of(&[&liar, &honest]).await;
    // Into a real RocksDB store, as the node downloads: verified parts only.
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(&dir.path().join("db")).expect("store");
    let report = fetcher
        .download(
            id,
            &[liar.local_peer_id()],
            Arc::new(StoreBlobs(store.clone())),
            &opts(2),
        )
        .await
        .expect("download completes from the honest provider");
    assert_eq!(
        store.get_blob(ContentId(id)).expect("read").expect("held"),
        bytes,
        "nothing bad stored"
    );
    assert_eq!(
        store.outboard(ContentId(id)).expect("read"),
        Some(Outboard::compute(&bytes, PART_LOG).expect("outboard"))
    );
    assert!(report.bad_ranges >= 1, "the liar was asked and caught");
    assert!(liar_holder.reads.load(Ordering::Relaxed) >= 1);
    assert!(fetcher.stats().snapshot().bad_ranges >= 1);
    // Reported to peer scoring: serving bytes that do not match their hash bans at once.
    let deadline = Instant::now() + WAIT;
    loop {
        let standings = fetcher.standings().await;
        if standings
            .iter()
            .any(|s| s.peer == liar.local_peer_id() && s.banned.is_some())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the liar was not banned: {standings:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_from_what_it_holds() {
    let bytes = blob(16 * GROUP, 5);
    let first_holder = Holder::new(bytes.clone(), Duration::from_millis(30));
    let id = first_holder.id;
    let first = start("first", first_holder.clone(), vec![]).await;
    let fetcher = fetcher_of(&[&first]).await;
    let sink = Arc::new(MemorySink::default());
    let no_dht = DownloadOptions {
        range_groups: 1,
        per_provider: 2,
        use_dht: false,
        ..DownloadOptions::default()
    };
    let task = {
        let (f, s, o) = (fetcher.clone(), sink.clone(), no_dht.clone());
        tokio::spawn(async move { f.download(id, &[], s, &o).await })
    };
    // Interrupt it once three groups are held.
    let deadline = Instant::now() + WAIT;
    while fetcher
        .downloads()
        .first()
        .is_none_or(|d| d.done_bytes < 3 * GROUP as u64)
    {
        assert!(Instant::now() < deadline, "the download made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.shutdown().await;
    let err = task.await.expect("join").expect_err("no provider is left");
    assert!(matches!(err, NetError::Unavailable { .. }), "{err}");

    // Another provider appears; the same sink resumes.
    let second_holder = Holder::new(bytes.clone(), Duration::ZERO);
    let second = start("second", second_holder.clone(), vec![]).await;
    fetcher.dial(addr_of(&second).await).await.expect("dial");
    let report = fetcher
        .download(id, &[second.local_peer_id()], sink.clone(), &no_dht)
        .await
        .expect("resumed download");
    assert!(report.resumed_groups >= 3, "{report:?}");
    assert_eq!(
        report.fetched_bytes + report.resumed_groups * GROUP as u64,
        bytes.len() as u64
    );
    assert_eq!(sink.take(&id).expect("bytes"), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_through_the_dht() {
    let bytes = blob(3 * GROUP, 6);
    let holder = Holder::new(bytes.clone(), Duration::ZERO);
    let id = holder.id;
    let hub = start("hub", Arc::new(Nothing), vec![]).await;
    let hub_addr = addr_of(&hub).await;
    let provider = start("provider", holder, vec![hub_addr.clone()]).await;
    connected(&hub, &[provider.local_peer_id()]).await;
    provider.provide(id);
    // The record reaches the hub (the provider's only DHT peer).
    let deadline = Instant::now() + WAIT;
    while !hub
        .find_providers(id)
        .await
        .contains(&provider.local_peer_id())
    {
        assert!(
            Instant::now() < deadline,
            "the provider record never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fetcher that knows only the hub finds the provider and downloads from it.
    let fetcher = start("seeker", Arc::new(Nothing), vec![hub_addr]).await;
    connected(&fetcher, &[hub.local_peer_id()]).await;
    let sink = Arc::new(MemorySink::default());
    let report = fetcher
        .download(id, &[], sink.clone(), &opts(2))
        .await
        .expect("download via the DHT");
    assert_eq!(report.providers.len(), 1);
    assert_eq!(report.providers[0].0, provider.local_peer_id());
    assert_eq!(sink.take(&id).expect("bytes"), bytes);
    // It now provides the blob itself.
    let deadline = Instant::now() + WAIT;
    while !hub
        .find_providers(id)
        .await
        .contains(&fetcher.local_peer_id())
    {
        assert!(
            Instant::now() < deadline,
            "the fetcher's record never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
