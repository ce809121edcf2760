//! Verified, ranged downloads of one blob from many providers at once.
//!
//! A blob is cut into aligned groups of `2^PART_LOG` bytes (1 MiB), and its blake3 tree gives
//! each group its own hash (the [`Outboard`], see `apiary_storage::outboard`). A download
//!
//! 1. asks providers in turn for the outboard and checks it against the id (a peer that sends
//!    one that does not merge to the id is reported and skipped); a blob of one group comes
//!    inline in that answer and is checked whole;
//! 2. skips the groups the [`BlobSink`] already holds (an interrupted download resumes);
//! 3. cuts the missing groups into ranges of [`DownloadOptions::range_groups`] and keeps up to
//!    [`DownloadOptions::per_provider`] ranges in flight at each provider, up to
//!    [`DownloadOptions::max_in_flight`] in all, so fast providers take more of the work;
//! 4. checks every group of a range as it arrives, on the blocking pool, and hands the good
//!    ones to the sink at once (a multi-GB blob is never in memory whole). A group that does
//!    not match its hash marks the sender bad: it is reported to peer scoring (an honest node
//!    never does that, so the strike bans it), and the rest of the range goes to another
//!    provider. A provider that fails in transport twice or lacks the blob is dropped; its
//!    ranges go to the others. When every provider is gone, the peers connected since and the
//!    DHT's provider records are tried before giving up, and what was stored stays for the
//!    next attempt;
//! 5. asks the sink to finish the blob (all groups held, the outboard checked again) and
//!    announces a provider record in the DHT, so that every node serves what it holds.
//!
//! Progress is shared through [`DownloadProgress`] (the admin socket lists downloads in
//! flight with their rate and ETA).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::{stream::FuturesUnordered, StreamExt};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::{
    handle::WRONG_BYTES_WEIGHT, stats::bump, NetError, NetHandle, Outboard, RangeRequest,
    RangeResponse, MAX_RANGED_BLOB_BYTES, MAX_RANGE_GROUPS, PART_LOG,
};

/// Where a download puts what it verified. Implemented by the node over its store (parts
/// written as they arrive) and by [`MemorySink`]. Called on the blocking pool.
pub trait BlobSink: Send + Sync + 'static {
    /// Groups of `id` already held from an earlier, interrupted download (they are skipped).
    fn held_groups(&self, id: &[u8; 32], outboard: &Outboard) -> Result<Vec<u64>, String>;
    /// Stores group `index`, already checked against the outboard.
    fn put_group(
        &self,
        id: &[u8; 32],
        outboard: &Outboard,
        index: u64,
        bytes: &[u8],
    ) -> Result<(), String>;
    /// Every group is stored: make the blob whole.
    fn finish(&self, id: &[u8; 32], outboard: &Outboard) -> Result<(), String>;
}

/// A [`BlobSink`] in memory (tools, tests, benchmarks): [`MemorySink::take`] returns the blob.
#[derive(Default)]
pub struct MemorySink {
    blobs: Mutex<HashMap<[u8; 32], Partial>>,
}

/// A blob's bytes and which of its groups are held.
type Partial = (Vec<u8>, Vec<bool>);

