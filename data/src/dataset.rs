//! A tokenized dataset cut into fixed pages, cached on disk and read one page at a time.

use crate::error::{DataError, Result};
use crate::manifest::{Manifest, ShardInfo, MANIFEST_FORMAT};
use crate::shard::{self, Piece, Shard};
use crate::tokenizer::Tokenizer;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Name of the page cache file in the cache directory.
pub const PAGES_FILE: &str = "pages.bin";
/// Name of the manifest file in the cache directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Text handed to the tokenizer at once (in parallel for a Hugging Face tokenizer).
const BATCH_BYTES: usize = 4 << 20;

/// A dataset of shards, tokenized into non-overlapping pages of `seq_len + 1` tokens (a page's
/// inputs and targets are the same tokens shifted by one).
///
/// Documents are concatenated in shard (name) order, then file order, with the tokenizer's
/// end-of-document token between documents when it has one (the byte tokenizer has none, so a
/// text file gives exactly its bytes). The tail that does not fill a page is dropped. The first
/// [`Dataset::train_pages`] pages are for training, the last [`Dataset::held_out_pages`] (the end
/// of the data) are held out for evaluation.
///
/// The pages live in a cache file (`pages.bin`, little-endian u16 tokens when the vocabulary fits,
/// else u32) next to a `manifest.json`; pages are read with positional reads, so `&self` methods
/// are safe to call from many threads and the data is never held in memory. Cloning is cheap.
#[derive(Clone)]
pub struct Dataset {
    inner: Arc<Inner>,
}

struct Inner {
    file: File,
    pages_path: PathBuf,
    manifest: Manifest,
    tokenizer: Tokenizer,
    page_len: usize,
    token_bytes: usize,
    train_pages: usize,
    held_out_pages: usize,
    hash: [u8; 32],
    reused: bool,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("Dataset")
            .field("pages", &i.pages_path)
            .field("shards", &i.manifest.shards.len())
            .field("tokens", &i.manifest.total_tokens)
            .field("page_len", &i.page_len)
            .field("train_pages", &i.train_pages)
            .field("held_out_pages", &i.held_out_pages)
            .field("tokenizer", &i.tokenizer)
            .field("hash", &hex::encode(i.hash))
            .finish()
    }
}

impl Dataset {
    /// Opens the dataset at `path` (a directory of `*.txt`/`*.jsonl`/`*.parquet` shards, or one
    /// file), building the page cache in `cache_dir` or reusing it if its manifest matches the
    /// shards' blake3 hashes, the tokenizer and `seq_len`.
    ///
    /// `ceil(pages * held_out_fraction)` pages (at least 1) are held out; `held_out_fraction` must
    /// be in (0, 1). Use one `cache_dir` per dataset.
    pub fn open(
        path: &Path,
        tokenizer: &Tokenizer,
        seq_len: usize,
        held_out_fraction: f64,
        cache_dir: &Path,
    ) -> Result<Dataset> {
        Dataset::open_inner(path, tokenizer, seq_len, held_out_fraction, cache_dir, None)
    }

    /// Like [`Dataset::open`], but refuses data that differs from `expected` (e.g. a peer's
    /// manifest): shards are hashed and checked before anything is tokenized, so a shard whose
    /// blake3 differs is refused with [`DataError::ShardMismatch`] naming it; after building, the
    /// page cache and split must match too. `held_out_fraction` is taken from `expected`.
    pub fn open_verified(
        path: &Path,
        tokenizer: &Tokenizer,
        cache_dir: &Path,
        expected: &Manifest,
    ) -> Result<Dataset> {
        Dataset::open_inner(
            path,
            tokenizer,
            expected.seq_len,
            expected.held_out_fraction,
            cache_dir,
            Some(expected),
        )
    }

