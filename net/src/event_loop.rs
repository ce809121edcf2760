//! The task that owns the swarm: it executes [`Command`]s from handles and turns swarm events
//! into [`NetEvent`]s.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    autonat,
    core::transport::ListenerId,
    dcutr,
    gossipsub::{self, IdentTopic, MessageAcceptance, PublishError, TopicHash},
    identify, kad,
    multiaddr::Protocol,
    noise, ping, relay,
    request_response::{self, OutboundRequestId, ResponseChannel},
    swarm::{dial_opts::DialOpts, ConnectionId, DialError, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, Swarm,
};
use serde_bytes::ByteBuf;
use tokio::{
    sync::{
        mpsc::{self, error::TrySendError},
        oneshot,
    },
    task::JoinSet,
};
use tracing::{debug, info, trace, warn, Instrument};

use crate::{
    behaviour::{max_transmit_size, peer_score_thresholds, ApiaryBehaviour, ApiaryBehaviourEvent},
    envelope::{SubnetTag, ENVELOPE_OVERHEAD},
    guard::Guard,
    stats::bump,
    Admission, Admit, BlobProvider, BlobRequest, BlobResponse, NetError, NetEvent, NetHandle,
    NetParams, NetStats, PeerStanding, RangeRequest, RangeResponse, SignedEnvelope,
    MAX_RANGED_BLOB_BYTES, MAX_RANGE_GROUPS, PART_LOG,
};

/// Strike weights: how bad each misbehaviour is (a peer is banned at `GuardConfig::ban_after`,
/// 20 by default).
mod weight {
    /// A gossip message the application rejected (it can never be valid).
    pub(super) const REJECTED: f64 = 1.0;
    /// A gossip message that did not decode, was oversize or had a bad signature.
    pub(super) const BROKEN: f64 = 2.0;
    /// A gossip message from a hotkey the application did not know.
    pub(super) const UNKNOWN_HOTKEY: f64 = 0.25;
    /// A blob request past the peer's meter.
    pub(super) const THROTTLED: f64 = 0.1;
}

/// How often the DHT routing table is refreshed (libp2p's default periodic bootstrap).
const KAD_REFRESH: Duration = Duration::from_secs(300);

/// How often bans expire and gossipsub scores are checked.
const GUARD_TICK: Duration = Duration::from_secs(1);

/// How long [`spawn`] waits for the listener to report its address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections with no protocol activity are closed after this long.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// Capacity of the command channel from handles to the loop.
const COMMAND_BUFFER: usize = 256;

