//! The cloneable front of the network: every call is a command to the event loop.

use std::{sync::Arc, time::Duration};

use apiary_chain::keys::Hotkey;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::{
    download::{self, BlobSink, DownloadOptions, DownloadReport, DownloadStatus, Downloads},
    event_loop::Command,
    stats::bump,
    BlobResponse, NetError, NetStats, PeerStanding, RangeRequest, RangeResponse, SignedEnvelope,
    SubnetTag,
};

/// Strike weight of a peer that served bytes that do not match their id: it is banned at once
/// (an honest node never does that; a corrupted disk is its operator's to fix).
pub(crate) const WRONG_BYTES_WEIGHT: f64 = f64::INFINITY;

/// Blobs larger than this are hashed on the blocking pool instead of the caller's task.
const HASH_INLINE_MAX: usize = 1 << 20;
/// Slack on top of the request timeout before a handle gives up on the loop's answer.
const REPLY_SLACK: Duration = Duration::from_secs(5);

/// Controls a running network. Cheap to clone; the event loop stops when every handle is
/// dropped or [`NetHandle::shutdown`] is called.
#[derive(Clone)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    hotkey: Hotkey,
    subnet: SubnetTag,
    stats: Arc<NetStats>,
    max_message_bytes: usize,
    request_timeout: Duration,
    downloads: Arc<Downloads>,
}

/// How long a DHT provider lookup may take.
const FIND_PROVIDERS_TIMEOUT: Duration = Duration::from_secs(5);

impl std::fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandle")
            .field("local_peer_id", &self.local_peer_id)
            .field("hotkey", &self.hotkey)
            .finish_non_exhaustive()
    }
}