    fn open_inner(
        path: &Path,
        tokenizer: &Tokenizer,
        seq_len: usize,
        held_out_fraction: f64,
        cache_dir: &Path,
        expected: Option<&Manifest>,
    ) -> Result<Dataset> {
        if seq_len < 1 {
            return Err(DataError::Invalid("seq_len must be at least 1".into()));
        }
        if !(held_out_fraction > 0.0 && held_out_fraction < 1.0) {
            return Err(DataError::Invalid(format!(
                "held_out_fraction must be in (0, 1), got {held_out_fraction}"
            )));
        }
        let shards = shard::discover(path)?;
        let mut hashes = Vec::with_capacity(shards.len());
        for s in &shards {
            let (hash, size) = shard::hash_file(&s.path)?;
            hashes.push((s.name.clone(), hex::encode(hash), size));
        }
        let names_hashes: Vec<(String, String)> = hashes
            .iter()
            .map(|(n, h, _)| (n.clone(), h.clone()))
            .collect();
        let tok_hash = hex::encode(tokenizer.hash());
        if let Some(want) = expected {
            want.check_inputs(&names_hashes, &tok_hash, tokenizer.eos_id(), seq_len)?;
        }

        std::fs::create_dir_all(cache_dir)
            .map_err(|e| DataError::io("cannot create", cache_dir, e))?;
        let manifest_path = cache_dir.join(MANIFEST_FILE);
        let pages_path = cache_dir.join(PAGES_FILE);
        let token_bytes = token_bytes(tokenizer.vocab_size());
        let page_len = seq_len + 1;

        let cached = reusable(
            &manifest_path,
            &pages_path,
            &names_hashes,
            tokenizer,
            &tok_hash,
            seq_len,
            token_bytes,
        );
        let (mut manifest, reused) = match cached {
            Some(m) => {
                tracing::info!(cache = %cache_dir.display(), pages = m.pages, "reusing page cache");
                (m, true)
            }
            None => {
                // No manifest while the cache is being rewritten: a crash leaves no valid cache.
                match std::fs::remove_file(&manifest_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DataError::io("cannot remove", &manifest_path, e)),
                }
                let m = build(
                    &shards,
                    &hashes,
                    tokenizer,
                    seq_len,
                    token_bytes,
                    &pages_path,
                )?;
                (m, false)
            }
        };

        let (train, held) = split(manifest.pages, held_out_fraction, page_len)
            .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))?;
        if !reused
            || manifest.train_pages != train
            || manifest.held_out_pages != held
            || manifest.held_out_fraction.to_bits() != held_out_fraction.to_bits()
        {
            manifest.train_pages = train;
            manifest.held_out_pages = held;
            manifest.held_out_fraction = held_out_fraction;
            manifest.save(&manifest_path)?;
        }
        if let Some(want) = expected {
            compare_built(&manifest, want)?;
        }

        let file =
            File::open(&pages_path).map_err(|e| DataError::io("cannot open", &pages_path, e))?;
        let hash = manifest.hash();
        Ok(Dataset {
            inner: Arc::new(Inner {
                file,
                pages_path,
                tokenizer: tokenizer.clone(),
                page_len,
                token_bytes,
                train_pages: usize::try_from(train).unwrap_or(usize::MAX),
                held_out_pages: usize::try_from(held).unwrap_or(usize::MAX),
                manifest,
                hash,
                reused,
            }),
        })
    }

    /// Refuses this dataset if it differs from `expected` (e.g. a peer's manifest): a shard with a
    /// different blake3 gives [`DataError::ShardMismatch`] naming it; a missing or extra shard, a
    /// different tokenizer, `seq_len`, page cache or split gives [`DataError::ManifestMismatch`].
    pub fn verify_against(&self, expected: &Manifest) -> Result<()> {
        let m = &self.inner.manifest;
        let shards: Vec<(String, String)> = m
            .shards
            .iter()
            .map(|s| (s.name.clone(), s.blake3.clone()))
            .collect();
        expected.check_inputs(&shards, &m.tokenizer_hash, m.eos_id, m.seq_len)?;
        compare_built(m, expected)
    }

    /// Re-reads the page cache and checks its blake3 against the manifest (opening a reused cache
    /// only checks its size). Fails with [`DataError::ManifestMismatch`] if it was altered.
    pub fn verify_page_cache(&self) -> Result<()> {
        let (hash, _) = shard::hash_file(&self.inner.pages_path)?;
        let hash = hex::encode(hash);
        if hash != self.inner.manifest.pages_hash {
            return Err(DataError::ManifestMismatch(format!(
                "page cache {} has blake3 {hash} but its manifest says {}; delete the cache \
                 directory to rebuild it",
                self.inner.pages_path.display(),
                self.inner.manifest.pages_hash
            )));
        }
        Ok(())
    }

    /// The manifest (also saved as `manifest.json` in the cache directory).
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The tokenizer the pages were built with.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// Whether [`Dataset::open`] reused an existing page cache instead of building it.
    pub fn reused_cache(&self) -> bool {
        self.inner.reused
    }

    /// Tokens per page minus one.
    pub fn seq_len(&self) -> usize {
        self.inner.page_len - 1
    }

    /// Number of training pages.
    pub fn train_pages(&self) -> usize {
        self.inner.train_pages
    }

    /// Number of held-out pages.
    pub fn held_out_pages(&self) -> usize {
        self.inner.held_out_pages
    }

    /// Vocabulary size of the tokenizer (every token is below it).
    pub fn vocab_size(&self) -> usize {
        self.inner.tokenizer.vocab_size()
    }

    /// [`Manifest::hash`]: one id for the shards, tokenizer, pages and split.
    pub fn hash(&self) -> [u8; 32] {
        self.inner.hash
    }

    /// Training page `idx` (`seq_len + 1` tokens); `idx` is taken modulo
    /// [`Dataset::train_pages`], so it never reads held-out data.
    pub fn page(&self, idx: usize) -> Result<Vec<u32>> {
        self.raw_page(idx % self.inner.train_pages)
    }

    /// The first `min(n, held_out_pages)` held-out pages (the same on every call and node).
    pub fn held_out(&self, n: usize) -> Result<Vec<Vec<u32>>> {
        (0..n.min(self.inner.held_out_pages))
            .map(|i| self.raw_page(self.inner.train_pages + i))
            .collect()
    }

    /// Page `idx` of the whole cache (training pages first, then held-out ones).
    fn raw_page(&self, idx: usize) -> Result<Vec<u32>> {
        let i = &self.inner;
        let len = i.page_len * i.token_bytes;
        let mut buf = vec![0u8; len];
        read_exact_at(&i.file, &mut buf, (idx as u64) * len as u64)
            .map_err(|e| DataError::io("cannot read a page from", &i.pages_path, e))?;
        Ok(decode_tokens(&buf, i.token_bytes))
    }
}