impl MemorySink {
    /// The finished (or partial) bytes of `id`, removed from the sink.
    pub fn take(&self, id: &[u8; 32]) -> Option<Vec<u8>> {
        lock(&self.blobs).remove(id).map(|(bytes, _)| bytes)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlobSink for MemorySink {
    fn held_groups(&self, id: &[u8; 32], outboard: &Outboard) -> Result<Vec<u64>, String> {
        Ok(lock(&self.blobs)
            .get(id)
            .filter(|(bytes, _)| bytes.len() as u64 == outboard.len)
            .map(|(_, held)| {
                held.iter()
                    .enumerate()
                    .filter(|(_, h)| **h)
                    .map(|(i, _)| i as u64)
                    .collect()
            })
            .unwrap_or_default())
    }

    fn put_group(
        &self,
        id: &[u8; 32],
        outboard: &Outboard,
        index: u64,
        bytes: &[u8],
    ) -> Result<(), String> {
        let len = usize::try_from(outboard.len).map_err(|e| e.to_string())?;
        let (offset, _) = outboard
            .group_range(index)
            .ok_or_else(|| format!("group {index} is past the blob's end"))?;
        let mut blobs = lock(&self.blobs);
        if !blobs.contains_key(id) {
            // The length comes from a peer's outboard: reserve fallibly, never abort on it.
            let mut buf = Vec::new();
            buf.try_reserve_exact(len)
                .map_err(|e| format!("cannot hold a {len}-byte blob in memory: {e}"))?;
            buf.resize(len, 0);
            let groups = usize::try_from(outboard.groups()).unwrap_or(0);
            blobs.insert(*id, (buf, vec![false; groups]));
        }
        let Some((buf, held)) = blobs.get_mut(id) else {
            return Err("the blob vanished from the sink".into());
        };
        let start = usize::try_from(offset).map_err(|e| e.to_string())?;
        let end = start + bytes.len();
        buf.get_mut(start..end)
            .ok_or_else(|| format!("group {index} does not fit the blob"))?
            .copy_from_slice(bytes);
        if let Some(h) = held.get_mut(index as usize) {
            *h = true;
        }
        Ok(())
    }

    fn finish(&self, id: &[u8; 32], outboard: &Outboard) -> Result<(), String> {
        let blobs = lock(&self.blobs);
        match blobs.get(id) {
            Some((_, held)) if held.iter().all(|h| *h) => Ok(()),
            Some(_) => Err("some groups are missing".into()),
            None if outboard.len == 0 => Ok(()),
            None => Err("nothing was stored".into()),
        }
    }
}

/// How a download spreads its requests.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Groups (1 MiB each) per range request, 1..=[`MAX_RANGE_GROUPS`].
    pub range_groups: u32,
    /// Ranges in flight at one provider at most.
    pub per_provider: usize,
    /// Ranges in flight in all at most (bounds the memory a download holds:
    /// `max_in_flight × range_groups` MiB).
    pub max_in_flight: usize,
    /// Largest blob accepted, in bytes.
    pub max_len: u64,
    /// Transport failures after which a provider is dropped from this download.
    pub max_failures: u32,
    /// How long a provider that answered `Busy` is left alone.
    pub busy_backoff: Duration,
    /// Ask the DHT for provider records when the known providers run out.
    pub use_dht: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            range_groups: 8,
            per_provider: 4,
            max_in_flight: 16,
            max_len: MAX_RANGED_BLOB_BYTES,
            max_failures: 2,
            busy_backoff: Duration::from_millis(250),
            use_dht: true,
        }
    }
}

/// A download's progress, shared with whoever shows it.
#[derive(Debug)]
pub struct DownloadProgress {
    id: [u8; 32],
    started: Instant,
    total: AtomicU64,
    done: AtomicU64,
    resumed: AtomicU64,
    providers: AtomicUsize,
}

/// A point-in-time view of a download in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadStatus {
    /// The blob's id, hex.
    pub id: String,
    /// Its length in bytes (0 until the outboard arrived).
    pub total_bytes: u64,
    /// Bytes held, verified (including those resumed).
    pub done_bytes: u64,
    /// Bytes that were already held when the download started.
    pub resumed_bytes: u64,
    /// Providers still serving it.
    pub providers: usize,
    /// Seconds since it started.
    pub elapsed_s: f64,
    /// Bytes per second fetched so far (resumed bytes not counted).
    pub rate_bps: f64,
    /// Seconds left at that rate (`None` until something was fetched).
    pub eta_s: Option<f64>,
}

