//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer or building/opening a dataset.
///
/// Messages name the file (and line, for JSONL) involved and say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}; check that the path exists and is readable/writable")]
    Io {
        /// What was being done ("cannot read", "cannot create", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A `tokenizer.json` could not be loaded or used.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file (or `<bytes>` for the byte tokenizer).
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A shard's content is malformed (bad JSON line, missing `text` column, invalid UTF-8, ...).
    #[error("shard {location}: {message}")]
    Shard {
        /// `file` or `file:line` (1-based line numbers for JSONL).
        location: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// A shard differs from the one the expected manifest describes.
    #[error(
        "shard {name}: blake3 is {actual} but the manifest expects {expected}; this node holds \
         different data than its peers: replace the shard with the exact file the manifest \
         describes"
    )]
    ShardMismatch {
        /// The shard's file name.
        name: String,
        /// blake3 (hex) the manifest expects.
        expected: String,
        /// blake3 (hex) of the local file.
        actual: String,
    },
    /// The local dataset does not match an expected manifest in some other way (missing or extra
    /// shard, different tokenizer, sequence length, page cache).
    #[error("dataset does not match the expected manifest: {0}")]
    ManifestMismatch(String),
    /// The arguments or the data make no usable dataset (no shards, too few pages, bad fraction).
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for `Result<T, DataError>`.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        DataError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A [`DataError::Shard`] at `location`.
    pub(crate) fn shard(location: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Shard {
            location: location.into(),
            message: message.into(),
        }
    }
}
