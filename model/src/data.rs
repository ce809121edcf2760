//! Byte-level training data cut into fixed pages, and the deterministic page assignment.

use crate::error::{ModelError, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::HashSet;
use std::path::Path;

/// A byte-level dataset cut into non-overlapping pages of `seq_len + 1` tokens (one token per
/// byte), so a page's inputs and targets are the same bytes shifted by one.
///
/// The first [`Dataset::train_pages`] pages are for training; the last
/// [`Dataset::held_out_pages`] pages (the end of the data) are held out for evaluation. Trailing
/// bytes that do not fill a page are ignored.
#[derive(Clone)]
pub struct Dataset {
    data: Vec<u8>,
    page_len: usize,
    train_pages: usize,
    held_out_pages: usize,
    hash: [u8; 32],
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("bytes", &self.data.len())
            .field("page_len", &self.page_len)
            .field("train_pages", &self.train_pages)
            .field("held_out_pages", &self.held_out_pages)
            .field("hash", &hex::encode(self.hash))
            .finish()
    }
}

impl Dataset {
    /// Reads `path`: a file, or a directory whose `.txt` files are concatenated in name order.
    pub fn load(path: &Path, seq_len: usize, held_out_fraction: f64) -> Result<Dataset> {
        let io = |p: &Path, e: std::io::Error| {
            ModelError::Data(format!("cannot read training data {}: {e}", p.display()))
        };
        let bytes = if path.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path).map_err(|e| io(path, e))? {
                let p = entry.map_err(|e| io(path, e))?.path();
                if p.is_file() && p.extension().is_some_and(|e| e == "txt") {
                    files.push(p);
                }
            }
            if files.is_empty() {
                return Err(ModelError::Data(format!(
                    "training data directory {} has no .txt files; set train.data to a text \
                     file or a directory of .txt files",
                    path.display()
                )));
            }
            files.sort();
            let mut all = Vec::new();
            for f in &files {
                all.extend(std::fs::read(f).map_err(|e| io(f, e))?);
            }
            all
        } else {
            std::fs::read(path).map_err(|e| io(path, e))?
        };
        Dataset::from_bytes(bytes, seq_len, held_out_fraction).map_err(|e| match e {
            ModelError::Data(m) => ModelError::Data(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Cuts `bytes` into pages; `ceil(pages * held_out_fraction)` (at least 1) are held out.
    pub fn from_bytes(bytes: Vec<u8>, seq_len: usize, held_out_fraction: f64) -> Result<Dataset> {
        if seq_len < 1 {
            return Err(ModelError::Data("seq_len must be at least 1".into()));
        }
        if !(held_out_fraction > 0.0 && held_out_fraction < 1.0) {
            return Err(ModelError::Data(format!(
                "held_out_fraction must be in (0, 1), got {held_out_fraction}"
            )));
        }
        if bytes.is_empty() {
            return Err(ModelError::Data("the training data is empty".into()));
        }
        let page_len = seq_len + 1;
        let total = bytes.len() / page_len;
        let held = ((total as f64 * held_out_fraction).ceil() as usize).max(1);
        if total < 2 || held >= total {
            return Err(ModelError::Data(format!(
                "the training data is too small: {} bytes make {total} pages of {page_len} bytes; \
                 need at least one training and one held-out page",
                bytes.len()
            )));
        }
        let hash = *blake3::hash(&bytes).as_bytes();
        Ok(Dataset {
            data: bytes,
            page_len,
            train_pages: total - held,
            held_out_pages: held,
            hash,
        })
    }

    /// Number of training pages.
    pub fn train_pages(&self) -> usize {
        self.train_pages
    }

    /// Number of held-out pages.
    pub fn held_out_pages(&self) -> usize {
        self.held_out_pages
    }

    /// Tokens of page `idx` of the whole data (training pages first, then held-out ones).
    fn raw_page(&self, idx: usize) -> Vec<u32> {
        let start = idx * self.page_len;
        self.data[start..start + self.page_len]
            .iter()
            .map(|&b| u32::from(b))
            .collect()
    }

    /// Training page `idx` (`seq_len + 1` tokens); `idx` is taken modulo
    /// [`Dataset::train_pages`], so it never reads held-out data.
    pub fn page(&self, idx: usize) -> Vec<u32> {
        self.raw_page(idx % self.train_pages)
    }

    /// The first `min(n, held_out_pages)` held-out pages (the same on every call and node).
    pub fn held_out(&self, n: usize) -> Vec<Vec<u32>> {
        (0..n.min(self.held_out_pages))
            .map(|i| self.raw_page(self.train_pages + i))
            .collect()
    }

    /// blake3 of the raw data bytes.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }
}

/// The `n` training-page indices (in `0..num_pages`) assigned to miner `uid` in `window`.
///
/// A ChaCha20 stream keyed by `blake3(uid, window, seed)` draws indices, skipping repeats, so
/// the pages are distinct when `n <= num_pages` (otherwise every page is used before any
/// repeats). Any node (e.g. a validator checking a miner) recomputes the same list.
/// Returns an empty list if `num_pages == 0`.
pub fn assign_pages(uid: u16, window: u64, seed: u64, num_pages: usize, n: usize) -> Vec<usize> {
    if num_pages == 0 {
        return Vec::new();
    }
    let mut material = Vec::with_capacity(18);
    material.extend_from_slice(&uid.to_le_bytes());
    material.extend_from_slice(&window.to_le_bytes());
    material.extend_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha20Rng::from_seed(blake3::derive_key("apiary-model pages v1", &material));
    let num = num_pages as u64;
    // Largest multiple of `num` representable, for unbiased modulo sampling.
    let zone = u64::MAX - (u64::MAX % num);
    let mut used = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = rng.next_u64();
        if r >= zone {
            continue;
        }
        let idx = (r % num) as usize;
        if used.len() == num_pages {
            used.clear();
        }
        if used.insert(idx) {
            out.push(idx);
        }
    }
    out
}
