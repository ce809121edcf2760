//! # apiary-net
//!
//! The peer-to-peer layer of an apiary node: signed gossip announcements and content-addressed
//! blob transfer over libp2p (TCP + noise + yamux).
//!
//! ## Design
//!
//! Shaped after rust-libp2p's file-sharing example and lighthouse's network service:
//!
//! * **One owner of the swarm.** [`spawn`] builds a [`libp2p::Swarm`], starts listening, dials
//!   the bootstrap peers and moves the swarm into a plain tokio task, the *event loop*. Nothing
//!   else touches the swarm, so there are no locks around it.
//! * **Commands in.** [`NetHandle`] is a cheap clone around a bounded mpsc sender. Each call
//!   sends a command carrying a oneshot reply channel and awaits the answer; when the loop has
//!   stopped, calls fail with [`NetError::Shutdown`] (or return empty answers).
//! * **Events out, never blocking.** Inbound events go to the application over a bounded mpsc
//!   with `try_send`: if the application is slow and the channel is full, the event is dropped
//!   and counted in [`NetStats::events_dropped`]. The swarm is never blocked by a consumer.
//! * **Blocking work off the loop.** Inbound blob requests are answered from the
//!   [`BlobProvider`] on tokio's blocking pool; fetched blobs are hashed by the caller, not by the
//!   loop.
//!
//! ## Behaviours
//!
//! * **gossipsub** on the topic `apiary/{netuid}/announce/v1`. libp2p-signed messages
//!   (ed25519 peer key), message id = blake3 of the data, and *application validation*: each
//!   message is size-checked, decoded as a [`SignedEnvelope`] and its sr25519 hotkey signature
//!   verified (the signature binds the chain's genesis hash and the netuid, [`SubnetTag`]),
//!   then the application's [`Admit`] gives the verdict — registered hotkey, uid, window
//!   range, subnet — *before* the message is reported `Accept` (and forwarded), `Reject`
//!   (dropped, the sender penalised) or `Ignore` (dropped). Only accepted messages (and those
//!   from hotkeys the application did not know, marked) become [`NetEvent::Gossip`].
//! * **Peer scoring and bans**: gossipsub v1.1 peer scoring (invalid-message penalties,
//!   graylisting; IP colocation off, since test swarms share 127.0.0.1), plus the loop's own
//!   strikes ([`GuardConfig`]: failed checks, rejected admissions, wrong blob bytes, blob
//!   requests past the meter) and timed bans through libp2p's block list; `connection_limits`
//!   caps connections per peer and in total. The transport limit is four times
//!   `max_message_bytes` so oversize messages reach the application check and are counted.
//!   Mesh parameters suit small swarms (D_lo 1, D 3, D_hi 6) and publishing floods to every
//!   subscribed peer.
//! * **request-response** (`/apiary/blob/1`, CBOR): [`BlobRequest`] by blake3 id,
//!   [`BlobResponse`] with the bytes. The requester verifies `blake3(bytes) == id`.
//! * **identify** (`/apiary/id/1`) feeds the listen addresses peers report into **kad**
//!   (in-memory store, server mode), which the swarm uses to find addresses when dialing.
//! * **ping** keeps an eye on liveness.

mod behaviour;
mod download;
mod envelope;
mod error;
mod event_loop;
mod guard;
mod handle;
mod stats;
mod store_blobs;

use std::{sync::Arc, time::Duration};

use apiary_chain::keys::{Hotkey, HotkeyId};
use tokio::sync::mpsc;

pub use apiary_storage::outboard::{Outboard, PART_LOG};
pub use behaviour::{
    blob_codec, range_codec, BlobRequest, BlobResponse, RangeRequest, RangeResponse, BLOB_PROTOCOL,
    IDENTIFY_PROTOCOL, KAD_PROTOCOL, MAX_BLOB_REQUEST_BYTES, MAX_RANGED_BLOB_BYTES,
    MAX_RANGE_GROUPS, RANGE_PROTOCOL,
};
pub use download::{
    BlobSink, DownloadOptions, DownloadProgress, DownloadReport, DownloadStatus, MemorySink,
};
pub use envelope::{
    SignedEnvelope, SubnetTag, ENVELOPE_OVERHEAD, GOSSIP_DOMAIN, MAX_ENVELOPE_BYTES,
};
pub use error::NetError;
pub use guard::{Ban, GuardConfig};
pub use handle::NetHandle;
pub use libp2p::{identity::Keypair, multiaddr::Protocol, Multiaddr, PeerId};
pub use stats::{
    NetStats, NetStatsSnapshot, PeerBytes, PeerBytesSnapshot, Traffic, PEER_BYTES_CAP,
};
pub use store_blobs::StoreBlobs;

