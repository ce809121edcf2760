//! End-to-end tests of apiary-net over real TCP sockets on 127.0.0.1.
//!
//! Every wait is bounded and driven by observable state (events, counters, peer lists); no test
//! sleeps and hopes.

use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use apiary_chain::keys::{Hotkey, HotkeyId};
use apiary_net::{
    spawn, BlobProvider, Keypair, Multiaddr, NetError, NetEvent, NetHandle, NetParams, PeerId,
    SignedEnvelope,
};
use libp2p::multiaddr::Protocol;
use tokio::sync::mpsc;

const MAX_MSG: usize = 1024;
const WAIT: Duration = Duration::from_secs(10);

/// Serves blobs from a map.
struct MapProvider(HashMap<[u8; 32], Vec<u8>>);

impl BlobProvider for MapProvider {
    fn get_blob(&self, id: &[u8; 32]) -> Option<Vec<u8>> {
        self.0.get(id).cloned()
    }
}

/// Serves the same wrong bytes for every id.
struct LyingProvider;

impl BlobProvider for LyingProvider {
    fn get_blob(&self, _id: &[u8; 32]) -> Option<Vec<u8>> {
        Some(b"these are not the bytes you are looking for".to_vec())
    }
}

fn empty() -> Arc<dyn BlobProvider> {
    Arc::new(MapProvider(HashMap::new()))
}

struct Node {
    net: NetHandle,
    events: mpsc::Receiver<NetEvent>,
    hotkey: Hotkey,
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn params(label: &str, bootstrap: Vec<Multiaddr>) -> NetParams {
    let mut p = NetParams::new(
        "/ip4/127.0.0.1/tcp/0".parse().expect("listen addr"),
        Keypair::generate_ed25519(),
        Hotkey::from_dev_label(label),
        7,
    );
    p.bootstrap = bootstrap;
    p.max_message_bytes = MAX_MSG;
    p.max_blob_bytes = 1 << 20;
    p.heartbeat = Duration::from_millis(100);
    p.request_timeout = Duration::from_secs(5);
    p.event_buffer = 64;
    p
}

async fn start_with(p: NetParams, blobs: Arc<dyn BlobProvider>) -> Node {
    init_tracing();
    let hotkey = p.hotkey.clone();
    let (net, events) = spawn(p, blobs).await.expect("network starts");
    Node {
        net,
        events,
        hotkey,
    }
}

async fn start(label: &str, blobs: Arc<dyn BlobProvider>, bootstrap: Vec<Multiaddr>) -> Node {
    start_with(params(label, bootstrap), blobs).await
}

/// A dialable address of `node`, including its `/p2p` suffix.
async fn addr_of(node: &Node) -> Multiaddr {
    let addrs = node.net.listen_addrs().await;
    let addr = addrs.first().cloned().expect("node listens");
    assert!(
        !addr.to_string().ends_with("/tcp/0"),
        "listen_addrs must report the bound port, got {addr}"
    );
    addr.with(Protocol::P2p(node.net.local_peer_id()))
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next gossip event, skipping connection events.
async fn next_gossip(events: &mut mpsc::Receiver<NetEvent>) -> (PeerId, HotkeyId, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(NetEvent::Gossip {
                from,
                hotkey,
                payload,
                ..
            })) => return (from, hotkey, payload),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event channel closed"),
            Err(_) => panic!("no gossip event within {WAIT:?}"),
        }
    }
}

/// Publishes, retrying (bounded) while gossipsub has not yet learnt the peer's subscription.
async fn publish_retrying<F, Fut>(mut publish: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), NetError>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match publish().await {
            Ok(()) => return,
            Err(NetError::NoPeers) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("publish failed: {e}"),
        }
    }
}

/// A listens; B bootstraps to A. Returns once they are connected and see each other on the
/// topic.
async fn pair() -> (Node, Node) {
    let a = start("alice", empty(), vec![]).await;
    let b = start("bob", empty(), vec![addr_of(&a).await]).await;
    connected_on_topic(&a, &b).await;
    (a, b)
}