/// Bytes per token in the cache for a vocabulary.
fn token_bytes(vocab_size: usize) -> usize {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

fn decode_tokens(buf: &[u8], token_bytes: usize) -> Vec<u32> {
    if token_bytes == 2 {
        buf.chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    } else {
        buf.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `(train, held_out)` pages: `ceil(pages * fraction)` (at least 1) held out, at least one of each.
fn split(pages: u64, fraction: f64, page_len: usize) -> std::result::Result<(u64, u64), String> {
    let held = ((pages as f64 * fraction).ceil() as u64).max(1);
    if pages < 2 || held >= pages {
        return Err(format!(
            "the dataset is too small: it makes {pages} pages of {page_len} tokens; need at least \
             one training and one held-out page (add data, lower seq_len or held_out_fraction)"
        ));
    }
    Ok((pages - held, held))
}

/// The cached manifest, if the cache at `manifest_path`/`pages_path` was built from exactly these
/// shards with this tokenizer and `seq_len` and the page file has the right size.
fn reusable(
    manifest_path: &Path,
    pages_path: &Path,
    shards: &[(String, String)],
    tokenizer: &Tokenizer,
    tok_hash: &str,
    seq_len: usize,
    token_bytes: usize,
) -> Option<Manifest> {
    if !manifest_path.exists() {
        return None;
    }
    let m = match Manifest::load(manifest_path) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "page cache manifest unreadable; rebuilding");
            return None;
        }
    };
    if let Err(e) = m.check_inputs(shards, tok_hash, tokenizer.eos_id(), seq_len) {
        tracing::info!(reason = %e, "page cache is stale; rebuilding");
        return None;
    }
    let want = m
        .pages
        .checked_mul((seq_len as u64 + 1) * token_bytes as u64);
    let size = std::fs::metadata(pages_path).map(|md| md.len()).ok();
    if m.vocab_size != tokenizer.vocab_size()
        || usize::from(m.token_bytes) != token_bytes
        || want.is_none()
        || size != want
    {
        tracing::info!("page cache file missing or of the wrong size; rebuilding");
        return None;
    }
    Some(m)
}