/// Everything [`spawn`] needs.
#[derive(Clone, Debug)]
pub struct NetParams {
    /// Address to listen on, e.g. `/ip4/127.0.0.1/tcp/0` (port 0 picks a free port).
    pub listen: Multiaddr,
    /// Addresses dialed at start; they may end in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// The libp2p (ed25519) identity of the node.
    pub keypair: Keypair,
    /// The sr25519 hotkey that signs every gossip envelope.
    pub hotkey: Hotkey,
    /// Subnet id; selects the gossip topic.
    pub netuid: u16,
    /// Largest accepted envelope payload in bytes.
    pub max_message_bytes: usize,
    /// Largest blob served or fetched in bytes.
    pub max_blob_bytes: usize,
    /// Gossipsub heartbeat interval.
    pub heartbeat: Duration,
    /// Timeout of a blob request (and of a dial awaited through [`NetHandle::dial`]).
    pub request_timeout: Duration,
    /// Capacity of the event channel returned by [`spawn`].
    pub event_buffer: usize,
    /// What envelope signatures bind: the chain's genesis hash and the netuid.
    pub subnet: SubnetTag,
    /// Strikes, bans and the blob-serving meter.
    pub guard: GuardConfig,
    /// Relays (multiaddrs ending in `/p2p/<relay peer id>`) at which this node reserves a slot
    /// and listens through (`<relay>/p2p-circuit`): peers that cannot dial it directly (NAT,
    /// firewall) reach it through them.
    pub relays: Vec<Multiaddr>,
    /// Serve as a circuit relay v2 for peers that cannot be dialed (a publicly reachable node).
    pub relay_server: bool,
    /// Upgrade relayed connections to direct ones by hole punching (DCUtR).
    pub hole_punching: bool,
    /// Probe whether this node is reachable from outside (AutoNAT), see
    /// [`NetHandle::nat_status`].
    pub autonat: bool,
    /// Let AutoNAT count loopback and private addresses (a LAN, tests); off on the internet.
    pub nat_private_addrs: bool,
}

impl NetParams {
    /// Parameters with sensible defaults: no bootstrap peers, 64 KiB messages, 256 MiB blobs,
    /// 1 s heartbeat, 30 s request timeout, 1024 buffered events, no relays, no relay service,
    /// hole punching and AutoNAT off.
    pub fn new(listen: Multiaddr, keypair: Keypair, hotkey: Hotkey, netuid: u16) -> Self {
        Self {
            listen,
            bootstrap: Vec::new(),
            keypair,
            hotkey,
            netuid,
            max_message_bytes: 64 << 10,
            max_blob_bytes: 256 << 20,
            heartbeat: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            event_buffer: 1024,
            subnet: SubnetTag::new(&[0; 32], netuid),
            guard: GuardConfig::default(),
            relays: Vec::new(),
            relay_server: false,
            hole_punching: false,
            autonat: false,
            nat_private_addrs: false,
        }
    }

    /// The gossip topic of this subnet.
    pub fn topic(&self) -> String {
        topic_name(self.netuid)
    }

