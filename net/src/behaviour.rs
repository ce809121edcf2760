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

/// The codec of the range protocol, exactly as the swarm uses it ([`RangeCodec`]). Public for
/// the fuzz targets.
pub fn range_codec() -> RangeCodec {
    RangeCodec
}

/// The range protocol's wire format: a fixed binary layout, not CBOR, because a response
/// carries up to 16 MiB: the payload is written straight from the provider's buffer and read
/// straight into one buffer of its announced size (CBOR would copy it twice on each side and
/// grow the receive buffer step by step).
///
/// * Request: a tag (0 outboard, 1 groups), the 32-byte id, and for groups `first` (u64 LE)
///   and `count` (u32 LE). Nothing may follow.
/// * Response: a tag (0 outboard, 1 groups, 2 not found, 3 bad range, 4 busy), then
///   * outboard: `len` (u64 LE), the number of group hashes (u32 LE), the hashes (32 bytes
///     each), an inline flag (0/1) and, when 1, the inline length (u32 LE) and bytes;
///   * groups: the length (u64 LE) and the bytes.
///
///   Nothing may follow. Every length is checked against its cap before anything is
///   allocated, so a peer cannot make the reader reserve more than the caps.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeCodec;

/// Most bytes in one groups response.
const MAX_GROUPS_BYTES: u64 = (MAX_RANGE_GROUPS as u64) << apiary_storage::outboard::PART_LOG;
/// Most group hashes in one outboard response.
const MAX_OUTBOARD_CVS: u64 = MAX_RANGED_BLOB_BYTES >> apiary_storage::outboard::PART_LOG;

fn bad_data(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads exactly `n` bytes into a buffer allocated once (`n` already checked against a cap).
async fn read_vec<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
    n: u64,
) -> std::io::Result<Vec<u8>> {
    use futures::AsyncReadExt;
    let cap = usize::try_from(n).map_err(|_| bad_data("length does not fit in memory"))?;
    let mut buf = Vec::with_capacity(cap);
    io.take(n).read_to_end(&mut buf).await?;
    if buf.len() != cap {
        return Err(bad_data("stream ended inside a field"));
    }
    Ok(buf)
}

async fn read_array<T: futures::AsyncRead + Unpin + Send, const N: usize>(
    io: &mut T,
) -> std::io::Result<[u8; N]> {
    use futures::AsyncReadExt;
    let mut a = [0u8; N];
    io.read_exact(&mut a).await?;
    Ok(a)
}

/// Fails unless the stream is at its end.
async fn read_end<T: futures::AsyncRead + Unpin + Send>(io: &mut T) -> std::io::Result<()> {
    use futures::AsyncReadExt;
    let mut one = [0u8; 1];
    match io.read(&mut one).await? {
        0 => Ok(()),
        _ => Err(bad_data("bytes after the message")),
    }
}

impl request_response::Codec for RangeCodec {
    type Protocol = StreamProtocol;
    type Request = RangeRequest;
    type Response = RangeResponse;