/// Errors naming how a built manifest differs from the expected one (inputs already match).
fn compare_built(got: &Manifest, want: &Manifest) -> Result<()> {
    let mut diffs = Vec::new();
    for (g, w) in got.shards.iter().zip(&want.shards) {
        if g.tokens != w.tokens || g.documents != w.documents {
            diffs.push(format!(
                "shard {} gave {} documents / {} tokens, expected {} / {}",
                g.name, g.documents, g.tokens, w.documents, w.tokens
            ));
        }
    }
    if got.pages_hash != want.pages_hash {
        diffs.push(format!(
            "page cache blake3 {} expected {}",
            got.pages_hash, want.pages_hash
        ));
    }
    if (got.pages, got.train_pages, got.held_out_pages)
        != (want.pages, want.train_pages, want.held_out_pages)
    {
        diffs.push(format!(
            "pages {} (train {}, held out {}) expected {} ({}, {})",
            got.pages,
            got.train_pages,
            got.held_out_pages,
            want.pages,
            want.train_pages,
            want.held_out_pages
        ));
    }
    if diffs.is_empty() && got.hash() != want.hash() {
        diffs.push("manifest fields differ (vocabulary, token width or totals)".into());
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(DataError::ManifestMismatch(format!(
            "{}; the nodes build pages differently (check both run the same apiary-data \
             version)",
            diffs.join("; ")
        )))
    }
}

/// Streams tokens into the page cache file, a whole page at a time.
struct PageWriter {
    out: BufWriter<File>,
    path: PathBuf,
    hasher: blake3::Hasher,
    pending: Vec<u32>,
    scratch: Vec<u8>,
    page_len: usize,
    token_bytes: usize,
    vocab_size: u64,
    pages: u64,
    total_tokens: u64,
}

impl PageWriter {
    fn push(&mut self, tokens: &[u32]) -> Result<()> {
        if let Some(&bad) = tokens.iter().find(|&&t| u64::from(t) >= self.vocab_size) {
            return Err(DataError::Invalid(format!(
                "the tokenizer produced id {bad}, outside its vocabulary of {}; the \
                 tokenizer.json is inconsistent",
                self.vocab_size
            )));
        }
        self.total_tokens += tokens.len() as u64;
        self.pending.extend_from_slice(tokens);
        let full = self.pending.len() / self.page_len * self.page_len;
        if full == 0 {
            return Ok(());
        }
        self.scratch.clear();
        if self.token_bytes == 2 {
            for &t in &self.pending[..full] {
                // In range: `token_bytes == 2` only when the vocabulary is at most 65536.
                self.scratch.extend_from_slice(&(t as u16).to_le_bytes());
            }
        } else {
            for &t in &self.pending[..full] {
                self.scratch.extend_from_slice(&t.to_le_bytes());
            }
        }
        self.hasher.update(&self.scratch);
        self.out
            .write_all(&self.scratch)
            .map_err(|e| DataError::io("cannot write", &self.path, e))?;
        self.pages += (full / self.page_len) as u64;
        self.pending.drain(..full);
        Ok(())
    }
}

/// Tokenizes pieces in batches and feeds the page writer, tracking documents.
struct Builder<'a> {
    tokenizer: &'a Tokenizer,
    writer: PageWriter,
    batch: Vec<Piece>,
    batch_bytes: usize,
    documents: u64,
    text_bytes: u64,
}

