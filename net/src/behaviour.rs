//! The composed libp2p behaviour and the blob request/response messages.

use libp2p::{
    gossipsub, identify,
    identity::Keypair,
    kad, ping,
    request_response::{self, cbor, ProtocolSupport},
    swarm::NetworkBehaviour,
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
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) blobs: cbor::Behaviour<BlobRequest, BlobResponse>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
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
    pub(crate) fn new(keypair: &Keypair, params: &NetParams) -> Result<Self, NetError> {
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
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(keypair.clone()),
            gossip_config,
        )
        .map_err(|e| NetError::Setup(format!("gossipsub: {e}")))?;

        let blobs = cbor::Behaviour::with_codec(
            blob_codec(params.max_blob_bytes),
            [(StreamProtocol::new(BLOB_PROTOCOL), ProtocolSupport::Full)],
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

        Ok(Self {
            gossipsub,
            blobs,
            identify,
            ping,
            kad,
        })
    }
}
