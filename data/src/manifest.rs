//! The dataset manifest: what every peer compares to know it holds the same pages.

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Version of the manifest and page-cache format; bumped whenever page building changes.
pub const MANIFEST_FORMAT: u32 = 1;

/// One shard as recorded in a [`Manifest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name of the shard (shards are processed in name order).
    pub name: String,
    /// blake3 of the shard file's bytes (hex).
    pub blake3: String,
    /// Size of the shard file in bytes.
    pub bytes: u64,
    /// Documents read from the shard (rows, lines; a text file is one document).
    pub documents: u64,
    /// Tokens the shard contributed to the token stream (end-of-document separators included).
    pub tokens: u64,
}

/// Describes a built dataset: the exact shards, the tokenizer and how tokens were cut into pages.
///
/// Two nodes whose manifests have the same [`Manifest::hash`] hold byte-identical page caches,
/// so a validator can recompute any miner's pages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] of the builder that wrote it.
    pub format: u32,
    /// [`crate::Tokenizer::hash`] (hex).
    pub tokenizer_hash: String,
    /// Vocabulary size of the tokenizer.
    pub vocab_size: usize,
    /// End-of-document token placed between documents, if any.
    pub eos_id: Option<u32>,
    /// Tokens per page minus one (a page holds `seq_len + 1` tokens).
    pub seq_len: usize,
    /// Bytes per token in the page cache (2: little-endian u16, 4: little-endian u32).
    pub token_bytes: u8,
    /// Shards in processing (name) order.
    pub shards: Vec<ShardInfo>,
    /// Tokens in the whole stream (including the tail that does not fill a page).
    pub total_tokens: u64,
    /// Pages in the cache (`total_tokens / (seq_len + 1)`).
    pub pages: u64,
    /// Training pages: the first `pages - held_out_pages`.
    pub train_pages: u64,
    /// Held-out pages: the last `ceil(pages * held_out_fraction)` (at least 1).
    pub held_out_pages: u64,
    /// The fraction the held-out split was computed from.
    pub held_out_fraction: f64,
    /// blake3 of the page cache file (hex).
    pub pages_hash: String,
}

impl Manifest {
    /// One id for the whole manifest (every field), for nodes to compare or gossip.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("apiary-data manifest v1");
        let mut put = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        put(&self.format.to_le_bytes());
        put(self.tokenizer_hash.as_bytes());
        put(&(self.vocab_size as u64).to_le_bytes());
        match self.eos_id {
            Some(id) => put(&u64::from(id).to_le_bytes()),
            None => put(&[]),
        }
        put(&(self.seq_len as u64).to_le_bytes());
        put(&[self.token_bytes]);
        put(&(self.shards.len() as u64).to_le_bytes());
        for s in &self.shards {
            put(s.name.as_bytes());
            put(s.blake3.as_bytes());
            put(&s.bytes.to_le_bytes());
            put(&s.documents.to_le_bytes());
            put(&s.tokens.to_le_bytes());
        }
        put(&self.total_tokens.to_le_bytes());
        put(&self.pages.to_le_bytes());
        put(&self.train_pages.to_le_bytes());
        put(&self.held_out_pages.to_le_bytes());
        put(&self.held_out_fraction.to_bits().to_le_bytes());
        put(self.pages_hash.as_bytes());
        *h.finalize().as_bytes()
    }

    /// Reads a `manifest.json`.
    pub fn load(path: &Path) -> Result<Manifest> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io("cannot read", path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            DataError::Invalid(format!(
                "{} is not a dataset manifest ({e}); delete it to rebuild the cache",
                path.display()
            ))
        })
    }

    /// Writes the manifest as pretty JSON (atomically: a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| DataError::Invalid(format!("cannot serialize the manifest: {e}")))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(|e| DataError::io("cannot write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| DataError::io("cannot write", path, e))
    }

    /// Checks that `shards` (name, blake3) are exactly the ones this manifest lists, and that the
    /// tokenizer and `seq_len` match. The error names the first differing shard.
    pub(crate) fn check_inputs(
        &self,
        shards: &[(String, String)],
        tokenizer_hash: &str,
        eos_id: Option<u32>,
        seq_len: usize,
    ) -> Result<()> {
        if self.format != MANIFEST_FORMAT {
            return Err(DataError::ManifestMismatch(format!(
                "manifest format {} but this build writes format {MANIFEST_FORMAT}; upgrade the \
                 node that is behind",
                self.format
            )));
        }
        if self.tokenizer_hash != tokenizer_hash || self.eos_id != eos_id {
            return Err(DataError::ManifestMismatch(format!(
                "tokenizer {tokenizer_hash} (eos {eos_id:?}) but the manifest expects {} (eos \
                 {:?}); use the same tokenizer.json as the peers",
                self.tokenizer_hash, self.eos_id
            )));
        }
        if self.seq_len != seq_len {
            return Err(DataError::ManifestMismatch(format!(
                "seq_len {seq_len} but the manifest expects {}; use the same seq_len as the \
                 peers",
                self.seq_len
            )));
        }
        for want in &self.shards {
            match shards.iter().find(|(name, _)| *name == want.name) {
                None => {
                    return Err(DataError::ManifestMismatch(format!(
                        "shard {} is missing; add it to the dataset directory",
                        want.name
                    )))
                }
                Some((_, hash)) if *hash != want.blake3 => {
                    return Err(DataError::ShardMismatch {
                        name: want.name.clone(),
                        expected: want.blake3.clone(),
                        actual: hash.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some((extra, _)) = shards
            .iter()
            .find(|(name, _)| !self.shards.iter().any(|s| s.name == *name))
        {
            return Err(DataError::ManifestMismatch(format!(
                "shard {extra} is not in the manifest; remove it from the dataset directory"
            )));
        }
        Ok(())
    }
}
