//! Counters of what the network layer did, shared between the event loop and the handles.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Live counters. Updated with relaxed atomics; read them through [`NetStats::snapshot`].
#[derive(Debug, Default)]
pub struct NetStats {
    /// Gossip messages this node published successfully.
    pub gossip_published: AtomicU64,
    /// Gossip messages received that passed the size, decoding and signature checks.
    pub gossip_received: AtomicU64,
    /// Gossip envelopes whose hotkey signature did not verify.
    pub bad_signature: AtomicU64,
    /// Gossip messages larger than `max_message_bytes` (plus envelope overhead).
    pub oversize: AtomicU64,
    /// Gossip messages that were not a well-formed envelope.
    pub malformed: AtomicU64,
    /// Events dropped because the application's event channel was full or closed.
    pub events_dropped: AtomicU64,
    /// Blob requests answered with the blob's bytes.
    pub blobs_served: AtomicU64,
    /// Blob requests for ids the local provider did not have.
    pub blob_requests_not_found: AtomicU64,
    /// Blobs fetched from peers whose blake3 hash matched the requested id.
    pub blobs_fetched: AtomicU64,
    /// Blobs fetched from peers whose bytes did not hash to the requested id.
    pub bad_blob_hash: AtomicU64,
    /// Blob payload bytes sent to peers.
    pub bytes_sent: AtomicU64,
    /// Blob payload bytes received from peers (verified or not).
    pub bytes_received: AtomicU64,
    /// Gossip messages the application refused (not relayed, sender penalised).
    pub gossip_rejected: AtomicU64,
    /// Gossip messages the application ignored (not relayed).
    pub gossip_ignored: AtomicU64,
    /// Gossip messages from hotkeys the application did not know (not relayed).
    pub gossip_unknown_hotkey: AtomicU64,
    /// Peers banned.
    pub peers_banned: AtomicU64,
    /// Blob requests refused: the peer's meter was empty or the node served its maximum at once.
    pub blob_requests_throttled: AtomicU64,
    /// Connections closed or refused because the peer is banned.
    pub connections_refused_banned: AtomicU64,
    /// Range requests answered (outboards and groups).
    pub ranges_served: AtomicU64,
    /// Ranges fetched from peers whose every group matched its hash.
    pub ranges_fetched: AtomicU64,
    /// Ranges (or outboards) fetched from peers that did not match their hashes: the sender
    /// was reported and the range fetched elsewhere.
    pub bad_ranges: AtomicU64,
    /// Blobs completed by the ranged downloader.
    pub downloads_completed: AtomicU64,
    /// Relays that accepted a reservation for this node (it is reachable through them).
    pub relay_reservations: AtomicU64,
    /// Connections to or from this node made through a relay.
    pub relayed_connections: AtomicU64,
    /// Circuits this node relayed between two other peers (relay service on).
    pub circuits_relayed: AtomicU64,
    /// Relayed connections upgraded to direct ones by hole punching.
    pub hole_punches_succeeded: AtomicU64,
    /// Hole punching attempts that failed (the connection stays relayed).
    pub hole_punches_failed: AtomicU64,
    /// Bytes of apiary's own protocols moved per peer (bounded, see [`PeerBytes`]).
    pub peer_bytes: PeerBytes,
}