impl DownloadProgress {
    fn new(id: [u8; 32]) -> Self {
        DownloadProgress {
            id,
            started: Instant::now(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            providers: AtomicUsize::new(0),
        }
    }

    /// The current status.
    pub fn status(&self) -> DownloadStatus {
        let total = self.total.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed);
        let resumed = self.resumed.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        let fetched = done.saturating_sub(resumed) as f64;
        let rate = if elapsed > 0.0 {
            fetched / elapsed
        } else {
            0.0
        };
        DownloadStatus {
            id: hex::encode(self.id),
            total_bytes: total,
            done_bytes: done,
            resumed_bytes: resumed,
            providers: self.providers.load(Ordering::Relaxed),
            elapsed_s: elapsed,
            rate_bps: rate,
            eta_s: (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate),
        }
    }
}

/// The downloads in flight of one network (shared by its handles).
#[derive(Debug, Default)]
pub(crate) struct Downloads {
    active: Mutex<Vec<Arc<DownloadProgress>>>,
}

impl Downloads {
    fn register(self: &Arc<Self>, id: [u8; 32]) -> Registered {
        let progress = Arc::new(DownloadProgress::new(id));
        lock(&self.active).push(progress.clone());
        Registered {
            downloads: self.clone(),
            progress,
        }
    }

    pub(crate) fn statuses(&self) -> Vec<DownloadStatus> {
        lock(&self.active).iter().map(|p| p.status()).collect()
    }
}

/// Removes its download from the list when dropped (finished, failed or cancelled).
struct Registered {
    downloads: Arc<Downloads>,
    progress: Arc<DownloadProgress>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.downloads.active).retain(|p| !Arc::ptr_eq(p, &self.progress));
    }
}

/// What a finished download did.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadReport {
    /// The blob's length in bytes.
    pub len: u64,
    /// Bytes fetched by this download (groups already held not counted).
    pub fetched_bytes: u64,
    /// Groups that were already held (resumed).
    pub resumed_groups: u64,
    /// Bytes each provider served.
    pub providers: Vec<(PeerId, u64)>,
    /// Ranges (or outboards) that did not match their hashes; their senders were reported.
    pub bad_ranges: u64,
    /// Range requests that failed in transport or were refused, and were asked again.
    pub retries: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// One provider's state within a download.
struct Provider {
    peer: PeerId,
    in_flight: usize,
    failures: u32,
    served: u64,
    dropped: bool,
    resting_until: Option<Instant>,
    /// `Busy` answers in a row.
    busy: u32,
}

/// `Busy` answers in a row after which a provider is dropped from a download (with the 250 ms
/// rest between them, about 10 s of a provider that never has a slot for us).
const MAX_BUSY_IN_A_ROW: u32 = 40;

/// What verifying and storing a range came to.
enum Stored {
    /// Every group matched and is stored.
    All,
    /// Groups before `bad` are stored; `bad` did not match its hash (or the range was short).
    Bad { bad: u64 },
}