async fn connected_on_topic(a: &Node, b: &Node) {
    let (ida, idb) = (a.net.local_peer_id(), b.net.local_peer_id());
    assert!(
        wait_until(WAIT, || async {
            a.net.connected_peers().await.contains(&idb)
                && b.net.connected_peers().await.contains(&ida)
                && a.net.gossip_peers().await >= 1
                && b.net.gossip_peers().await >= 1
        })
        .await,
        "nodes did not connect and subscribe in time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_roundtrip_carries_hotkey_and_payload() {
    let (mut a, mut b) = pair().await;

    // Both sides saw the connection.
    let deadline = Instant::now() + WAIT;
    let mut saw = false;
    while !saw {
        match tokio::time::timeout_at(deadline.into(), a.events.recv()).await {
            Ok(Some(NetEvent::PeerConnected(p))) => saw = p == b.net.local_peer_id(),
            Ok(Some(_)) => {}
            other => panic!("no PeerConnected on A: {other:?}"),
        }
    }

    let payload = b"announce: checkpoint 42".to_vec();
    publish_retrying(|| b.net.publish(payload.clone())).await;
    let (from, hotkey, got) = next_gossip(&mut a.events).await;
    assert_eq!(from, b.net.local_peer_id());
    assert_eq!(hotkey, b.hotkey.id());
    assert_eq!(got, payload);
    assert_eq!(b.net.stats().snapshot().gossip_published, 1);
    assert_eq!(a.net.stats().snapshot().gossip_received, 1);

    // And the other way round.
    publish_retrying(|| a.net.publish(b"from alice".to_vec())).await;
    let (from, hotkey, got) = next_gossip(&mut b.events).await;
    assert_eq!(from, a.net.local_peer_id());
    assert_eq!(hotkey, a.hotkey.id());
    assert_eq!(got, b"from alice");

    // Oversize payloads are refused locally, before signing.
    assert!(matches!(
        b.net.publish(vec![0u8; MAX_MSG + 1]).await,
        Err(NetError::Oversize { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_is_counted_and_not_delivered() {
    let (mut a, b) = pair().await;

    // Signed by bob, then tampered with.
    let mut forged = SignedEnvelope::sign(&b.hotkey, &b.net.subnet_tag(), b"original".to_vec());
    forged.payload = b"tampered".to_vec();
    publish_retrying(|| b.net.publish_envelope(forged.clone())).await;
    // Claims alice's hotkey but is signed by bob.
    let mut impostor = SignedEnvelope::sign(&b.hotkey, &b.net.subnet_tag(), b"i am alice".to_vec());
    impostor.hotkey = a.hotkey.id();
    publish_retrying(|| b.net.publish_envelope(impostor.clone())).await;
    // Then a good one: it must be the first gossip A delivers.
    publish_retrying(|| b.net.publish(b"honest".to_vec())).await;

    let (_, hotkey, payload) = next_gossip(&mut a.events).await;
    assert_eq!(payload, b"honest");
    assert_eq!(hotkey, b.hotkey.id());
    let stats = a.net.stats().snapshot();
    assert_eq!(stats.bad_signature, 2, "{stats:?}");
    assert_eq!(stats.gossip_received, 1, "{stats:?}");
    assert_eq!(stats.malformed, 0);
    assert_eq!(stats.oversize, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_gossip_is_counted_and_not_delivered() {
    let (mut a, b) = pair().await;

    publish_retrying(|| b.net.publish_raw(vec![0xAB; 2 * MAX_MSG])).await;
    // An envelope whose payload is over the limit but whose framing fits the raw check.
    let big = SignedEnvelope::sign(&b.hotkey, &b.net.subnet_tag(), vec![1u8; MAX_MSG + 50]);
    publish_retrying(|| b.net.publish_envelope(big.clone())).await;
    publish_retrying(|| b.net.publish(b"small".to_vec())).await;

    let (_, _, payload) = next_gossip(&mut a.events).await;
    assert_eq!(payload, b"small");
    let stats = a.net.stats().snapshot();
    assert_eq!(stats.oversize, 2, "{stats:?}");
    assert_eq!(stats.malformed, 0, "{stats:?}");
    assert_eq!(stats.bad_signature, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_gossip_is_counted_and_not_delivered() {
    let (mut a, b) = pair().await;

    publish_retrying(|| b.net.publish_raw(b"this is not an envelope".to_vec())).await;
    let mut trailing = SignedEnvelope::sign(&b.hotkey, &b.net.subnet_tag(), b"x".to_vec()).encode();
    trailing.extend_from_slice(b"junk");
    publish_retrying(|| b.net.publish_raw(trailing.clone())).await;
    publish_retrying(|| b.net.publish(b"well formed".to_vec())).await;

    let (_, _, payload) = next_gossip(&mut a.events).await;
    assert_eq!(payload, b"well formed");
    let stats = a.net.stats().snapshot();
    assert_eq!(stats.malformed, 2, "{stats:?}");
    assert_eq!(stats.oversize, 0, "{stats:?}");
    assert_eq!(stats.gossip_received, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_fetch_verifies_hashes() {
    let blob = (0..200_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>();
    let id = *blake3::hash(&blob).as_bytes();
    let mut map = HashMap::new();
    map.insert(id, blob.clone());
    let a = start("alice", Arc::new(MapProvider(map)), vec![]).await;
    let b = start("bob", empty(), vec![addr_of(&a).await]).await;
    let liar = start("mallory", Arc::new(LyingProvider), vec![]).await;
    let ida = a.net.local_peer_id();
    let idl = liar.net.local_peer_id();
    assert!(
        wait_until(WAIT, || async {
            b.net.connected_peers().await.contains(&ida)
        })
        .await,
        "B did not connect to A"
    );

    // The real blob.
    let got = b.net.fetch_blob(ida, id).await.expect("fetch from A");
    assert_eq!(got, blob);

    // An id nobody has.
    let unknown = *blake3::hash(b"nobody has this").as_bytes();
    match b.net.fetch_blob(ida, unknown).await {
        Err(NetError::NotFound { peer, id: missing }) => {
            assert_eq!(peer, ida);
            assert_eq!(missing, unknown);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }

    // A provider serving wrong bytes; B learns its address and dials it on demand.
    let liar_addr = liar.net.listen_addrs().await[0].clone();
    b.net
        .add_peer_address(idl, liar_addr)
        .await
        .expect("address accepted");
    match b.net.fetch_blob(idl, id).await {
        Err(NetError::HashMismatch {
            peer, id: wanted, ..
        }) => {
            assert_eq!(peer, idl);
            assert_eq!(wanted, id);
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }

    // fetch_blob_any skips the liar and lands on A.
    let (bytes, from) = b
        .net
        .fetch_blob_any(id, &[idl, ida])
        .await
        .expect("some provider serves it");
    assert_eq!(bytes, blob);
    assert_eq!(from, ida);
    // Nobody has `unknown`.
    assert!(matches!(
        b.net.fetch_blob_any(unknown, &[ida]).await,
        Err(NetError::Unavailable { .. })
    ));

    let sb = b.net.stats().snapshot();
    // The liar was asked once: serving bytes that do not match their id banned it at once,
    // so fetch_blob_any could not reach it again.
    assert_eq!(sb.bad_blob_hash, 1, "{sb:?}");
    assert_eq!(sb.peers_banned, 1, "{sb:?}");
    assert_eq!(sb.blobs_fetched, 2, "{sb:?}");
    assert!(sb.bytes_received >= 2 * blob.len() as u64, "{sb:?}");
    let sa = a.net.stats().snapshot();
    assert_eq!(sa.blobs_served, 2, "{sa:?}");
    assert_eq!(sa.blob_requests_not_found, 2, "{sa:?}");
    assert_eq!(sa.bytes_sent, 2 * blob.len() as u64, "{sa:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_event_channel_drops_and_counts_instead_of_blocking() {
    let mut p = params("alice", vec![]);
    p.event_buffer = 1;
    let a = start_with(p, empty()).await;
    let b = start("bob", empty(), vec![addr_of(&a).await]).await;
    connected_on_topic(&a, &b).await;
    // A's channel already holds PeerConnected and nobody drains it.
    for i in 0..5u8 {
        publish_retrying(|| b.net.publish(vec![i; 10])).await;
    }
    assert!(
        wait_until(WAIT, || async {
            a.net.stats().snapshot().events_dropped >= 5
        })
        .await,
        "{:?}",
        a.net.stats().snapshot()
    );
    // The loop is still responsive.
    assert!(a
        .net
        .connected_peers()
        .await
        .contains(&b.net.local_peer_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_and_shutdown() {
    let mut a = start("alice", empty(), vec![]).await;
    let b = start("bob", empty(), vec![]).await;
    let addr = addr_of(&a).await;
    b.net.dial(addr).await.expect("dial succeeds");
    assert!(b
        .net
        .connected_peers()
        .await
        .contains(&a.net.local_peer_id()));
    // The dialer completes its handshake before the listener does; wait for A's side too.
    let idb = b.net.local_peer_id();
    assert!(
        wait_until(WAIT, || async {
            a.net.connected_peers().await.contains(&idb)
        })
        .await,
        "A did not see B's connection"
    );

    // A dial to a closed port fails with an error instead of hanging.
    let dead: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().expect("addr");
    assert!(matches!(b.net.dial(dead).await, Err(NetError::Dial { .. })));

    b.net.shutdown().await;
    assert!(matches!(
        b.net.publish(b"late".to_vec()).await,
        Err(NetError::Shutdown)
    ));
    assert!(b.net.listen_addrs().await.is_empty());
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline.into(), a.events.recv()).await {
            Ok(Some(NetEvent::PeerDisconnected(p))) if p == idb => break,
            Ok(Some(_)) => {}
            other => panic!("A never saw B disconnect: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_params_are_refused() {
    let mut p = params("alice", vec![]);
    p.event_buffer = 0;
    assert!(matches!(spawn(p, empty()).await, Err(NetError::Config(_))));
    let mut p = params("alice", vec![]);
    p.listen = "/ip4/127.0.0.1/udp/0".parse().expect("addr");
    assert!(matches!(
        spawn(p, empty()).await,
        Err(NetError::Listen { .. })
    ));
}