impl NetHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        local_peer_id: PeerId,
        hotkey: Hotkey,
        subnet: SubnetTag,
        stats: Arc<NetStats>,
        max_message_bytes: usize,
        request_timeout: Duration,
    ) -> Self {
        Self {
            commands,
            local_peer_id,
            hotkey,
            subnet,
            stats,
            max_message_bytes,
            request_timeout,
            downloads: Arc::default(),
        }
    }

    /// Sends a command and waits for its reply.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Shutdown)?;
        rx.await.map_err(|_| NetError::Shutdown)
    }

    /// Like [`Self::ask`], bounded by the request timeout plus some slack.
    async fn ask_timed<T>(
        &self,
        what: impl FnOnce() -> String,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        tokio::time::timeout(self.request_timeout + REPLY_SLACK, self.ask(make))
            .await
            .map_err(|_| NetError::Timeout(what()))?
    }

    /// This node's libp2p peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The addresses the node listens on, with the actual bound port (empty after shutdown).
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(Command::ListenAddrs).await.unwrap_or_default()
    }

    /// Dials `addr` (it may end in `/p2p/<peer id>`) and waits until the connection is up or
    /// the dial failed.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        let what = addr.to_string();
        self.ask_timed(
            || format!("dialing {what}"),
            |reply| Command::Dial { addr, reply },
        )
        .await?
    }

    /// Remembers `addr` for `peer` (kad routing table and swarm) and dials it if the peer is not
    /// connected. Returns once the dial has started, not when it completes.
    pub async fn add_peer_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|reply| Command::AddPeerAddress { peer, addr, reply })
            .await?
    }

    /// What AutoNAT concluded about this node's reachability ("off" unless `autonat`).
    pub async fn nat_status(&self) -> String {
        self.ask(Command::NatStatus)
            .await
            .unwrap_or_else(|_| "network stopped".into())
    }

    /// Peers with at least one open connection (empty after shutdown).
    pub async fn connected_peers(&self) -> Vec<PeerId> {
        self.ask(Command::ConnectedPeers).await.unwrap_or_default()
    }

    /// How many peers are subscribed to the announcement topic (0 after shutdown).
    pub async fn gossip_peers(&self) -> usize {
        self.ask(Command::GossipPeers).await.unwrap_or_default()
    }

    /// Signs `payload` with the hotkey and publishes the envelope on the topic.
    ///
    /// Fails with [`NetError::Oversize`] above `max_message_bytes` and with
    /// [`NetError::NoPeers`] while no peer is subscribed yet (retry later).
    pub async fn publish(&self, payload: Vec<u8>) -> Result<(), NetError> {
        if payload.len() > self.max_message_bytes {
            return Err(NetError::Oversize {
                size: payload.len(),
                limit: self.max_message_bytes,
            });
        }
        let env = SignedEnvelope::sign(&self.hotkey, &self.subnet, payload);
        self.publish_raw(env.encode()).await
    }

    /// Publishes an envelope as it is, without re-signing or size checks (fault injection).
    pub async fn publish_envelope(&self, env: SignedEnvelope) -> Result<(), NetError> {
        self.publish_raw(env.encode()).await
    }

    /// Publishes raw bytes on the topic (fault injection: malformed or oversize messages).
    pub async fn publish_raw(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.ask(|reply| Command::Publish { data: bytes, reply })
            .await?
    }

    /// Fetches the blob `id` from `peer` and checks that its blake3 hash is `id`.
    ///
    /// Errors: [`NetError::NotFound`] if the peer lacks it, [`NetError::HashMismatch`] if it
    /// served other bytes (counted in `bad_blob_hash`), [`NetError::BlobTooLarge`],
    /// [`NetError::Timeout`] or [`NetError::RequestFailed`] on transport failures.
    pub async fn fetch_blob(&self, peer: PeerId, id: [u8; 32]) -> Result<Vec<u8>, NetError> {
        let response = self
            .ask_timed(
                || format!("blob request to {peer}"),
                |reply| Command::FetchBlob { peer, id, reply },
            )
            .await??;
        let bytes = match response {
            BlobResponse::Found(bytes) => bytes.into_vec(),
            BlobResponse::NotFound => return Err(NetError::NotFound { peer, id }),
            BlobResponse::TooLarge { size } => return Err(NetError::BlobTooLarge { peer, size }),
            BlobResponse::Busy => {
                return Err(NetError::RequestFailed {
                    peer,
                    reason: "the peer is busy serving (its meter for us is empty); try another \
                             provider or later"
                        .into(),
                })
            }
        };
        bump(&self.stats.bytes_received, bytes.len() as u64);
        let (bytes, got) = if bytes.len() > HASH_INLINE_MAX {
            tokio::task::spawn_blocking(move || {
                let got = *blake3::hash(&bytes).as_bytes();
                (bytes, got)
            })
            .await
            .map_err(|e| NetError::RequestFailed {
                peer,
                reason: format!("hashing the blob failed: {e}"),
            })?
        } else {
            let got = *blake3::hash(&bytes).as_bytes();
            (bytes, got)
        };
        if got != id {
            bump(&self.stats.bad_blob_hash, 1);
            tracing::warn!(%peer, id = %hex::encode(id), got = %hex::encode(got), "peer served a blob with the wrong hash");
            self.report_peer(
                peer,
                WRONG_BYTES_WEIGHT,
                "served bytes that do not match their id",
            );
            return Err(NetError::HashMismatch { peer, id });
        }
        bump(&self.stats.blobs_fetched, 1);
        Ok(bytes)
    }

    /// Fetches blob `id` from the first peer that serves it correctly: `providers` in order,
    /// then every other connected peer. Returns the bytes and the peer that served them.
    pub async fn fetch_blob_any(
        &self,
        id: [u8; 32],
        providers: &[PeerId],
    ) -> Result<(Vec<u8>, PeerId), NetError> {
        let mut tried: Vec<PeerId> = Vec::new();
        let mut last: Option<NetError> = None;
        let connected = self.connected_peers().await;
        for peer in providers.iter().chain(connected.iter()).copied() {
            if peer == self.local_peer_id || tried.contains(&peer) {
                continue;
            }
            tried.push(peer);
            match self.fetch_blob(peer, id).await {
                Ok(bytes) => return Ok((bytes, peer)),
                Err(NetError::Shutdown) => return Err(NetError::Shutdown),
                Err(error) => {
                    debug!(%peer, id = %hex::encode(id), %error, "provider could not serve blob");
                    last = Some(error);
                }
            }
        }
        Err(NetError::Unavailable {
            id,
            tried: tried.len(),
            last: last
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no providers given and no peers connected".into()),
        })
    }

    /// Asks `peer` for a blob's outboard or groups ([`RangeRequest`]); the answer is not
    /// verified here ([`NetHandle::download`] does that).
    pub async fn fetch_range(
        &self,
        peer: PeerId,
        request: RangeRequest,
    ) -> Result<RangeResponse, NetError> {
        self.ask_timed(
            || format!("range request to {peer}"),
            |reply| Command::FetchRange {
                peer,
                request,
                reply,
            },
        )
        .await?
    }

    /// Downloads blob `id` in verified ranges from many providers at once into `sink`:
    /// `hints` first, then every connected peer, then the DHT's provider records. Resumes from
    /// the groups the sink holds; a provider that sends a bad group is reported and its range
    /// fetched elsewhere. See the `download` module docs.
    pub async fn download(
        &self,
        id: [u8; 32],
        hints: &[PeerId],
        sink: Arc<dyn BlobSink>,
        opts: &DownloadOptions,
    ) -> Result<DownloadReport, NetError> {
        download::download(self, &self.downloads, id, hints, sink, opts).await
    }

    /// The downloads in flight, with their progress.
    pub fn downloads(&self) -> Vec<DownloadStatus> {
        self.downloads.statuses()
    }

    /// Announces a Kademlia provider record for blob `id` (this node serves it). Never waits.
    pub fn provide(&self, id: [u8; 32]) {
        let _ = self.commands.try_send(Command::Provide { id });
    }

    /// The peers the DHT lists as providers of `id` (empty when none is known or the lookup
    /// took longer than 5 s).
    pub async fn find_providers(&self, id: [u8; 32]) -> Vec<PeerId> {
        tokio::time::timeout(
            FIND_PROVIDERS_TIMEOUT,
            self.ask(|reply| Command::FindProviders { id, reply }),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
    }

    /// What this node's envelope signatures bind (chain genesis and netuid).
    pub fn subnet_tag(&self) -> SubnetTag {
        self.subnet
    }

    /// Every connected or banned peer's standing: gossipsub score, strikes, ban.
    pub async fn standings(&self) -> Vec<PeerStanding> {
        self.ask(Command::Standings).await.unwrap_or_default()
    }

    /// Lifts `peer`'s ban; whether it had one.
    pub async fn unban(&self, peer: PeerId) -> Result<bool, NetError> {
        self.ask(|reply| Command::Unban { peer, reply }).await
    }

    /// Blocks `peer` by hand: its connections close and new ones are refused (both ways) until
    /// [`NetHandle::unblock_peer`]. For operators cutting off a peer, and for tests that
    /// partition a swarm.
    pub async fn block_peer(&self, peer: PeerId) -> Result<(), NetError> {
        self.commands
            .send(Command::Block { peer, on: true })
            .await
            .map_err(|_| NetError::Shutdown)
    }

    /// Lifts a block set by [`NetHandle::block_peer`] (a ban in force stays).
    pub async fn unblock_peer(&self, peer: PeerId) -> Result<(), NetError> {
        self.commands
            .send(Command::Block { peer, on: false })
            .await
            .map_err(|_| NetError::Shutdown)
    }

    /// Reports a peer caught misbehaving by the application: a strike of `weight` (a peer is
    /// banned at 20 by default). Never waits.
    pub fn report_peer(&self, peer: PeerId, weight: f64, reason: &str) {
        let _ = self.commands.try_send(Command::Report {
            peer,
            weight,
            reason: reason.to_string(),
        });
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// Stops the event loop, closes the listener and every connection. Returns once the swarm
    /// is gone; a no-op if it already stopped.
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}
