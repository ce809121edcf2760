//! The composed libp2p behaviour and the blob request/response messages.

use libp2p::{
    allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify,
    identity::Keypair,
    kad, ping, relay,
    request_response::{self, cbor, ProtocolSupport},
    swarm::{behaviour::toggle::Toggle, NetworkBehaviour},
    StreamProtocol,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::{envelope::ENVELOPE_OVERHEAD, NetError, NetParams};

/// Protocol of blob fetches.
pub const BLOB_PROTOCOL: &str = "/apiary/blob/1";
/// Protocol version announced by identify.
pub const IDENTIFY_PROTOCOL: &str = "/apiary/id/1";
/// Kademlia protocol (apiary nodes form their own DHT, separate from IPFS).
pub const KAD_PROTOCOL: &str = "/apiary/kad/1";
/// Bytes a CBOR-encoded [`BlobResponse`] adds around the blob.
const BLOB_RESPONSE_OVERHEAD: usize = 1024;

/// Asks a peer for the blob whose blake3 hash is `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRequest {
    /// blake3 hash of the wanted bytes.
    #[serde(with = "serde_bytes")]
    pub id: [u8; 32],
}

/// A peer's answer to a [`BlobRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    /// The blob's bytes (the requester verifies their hash).
    Found(ByteBuf),
    /// The peer does not have the blob.
    NotFound,
    /// The peer has the blob but it exceeds its `max_blob_bytes`.
    TooLarge {
        /// The blob's size in bytes.
        size: u64,
    },
    /// The peer is serving as much as it will (its meter for the requester is empty, or it
    /// serves its maximum at once): ask another provider or later.
    Busy,
}

/// Protocol of ranged, verified blob transfers (see [`RangeRequest`]).
pub const RANGE_PROTOCOL: &str = "/apiary/range/1";
/// Most groups one [`RangeRequest::Groups`] may ask for (16 MiB in 1 MiB groups): a request is
/// one unit of work that can be re-asked elsewhere, so it stays small next to the blob.
pub const MAX_RANGE_GROUPS: u32 = 16;
/// Largest blob a ranged transfer handles: 1 TiB. Its outboard is 32 MiB of group hashes at
/// most, in one response.
pub const MAX_RANGED_BLOB_BYTES: u64 = 1 << 40;

/// Asks a peer for part of a blob. Blobs are cut into aligned groups of
/// `2^apiary_storage::outboard::PART_LOG` bytes (1 MiB); the requester first gets the
/// [`RangeResponse::Outboard`] (the group hashes, checked against the id), then asks any
/// provider for any groups and checks each group on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeRequest {
    /// The blob's length and group hashes; the bytes themselves when the blob is one group.
    Outboard {
        /// blake3 hash of the blob.
        #[serde(with = "serde_bytes")]
        id: [u8; 32],
    },
    /// Groups `first .. first + count` of the blob (`count` ≤ [`MAX_RANGE_GROUPS`]).
    Groups {
        /// blake3 hash of the blob.
        #[serde(with = "serde_bytes")]
        id: [u8; 32],
        /// First group.
        first: u64,
        /// Number of groups.
        count: u32,
    },
}

impl RangeRequest {
    /// The blob the request is about.
    pub fn id(&self) -> [u8; 32] {
        match self {
            RangeRequest::Outboard { id } | RangeRequest::Groups { id, .. } => *id,
        }
    }
}

/// A peer's answer to a [`RangeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeResponse {
    /// The blob's length and its group hashes (32 bytes per group, none for a blob of one
    /// group), and for a blob of one group its bytes.
    Outboard {
        /// The blob's length in bytes.
        len: u64,
        /// The group chaining values, concatenated.
        cvs: ByteBuf,
        /// The whole blob when it is one group (saves a round trip for small blobs).
        inline: Option<ByteBuf>,
    },
    /// The requested groups' bytes, concatenated.
    Groups(ByteBuf),
    /// The peer does not have the blob.
    NotFound,
    /// The request asks for groups past the blob's end or too many at once.
    BadRange,
    /// The peer is serving as much as it will: ask another provider or later.
    Busy,
}