    async fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<RangeRequest>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let [tag] = read_array::<_, 1>(io).await?;
        let id = read_array::<_, 32>(io).await?;
        let request = match tag {
            0 => RangeRequest::Outboard { id },
            1 => RangeRequest::Groups {
                id,
                first: u64::from_le_bytes(read_array(io).await?),
                count: u32::from_le_bytes(read_array(io).await?),
            },
            _ => return Err(bad_data("unknown range request tag")),
        };
        read_end(io).await?;
        Ok(request)
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<RangeResponse>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let [tag] = read_array::<_, 1>(io).await?;
        let response = match tag {
            0 => {
                let len = u64::from_le_bytes(read_array(io).await?);
                let n = u64::from(u32::from_le_bytes(read_array(io).await?));
                if n > MAX_OUTBOARD_CVS {
                    return Err(bad_data("too many group hashes"));
                }
                let cvs = read_vec(io, n * 32).await?;
                let inline = match read_array::<_, 1>(io).await? {
                    [0] => None,
                    [1] => {
                        let n = u64::from(u32::from_le_bytes(read_array(io).await?));
                        if n > 1 << apiary_storage::outboard::PART_LOG {
                            return Err(bad_data("inline blob larger than one group"));
                        }
                        Some(ByteBuf::from(read_vec(io, n).await?))
                    }
                    _ => return Err(bad_data("bad inline flag")),
                };
                RangeResponse::Outboard {
                    len,
                    cvs: ByteBuf::from(cvs),
                    inline,
                }
            }
            1 => {
                let n = u64::from_le_bytes(read_array(io).await?);
                if n > MAX_GROUPS_BYTES {
                    return Err(bad_data("range larger than 16 groups"));
                }
                RangeResponse::Groups(ByteBuf::from(read_vec(io, n).await?))
            }
            2 => RangeResponse::NotFound,
            3 => RangeResponse::BadRange,
            4 => RangeResponse::Busy,
            _ => return Err(bad_data("unknown range response tag")),
        };
        read_end(io).await?;
        Ok(response)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: RangeRequest,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        use futures::AsyncWriteExt;
        let mut out = Vec::with_capacity(45);
        match request {
            RangeRequest::Outboard { id } => {
                out.push(0);
                out.extend_from_slice(&id);
            }
            RangeRequest::Groups { id, first, count } => {
                out.push(1);
                out.extend_from_slice(&id);
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
        }
        // The request-response handler closes the stream after this.
        io.write_all(&out).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: RangeResponse,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        use futures::AsyncWriteExt;
        match response {
            RangeResponse::Outboard { len, cvs, inline } => {
                let n =
                    u32::try_from(cvs.len() / 32).map_err(|_| bad_data("outboard too large"))?;
                if cvs.len() % 32 != 0 {
                    return Err(bad_data("group hashes are 32 bytes each"));
                }
                let mut head = vec![0u8];
                head.extend_from_slice(&len.to_le_bytes());
                head.extend_from_slice(&n.to_le_bytes());
                io.write_all(&head).await?;
                io.write_all(&cvs).await?;
                match inline {
                    None => io.write_all(&[0]).await?,
                    Some(bytes) => {
                        let n = u32::try_from(bytes.len())
                            .map_err(|_| bad_data("inline blob too large"))?;
                        let mut head = vec![1u8];
                        head.extend_from_slice(&n.to_le_bytes());
                        io.write_all(&head).await?;
                        io.write_all(&bytes).await?;
                    }
                }
            }
            RangeResponse::Groups(bytes) => {
                let mut head = vec![1u8];
                head.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                io.write_all(&head).await?;
                io.write_all(&bytes).await?;
            }
            RangeResponse::NotFound => io.write_all(&[2]).await?,
            RangeResponse::BadRange => io.write_all(&[3]).await?,
            RangeResponse::Busy => io.write_all(&[4]).await?,
        }
        Ok(())
    }
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
    pub(crate) ranges: request_response::Behaviour<RangeCodec>,
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
        let ranges = request_response::Behaviour::with_codec(
            range_codec(),
            [(StreamProtocol::new(RANGE_PROTOCOL), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(params.request_timeout),
        );

        let identify = identify::Behaviour::new(identify::Config::new(
            IDENTIFY_PROTOCOL.to_string(),
            keypair.public(),
        ));

        let ping = ping::Behaviour::new(ping::Config::new());

        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        // No timer-driven bootstrap (it fires with an empty routing table and warns "no known
        // peers"): the event loop bootstraps once the table has peers, then every few minutes;
        // libp2p still bootstraps when the first peers enter the table.
        kad_config.set_periodic_bootstrap_interval(None);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{executor::block_on, io::Cursor};
    use request_response::Codec;

    fn proto() -> StreamProtocol {
        StreamProtocol::new(RANGE_PROTOCOL)
    }

    fn write_resp(r: RangeResponse) -> Vec<u8> {
        let mut w = Cursor::new(Vec::new());
        block_on(range_codec().write_response(&proto(), &mut w, r)).expect("write");
        w.into_inner()
    }

    fn read_resp(b: &[u8]) -> std::io::Result<RangeResponse> {
        block_on(range_codec().read_response(&proto(), &mut Cursor::new(b.to_vec())))
    }

    #[test]
    fn range_messages_round_trip() {
        for req in [
            RangeRequest::Outboard { id: [1; 32] },
            RangeRequest::Groups {
                id: [2; 32],
                first: u64::MAX,
                count: 16,
            },
        ] {
            let mut w = Cursor::new(Vec::new());
            block_on(range_codec().write_request(&proto(), &mut w, req)).expect("write");
            let bytes = w.into_inner();
            let back = block_on(range_codec().read_request(&proto(), &mut Cursor::new(bytes)));
            assert_eq!(back.expect("read"), req);
        }
        for resp in [
            RangeResponse::Outboard {
                len: 3 << 20,
                cvs: ByteBuf::from(vec![9u8; 96]),
                inline: None,
            },
            RangeResponse::Outboard {
                len: 5,
                cvs: ByteBuf::new(),
                inline: Some(ByteBuf::from(b"hello".to_vec())),
            },
            RangeResponse::Groups(ByteBuf::from(vec![7u8; 3000])),
            RangeResponse::NotFound,
            RangeResponse::BadRange,
            RangeResponse::Busy,
        ] {
            assert_eq!(read_resp(&write_resp(resp.clone())).expect("read"), resp);
        }
    }

    #[test]
    fn bad_range_messages_are_refused_before_allocating() {
        // A groups response announcing 1 TiB: refused on the header.
        let mut huge = vec![1u8];
        huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(read_resp(&huge).is_err());
        // Too many group hashes.
        let mut many = vec![0u8];
        many.extend_from_slice(&5u64.to_le_bytes());
        many.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_resp(&many).is_err());
        // Truncated payload, trailing bytes, unknown tags.
        let good = write_resp(RangeResponse::Groups(ByteBuf::from(vec![1u8; 100])));
        assert!(read_resp(&good[..good.len() - 1]).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(read_resp(&trailing).is_err());
        assert!(read_resp(&[9]).is_err());
        assert!(read_resp(&[]).is_err());
        let req =
            block_on(range_codec().read_request(&proto(), &mut Cursor::new([7u8; 33].to_vec())));
        assert!(req.is_err());
    }
}
