//! Blobs from the store or from peers: the one network helper the trainer and the evaluator
//! share (so neither imports the other for it).

use crate::context::{Metrics, NodeContext};
use crate::WorkError;
use apiary_net::{BlobProvider, BlobSink, DownloadOptions, Outboard, PeerId};
use apiary_storage::{ContentId, Store};
use std::sync::Arc;

/// Reads a blob from the store or fetches it from peers (trying `from` first); the net layer
/// verifies the bytes against `id`. With `keep`, fetched bytes are stored; otherwise the caller
/// stores them once it has validated their content.
pub async fn fetch_blob(
    ctx: &Arc<NodeContext>,
    id: ContentId,
    from: Option<PeerId>,
    keep: bool,
) -> Result<Vec<u8>, WorkError> {
    if let Ok(Some(b)) = ctx.store.get_blob(id) {
        return Ok(b);
    }
    let providers: Vec<PeerId> = from.into_iter().collect();
    match ctx.net.fetch_blob_any(id.0, &providers).await {
        Ok((bytes, _peer)) => {
            if keep {
                ctx.store.put_blob_verified(id, &bytes)?;
            }
            Metrics::inc(&ctx.metrics.blobs_fetched);
            Ok(bytes)
        }
        Err(e) => {
            Metrics::inc(&ctx.metrics.blob_fetch_failed);
            Err(WorkError::Fetch(format!(
                "could not fetch blob {}: {e}",
                id.short()
            )))
        }
    }
}

/// The node's store as the network sees it: it serves blobs whole and in ranges (reading only
/// the parts a range covers) and takes verified groups from the ranged downloader as they
/// arrive (so a multi-GB checkpoint is never in memory whole, and an interrupted download
/// resumes from the parts already written).
#[derive(Clone, Debug)]
pub struct StoreBlobs(pub Store);

impl BlobProvider for StoreBlobs {
    fn get_blob(&self, id: &[u8; 32]) -> Option<Vec<u8>> {
        self.0
            .get_blob(ContentId(*id))
            .inspect_err(|e| tracing::error!(error = %e, "cannot serve a blob"))
            .ok()
            .flatten()
    }

    fn outboard(&self, id: &[u8; 32]) -> Option<Outboard> {
        self.0
            .outboard(ContentId(*id))
            .inspect_err(|e| tracing::error!(error = %e, "cannot serve a blob's outboard"))
            .ok()
            .flatten()
    }

    fn get_range(&self, id: &[u8; 32], offset: u64, len: u64) -> Option<Vec<u8>> {
        self.0
            .get_range(ContentId(*id), offset, len)
            .inspect_err(|e| tracing::error!(error = %e, "cannot serve a blob range"))
            .ok()
            .flatten()
    }
}

impl BlobSink for StoreBlobs {
    fn held_groups(&self, id: &[u8; 32], outboard: &Outboard) -> Result<Vec<u64>, String> {
        self.0
            .held_parts(ContentId(*id), outboard)
            .map_err(|e| e.to_string())
    }

    fn put_group(
        &self,
        id: &[u8; 32],
        outboard: &Outboard,
        index: u64,
        bytes: &[u8],
    ) -> Result<(), String> {
        self.0
            .put_part(ContentId(*id), outboard, index, bytes)
            .map_err(|e| e.to_string())
    }

    fn finish(&self, id: &[u8; 32], outboard: &Outboard) -> Result<(), String> {
        self.0
            .finish_parts(ContentId(*id), outboard)
            .map_err(|e| e.to_string())
    }
}

/// Makes sure the store holds blob `id`: downloads it in verified ranges from every provider
/// at once (`hints` first, then connected peers, then the DHT), resuming from parts already
/// written. The blob is pinned while it downloads, so a sweep does not take the parts.
pub async fn download_blob(
    ctx: &Arc<NodeContext>,
    id: ContentId,
    hints: &[PeerId],
) -> Result<(), WorkError> {
    if ctx.store.has_blob(id)? {
        return Ok(());
    }
    let _pin = ctx.store.pin(id);
    let sink = Arc::new(StoreBlobs(ctx.store.clone()));
    match ctx
        .net
        .download(id.0, hints, sink, &DownloadOptions::default())
        .await
    {
        Ok(report) => {
            Metrics::inc(&ctx.metrics.blobs_fetched);
            tracing::debug!(id = %id.short(), len = report.len, providers = report.providers.len(), secs = report.elapsed.as_secs_f64(), "blob downloaded");
            Ok(())
        }
        Err(e) => {
            Metrics::inc(&ctx.metrics.blob_fetch_failed);
            Err(WorkError::Fetch(format!(
                "could not download blob {}: {e}",
                id.short()
            )))
        }
    }
}