/// Bytes a CBOR-encoded [`RangeResponse`] adds around its payload.
const RANGE_RESPONSE_OVERHEAD: u64 = 1024;

/// The codec of the range protocol, exactly as the swarm uses it: requests of at most
/// [`MAX_BLOB_REQUEST_BYTES`], responses of at most [`MAX_RANGE_GROUPS`] groups (or the
/// outboard of the largest blob) plus framing. Public for the fuzz targets.
pub fn range_codec() -> cbor::codec::Codec<RangeRequest, RangeResponse> {
    let groups = u64::from(MAX_RANGE_GROUPS) << apiary_storage::outboard::PART_LOG;
    let outboard = (MAX_RANGED_BLOB_BYTES >> apiary_storage::outboard::PART_LOG) * 32;
    cbor::codec::Codec::<RangeRequest, RangeResponse>::default()
        .set_request_size_maximum(MAX_BLOB_REQUEST_BYTES)
        .set_response_size_maximum(groups.max(outboard) + RANGE_RESPONSE_OVERHEAD)
}

/// Largest encoded [`BlobRequest`] a node reads, in bytes.
pub const MAX_BLOB_REQUEST_BYTES: u64 = 1024;

/// The codec of the blob protocol, exactly as the swarm uses it: CBOR, requests of at most
/// [`MAX_BLOB_REQUEST_BYTES`], responses of at most `max_blob_bytes` plus CBOR framing. Public
/// so the fuzz targets decode peers' bytes with the very codec the node runs.
pub fn blob_codec(max_blob_bytes: usize) -> cbor::codec::Codec<BlobRequest, BlobResponse> {
    cbor::codec::Codec::<BlobRequest, BlobResponse>::default()
        .set_request_size_maximum(MAX_BLOB_REQUEST_BYTES)
        .set_response_size_maximum(max_blob_bytes.saturating_add(BLOB_RESPONSE_OVERHEAD) as u64)
}

/// Everything the swarm runs.
#[derive(NetworkBehaviour)]
pub(crate) struct ApiaryBehaviour {
    /// Banned peers: their connections are closed and refused.
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Caps on connections (per peer, pending, total).
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) blobs: cbor::Behaviour<BlobRequest, BlobResponse>,
    pub(crate) ranges: cbor::Behaviour<RangeRequest, RangeResponse>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Circuit relay v2 client: dials `/p2p-circuit` addresses and holds reservations at the
    /// relays in `NetParams::relays` (always on: any node may dial a relayed peer).
    pub(crate) relay_client: relay::client::Behaviour,
    /// Circuit relay v2 server for peers that cannot be dialed (`NetParams::relay_server`).
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    /// Direct connection upgrade through relay: hole punching (`NetParams::hole_punching`).
    pub(crate) dcutr: Toggle<dcutr::Behaviour>,
    /// AutoNAT: whether this node can be dialed from outside (`NetParams::autonat`).
    pub(crate) autonat: Toggle<autonat::Behaviour>,
}

/// Connections to one peer at most (a redial while one is open is fine; a flood is not).
const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Incoming connections still handshaking at most.
const MAX_PENDING_INCOMING: u32 = 64;
/// Established connections at most.
const MAX_CONNECTIONS: u32 = 512;

/// Gossipsub score thresholds: below `graylist` a peer's messages are ignored entirely (and the
/// loop bans it); the others are gossipsub's defaults.
pub(crate) fn peer_score_thresholds() -> gossipsub::PeerScoreThresholds {
    gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        ..Default::default()
    }
}

