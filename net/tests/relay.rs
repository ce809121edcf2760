//! NAT traversal over 127.0.0.1: a node that nobody can dial (it has no listener of its own)
//! is reached through a circuit relay v2 run by a third node.
//!
//! The closest loopback setup to a node behind NAT: `hidden` listens only on a `/p2p-circuit`
//! address at the relay, so the only way in is through the relay; its own connections are all
//! outbound, as behind a NAT. Hole punching (DCUtR) needs real NATs or network namespaces and
//! is not exercised here.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use apiary_chain::keys::Hotkey;
use apiary_net::{spawn, BlobProvider, Keypair, Multiaddr, NetHandle, NetParams, PeerId, Protocol};

const WAIT: Duration = Duration::from_secs(20);

struct Nothing;

impl BlobProvider for Nothing {
    fn get_blob(&self, _: &[u8; 32]) -> Option<Vec<u8>> {
        None
    }
}

fn params(label: &str, listen: Multiaddr) -> NetParams {
    let mut p = NetParams::new(
        listen,
        Keypair::generate_ed25519(),
        Hotkey::from_dev_label(label),
        7,
    );
    p.heartbeat = Duration::from_millis(100);
    p.request_timeout = Duration::from_secs(10);
    p
}

async fn start(p: NetParams) -> NetHandle {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    spawn(p, Arc::new(Nothing)).await.expect("network starts").0
}

async fn wait_connected(net: &NetHandle, peer: PeerId) {
    let deadline = Instant::now() + WAIT;
    while !net.connected_peers().await.contains(&peer) {
        assert!(Instant::now() < deadline, "{peer} never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_listener_is_reached_through_a_relay() {
    let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("addr");
    let mut rp = params("relay", tcp.clone());
    rp.relay_server = true;
    let relay = start(rp).await;
    let relay_addr = relay.listen_addrs().await[0]
        .clone()
        .with(Protocol::P2p(relay.local_peer_id()));

    // Listens only through the relay: `spawn` returns once the relay accepted the reservation.
    let circuit = relay_addr.clone().with(Protocol::P2pCircuit);
    let hidden = start(params("hidden", circuit.clone())).await;
    let own = hidden.listen_addrs().await;
    assert!(!own.is_empty());
    assert!(
        own.iter()
            .all(|a| a.iter().any(|p| matches!(p, Protocol::P2pCircuit))),
        "the hidden node must have no direct listen address: {own:?}"
    );
    assert_eq!(hidden.stats().snapshot().relay_reservations, 1);

    // Another node dials it through the relay and is connected to it.
    let dialer = start(params("dialer", tcp)).await;
    let through = circuit.with(Protocol::P2p(hidden.local_peer_id()));
    dialer.dial(through).await.expect("dial through the relay");
    wait_connected(&dialer, hidden.local_peer_id()).await;
    wait_connected(&hidden, dialer.local_peer_id()).await;
    assert!(dialer.stats().snapshot().relayed_connections >= 1);
    assert!(relay.stats().snapshot().circuits_relayed >= 1);
    // Without the relay the hidden node is unreachable: a relay address that is not a relay
    // (the dialer itself) refuses.
    let not_a_relay = dialer.listen_addrs().await[0]
        .clone()
        .with(Protocol::P2p(dialer.local_peer_id()))
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(hidden.local_peer_id()));
    let other = start(params(
        "other",
        "/ip4/127.0.0.1/tcp/0".parse().expect("addr"),
    ))
    .await;
    assert!(other.dial(not_a_relay).await.is_err());
    assert_eq!(dialer.nat_status().await, "off (net.autonat)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_addresses_without_a_peer_id_are_refused() {
    let mut p = params("bad", "/ip4/127.0.0.1/tcp/0".parse().expect("addr"));
    p.relays = vec!["/ip4/127.0.0.1/tcp/4001".parse().expect("addr")];
    let err = spawn(p, Arc::new(Nothing)).await.expect_err("refused");
    assert!(err.to_string().contains("/p2p/"), "{err}");
}
