//! Counters of what the network layer did, shared between the event loop and the handles.

use std::sync::atomic::{AtomicU64, Ordering};

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