/// A point-in-time copy of [`NetStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStatsSnapshot {
    /// See [`NetStats::gossip_published`].
    pub gossip_published: u64,
    /// See [`NetStats::gossip_received`].
    pub gossip_received: u64,
    /// See [`NetStats::bad_signature`].
    pub bad_signature: u64,
    /// See [`NetStats::oversize`].
    pub oversize: u64,
    /// See [`NetStats::malformed`].
    pub malformed: u64,
    /// See [`NetStats::events_dropped`].
    pub events_dropped: u64,
    /// See [`NetStats::blobs_served`].
    pub blobs_served: u64,
    /// See [`NetStats::blob_requests_not_found`].
    pub blob_requests_not_found: u64,
    /// See [`NetStats::blobs_fetched`].
    pub blobs_fetched: u64,
    /// See [`NetStats::bad_blob_hash`].
    pub bad_blob_hash: u64,
    /// See [`NetStats::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`NetStats::bytes_received`].
    pub bytes_received: u64,
    /// See [`NetStats::gossip_rejected`].
    pub gossip_rejected: u64,
    /// See [`NetStats::gossip_ignored`].
    pub gossip_ignored: u64,
    /// See [`NetStats::gossip_unknown_hotkey`].
    pub gossip_unknown_hotkey: u64,
    /// See [`NetStats::peers_banned`].
    pub peers_banned: u64,
    /// See [`NetStats::blob_requests_throttled`].
    pub blob_requests_throttled: u64,
    /// See [`NetStats::connections_refused_banned`].
    pub connections_refused_banned: u64,
    /// See [`NetStats::ranges_served`].
    #[serde(default)]
    pub ranges_served: u64,
    /// See [`NetStats::ranges_fetched`].
    #[serde(default)]
    pub ranges_fetched: u64,
    /// See [`NetStats::bad_ranges`].
    #[serde(default)]
    pub bad_ranges: u64,
    /// See [`NetStats::downloads_completed`].
    #[serde(default)]
    pub downloads_completed: u64,
    /// See [`NetStats::relay_reservations`].
    #[serde(default)]
    pub relay_reservations: u64,
    /// See [`NetStats::relayed_connections`].
    #[serde(default)]
    pub relayed_connections: u64,
    /// See [`NetStats::circuits_relayed`].
    #[serde(default)]
    pub circuits_relayed: u64,
    /// See [`NetStats::hole_punches_succeeded`].
    #[serde(default)]
    pub hole_punches_succeeded: u64,
    /// See [`NetStats::hole_punches_failed`].
    #[serde(default)]
    pub hole_punches_failed: u64,
}

/// Adds `n` to a counter and returns the new value.
pub(crate) fn bump(counter: &AtomicU64, n: u64) -> u64 {
    counter.fetch_add(n, Ordering::Relaxed).wrapping_add(n)
}

impl NetStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> NetStatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStatsSnapshot {
            gossip_published: r(&self.gossip_published),
            gossip_received: r(&self.gossip_received),
            bad_signature: r(&self.bad_signature),
            oversize: r(&self.oversize),
            malformed: r(&self.malformed),
            events_dropped: r(&self.events_dropped),
            blobs_served: r(&self.blobs_served),
            blob_requests_not_found: r(&self.blob_requests_not_found),
            blobs_fetched: r(&self.blobs_fetched),
            bad_blob_hash: r(&self.bad_blob_hash),
            bytes_sent: r(&self.bytes_sent),
            bytes_received: r(&self.bytes_received),
            gossip_rejected: r(&self.gossip_rejected),
            gossip_ignored: r(&self.gossip_ignored),
            gossip_unknown_hotkey: r(&self.gossip_unknown_hotkey),
            peers_banned: r(&self.peers_banned),
            blob_requests_throttled: r(&self.blob_requests_throttled),
            connections_refused_banned: r(&self.connections_refused_banned),
            ranges_served: r(&self.ranges_served),
            ranges_fetched: r(&self.ranges_fetched),
            bad_ranges: r(&self.bad_ranges),
            downloads_completed: r(&self.downloads_completed),
            relay_reservations: r(&self.relay_reservations),
            relayed_connections: r(&self.relayed_connections),
            circuits_relayed: r(&self.circuits_relayed),
            hole_punches_succeeded: r(&self.hole_punches_succeeded),
            hole_punches_failed: r(&self.hole_punches_failed),
        }
    }
}

/// Bytes moved with one peer (or with the peers folded into [`PeerBytesSnapshot::other`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Bytes received from the peer.
    pub bytes_in: u64,
    /// Bytes sent to the peer.
    pub bytes_out: u64,
}

impl Traffic {
    /// Bytes in both directions.
    pub fn total(&self) -> u64 {
        self.bytes_in.saturating_add(self.bytes_out)
    }

    fn add(&mut self, other: Traffic) {
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
    }
}

