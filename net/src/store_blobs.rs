//! The node's RocksDB store as a [`BlobProvider`] and a [`BlobSink`].

use apiary_storage::{ContentId, Store};

use crate::{BlobProvider, BlobSink, Outboard};

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
