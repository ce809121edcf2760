//! Blobs from the store or from peers: the one network helper the trainer and the evaluator
//! share (so neither imports the other for it).

use crate::context::{Metrics, NodeContext};
use crate::WorkError;
use apiary_net::{DownloadOptions, PeerId, StoreBlobs};
use apiary_storage::ContentId;
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
