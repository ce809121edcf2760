//! # apiary-data
//!
//! Tokenizers and sharded datasets cut into fixed-length pages, with a manifest every peer can
//! check.
//!
//! ## Design
//!
//! - **Tokenizers** ([`Tokenizer`]): the byte tokenizer (vocabulary 256, one token per byte, no
//!   end-of-document token; the default) or any Hugging Face `tokenizer.json` (the `tokenizers`
//!   crate with its pure-Rust regex backend). A tokenizer's identity is blake3 of its
//!   `tokenizer.json` bytes (a fixed id for bytes) plus its end-of-document id.
//! - **Shards**: a dataset is a directory of `*.txt` (a file is one document), `*.jsonl` (one
//!   object per line with a string `text` field) and `*.parquet` (a UTF-8 `text` column, read row
//!   group by row group: snappy, zstd (default `zstd` feature) or uncompressed) files, processed in file-name order; or a single
//!   file. Everything is streamed: text files in pieces of at most 1 MiB cut after a line end
//!   (a rule that depends only on the bytes, so every node cuts alike), JSONL line by line,
//!   Parquet 1024 values at a time.
//! - **Pages**: documents are tokenized in batches (in parallel for Hugging Face tokenizers),
//!   concatenated with the end-of-document token between documents when the tokenizer has one,
//!   and cut into non-overlapping pages of `seq_len + 1` tokens; the tail is dropped. Pages are
//!   written to `pages.bin` in a cache directory (little-endian u16 per token when the vocabulary
//!   is at most 65536, else u32) and read back one page at a time with positional reads, so the
//!   dataset is never in memory and [`Dataset`] is shareable across threads. The last
//!   `ceil(pages * held_out_fraction)` pages (at least 1) are held out. With the byte tokenizer a
//!   text file gives exactly the pages of `apiary_model::Dataset`.
//! - **Manifest** ([`Manifest`], `manifest.json`): format version, tokenizer hash, `seq_len`, per
//!   shard (name, blake3, size, documents, tokens), totals, the split and blake3 of `pages.bin`.
//!   [`Manifest::hash`] is one id nodes can gossip. Opening hashes every shard first; the cache is
//!   reused only if the manifest lists exactly those shard hashes, the tokenizer and `seq_len`
//!   (and `pages.bin` has the right size). [`Dataset::open_verified`] checks shards against an
//!   expected (peer's) manifest *before* tokenizing, refusing a differing shard by name, then
//!   compares the built pages. The cache is written to a temporary file and renamed, and the old
//!   manifest removed first, so an interrupted build is never mistaken for a valid cache.
//!
//! Limits: subdirectories of a dataset directory are not read; a shard modified between hashing
//! and tokenizing is not detected until the next open (its hash then differs).

mod dataset;
mod error;
mod manifest;
mod shard;
mod tokenizer;

pub use dataset::{Dataset, MANIFEST_FILE, PAGES_FILE};
pub use error::{DataError, Result};
pub use manifest::{Manifest, ShardInfo, MANIFEST_FORMAT};
pub use shard::ShardFormat;
pub use tokenizer::Tokenizer;
