//! # apiary-compete
//!
//! Whole-model competitions (Bittensor SN9, AI-factory): see the README's *Competitions*.
//!
//! The pure core, no networking or chain access:
//! - [`package`]: a model directory (Hugging Face LLaMA: `config.json`, `model.safetensors` or
//!   shards, optional `tokenizer.json`) as a [`ModelManifest`] of content-addressed pieces:
//!   [`package_dir`] cuts a directory into pieces, [`assemble`] writes it back verifying every
//!   piece. The model id is `blake3` of the manifest's canonical bytes; miners commit
//!   [`commit_digest`] (id ‖ hotkey) on chain.
//! - [`constraints`]: the competition's rules on a manifest ([`check_manifest`], before any
//!   piece is fetched) and on an assembled directory ([`check_model_dir`]); a [`Refusal`]
//!   carries a stable reason usable as a counter name.
//! - [`rules`]: the ranking math: ε decay, SN9 pairwise win rates with the earlier-commit
//!   advantage, softmax, EMA, the king-of-the-hill paired bootstrap and the copy fingerprint
//!   distance.
//! - [`eval`]: per-page losses and probe logits on the CPU with `apiary-model`, and the
//!   deterministic choice of evaluation pages and probe.

pub mod constraints;
pub mod eval;
pub mod package;
pub mod rules;

pub use constraints::{check_manifest, check_model_dir, LoadedModel, Refusal};
pub use eval::{eval_pages, page_losses, probe, probe_logits, PageSource};
pub use package::{
    assemble, commit_digest, package_dir, FileEntry, ModelManifest, MANIFEST_VERSION,
    MAX_MANIFEST_BYTES,
};
pub use rules::{
    ema, epsilon, koth_dethrones, logit_distance, paired_bootstrap_lower_bound, softmax, win_rates,
};

use std::path::PathBuf;

/// Everything that can go wrong while packaging, fetching, assembling or evaluating a model.
/// Messages name the file (and piece) involved and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum CompeteError {
    /// A model manifest is malformed (network input or a bad local package).
    #[error("invalid model manifest: {0}; the publisher must re-package the model with `apiary compete submit`")]
    Manifest(String),
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
    /// A file of a model directory cannot be packaged.
    #[error("cannot package {file}: {message}")]
    Package {
        /// The file's name.
        file: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The piece store refused a piece while packaging.
    #[error("cannot store piece {piece} of {file}: {message}")]
    Store {
        /// The file's name.
        file: String,
        /// The piece's index within the file.
        piece: usize,
        /// The store's error.
        message: String,
    },
    /// A piece could not be fetched while assembling.
    #[error("cannot fetch piece {piece} of {file}: {message}; retry from another peer")]
    Fetch {
        /// The file's name.
        file: String,
        /// The piece's index within the file.
        piece: usize,
        /// The fetcher's error.
        message: String,
    },
    /// A fetched piece does not hash to (or is not as long as) the manifest's piece.
    #[error(
        "piece {piece} of {file} is corrupt ({message}); discard it and fetch it from another peer"
    )]
    BadPiece {
        /// The file's name.
        file: String,
        /// The piece's index within the file.
        piece: usize,
        /// Expected and actual hash or length.
        message: String,
    },
    /// The model is larger than the competition allows.
    #[error("the model is {total} bytes, more than the competition's max_model_bytes = {max}; publish a smaller model")]
    TooLarge {
        /// The model's total size in bytes.
        total: u64,
        /// The limit.
        max: u64,
    },
    /// The model crate failed (loading, evaluating).
    #[error("model: {0}")]
    Model(#[from] apiary_model::ModelError),
    /// The data crate failed (reading evaluation pages).
    #[error("evaluation data: {0}")]
    Data(#[from] apiary_data::DataError),
    /// Evaluation inputs are unusable (no data, a probe longer than the data, ...).
    #[error("evaluation: {0}")]
    Eval(String),
}

/// Shorthand for `Result<T, CompeteError>`.
pub type Result<T> = std::result::Result<T, CompeteError>;

/// `blake3(bytes)` as an array.
pub(crate) fn b3(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}