/// One tracked peer.
#[derive(Debug, Clone, Copy)]
struct PeerEntry {
    traffic: Traffic,
    /// Whether the peer had an open connection when last seen (eviction spares these).
    connected: bool,
}

/// Peers [`PeerBytes`] tracks by default.
pub const PEER_BYTES_CAP: usize = 256;

/// Bytes of apiary's own protocols moved per peer, bounded: peers come from the network, so
/// at most `cap` are tracked ([`PEER_BYTES_CAP`] by default). What is counted:
///
/// * **gossip in**: the data of every gossip message received, credited to the peer that
///   propagated it to us (whatever its validation outcome);
/// * **gossip out**: an approximation. Each message this node publishes counts its encoded
///   size (the signed envelope, without gossipsub's framing) once for every peer subscribed to
///   the topic when it is published (publishing floods to them). Messages relayed for others,
///   IHAVE/IWANT gossip, control messages and retransmissions are not counted;
/// * **`/apiary/blob/1` and `/apiary/range/1`**: the payload of requests (the 32-byte blob
///   id) and responses (the blob, the groups, the group hashes, the inline blob) sent and
///   received. Tags, lengths and transport framing are not counted.
///
/// When a new peer must be tracked and the map is full, the disconnected peer with the fewest
/// bytes is evicted and its bytes are folded into [`PeerBytesSnapshot::other`]; when every
/// tracked peer is connected, the new peer's bytes go to `other` instead. So the sum over the
/// peers and `other` never goes down.
#[derive(Debug)]
pub struct PeerBytes {
    cap: usize,
    inner: Mutex<PeerBytesInner>,
}

#[derive(Debug, Default)]
struct PeerBytesInner {
    peers: HashMap<PeerId, PeerEntry>,
    other: Traffic,
}

/// A point-in-time copy of [`PeerBytes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerBytesSnapshot {
    /// The tracked peers and their bytes, ordered by peer id.
    pub peers: Vec<(PeerId, Traffic)>,
    /// Bytes of the peers evicted from (or never admitted to) the map, all together.
    pub other: Traffic,
}

impl Default for PeerBytes {
    fn default() -> Self {
        Self::with_cap(PEER_BYTES_CAP)
    }
}