/// Runs a download (see the module docs).
pub(crate) async fn download(
    net: &NetHandle,
    downloads: &Arc<Downloads>,
    id: [u8; 32],
    hints: &[PeerId],
    sink: Arc<dyn BlobSink>,
    opts: &DownloadOptions,
) -> Result<DownloadReport, NetError> {
    let started = Instant::now();
    let registered = downloads.register(id);
    let progress = registered.progress.clone();
    let range_groups = u64::from(opts.range_groups.clamp(1, MAX_RANGE_GROUPS));
    let per_provider = opts.per_provider.max(1);
    let max_in_flight = opts.max_in_flight.max(1);
    let me = net.local_peer_id();

    let mut candidates: Vec<PeerId> = Vec::new();
    let add = |list: &mut Vec<PeerId>, peers: &[PeerId]| {
        for p in peers {
            if *p != me && !list.contains(p) {
                list.push(*p);
            }
        }
    };
    add(&mut candidates, hints);
    add(&mut candidates, &net.connected_peers().await);

    // 1. The outboard.
    let mut bad_ranges = 0u64;
    let mut lacking: Vec<PeerId> = Vec::new();
    let mut asked_dht = false;
    let (outboard, inline) = loop {
        let mut found = None;
        for peer in candidates.iter().copied() {
            if lacking.contains(&peer) {
                continue;
            }
            match fetch_outboard(net, peer, id, opts.max_len).await {
                Ok(got) => {
                    found = Some(got);
                    break;
                }
                Err(NetError::Shutdown) => return Err(NetError::Shutdown),
                Err(error) => {
                    if matches!(error, NetError::HashMismatch { .. }) {
                        bad_ranges += 1;
                    }
                    debug!(%peer, id = %hex::encode(id), %error, "no outboard from this peer");
                    lacking.push(peer);
                }
            }
        }
        if let Some(found) = found {
            break found;
        }
        if opts.use_dht && !asked_dht {
            asked_dht = true;
            let before = candidates.len();
            add(&mut candidates, &net.find_providers(id).await);
            if candidates.len() > before {
                continue;
            }
        }
        return Err(NetError::Unavailable {
            id,
            tried: lacking.len(),
            last: "no peer served the blob's outboard".into(),
        });
    };
    let outboard = Arc::new(outboard);
    progress.total.store(outboard.len, Ordering::Relaxed);

    // A blob of one group came whole with the outboard.
    if let Some(bytes) = inline {
        let len = bytes.len() as u64;
        let (sink2, ob) = (sink.clone(), outboard.clone());
        blocking(move || {
            sink2.put_group(&id, &ob, 0, &bytes)?;
            sink2.finish(&id, &ob)
        })
        .await?;
        progress.done.store(len, Ordering::Relaxed);
        bump(&net.stats().downloads_completed, 1);
        net.provide(id);
        return Ok(DownloadReport {
            len,
            fetched_bytes: len,
            resumed_groups: 0,
            providers: Vec::new(),
            bad_ranges,
            retries: 0,
            elapsed: started.elapsed(),
        });
    }

    // 2. What is still missing.
    let held = {
        let (sink2, ob) = (sink.clone(), outboard.clone());
        blocking(move || sink2.held_groups(&id, &ob)).await?
    };
    let groups = outboard.groups();
    let mut have = vec![false; usize::try_from(groups).unwrap_or(0)];
    let mut resumed_bytes = 0u64;
    for g in held {
        if let (Some(h), Some((_, len))) = (have.get_mut(g as usize), outboard.group_range(g)) {
            if !*h {
                *h = true;
                resumed_bytes += len;
            }
        }
    }
    let resumed_groups = have.iter().filter(|h| **h).count() as u64;
    progress.resumed.store(resumed_bytes, Ordering::Relaxed);
    progress.done.store(resumed_bytes, Ordering::Relaxed);
    // 3. Ranges from every provider at once: at least two ranges per provider where the blob
    // allows it (a few-MiB checkpoint still comes from everyone), at most `range_groups`
    // groups per range.
    let mut providers: Vec<Provider> = candidates
        .iter()
        .filter(|p| !lacking.contains(p))
        .map(|p| Provider::new(*p))
        .collect();
    let missing = have.iter().filter(|h| !**h).count() as u64;
    let per_range = (missing / (2 * providers.len().max(1) as u64)).clamp(1, range_groups);
    let mut queue: VecDeque<(u64, u64)> = missing_ranges(&have, per_range).into();
    let mut in_flight = FuturesUnordered::new();
    let mut retries = 0u64;
    let mut fetched = 0u64;
    let mut refreshed_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        while in_flight.len() < max_in_flight {
            let Some(&(first, count)) = queue.front() else {
                break;
            };
            let Some(pi) = pick(&providers, per_provider, now) else {
                break;
            };
            queue.pop_front();
            let p = &mut providers[pi];
            p.in_flight += 1;
            let peer = p.peer;
            let request = RangeRequest::Groups {
                id,
                first,
                count: count as u32,
            };
            in_flight.push(async move { (pi, first, count, net.fetch_range(peer, request).await) });
        }
        progress.providers.store(
            providers.iter().filter(|p| !p.dropped).count(),
            Ordering::Relaxed,
        );
        if in_flight.is_empty() {
            if queue.is_empty() {
                break;
            }
            // Providers resting after `Busy`: wait for the first to be ready.
            let resting = providers
                .iter()
                .filter(|p| !p.dropped)
                .filter_map(|p| p.resting_until)
                .min();
            if let Some(until) = resting {
                tokio::time::sleep_until(until.into()).await;
                continue;
            }
            // Every provider is gone: try peers connected since, then the DHT, once a second.
            if refreshed_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err(NetError::Unavailable {
                    id,
                    tried: providers.len(),
                    last: format!(
                        "every provider failed or left with {} of {} bytes held (kept: a new \
                         download resumes from them)",
                        progress.done.load(Ordering::Relaxed),
                        outboard.len
                    ),
                });
            }
            refreshed_at = Some(Instant::now());
            let mut fresh = net.connected_peers().await;
            if opts.use_dht {
                fresh.extend(net.find_providers(id).await);
            }
            for peer in fresh {
                if peer != me && !providers.iter().any(|p| p.peer == peer) {
                    providers.push(Provider::new(peer));
                }
            }
            continue;
        }
        let Some((pi, first, count, result)) = in_flight.next().await else {
            continue;
        };
        let p = &mut providers[pi];
        p.in_flight -= 1;
        let peer = p.peer;
        match result {
            Ok(RangeResponse::Groups(bytes)) => {
                let bytes = bytes.into_vec();
                let n = bytes.len() as u64;
                bump(&net.stats().bytes_received, n);
                let (sink2, ob) = (sink.clone(), outboard.clone());
                let stored =
                    blocking(move || verify_and_store(&*sink2, &ob, &id, first, count, &bytes))
                        .await?;
                p.busy = 0;
                match stored {
                    Stored::All => {
                        bump(&net.stats().ranges_fetched, 1);
                        p.served += n;
                        fetched += n;
                        progress.done.fetch_add(n, Ordering::Relaxed);
                    }
                    Stored::Bad { bad } => {
                        bad_ranges += 1;
                        bump(&net.stats().bad_ranges, 1);
                        warn!(%peer, id = %hex::encode(id), group = bad, "provider sent a group that does not match its hash; reporting it and fetching the range elsewhere");
                        net.report_peer(
                            peer,
                            WRONG_BYTES_WEIGHT,
                            "served a blob range that does not match its hash",
                        );
                        p.dropped = true;
                        let good = bad - first;
                        let good_bytes = (first..bad)
                            .filter_map(|g| outboard.group_range(g).map(|(_, l)| l))
                            .sum::<u64>();
                        if good > 0 {
                            p.served += good_bytes;
                            fetched += good_bytes;
                            progress.done.fetch_add(good_bytes, Ordering::Relaxed);
                        }
                        queue.push_front((bad, count - good));
                    }
                }
            }
            Ok(RangeResponse::Busy) => {
                retries += 1;
                p.busy += 1;
                if p.busy >= MAX_BUSY_IN_A_ROW {
                    debug!(%peer, "provider stayed busy; leaving it out of this download");
                    p.dropped = true;
                } else {
                    p.resting_until = Some(Instant::now() + opts.busy_backoff);
                }
                queue.push_back((first, count));
            }
            Ok(RangeResponse::NotFound) => {
                debug!(%peer, "provider no longer has the blob");
                p.dropped = true;
                retries += 1;
                queue.push_back((first, count));
            }
            Ok(other @ (RangeResponse::BadRange | RangeResponse::Outboard { .. })) => {
                debug!(%peer, ?other, "provider answered a range request with nonsense");
                net.report_peer(peer, 1.0, "answered a range request with nonsense");
                p.dropped = true;
                retries += 1;
                queue.push_back((first, count));
            }
            Err(NetError::Shutdown) => return Err(NetError::Shutdown),
            Err(error) => {
                debug!(%peer, %error, "range request failed");
                p.failures += 1;
                if p.failures >= opts.max_failures.max(1) {
                    p.dropped = true;
                }
                retries += 1;
                queue.push_back((first, count));
            }
        }
    }

    // 4. Whole.
    {
        let (sink2, ob) = (sink.clone(), outboard.clone());
        blocking(move || sink2.finish(&id, &ob)).await?;
    }
    bump(&net.stats().downloads_completed, 1);
    net.provide(id);
    let report = DownloadReport {
        len: outboard.len,
        fetched_bytes: fetched,
        resumed_groups,
        providers: providers
            .iter()
            .filter(|p| p.served > 0)
            .map(|p| (p.peer, p.served))
            .collect(),
        bad_ranges,
        retries,
        elapsed: started.elapsed(),
    };
    info!(
        id = %hex::encode(id),
        len = report.len,
        providers = report.providers.len(),
        resumed_groups,
        bad_ranges,
        retries,
        secs = report.elapsed.as_secs_f64(),
        "download complete"
    );
    drop(registered);
    Ok(report)
}