/// Gossipsub v1.1 scoring for apiary's one topic. What counts is P4, invalid messages: each
/// message the application rejects adds to a counter whose square, times -10, lowers the
/// sender's score (3 rejections: -90, past the graylist). Mesh-delivery penalties (P3, P3b)
/// are off: in small swarms honest peers deliver few messages and would be punished for it.
/// IP colocation is off too: nodes behind one NAT (or every node of a test on 127.0.0.1) are
/// not sybils by that alone.
pub(crate) fn peer_score_params(topic: &str) -> gossipsub::PeerScoreParams {
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: std::time::Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    params
        .topics
        .insert(gossipsub::IdentTopic::new(topic).hash(), topic_params);
    params
}

/// The gossipsub transmit limit: four times the app-level limit (plus the envelope and
/// protobuf framing), so oversize messages between 1x and 4x still reach our check and are
/// counted instead of being dropped silently by the codec.
pub(crate) fn max_transmit_size(max_message_bytes: usize) -> usize {
    max_message_bytes
        .saturating_mul(4)
        .saturating_add(ENVELOPE_OVERHEAD)
}

impl ApiaryBehaviour {
    pub(crate) fn new(
        keypair: &Keypair,
        params: &NetParams,
        relay_client: relay::client::Behaviour,
    ) -> Result<Self, NetError> {
        let peer_id = keypair.public().to_peer_id();

        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(params.heartbeat)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
            })
            .max_transmit_size(max_transmit_size(params.max_message_bytes))
            .mesh_n_low(1)
            .mesh_n(3)
            .mesh_n_high(6)
            .mesh_outbound_min(0)
            .flood_publish(true)
            .build()
            .map_err(|e| NetError::Config(format!("gossipsub: {e}")))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(keypair.clone()),
            gossip_config,
        )
        .map_err(|e| NetError::Setup(format!("gossipsub: {e}")))?;
        if params.guard.scoring {
            gossipsub
                .with_peer_score(
                    peer_score_params(&crate::topic_name(params.netuid)),
                    peer_score_thresholds(),
                )
                .map_err(|e| NetError::Setup(format!("gossipsub peer scoring: {e}")))?;
        }

        let blobs = cbor::Behaviour::with_codec(
            blob_codec(params.max_blob_bytes),
            [(StreamProtocol::new(BLOB_PROTOCOL), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(params.request_timeout),
        );

        // Many ranges of one download are in flight to one peer at once, each on its own
        // stream; the default of 100 concurrent streams per connection is plenty.
        let ranges = cbor::Behaviour::with_codec(
            range_codec(),
            [(StreamProtocol::new(RANGE_PROTOCOL), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(params.request_timeout),
        );

        let identify = identify::Behaviour::new(identify::Config::new(
            IDENTIFY_PROTOCOL.to_string(),
            keypair.public(),
        ));

        let ping = ping::Behaviour::new(ping::Config::new());

        let mut kad = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::new(peer_id),
            kad::Config::new(StreamProtocol::new(KAD_PROTOCOL)),
        );
        // Small private swarms have no confirmed external addresses; answer DHT queries anyway.
        kad.set_mode(Some(kad::Mode::Server));

        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                .with_max_established(Some(MAX_CONNECTIONS)),
        );
        let relay_server = params
            .relay_server
            .then(|| relay::Behaviour::new(peer_id, relay::Config::default()));
        let dcutr = params.hole_punching.then(|| dcutr::Behaviour::new(peer_id));
        let autonat = params.autonat.then(|| {
            autonat::Behaviour::new(
                peer_id,
                autonat::Config {
                    // Loopback and private addresses count only where asked (LANs, tests).
                    only_global_ips: !params.nat_private_addrs,
                    ..autonat::Config::default()
                },
            )
        });
        Ok(Self {
            relay_client,
            relay_server: relay_server.into(),
            dcutr: dcutr.into(),
            autonat: autonat.into(),
            blocked: allow_block_list::Behaviour::default(),
            limits,
            gossipsub,
            blobs,
            ranges,
            identify,
            ping,
            kad,
        })
    }
}
