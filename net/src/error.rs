//! Errors of the network layer. Messages say what the operator or caller should do.

use libp2p::{Multiaddr, PeerId};

/// Errors returned by [`crate::spawn`] and [`crate::NetHandle`].
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A parameter in [`crate::NetParams`] is unusable.
    #[error("invalid network configuration: {0}; fix the net section of the node config")]
    Config(String),
    /// The libp2p transport or behaviour could not be built.
    #[error("could not set up libp2p: {0}; this is a bug or an unsupported platform, report it")]
    Setup(String),
    /// Listening on the configured address failed.
    #[error(
        "could not listen on {addr}: {reason}; pick a free port or another address (net.listen)"
    )]
    Listen {
        /// The address we tried to listen on.
        addr: Multiaddr,
        /// Why it failed.
        reason: String,
    },
    /// Dialing an address failed.
    #[error("could not dial {addr}: {reason}; check the address and that the peer is running")]
    Dial {
        /// The address dialed.
        addr: Multiaddr,
        /// Why it failed.
        reason: String,
    },
    /// No peer is subscribed to the announcement topic yet, so a publish reached nobody.
    #[error(
        "no peers are subscribed to the gossip topic yet; wait for peers to connect and retry"
    )]
    NoPeers,
    /// This exact message was published recently; gossipsub does not send it twice.
    #[error("this exact gossip message was already published recently; nothing was sent again")]
    Duplicate,
    /// Gossipsub refused the publish for another reason.
    #[error("gossip publish failed: {0}; retry later")]
    Publish(String),
    /// A message or payload exceeds its size limit.
    #[error("message of {size} bytes exceeds the {limit}-byte limit; send less or raise net.max_message_bytes on every node")]
    Oversize {
        /// The offending size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// Bytes are not a well-formed gossip envelope.
    #[error("malformed gossip envelope: {0}; the sender runs an incompatible or faulty version")]
    Malformed(String),
    /// The peer does not have the requested blob.
    #[error("peer {peer} does not have blob {}; ask another provider", hex::encode(.id))]
    NotFound {
        /// The peer asked.
        peer: PeerId,
        /// The blob id (blake3 of its bytes).
        id: [u8; 32],
    },
    /// The peer served bytes that do not hash to the requested id (the hash they did have is
    /// logged at warn).
    #[error("peer {peer} served bytes for blob {} that do not hash to it; the peer is faulty, fetch from another provider", hex::encode(.id))]
    HashMismatch {
        /// The peer that served the bytes.
        peer: PeerId,
        /// The blob id requested.
        id: [u8; 32],
    },
    /// The peer has the blob but it exceeds its response size limit.
    #[error("peer {peer} has the blob but it is {size} bytes, over its net.max_blob_bytes; raise the limit on both nodes")]
    BlobTooLarge {
        /// The peer asked.
        peer: PeerId,
        /// The blob's size in bytes.
        size: u64,
    },
    /// A blob request failed in transport (dial failure, timeout, closed connection, ...).
    #[error("blob request to {peer} failed: {reason}; retry or fetch from another provider")]
    RequestFailed {
        /// The peer asked.
        peer: PeerId,
        /// Why it failed.
        reason: String,
    },
    /// No provider could serve a blob.
    #[error("no peer could serve blob {} (tried {tried} peers); last error: {last}", hex::encode(.id))]
    Unavailable {
        /// The blob id requested.
        id: [u8; 32],
        /// How many peers were asked.
        tried: usize,
        /// The last peer's error.
        last: String,
    },
    /// An operation did not finish in time.
    #[error("{0} timed out; the peer may be unreachable or overloaded, retry later")]
    Timeout(String),
    /// The network event loop has stopped (after [`crate::NetHandle::shutdown`] or a crash).
    #[error("the network event loop has stopped; restart the node")]
    Shutdown,
    /// The downloader could not store what it verified (disk full, store closed, ...).
    #[error(
        "storing a downloaded blob failed: {0}; check the data dir's disk space and permissions"
    )]
    Sink(String),
}