impl Provider {
    fn new(peer: PeerId) -> Self {
        Provider {
            peer,
            in_flight: 0,
            failures: 0,
            served: 0,
            dropped: false,
            resting_until: None,
            busy: 0,
        }
    }
}

/// The provider to ask next: not dropped, not resting, below `per_provider` requests in
/// flight, the fewest in flight first (then the one that served most: it is fast).
fn pick(providers: &[Provider], per_provider: usize, now: Instant) -> Option<usize> {
    providers
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.dropped && p.in_flight < per_provider)
        .filter(|(_, p)| p.resting_until.is_none_or(|t| t <= now))
        .min_by(|(_, a), (_, b)| a.in_flight.cmp(&b.in_flight).then(b.served.cmp(&a.served)))
        .map(|(i, _)| i)
}

/// The missing groups as ranges `(first, count)` of at most `per_range` groups.
fn missing_ranges(have: &[bool], per_range: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for (i, h) in have.iter().enumerate() {
        let i = i as u64;
        if *h {
            if let Some(r) = run.take() {
                out.push(r);
            }
            continue;
        }
        run = match run {
            Some((first, count)) if count < per_range => Some((first, count + 1)),
            Some(r) => {
                out.push(r);
                Some((i, 1))
            }
            None => Some((i, 1)),
        };
    }
    out.extend(run);
    out
}

