//! Blobs from the store or from peers: the one network helper the trainer and the evaluator
//! share (so neither imports the other for it).

use crate::context::{Metrics, NodeContext};
use crate::WorkError;
use apiary_net::PeerId;
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