    fn validate(&self) -> Result<(), NetError> {
        if self.max_message_bytes == 0 {
            return Err(NetError::Config("max_message_bytes must be > 0".into()));
        }
        if self.max_message_bytes > MAX_ENVELOPE_BYTES {
            return Err(NetError::Config(format!(
                "max_message_bytes {} exceeds the {MAX_ENVELOPE_BYTES}-byte maximum",
                self.max_message_bytes
            )));
        }
        if self.max_blob_bytes == 0 {
            return Err(NetError::Config("max_blob_bytes must be > 0".into()));
        }
        if self.heartbeat.is_zero() {
            return Err(NetError::Config("heartbeat must be > 0".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(NetError::Config("request_timeout must be > 0".into()));
        }
        if self.event_buffer == 0 {
            return Err(NetError::Config("event_buffer must be > 0".into()));
        }
        if let Some(r) = self
            .relays
            .iter()
            .find(|r| !matches!(r.iter().last(), Some(Protocol::P2p(_))))
        {
            return Err(NetError::Config(format!(
                "relay address {r} must end in /p2p/<the relay's peer id>"
            )));
        }
        Ok(())
    }
}

/// The gossip topic of a subnet: `apiary/{netuid}/announce/v1`.
pub fn topic_name(netuid: u16) -> String {
    format!("apiary/{netuid}/announce/v1")
}

/// Serves blob bytes by blake3 id to peers (implemented by the node over its RocksDB store).
///
/// Called on tokio's blocking pool, so it may do disk I/O.
pub trait BlobProvider: Send + Sync + 'static {
    /// The bytes whose blake3 hash is `id`, if this node has them.
    fn get_blob(&self, id: &[u8; 32]) -> Option<Vec<u8>>;

    /// The blob's [`Outboard`] in groups of `2^PART_LOG` bytes (its length and group hashes),
    /// served to peers that download it in ranges. The default computes it from
    /// [`BlobProvider::get_blob`]; a store that keeps outboards should return them instead.
    fn outboard(&self, id: &[u8; 32]) -> Option<Outboard> {
        let bytes = self.get_blob(id)?;
        Outboard::compute(&bytes, PART_LOG).ok()
    }

    /// Bytes `offset .. offset + len` of the blob (`None` if absent or past its end). The
    /// default slices [`BlobProvider::get_blob`]; a store that keeps big blobs in parts should
    /// read only the parts needed.
    fn get_range(&self, id: &[u8; 32], offset: u64, len: u64) -> Option<Vec<u8>> {
        let bytes = self.get_blob(id)?;
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        bytes.get(start..end).map(<[u8]>::to_vec)
    }
}

/// The application's verdict on a gossip message that passed the size, decoding and signature
/// checks, given before gossipsub forwards it: only what the node itself would act on is
/// relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Relay it and hand it to the application.
    Accept,
    /// Drop it and penalise the peer that sent it (gossipsub's invalid-message score and a
    /// strike): it can never be valid (wrong subnet, impersonation, absurd window …). The
    /// reason names the check.
    Reject(&'static str),
    /// Drop it without penalty (e.g. a duplicate or a window just closed).
    Ignore(&'static str),
    /// The signer is not a hotkey this node knows (it may have registered since the node last
    /// read the metagraph): not relayed, a light strike, and handed to the application marked
    /// unadmitted so it can re-read the metagraph and decide.
    Unknown,
}

/// Decides what gossip is relayed ([`Admission`]). Called on the network loop for every
/// message: it must be quick and must not block (read snapshots, never wait on an actor).
pub trait Admit: Send + Sync + 'static {
    /// The verdict on `payload`, signed by `hotkey`, received from `from`.
    fn admit(&self, from: &PeerId, hotkey: &HotkeyId, payload: &[u8]) -> Admission;
}

/// Admits everything that is well formed and signed (tools and tests).
pub struct AdmitAll;

impl Admit for AdmitAll {
    fn admit(&self, _: &PeerId, _: &HotkeyId, _: &[u8]) -> Admission {
        Admission::Accept
    }
}

/// A peer's standing, for the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStanding {
    /// The peer.
    pub peer: PeerId,
    /// Whether it is connected now.
    pub connected: bool,
    /// Its gossipsub score (None: no score kept for it).
    pub gossip_score: Option<f64>,
    /// Its strikes (decaying).
    pub strikes: f64,
    /// Its ban, if one is in force: seconds left and why.
    pub banned: Option<(u64, String)>,
}

/// What the network tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A gossip envelope that passed the size, decoding and hotkey-signature checks and the
    /// application's [`Admit`] (or came from a hotkey it did not know: `admitted` false).
    Gossip {
        /// The libp2p peer that published it (the gossipsub-signed source; the forwarding peer
        /// if the message carried none).
        from: PeerId,
        /// The hotkey that signed the envelope.
        hotkey: HotkeyId,
        /// The envelope's payload.
        payload: Vec<u8>,
        /// False when [`Admit`] did not know the hotkey ([`Admission::Unknown`]): the message
        /// was not relayed, and the application decides after re-reading the metagraph.
        admitted: bool,
    },
    /// The first connection to a peer was established.
    PeerConnected(PeerId),
    /// The last connection to a peer was closed.
    PeerDisconnected(PeerId),
}

/// Starts the network: builds the swarm, listens on `params.listen`, dials the bootstrap
/// addresses and spawns the event loop.
///
/// Returns once the listener is up, so [`NetHandle::listen_addrs`] reports the real port.
/// Must be called inside a tokio runtime.
pub async fn spawn(
    params: NetParams,
    blobs: Arc<dyn BlobProvider>,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    event_loop::spawn(params, blobs, Arc::new(AdmitAll)).await
}

/// [`spawn`] with the application's admission: gossip is relayed only when `admit` accepts it.
pub async fn spawn_admitting(
    params: NetParams,
    blobs: Arc<dyn BlobProvider>,
    admit: Arc<dyn Admit>,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    event_loop::spawn(params, blobs, admit).await
}