/// Checks each group of a range against the outboard and stores the good ones, up to the
/// first bad one.
fn verify_and_store(
    sink: &dyn BlobSink,
    outboard: &Outboard,
    id: &[u8; 32],
    first: u64,
    count: u64,
    bytes: &[u8],
) -> Result<Stored, String> {
    let mut at = 0usize;
    for g in first..first + count {
        let Some((_, len)) = outboard.group_range(g) else {
            return Ok(Stored::Bad { bad: g });
        };
        let len = len as usize;
        let Some(group) = bytes.get(at..at + len) else {
            return Ok(Stored::Bad { bad: g });
        };
        if outboard.verify_group(id, g, group).is_err() {
            return Ok(Stored::Bad { bad: g });
        }
        sink.put_group(id, outboard, g, group)?;
        at += len;
    }
    if at != bytes.len() {
        // Extra bytes after the last group: the range is wrong as a whole, but what was checked
        // is good and stored; only the sender is at fault.
        return Ok(Stored::Bad {
            bad: first + count - 1,
        });
    }
    Ok(Stored::All)
}

/// Asks `peer` for the outboard of `id` and checks it (and the inline bytes of a one-group
/// blob) against the id. Returns the outboard and, for a one-group blob, its bytes.
async fn fetch_outboard(
    net: &NetHandle,
    peer: PeerId,
    id: [u8; 32],
    max_len: u64,
) -> Result<(Outboard, Option<Vec<u8>>), NetError> {
    let response = net.fetch_range(peer, RangeRequest::Outboard { id }).await?;
    let (len, cvs, inline) = match response {
        RangeResponse::Outboard { len, cvs, inline } => (len, cvs, inline),
        RangeResponse::NotFound => return Err(NetError::NotFound { peer, id }),
        RangeResponse::Busy => {
            return Err(NetError::RequestFailed {
                peer,
                reason: "busy".into(),
            })
        }
        other => {
            return Err(NetError::RequestFailed {
                peer,
                reason: format!("unexpected answer to an outboard request: {other:?}"),
            })
        }
    };
    if len > max_len {
        return Err(NetError::BlobTooLarge { peer, size: len });
    }
    let bad = || {
        bump(&net.stats().bad_ranges, 1);
        net.report_peer(
            peer,
            WRONG_BYTES_WEIGHT,
            "served an outboard that does not match the blob's id",
        );
        NetError::HashMismatch { peer, id }
    };
    if cvs.len() % 32 != 0 {
        return Err(bad());
    }
    let outboard = Outboard {
        len,
        group_log: PART_LOG,
        cvs: cvs
            .chunks_exact(32)
            .map(|c| {
                let mut a = [0u8; 32];
                a.copy_from_slice(c);
                a
            })
            .collect(),
    };
    outboard.verify(&id).map_err(|_| bad())?;
    let inline = match inline {
        Some(bytes) if len <= 1u64 << PART_LOG => {
            let bytes = bytes.into_vec();
            if bytes.len() as u64 != len || blake3::hash(&bytes).as_bytes() != &id {
                return Err(bad());
            }
            bump(&net.stats().bytes_received, len);
            Some(bytes)
        }
        None if len > 1u64 << PART_LOG => None,
        _ => return Err(bad()),
    };
    Ok((outboard, inline))
}