/// A request from a [`NetHandle`] to the event loop.
pub(crate) enum Command {
    /// Report the current listen addresses.
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    /// Dial an address and report when the connection is up or failed.
    Dial {
        /// Where to dial.
        addr: Multiaddr,
        /// Outcome of the dial.
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Remember an address of a peer (kad and swarm) and dial it if not connected.
    AddPeerAddress {
        /// The peer.
        peer: PeerId,
        /// One of its addresses.
        addr: Multiaddr,
        /// Whether the address was accepted and a dial, if needed, started.
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Report the connected peers.
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    /// Report how many peers are subscribed to our topic.
    GossipPeers(oneshot::Sender<usize>),
    /// Publish bytes on the topic as they are.
    Publish {
        /// The gossip message data.
        data: Vec<u8>,
        /// Outcome of the publish.
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Report every known peer's standing (score, strikes, ban).
    Standings(oneshot::Sender<Vec<PeerStanding>>),
    /// Lift a peer's ban; the reply says whether there was one.
    Unban {
        /// The peer.
        peer: PeerId,
        /// Whether a ban was lifted.
        reply: oneshot::Sender<bool>,
    },
    /// Block or unblock a peer by hand (an operator's block, or a test's partition): its
    /// connections close and new ones are refused until unblocked. Unlike a ban it never
    /// expires.
    Block {
        /// The peer.
        peer: PeerId,
        /// Block (true) or lift the block (false).
        on: bool,
    },
    /// The application caught a peer misbehaving (e.g. serving bytes that do not match their
    /// id): a strike of `weight`.
    Report {
        /// The peer.
        peer: PeerId,
        /// The strike's weight.
        weight: f64,
        /// What it did.
        reason: String,
    },
    /// Ask a peer for a blob; the reply carries the raw response (the handle verifies it).
    FetchBlob {
        /// The peer asked.
        peer: PeerId,
        /// The blob id.
        id: [u8; 32],
        /// The peer's response or the transport failure.
        reply: oneshot::Sender<Result<BlobResponse, NetError>>,
    },
    /// Ask a peer for part of a blob (or its outboard); the reply carries the raw response
    /// (the downloader verifies it).
    FetchRange {
        /// The peer asked.
        peer: PeerId,
        /// What is asked.
        request: RangeRequest,
        /// The peer's response or the transport failure.
        reply: oneshot::Sender<Result<RangeResponse, NetError>>,
    },
    /// Announce in the DHT that this node provides a blob (a Kademlia provider record).
    Provide {
        /// The blob id.
        id: [u8; 32],
    },
    /// Look up the DHT's provider records of a blob.
    FindProviders {
        /// The blob id.
        id: [u8; 32],
        /// The providers found (possibly none).
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// Report what AutoNAT concluded about this node's reachability.
    NatStatus(oneshot::Sender<String>),
    /// Stop the loop; the reply is sent once the swarm is dropped.
    Shutdown(oneshot::Sender<()>),
}

/// The outcome of a lookup on the blocking pool.
enum Lookup {
    /// A whole blob for `/apiary/blob/1`.
    Blob {
        channel: ResponseChannel<BlobResponse>,
        id: [u8; 32],
        peer: PeerId,
        blob: Option<Vec<u8>>,
    },
    /// A ready answer for `/apiary/range/1`.
    Range {
        channel: ResponseChannel<RangeResponse>,
        peer: PeerId,
        response: RangeResponse,
    },
}

/// What differs between the two request/response protocols the node serves; the event
/// handling they share is [`EventLoop::on_served`].
trait Served {
    /// The protocol's codec.
    type Codec: request_response::Codec<Request = Self::Request, Response = Self::Response>
        + Send
        + Clone
        + 'static;
    /// Its request.
    type Request: std::fmt::Debug + Send + 'static;
    /// Its response.
    type Response: Send + 'static;
    /// What a request asks for, in logs.
    const WHAT: &'static str;
    /// The answer to a request that is not served now.
    fn busy() -> Self::Response;
    /// The protocol's behaviour in the swarm.
    fn behaviour(b: &mut ApiaryBehaviour) -> &mut request_response::Behaviour<Self::Codec>;
    /// The fetches waiting for a response.
    fn pending(l: &mut EventLoop) -> &mut HashMap<OutboundRequestId, PendingFetch<Self::Response>>;
    /// Payload bytes of a response (for the per-peer byte counts).
    fn response_bytes(r: &Self::Response) -> u64;
    /// Answers `request` from the store (runs off the event loop).
    fn lookup(
        provider: &dyn BlobProvider,
        request: Self::Request,
        channel: ResponseChannel<Self::Response>,
        peer: PeerId,
    ) -> Lookup;
}

/// `/apiary/blob/1`: whole blobs.
struct BlobProtocol;

impl Served for BlobProtocol {
    type Codec = libp2p::request_response::cbor::codec::Codec<BlobRequest, BlobResponse>;
    type Request = BlobRequest;
    type Response = BlobResponse;
    const WHAT: &'static str = "blob";
    fn busy() -> BlobResponse {
        BlobResponse::Busy
    }
    fn behaviour(b: &mut ApiaryBehaviour) -> &mut request_response::Behaviour<Self::Codec> {
        &mut b.blobs
    }
    fn pending(l: &mut EventLoop) -> &mut HashMap<OutboundRequestId, PendingFetch<BlobResponse>> {
        &mut l.pending_fetches
    }
    fn response_bytes(r: &BlobResponse) -> u64 {
        blob_response_bytes(r)
    }
    fn lookup(
        provider: &dyn BlobProvider,
        request: BlobRequest,
        channel: ResponseChannel<BlobResponse>,
        peer: PeerId,
    ) -> Lookup {
        Lookup::Blob {
            blob: provider.get_blob(&request.id),
            channel,
            id: request.id,
            peer,
        }
    }
}

/// `/apiary/range/1`: verified groups of a blob.
struct RangeProtocol;

impl Served for RangeProtocol {
    type Codec = crate::behaviour::RangeCodec;
    type Request = RangeRequest;
    type Response = RangeResponse;
    const WHAT: &'static str = "range";
    fn busy() -> RangeResponse {
        RangeResponse::Busy
    }
    fn behaviour(b: &mut ApiaryBehaviour) -> &mut request_response::Behaviour<Self::Codec> {
        &mut b.ranges
    }
    fn pending(l: &mut EventLoop) -> &mut HashMap<OutboundRequestId, PendingFetch<RangeResponse>> {
        &mut l.pending_ranges
    }
    fn response_bytes(r: &RangeResponse) -> u64 {
        range_response_bytes(r)
    }
    fn lookup(
        provider: &dyn BlobProvider,
        request: RangeRequest,
        channel: ResponseChannel<RangeResponse>,
        peer: PeerId,
    ) -> Lookup {
        Lookup::Range {
            response: serve_range(provider, &request),
            channel,
            peer,
        }
    }
}

struct PendingDial {
    addr: Multiaddr,
    reply: oneshot::Sender<Result<(), NetError>>,
}

struct PendingFetch<R> {
    peer: PeerId,
    reply: oneshot::Sender<Result<R, NetError>>,
}

/// A Kademlia provider lookup in progress: the providers found so far.
struct PendingProviders {
    found: Vec<PeerId>,
    reply: oneshot::Sender<Vec<PeerId>>,
}

pub(crate) struct EventLoop {
    swarm: Swarm<ApiaryBehaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    stats: Arc<NetStats>,
    provider: Arc<dyn BlobProvider>,
    topic: TopicHash,
    listener: ListenerId,
    max_message_bytes: usize,
    max_blob_bytes: usize,
    pending_dials: HashMap<ConnectionId, PendingDial>,
    pending_fetches: HashMap<OutboundRequestId, PendingFetch<BlobResponse>>,
    pending_ranges: HashMap<OutboundRequestId, PendingFetch<RangeResponse>>,
    pending_providers: HashMap<kad::QueryId, PendingProviders>,
    lookups: JoinSet<Lookup>,
    /// The application's admission of gossip.
    admit: Arc<dyn Admit>,
    /// What envelope signatures must bind.
    subnet: SubnetTag,
    /// Strikes, bans, meters.
    guard: Guard,
    /// Peers blocked by [`Command::Block`] (a ban expiring does not lift these).
    blocked_by_hand: HashSet<PeerId>,
    /// This node serves as a circuit relay.
    relay_server: bool,
    /// When the DHT was last refreshed (`None`: not yet).
    last_kad_refresh: Option<Instant>,
}

/// Builds the swarm, listens, dials the bootstrap peers and spawns the loop.
pub(crate) async fn spawn(
    params: NetParams,
    provider: Arc<dyn BlobProvider>,
    admit: Arc<dyn Admit>,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    params.validate()?;
    let local_peer_id = params.keypair.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(params.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Setup(format!("tcp/noise/yamux transport: {e}")))?
        // Relayed connections (`/p2p-circuit`) are secured and multiplexed the same way.
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Setup(format!("relay client transport: {e}")))?
        .with_behaviour(|keypair, relay_client| {
            ApiaryBehaviour::new(keypair, &params, relay_client)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| NetError::Setup(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();

    let topic = IdentTopic::new(params.topic());
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| NetError::Setup(format!("subscribing to {}: {e}", params.topic())))?;

    let listener = swarm
        .listen_on(params.listen.clone())
        .map_err(|e| NetError::Listen {
            addr: params.listen.clone(),
            reason: e.to_string(),
        })?;

    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_BUFFER);
    let (ev_tx, ev_rx) = mpsc::channel(params.event_buffer);
    let stats = Arc::new(NetStats::default());

    let mut event_loop = EventLoop {
        swarm,
        commands: cmd_rx,
        events: ev_tx,
        stats: stats.clone(),
        provider,
        topic: topic.hash(),
        listener,
        max_message_bytes: params.max_message_bytes,
        max_blob_bytes: params.max_blob_bytes,
        pending_dials: HashMap::new(),
        pending_fetches: HashMap::new(),
        pending_ranges: HashMap::new(),
        pending_providers: HashMap::new(),
        lookups: JoinSet::new(),
        admit,
        subnet: params.subnet,
        guard: Guard::new(params.guard),
        blocked_by_hand: HashSet::new(),
        relay_server: params.relay_server,
        last_kad_refresh: None,
    };
    event_loop.wait_listening(&params.listen).await?;
    for addr in &params.bootstrap {
        event_loop.dial_bootstrap(addr.clone());
    }
    // Listen through each relay as well: the relay client dials it and asks for a reservation;
    // the circuit address is reported (and logged) once the relay accepts.
    for relay in &params.relays {
        let circuit = relay.clone().with(Protocol::P2pCircuit);
        match event_loop.swarm.listen_on(circuit.clone()) {
            Ok(_) => info!(%circuit, "listening through a relay"),
            Err(error) => {
                warn!(%circuit, %error, "cannot listen through the relay; check net.relays")
            }
        }
    }

    info!(
        peer = %local_peer_id,
        hotkey = %params.hotkey.id(),
        topic = %params.topic(),
        "apiary network started"
    );
    let span = tracing::info_span!("apiary-net", peer = %local_peer_id);
    tokio::spawn(event_loop.run().instrument(span));

    let handle = NetHandle::new(
        cmd_tx,
        local_peer_id,
        params.hotkey,
        params.subnet,
        stats,
        params.max_message_bytes,
        params.request_timeout,
    );
    Ok((handle, ev_rx))
}

impl EventLoop {
    /// Drives the swarm until our listener reports its first address.
    async fn wait_listening(&mut self, addr: &Multiaddr) -> Result<(), NetError> {
        let deadline = tokio::time::sleep(LISTEN_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    return Err(NetError::Listen {
                        addr: addr.clone(),
                        reason: format!("no listen address reported within {LISTEN_TIMEOUT:?}"),
                    });
                }
                event = self.swarm.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { listener_id, address }
                        if listener_id == self.listener =>
                    {
                        self.on_new_listen_addr(address);
                        return Ok(());
                    }
                    SwarmEvent::ListenerClosed { listener_id, reason, .. }
                        if listener_id == self.listener =>
                    {
                        return Err(NetError::Listen {
                            addr: addr.clone(),
                            reason: match reason {
                                Ok(()) => "listener closed".into(),
                                Err(e) => e.to_string(),
                            },
                        });
                    }
                    SwarmEvent::ListenerError { listener_id, error }
                        if listener_id == self.listener =>
                    {
                        return Err(NetError::Listen {
                            addr: addr.clone(),
                            reason: error.to_string(),
                        });
                    }
                    other => self.on_swarm_event(other),
                },
            }
        }
    }

    fn dial_bootstrap(&mut self, addr: Multiaddr) {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            let mut bare = addr.clone();
            bare.pop();
            self.swarm.behaviour_mut().kad.add_address(&peer, bare);
        }
        match self.swarm.dial(addr.clone()) {
            Ok(()) => debug!(%addr, "dialing bootstrap peer"),
            Err(error) => warn!(%addr, %error, "could not dial bootstrap peer"),
        }
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(GUARD_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown_reply = loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => self.on_guard_tick(),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => break Some(reply),
                    Some(command) => self.on_command(command),
                    None => {
                        debug!("every network handle was dropped");
                        break None;
                    }
                },
                Some(done) = self.lookups.join_next(), if !self.lookups.is_empty() => {
                    match done {
                        Ok(lookup) => self.on_lookup(lookup),
                        Err(error) => warn!(%error, "blob provider task failed; the request goes unanswered"),
                    }
                }
            }
        };

        info!("apiary network shutting down");
        self.swarm.remove_listener(self.listener);
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.lookups.abort_all();
        // Dropping the swarm closes every connection; pending replies see `Shutdown`.
        drop(self);
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    /// Ends expired bans and bans peers whose gossipsub score fell below the graylist;
    /// bootstraps the DHT once its routing table has peers, then every [`KAD_REFRESH`].
    fn on_guard_tick(&mut self) {
        let now = Instant::now();
        let due = self
            .last_kad_refresh
            .is_none_or(|t| t.elapsed() >= KAD_REFRESH);
        let known = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .any(|b| b.num_entries() > 0);
        if due && known {
            self.last_kad_refresh = Some(now);
            if let Err(error) = self.swarm.behaviour_mut().kad.bootstrap() {
                debug!(%error, "DHT refresh skipped");
            }
        }
        for peer in self.guard.expire(now) {
            info!(%peer, "ban expired");
            if !self.blocked_by_hand.contains(&peer) {
                self.lift(&peer);
            }
        }
        let graylist = peer_score_thresholds().graylist_threshold;
        let low: Vec<(PeerId, f64)> = self
            .swarm
            .connected_peers()
            .filter(|p| !self.guard.is_banned(p, now))
            .filter_map(|p| {
                let score = self.swarm.behaviour().gossipsub.peer_score(p)?;
                (score < graylist).then_some((*p, score))
            })
            .collect();
        for (peer, score) in low {
            let reason = format!("gossip score {score:.1} below the graylist ({graylist})");
            let ban = self.guard.ban(peer, &reason, now);
            self.enforce_ban(peer, &ban.reason);
        }
    }

    /// Counts bytes of apiary's own protocols moved with `peer` ([`crate::PeerBytes`]).
    fn peer_bytes(&self, peer: PeerId, bytes_in: u64, bytes_out: u64) {
        if bytes_in == 0 && bytes_out == 0 {
            return;
        }
        let connected = self.swarm.is_connected(&peer);
        self.stats
            .peer_bytes
            .record(peer, bytes_in, bytes_out, connected);
    }

    /// Adds a strike; bans the peer when it crosses the threshold.
    fn strike(&mut self, peer: PeerId, weight: f64, reason: &str) {
        if let Some(ban) = self.guard.strike(peer, weight, reason, Instant::now()) {
            self.enforce_ban(peer, &ban.reason);
        }
    }

    /// Blocks a banned peer: its connections close, new ones are refused, gossipsub ignores it.
    fn enforce_ban(&mut self, peer: PeerId, reason: &str) {
        bump(&self.stats.peers_banned, 1);
        warn!(%peer, %reason, secs = self.guard.config().ban_duration.as_secs(), "banning peer");
        let b = self.swarm.behaviour_mut();
        b.blocked.block_peer(peer);
        b.gossipsub.blacklist_peer(&peer);
    }

    /// Undoes [`EventLoop::enforce_ban`].
    fn lift(&mut self, peer: &PeerId) {
        let b = self.swarm.behaviour_mut();
        b.blocked.unblock_peer(*peer);
        b.gossipsub.remove_blacklisted_peer(peer);
    }

    fn standings(&mut self) -> Vec<PeerStanding> {
        let now = Instant::now();
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let mut peers: Vec<PeerId> = connected.clone();
        for (p, _) in self.guard.bans(now) {
            if !peers.contains(&p) {
                peers.push(p);
            }
        }
        let bans: HashMap<PeerId, crate::Ban> = self.guard.bans(now).into_iter().collect();
        peers
            .into_iter()
            .map(|peer| PeerStanding {
                peer,
                connected: connected.contains(&peer),
                gossip_score: self.swarm.behaviour().gossipsub.peer_score(&peer),
                strikes: self.guard.strikes(peer, now),
                banned: bans.get(&peer).map(|b| {
                    (
                        b.until.saturating_duration_since(now).as_secs(),
                        b.reason.clone(),
                    )
                }),
            })
            .collect()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Standings(reply) => {
                let _ = reply.send(self.standings());
            }
            Command::Unban { peer, reply } => {
                let lifted = self.guard.unban(&peer);
                if lifted && !self.blocked_by_hand.contains(&peer) {
                    info!(%peer, "ban lifted by the operator");
                    self.lift(&peer);
                }
                let _ = reply.send(lifted);
            }
            Command::Block { peer, on } => {
                if on {
                    info!(%peer, "peer blocked by hand");
                    self.blocked_by_hand.insert(peer);
                    let b = self.swarm.behaviour_mut();
                    b.blocked.block_peer(peer);
                    b.gossipsub.blacklist_peer(&peer);
                } else if self.blocked_by_hand.remove(&peer) {
                    info!(%peer, "block lifted by hand");
                    if !self.guard.is_banned(&peer, Instant::now()) {
                        self.lift(&peer);
                    }
                }
            }
            Command::Report {
                peer,
                weight,
                reason,
            } => {
                debug!(%peer, weight, %reason, "peer reported");
                self.strike(peer, weight, &reason);
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { addr, reply } => {
                let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
                let connection_id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        debug!(%addr, "dialing");
                        self.pending_dials
                            .insert(connection_id, PendingDial { addr, reply });
                    }
                    Err(error) => {
                        warn!(%addr, %error, "dial failed");
                        let _ = reply.send(Err(NetError::Dial {
                            addr,
                            reason: error.to_string(),
                        }));
                    }
                }
            }
            Command::AddPeerAddress { peer, addr, reply } => {
                let _ = reply.send(self.add_peer_address(peer, addr));
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::GossipPeers(reply) => {
                let topic = &self.topic;
                let n = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&topic))
                    .count();
                let _ = reply.send(n);
            }
            Command::Publish { data, reply } => {
                let _ = reply.send(self.publish(data));
            }
            Command::FetchBlob { peer, id, reply } => {
                let request_id = self
                    .swarm
                    .behaviour_mut()
                    .blobs
                    .send_request(&peer, BlobRequest { id });
                debug!(%peer, id = %hex::encode(id), "requesting blob");
                self.peer_bytes(peer, 0, BLOB_ID_BYTES);
                self.pending_fetches
                    .insert(request_id, PendingFetch { peer, reply });
            }
            Command::FetchRange {
                peer,
                request,
                reply,
            } => {
                let request_id = self
                    .swarm
                    .behaviour_mut()
                    .ranges
                    .send_request(&peer, request);
                trace!(%peer, ?request, "requesting range");
                self.peer_bytes(peer, 0, BLOB_ID_BYTES);
                self.pending_ranges
                    .insert(request_id, PendingFetch { peer, reply });
            }
            Command::Provide { id } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                if let Err(error) = kad.start_providing(kad::RecordKey::new(&id)) {
                    debug!(id = %hex::encode(id), %error, "could not store a provider record");
                }
            }
            Command::FindProviders { id, reply } => {
                let query = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&id));
                self.pending_providers.insert(
                    query,
                    PendingProviders {
                        found: Vec::new(),
                        reply,
                    },
                );
            }
            Command::NatStatus(reply) => {
                let status = match self.swarm.behaviour().autonat.as_ref() {
                    None => "off (net.autonat)".to_string(),
                    Some(a) => match a.nat_status() {
                        autonat::NatStatus::Public(addr) => format!("public at {addr}"),
                        autonat::NatStatus::Private => {
                            "private: peers cannot dial this node; set net.relays".to_string()
                        }
                        autonat::NatStatus::Unknown => "unknown (not probed yet)".to_string(),
                    },
                };
                let _ = reply.send(status);
            }
            Command::Shutdown(reply) => {
                // Handled in `run`; answer anyway so a caller never hangs.
                let _ = reply.send(());
            }
        }
    }

    fn add_peer_address(&mut self, peer: PeerId, mut addr: Multiaddr) -> Result<(), NetError> {
        if let Some(Protocol::P2p(owner)) = addr.iter().last() {
            if owner != peer {
                return Err(NetError::Config(format!(
                    "address {addr} belongs to peer {owner}, not {peer}"
                )));
            }
            addr.pop();
        }
        self.swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, addr.clone());
        self.swarm.add_peer_address(peer, addr.clone());
        if self.swarm.is_connected(&peer) {
            return Ok(());
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(vec![addr.clone()])
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => {
                debug!(%peer, %addr, "dialing peer");
                Ok(())
            }
            // Already connected or being dialed: nothing to do.
            Err(DialError::DialPeerConditionFalse(_)) => Ok(()),
            Err(error) => {
                warn!(%peer, %addr, %error, "dial failed");
                Err(NetError::Dial {
                    addr,
                    reason: error.to_string(),
                })
            }
        }
    }

    fn publish(&mut self, data: Vec<u8>) -> Result<(), NetError> {
        let size = data.len();
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), data)
        {
            Ok(message_id) => {
                bump(&self.stats.gossip_published, 1);
                trace!(%message_id, size, "published gossip");
                // Approximation (see `PeerBytes`): the encoded size once per subscribed peer.
                let topic = &self.topic;
                let subscribed: Vec<PeerId> = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&topic))
                    .map(|(p, _)| *p)
                    .collect();
                for peer in subscribed {
                    self.peer_bytes(peer, 0, size as u64);
                }
                Ok(())
            }
            Err(PublishError::NoPeersSubscribedToTopic) => Err(NetError::NoPeers),
            Err(PublishError::Duplicate) => Err(NetError::Duplicate),
            Err(PublishError::MessageTooLarge) => Err(NetError::Oversize {
                size,
                limit: max_transmit_size(self.max_message_bytes),
            }),
            Err(PublishError::AllQueuesFull(n)) => Err(NetError::Publish(format!(
                "the send queues to all {n} peers are full (network congested)"
            ))),
            Err(error) => Err(NetError::Publish(error.to_string())),
        }
    }

    /// Sends an event to the application without ever waiting; counts what is dropped.
    fn emit(&mut self, event: NetEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                let n = bump(&self.stats.events_dropped, 1);
                if n.is_power_of_two() {
                    warn!(
                        dropped_total = n,
                        ?event,
                        "event channel full; the application is too slow, dropping events"
                    );
                }
            }
            Err(TrySendError::Closed(_)) => {
                let n = bump(&self.stats.events_dropped, 1);
                if n.is_power_of_two() {
                    debug!(
                        dropped_total = n,
                        "event receiver dropped; discarding events"
                    );
                }
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<ApiaryBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(ApiaryBehaviourEvent::Gossipsub(ev)) => self.on_gossipsub(ev),
            SwarmEvent::Behaviour(ApiaryBehaviourEvent::Blobs(ev)) => {
                self.on_served::<BlobProtocol>(ev)
            }
            SwarmEvent::Behaviour(ApiaryBehaviourEvent::Identify(ev)) => self.on_identify(ev),
            SwarmEvent::Behaviour(ApiaryBehaviourEvent::Ranges(ev)) => {
                self.on_served::<RangeProtocol>(ev)
            }
            SwarmEvent::Behaviour(ApiaryBehaviourEvent::Kad(ev)) => self.on_kad(ev),
            SwarmEvent::Behaviour(ApiaryBehaviourEvent::Ping(ev)) => on_ping(ev),
            SwarmEvent::Behaviour(ApiaryBehaviourEvent::RelayClient(ev)) => {
                self.on_relay_client(ev)
            }
            SwarmEvent::Behaviour(ApiaryBehaviourEvent::RelayServer(ev)) => {
                self.on_relay_server(ev)
            }
            SwarmEvent::Behaviour(ApiaryBehaviourEvent::Dcutr(ev)) => self.on_dcutr(ev),
            SwarmEvent::Behaviour(ApiaryBehaviourEvent::Autonat(ev)) => on_autonat(ev),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connection established");
                if self.guard.is_banned(&peer_id, Instant::now()) {
                    bump(&self.stats.connections_refused_banned, 1);
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                }
                if let Some(pending) = self.pending_dials.remove(&connection_id) {
                    let _ = pending.reply.send(Ok(()));
                }
                if num_established.get() == 1 {
                    self.stats.peer_bytes.set_connected(&peer_id, true);
                    info!(peer = %peer_id, "peer connected");
                    self.emit(NetEvent::PeerConnected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                debug!(peer = %peer_id, ?cause, "connection closed");
                if num_established == 0 {
                    self.stats.peer_bytes.set_connected(&peer_id, false);
                    info!(peer = %peer_id, "peer disconnected");
                    self.emit(NetEvent::PeerDisconnected(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let pending = self.pending_dials.remove(&connection_id);
                let addrs = failed_addresses(&error, pending.as_ref().map(|p| &p.addr));
                let peer = peer_id
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown".into());
                if matches!(error, DialError::DialPeerConditionFalse(_)) {
                    debug!(%peer, "dial skipped: already connected or dialing");
                } else {
                    warn!(%peer, addrs = %addrs, %error, "dial failed");
                }
                if let Some(pending) = pending {
                    let _ = pending.reply.send(Err(NetError::Dial {
                        addr: pending.addr,
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                peer_id,
                ..
            } => {
                debug!(?peer_id, addr = %send_back_addr, %error, "incoming connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => self.on_new_listen_addr(address),
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                info!(%address, "listen address expired")
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                warn!(?addresses, ?reason, "listener closed");
            }
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            other => trace!(?other, "swarm event"),
        }
    }

    fn on_gossipsub(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                self.peer_bytes(propagation_source, message.data.len() as u64, 0);
                let from = message.source.unwrap_or(propagation_source);
                let checked = if message.topic == self.topic {
                    self.check_gossip(&message.data, &from)
                } else {
                    debug!(peer = %from, topic = %message.topic, "gossip on an unexpected topic");
                    Err(weight::BROKEN)
                };
                let (acceptance, deliver) = match checked {
                    Err(w) => {
                        self.strike(propagation_source, w, "sent a broken gossip message");
                        (MessageAcceptance::Reject, None)
                    }
                    Ok(env) => match self.admit.admit(&from, &env.hotkey, &env.payload) {
                        Admission::Accept => {
                            // The originator signed as a registered hotkey: serve it first.
                            if message.source.is_some() {
                                self.guard.vouch(from, Instant::now());
                            }
                            (MessageAcceptance::Accept, Some((env, true)))
                        }
                        Admission::Reject(why) => {
                            bump(&self.stats.gossip_rejected, 1);
                            debug!(peer = %from, hotkey = %env.hotkey, reason = why, "gossip refused by admission");
                            self.strike(propagation_source, weight::REJECTED, why);
                            (MessageAcceptance::Reject, None)
                        }
                        Admission::Ignore(why) => {
                            bump(&self.stats.gossip_ignored, 1);
                            trace!(peer = %from, reason = why, "gossip ignored by admission");
                            (MessageAcceptance::Ignore, None)
                        }
                        Admission::Unknown => {
                            bump(&self.stats.gossip_unknown_hotkey, 1);
                            self.strike(
                                propagation_source,
                                weight::UNKNOWN_HOTKEY,
                                "gossip from hotkeys not registered on the subnet",
                            );
                            (MessageAcceptance::Ignore, Some((env, false)))
                        }
                    },
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                if let Some((env, admitted)) = deliver {
                    bump(&self.stats.gossip_received, 1);
                    trace!(peer = %from, hotkey = %env.hotkey, size = env.payload.len(), admitted, "gossip delivered");
                    self.emit(NetEvent::Gossip {
                        from,
                        hotkey: env.hotkey,
                        payload: env.payload,
                        admitted,
                    });
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic, .. } => {
                debug!(peer = %peer_id, %topic, "peer subscribed");
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                debug!(peer = %peer_id, %topic, "peer unsubscribed");
            }
            gossipsub::Event::GossipsubNotSupported { peer_id } => {
                debug!(peer = %peer_id, "peer does not speak gossipsub");
            }
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                warn!(peer = %peer_id, ?failed_messages, "peer is too slow to receive gossip");
            }
            #[allow(unreachable_patterns)]
            other => trace!(?other, "gossipsub event"),
        }
    }

    /// Size check, envelope decoding and hotkey signature check (for this subnet); counts every
    /// failure and returns its strike weight.
    fn check_gossip(&self, data: &[u8], from: &PeerId) -> Result<SignedEnvelope, f64> {
        let limit = self.max_message_bytes.saturating_add(ENVELOPE_OVERHEAD);
        if data.len() > limit {
            bump(&self.stats.oversize, 1);
            warn!(peer = %from, size = data.len(), limit, "rejecting oversize gossip");
            return Err(weight::BROKEN);
        }
        let env = match SignedEnvelope::decode(data, self.max_message_bytes) {
            Ok(env) => env,
            Err(NetError::Oversize { size, limit }) => {
                bump(&self.stats.oversize, 1);
                warn!(peer = %from, size, limit, "rejecting oversize gossip payload");
                return Err(weight::BROKEN);
            }
            Err(error) => {
                bump(&self.stats.malformed, 1);
                warn!(peer = %from, %error, "rejecting malformed gossip");
                return Err(weight::BROKEN);
            }
        };
        if let Err(error) = env.verify(&self.subnet) {
            bump(&self.stats.bad_signature, 1);
            warn!(peer = %from, hotkey = %env.hotkey, %error, "rejecting gossip with a bad hotkey signature (or signed for another subnet)");
            return Err(weight::BROKEN);
        }
        Ok(env)
    }

    /// Handles an event of one of the two request/response protocols the node serves
    /// (`/apiary/blob/1`, `/apiary/range/1`; what differs is in [`Served`]): an inbound request
    /// is admitted (or answered `Busy`) and looked up off the loop; a response or a failure is
    /// handed to the fetch waiting for it.
    fn on_served<P: Served>(&mut self, event: request_response::Event<P::Request, P::Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.peer_bytes(peer, BLOB_ID_BYTES, 0);
                    if !self.admit_request(peer) {
                        let _ = P::behaviour(self.swarm.behaviour_mut())
                            .send_response(channel, P::busy());
                        return;
                    }
                    trace!(%peer, ?request, "{} requested", P::WHAT);
                    let provider = self.provider.clone();
                    self.lookups.spawn_blocking(move || {
                        P::lookup(provider.as_ref(), request, channel, peer)
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.peer_bytes(peer, P::response_bytes(&response), 0);
                    if let Some(pending) = P::pending(self).remove(&request_id) {
                        let _ = pending.reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(%peer, %error, "{} request failed", P::WHAT);
                if let Some(pending) = P::pending(self).remove(&request_id) {
                    let _ = pending.reply.send(Err(outbound_error(pending.peer, error)));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "serving a {} failed", P::WHAT);
            }
            request_response::Event::ResponseSent { peer, .. } => {
                trace!(%peer, "{} response sent", P::WHAT);
            }
        }
    }

    /// Whether a blob or range request from `peer` is served now: a serving slot is free for it
    /// (registered peers first) and its meter has a token. Counts and strikes refusals.
    fn admit_request(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        let busy = !self.guard.has_slot(&peer, self.lookups.len(), now);
        if busy || !self.guard.take_request(peer, now) {
            bump(&self.stats.blob_requests_throttled, 1);
            debug!(%peer, busy, "blob request throttled");
            if !busy {
                self.strike(peer, weight::THROTTLED, "blob requests past its meter");
            }
            return false;
        }
        true
    }

    fn on_lookup(&mut self, lookup: Lookup) {
        let (channel, id, peer, blob) = match lookup {
            Lookup::Blob {
                channel,
                id,
                peer,
                blob,
            } => (channel, id, peer, blob),
            Lookup::Range {
                channel,
                peer,
                response,
            } => {
                match &response {
                    RangeResponse::Groups(bytes) => {
                        bump(&self.stats.ranges_served, 1);
                        bump(&self.stats.bytes_sent, bytes.len() as u64);
                    }
                    RangeResponse::Outboard { inline, .. } => {
                        bump(&self.stats.ranges_served, 1);
                        if let Some(bytes) = inline {
                            bump(&self.stats.bytes_sent, bytes.len() as u64);
                        }
                    }
                    RangeResponse::NotFound => {
                        bump(&self.stats.blob_requests_not_found, 1);
                    }
                    RangeResponse::BadRange | RangeResponse::Busy => {}
                }
                let size = range_response_bytes(&response);
                if self
                    .swarm
                    .behaviour_mut()
                    .ranges
                    .send_response(channel, response)
                    .is_err()
                {
                    debug!(%peer, "requester went away before the range was sent");
                } else {
                    self.peer_bytes(peer, 0, size);
                }
                return;
            }
        };
        let response = match blob {
            None => {
                bump(&self.stats.blob_requests_not_found, 1);
                debug!(%peer, id = %hex::encode(id), "requested blob not found");
                BlobResponse::NotFound
            }
            Some(bytes) if bytes.len() > self.max_blob_bytes => {
                warn!(
                    %peer,
                    id = %hex::encode(id),
                    size = bytes.len(),
                    limit = self.max_blob_bytes,
                    "requested blob exceeds max_blob_bytes; not serving it"
                );
                BlobResponse::TooLarge {
                    size: bytes.len() as u64,
                }
            }
            Some(bytes) => {
                bump(&self.stats.blobs_served, 1);
                bump(&self.stats.bytes_sent, bytes.len() as u64);
                BlobResponse::Found(ByteBuf::from(bytes))
            }
        };
        let size = blob_response_bytes(&response);
        if self
            .swarm
            .behaviour_mut()
            .blobs
            .send_response(channel, response)
            .is_err()
        {
            debug!(%peer, "requester went away before the blob response was sent");
        } else {
            self.peer_bytes(peer, 0, size);
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        match event {
            identify::Event::Received { peer_id, info, .. } => {
                debug!(peer = %peer_id, agent = %info.agent_version, addrs = ?info.listen_addrs, "identified peer");
                let kad = &mut self.swarm.behaviour_mut().kad;
                for addr in info.listen_addrs {
                    kad.add_address(&peer_id, addr);
                }
            }
            identify::Event::Error { peer_id, error, .. } => {
                debug!(peer = %peer_id, %error, "identify failed");
            }
            other => trace!(?other, "identify event"),
        }
    }

    /// A listen address is up. A relay must tell the peers it serves where it is reachable
    /// (its reservations carry its external addresses), so a node running the relay service
    /// takes its direct listen addresses as external ones: an operator runs a relay only on a
    /// reachable address.
    fn on_new_listen_addr(&mut self, address: Multiaddr) {
        info!(%address, "listening");
        let relayed = address.iter().any(|p| matches!(p, Protocol::P2pCircuit));
        if self.relay_server && !relayed {
            self.swarm.add_external_address(address);
        }
    }

    fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    bump(&self.stats.relay_reservations, 1);
                    info!(relay = %relay_peer_id, "relay accepted our reservation: peers can reach us through it");
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                bump(&self.stats.relayed_connections, 1);
                debug!(relay = %relay_peer_id, "connected to a peer through a relay");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                bump(&self.stats.relayed_connections, 1);
                debug!(peer = %src_peer_id, "a peer connected to us through a relay");
            }
        }
    }

    fn on_relay_server(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                debug!(peer = %src_peer_id, "relaying for a peer (reservation accepted)");
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                bump(&self.stats.circuits_relayed, 1);
                debug!(src = %src_peer_id, dst = %dst_peer_id, "relaying a circuit");
            }
            other => debug!(?other, "relay service event"),
        }
    }

    fn on_dcutr(&mut self, event: dcutr::Event) {
        match event.result {
            Ok(_) => {
                bump(&self.stats.hole_punches_succeeded, 1);
                info!(peer = %event.remote_peer_id, "hole punched: direct connection replaces the relayed one");
            }
            Err(error) => {
                bump(&self.stats.hole_punches_failed, 1);
                debug!(peer = %event.remote_peer_id, %error, "hole punching failed; staying relayed");
            }
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => {
                if let kad::QueryResult::GetProviders(result) = result {
                    if let Some(pending) = self.pending_providers.get_mut(&id) {
                        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                            for p in providers {
                                if !pending.found.contains(&p) {
                                    pending.found.push(p);
                                }
                            }
                        }
                    }
                    if step.last {
                        if let Some(pending) = self.pending_providers.remove(&id) {
                            let _ = pending.reply.send(pending.found);
                        }
                    }
                }
            }
            kad::Event::RoutingUpdated { peer, .. } => trace!(%peer, "kad routing updated"),
            other => trace!(?other, "kad event"),
        }
    }
}

fn on_autonat(event: autonat::Event) {
    match event {
        autonat::Event::StatusChanged { old, new } => {
            info!(?old, ?new, "reachability (AutoNAT) changed");
        }
        other => trace!(?other, "autonat event"),
    }
}

/// Payload bytes of a blob or range request: the blob id ([`crate::PeerBytes`]).
const BLOB_ID_BYTES: u64 = 32;

/// Payload bytes of a [`BlobResponse`]: the blob's, none for the other answers.
fn blob_response_bytes(response: &BlobResponse) -> u64 {
    match response {
        BlobResponse::Found(bytes) => bytes.len() as u64,
        BlobResponse::NotFound | BlobResponse::TooLarge { .. } | BlobResponse::Busy => 0,
    }
}

/// Payload bytes of a [`RangeResponse`]: the groups, or the group hashes and the inline blob.
fn range_response_bytes(response: &RangeResponse) -> u64 {
    match response {
        RangeResponse::Groups(bytes) => bytes.len() as u64,
        RangeResponse::Outboard { cvs, inline, .. } => {
            (cvs.len() + inline.as_ref().map_or(0, |b| b.len())) as u64
        }
        RangeResponse::NotFound | RangeResponse::BadRange | RangeResponse::Busy => 0,
    }
}

/// A transport failure of an outbound request, as the caller sees it.
fn outbound_error(peer: PeerId, error: request_response::OutboundFailure) -> NetError {
    match error {
        request_response::OutboundFailure::Timeout => {
            NetError::Timeout(format!("blob request to {peer}"))
        }
        other => NetError::RequestFailed {
            peer,
            reason: other.to_string(),
        },
    }
}

/// Answers a range request from the provider (on the blocking pool).
fn serve_range(provider: &dyn BlobProvider, request: &RangeRequest) -> RangeResponse {
    let group = 1u64 << PART_LOG;
    match *request {
        RangeRequest::Outboard { id } => {
            let Some(outboard) = provider.outboard(&id) else {
                return RangeResponse::NotFound;
            };
            if outboard.len > MAX_RANGED_BLOB_BYTES || outboard.group_log != PART_LOG {
                return RangeResponse::NotFound;
            }
            let inline = if outboard.len <= group {
                match provider.get_range(&id, 0, outboard.len) {
                    Some(bytes) => Some(ByteBuf::from(bytes)),
                    None => return RangeResponse::NotFound,
                }
            } else {
                None
            };
            RangeResponse::Outboard {
                len: outboard.len,
                cvs: ByteBuf::from(outboard.cvs.concat()),
                inline,
            }
        }
        RangeRequest::Groups { id, first, count } => {
            if count == 0 || count > MAX_RANGE_GROUPS {
                return RangeResponse::BadRange;
            }
            let Some(outboard) = provider.outboard(&id) else {
                return RangeResponse::NotFound;
            };
            let Some(offset) = first.checked_mul(group).filter(|o| *o < outboard.len) else {
                return RangeResponse::BadRange;
            };
            let end = first
                .saturating_add(u64::from(count))
                .saturating_mul(group)
                .min(outboard.len);
            match provider.get_range(&id, offset, end - offset) {
                Some(bytes) => RangeResponse::Groups(ByteBuf::from(bytes)),
                None => RangeResponse::NotFound,
            }
        }
    }
}

fn on_ping(event: ping::Event) {
    if let Err(error) = &event.result {
        debug!(peer = %event.peer, %error, "ping failed");
    }
}

/// The addresses a failed dial tried, for logs.
fn failed_addresses(error: &DialError, requested: Option<&Multiaddr>) -> String {
    let addrs: Vec<String> = match error {
        DialError::Transport(errors) => errors.iter().map(|(a, _)| a.to_string()).collect(),
        DialError::LocalPeerId { address } | DialError::WrongPeerId { address, .. } => {
            vec![address.to_string()]
        }
        _ => requested.map(|a| vec![a.to_string()]).unwrap_or_default(),
    };
    if addrs.is_empty() {
        "none".into()
    } else {
        addrs.join(",")
    }
}