impl Builder<'_> {
    fn add(&mut self, piece: Piece) -> Result<()> {
        self.batch_bytes += piece.bytes.len();
        self.batch.push(piece);
        if self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let pieces = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if pieces.is_empty() {
            return Ok(());
        }
        let eos = self.tokenizer.eos_id();
        let emit = |this: &mut Self, new_doc: bool, tokens: &[u32]| -> Result<()> {
            if new_doc {
                if let (Some(eos), true) = (eos, this.documents > 0) {
                    this.writer.push(&[eos])?;
                }
                this.documents += 1;
            }
            this.writer.push(tokens)
        };
        if self.tokenizer.is_bytes() {
            for p in pieces {
                self.text_bytes += p.bytes.len() as u64;
                let tokens: Vec<u32> = p.bytes.iter().map(|&b| u32::from(b)).collect();
                emit(self, p.new_doc, &tokens)?;
            }
            return Ok(());
        }
        let mut flags = Vec::with_capacity(pieces.len());
        let mut texts = Vec::with_capacity(pieces.len());
        for p in pieces {
            flags.push(p.new_doc);
            self.text_bytes += p.bytes.len() as u64;
            texts.push(
                String::from_utf8(p.bytes)
                    .map_err(|e| DataError::Invalid(format!("text is not UTF-8 ({e})")))?,
            );
        }
        let encoded = self.tokenizer.encode_batch(texts)?;
        for (new_doc, tokens) in flags.into_iter().zip(encoded) {
            emit(self, new_doc, &tokens)?;
        }
        Ok(())
    }
}

/// Builds the page cache at `pages_path` from `shards` and returns its manifest (split not set).
fn build(
    shards: &[Shard],
    hashes: &[(String, String, u64)],
    tokenizer: &Tokenizer,
    seq_len: usize,
    token_bytes: usize,
    pages_path: &Path,
) -> Result<Manifest> {
    let started = Instant::now();
    tracing::info!(
        shards = shards.len(),
        tokenizer = %tokenizer.name(),
        seq_len,
        cache = %pages_path.display(),
        "building page cache"
    );
    let tmp = pages_path.with_extension("bin.tmp");
    let file = File::create(&tmp).map_err(|e| DataError::io("cannot create", &tmp, e))?;
    let page_len = seq_len + 1;
    let mut b = Builder {
        tokenizer,
        writer: PageWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            path: tmp.clone(),
            hasher: blake3::Hasher::new(),
            pending: Vec::with_capacity(2 * page_len),
            scratch: Vec::new(),
            page_len,
            token_bytes,
            vocab_size: tokenizer.vocab_size() as u64,
            pages: 0,
            total_tokens: 0,
        },
        batch: Vec::new(),
        batch_bytes: 0,
        documents: 0,
        text_bytes: 0,
    };
    let mut infos = Vec::with_capacity(shards.len());
    for (s, (_, hash, size)) in shards.iter().zip(hashes) {
        let (docs0, toks0) = (b.documents, b.writer.total_tokens);
        shard::read_pieces(s, !tokenizer.is_bytes(), &mut |p| b.add(p))
            .and_then(|()| b.flush())
            .map_err(|e| match e {
                DataError::Invalid(m) | DataError::Tokenizer { message: m, .. } => {
                    DataError::shard(&s.name, m)
                }
                other => other,
            })?;
        tracing::debug!(
            shard = %s.name,
            documents = b.documents - docs0,
            tokens = b.writer.total_tokens - toks0,
            "shard tokenized"
        );
        infos.push(ShardInfo {
            name: s.name.clone(),
            blake3: hash.clone(),
            bytes: *size,
            documents: b.documents - docs0,
            tokens: b.writer.total_tokens - toks0,
        });
    }
    let w = b.writer;
    let out = w
        .out
        .into_inner()
        .map_err(|e| DataError::io("cannot write", &tmp, e.into_error()))?;
    out.sync_all()
        .map_err(|e| DataError::io("cannot write", &tmp, e))?;
    drop(out);
    std::fs::rename(&tmp, pages_path).map_err(|e| DataError::io("cannot write", pages_path, e))?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        tokens = w.total_tokens,
        pages = w.pages,
        text_mb = b.text_bytes as f64 / 1e6,
        secs,
        mb_per_s = b.text_bytes as f64 / 1e6 / secs.max(1e-9),
        "page cache built"
    );
    Ok(Manifest {
        format: MANIFEST_FORMAT,
        tokenizer_hash: hex::encode(tokenizer.hash()),
        vocab_size: tokenizer.vocab_size(),
        eos_id: tokenizer.eos_id(),
        seq_len,
        token_bytes: token_bytes as u8,
        shards: infos,
        total_tokens: w.total_tokens,
        pages: w.pages,
        train_pages: 0,
        held_out_pages: 0,
        held_out_fraction: 0.0,
        pages_hash: hex::encode(w.hasher.finalize().as_bytes()),
    })
}