/// Runs sink work on the blocking pool; its errors become [`NetError::Sink`].
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Sink(format!("the storing task failed: {e}")))?
        .map_err(NetError::Sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_cut_runs() {
        let have = [true, false, false, false, true, false, false];
        assert_eq!(missing_ranges(&have, 2), vec![(1, 2), (3, 1), (5, 2)]);
        assert_eq!(missing_ranges(&have, 8), vec![(1, 3), (5, 2)]);
        assert_eq!(missing_ranges(&[true, true], 4), Vec::<(u64, u64)>::new());
        assert_eq!(missing_ranges(&[false; 5], 2), vec![(0, 2), (2, 2), (4, 1)]);
    }

    #[test]
    fn pick_prefers_idle_then_fast() {
        let now = Instant::now();
        let mut a = Provider::new(PeerId::random());
        let mut b = Provider::new(PeerId::random());
        let mut c = Provider::new(PeerId::random());
        a.in_flight = 2;
        b.in_flight = 1;
        c.in_flight = 1;
        c.served = 10;
        assert_eq!(pick(&[a, b, c], 4, now), Some(2));
        let mut d = Provider::new(PeerId::random());
        d.resting_until = Some(now + Duration::from_secs(1));
        let mut e = Provider::new(PeerId::random());
        e.dropped = true;
        let mut f = Provider::new(PeerId::random());
        f.in_flight = 4;
        assert_eq!(pick(&[d, e, f], 4, now), None);
    }

    #[test]
    fn memory_sink_resumes_and_finishes() {
        let bytes: Vec<u8> = (0..(3u32 << PART_LOG) + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        let id = *blake3::hash(&bytes).as_bytes();
        let ob = Outboard::compute(&bytes, PART_LOG).expect("outboard");
        let sink = MemorySink::default();
        let g = 1usize << PART_LOG;
        sink.put_group(&id, &ob, 1, &bytes[g..2 * g]).expect("put");
        assert_eq!(sink.held_groups(&id, &ob).expect("held"), vec![1]);
        assert!(sink.finish(&id, &ob).is_err());
        // A range with a bad second group stores the first and names the second.
        let mut bad = bytes[..2 * g].to_vec();
        bad[g + 7] ^= 1;
        match verify_and_store(&sink, &ob, &id, 0, 2, &bad).expect("store") {
            Stored::Bad { bad } => assert_eq!(bad, 1),
            Stored::All => panic!("a bad group passed"),
        }
        assert_eq!(sink.held_groups(&id, &ob).expect("held"), vec![0, 1]);
        assert!(matches!(
            verify_and_store(&sink, &ob, &id, 2, 2, &bytes[2 * g..]).expect("store"),
            Stored::All
        ));
        sink.finish(&id, &ob).expect("finish");
        assert_eq!(sink.take(&id).expect("bytes"), bytes);
    }
}