impl PeerBytes {
    /// A map tracking at most `cap` peers (at least one).
    pub fn with_cap(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Mutex::new(PeerBytesInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeerBytesInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `bytes_in` received from and `bytes_out` sent to `peer`. `connected` (whether the
    /// peer has an open connection now) is taken only when the peer is first tracked; after
    /// that the connection events own the flag ([`PeerBytes::set_connected`]).
    pub fn record(&self, peer: PeerId, bytes_in: u64, bytes_out: u64, connected: bool) {
        let add = Traffic {
            bytes_in,
            bytes_out,
        };
        let mut m = self.lock();
        let cap = self.cap;
        let inner = &mut *m;
        if let Some(e) = inner.peers.get_mut(&peer) {
            e.traffic.add(add);
            return;
        }
        if inner.peers.len() >= cap {
            let victim = inner
                .peers
                .iter()
                .filter(|(_, e)| !e.connected)
                .min_by_key(|(p, e)| (e.traffic.total(), **p))
                .map(|(p, _)| *p);
            match victim.and_then(|p| inner.peers.remove(&p)) {
                Some(evicted) => inner.other.add(evicted.traffic),
                None => {
                    inner.other.add(add);
                    return;
                }
            }
        }
        inner.peers.insert(
            peer,
            PeerEntry {
                traffic: add,
                connected,
            },
        );
    }

    /// Marks a tracked peer connected or disconnected (an untracked peer stays untracked).
    pub fn set_connected(&self, peer: &PeerId, connected: bool) {
        if let Some(e) = self.lock().peers.get_mut(peer) {
            e.connected = connected;
        }
    }

    /// Reads every peer's bytes.
    pub fn snapshot(&self) -> PeerBytesSnapshot {
        let m = self.lock();
        let mut peers: Vec<(PeerId, Traffic)> =
            m.peers.iter().map(|(p, e)| (*p, e.traffic)).collect();
        peers.sort_by_key(|(p, _)| *p);
        PeerBytesSnapshot {
            peers,
            other: m.other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(s: &PeerBytesSnapshot) -> Traffic {
        let mut t = s.other;
        for (_, x) in &s.peers {
            t.add(*x);
        }
        t
    }

    #[test]
    fn bytes_add_up_per_peer() {
        let m = PeerBytes::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        m.record(a, 10, 0, true);
        m.record(a, 5, 7, true);
        m.record(b, 0, 3, true);
        let s = m.snapshot();
        assert_eq!(s.peers.len(), 2);
        let get = |p: PeerId| s.peers.iter().find(|(q, _)| *q == p).map(|(_, t)| *t);
        assert_eq!(
            get(a),
            Some(Traffic {
                bytes_in: 15,
                bytes_out: 7
            })
        );
        assert_eq!(
            get(b),
            Some(Traffic {
                bytes_in: 0,
                bytes_out: 3
            })
        );
        assert_eq!(s.other, Traffic::default());
    }

    #[test]
    fn the_map_is_bounded_and_evicts_the_smallest_disconnected_peer() {
        let m = PeerBytes::with_cap(3);
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        // 100, 1 and 50 bytes; the second (1 byte) is the smallest but stays connected.
        m.record(peers[0], 100, 0, true);
        m.record(peers[1], 1, 0, true);
        m.record(peers[2], 20, 30, true);
        m.set_connected(&peers[0], false);
        m.set_connected(&peers[2], false);
        // A fourth peer evicts the disconnected one with the fewest bytes: the third.
        let d = PeerId::random();
        m.record(d, 0, 9, true);
        let s = m.snapshot();
        let tracked: Vec<PeerId> = s.peers.iter().map(|(p, _)| *p).collect();
        assert_eq!(s.peers.len(), 3);
        assert!(tracked.contains(&peers[0]) && tracked.contains(&peers[1]));
        assert!(tracked.contains(&d) && !tracked.contains(&peers[2]));
        assert_eq!(
            s.other,
            Traffic {
                bytes_in: 20,
                bytes_out: 30
            }
        );
        // Every tracked peer connected: a newcomer's bytes go to `other`, nobody is evicted.
        m.set_connected(&peers[0], true);
        let e = PeerId::random();
        m.record(e, 4, 0, true);
        let s2 = m.snapshot();
        assert_eq!(
            s2.peers.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            s.peers.iter().map(|(p, _)| *p).collect::<Vec<_>>()
        );
        assert_eq!(
            s2.other,
            Traffic {
                bytes_in: 24,
                bytes_out: 30
            }
        );
        // An evicted peer that comes back starts from zero, and the sum never goes down.
        m.set_connected(&peers[1], false);
        m.record(peers[2], 1, 1, true);
        let s3 = m.snapshot();
        assert_eq!(s3.peers.len(), 3);
        assert!(!s3.peers.iter().any(|(p, _)| *p == peers[1]));
        assert_eq!(
            s3.peers
                .iter()
                .find(|(p, _)| *p == peers[2])
                .map(|(_, t)| *t),
            Some(Traffic {
                bytes_in: 1,
                bytes_out: 1
            })
        );
        assert_eq!(
            total(&s3),
            Traffic {
                bytes_in: 100 + 1 + 20 + 4 + 1,
                bytes_out: 9 + 30 + 1
            }
        );
    }

    #[test]
    fn a_flood_of_peers_stays_within_the_cap() {
        let m = PeerBytes::with_cap(8);
        for i in 0..1000u64 {
            m.record(PeerId::random(), i, 1, false);
        }
        let s = m.snapshot();
        assert_eq!(s.peers.len(), 8);
        let t = total(&s);
        assert_eq!(t.bytes_in, (0..1000u64).sum::<u64>());
        assert_eq!(t.bytes_out, 1000);
        // The largest peers are the ones kept.
        assert!(s.peers.iter().all(|(_, t)| t.bytes_in >= 992), "{s:?}");
    }
}
