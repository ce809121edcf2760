//! Sync proofs: a miner shows it holds the model it claims to have trained from.
//!
//! Templar-style "sync score". With its update for window `w` a miner publishes a **slice** of
//! its base model ([`apiary_compress::extract_slice`]): the values at
//! `ceil(len * train.sync_slice_fraction)` positions of every tensor, drawn from the hash of
//! `w`'s first block ([`crate::context::NodeContext::window_seed`]). Nobody knows those positions
//! before the window starts, so the only cheap way to produce them is to hold the model. The
//! validator takes the same slice of its own base model for `w` and compares: every value
//! within [`SYNC_TOLERANCE`] means in sync; anything else (values differ, no slice, a slice that
//! does not decode or was seeded for another window) rejects the update before it is
//! recomputed or aggregated.
//!
//! The slice travels as its own content-addressed blob named by
//! [`crate::protocol::UpdateAnnouncement::sync_slice`] (see there for why).

use apiary_compress::{extract_slice, CompressError, Slice};
use apiary_config::NodeConfig;
use apiary_model::Params;
use serde::{Deserialize, Serialize};

/// Largest absolute difference between a miner's sliced value and the validator's that still
/// counts as in sync (both hold bit-identical models when in sync; the tolerance only forgives
/// a different float rounding of the same model).
pub const SYNC_TOLERANCE: f32 = 1e-6;

/// How an update's sync proof fared, as recorded per miner in the validator's scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// The slice matches the validator's base model.
    InSync,
    /// The slice is well formed, but its values differ from the validator's base model: the
    /// miner trained from another model (e.g. it is a window behind). Rejected.
    OutOfSync,
    /// No slice, one that could not be fetched or decoded, or one taken with another seed,
    /// fraction or tensor lengths. Rejected.
    Invalid,
    /// The validator did not know the window's seed (the chain could not tell it the hash of
    /// the window's first block), so it could not check; the update was scored normally.
    Unchecked,
}

/// Why a sync proof was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SyncFailure {
    /// Missing, unfetchable, undecodable, or taken with another seed, fraction or lengths.
    #[error("invalid sync proof: {0}")]
    Invalid(String),
    /// Well formed, but the values differ from this validator's model.
    #[error(
        "out of sync: {differing} of {checked} sliced values differ from this validator's \
         model (max |diff| {max_diff:e} > {SYNC_TOLERANCE:e})"
    )]
    OutOfSync {
        /// Values farther apart than [`SYNC_TOLERANCE`].
        differing: usize,
        /// Values compared.
        checked: usize,
        /// Largest absolute difference.
        max_diff: f32,
    },
}

impl SyncFailure {
    /// The status recorded for this failure.
    pub fn status(&self) -> SyncStatus {
        match self {
            SyncFailure::Invalid(_) => SyncStatus::Invalid,
            SyncFailure::OutOfSync { .. } => SyncStatus::OutOfSync,
        }
    }
}

/// A sync proof could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The model's tensors could not be read.
    #[error("cannot read the model's tensors: {0}")]
    Params(#[from] apiary_model::ModelError),
    /// The slice could not be taken (invalid fraction, non-finite parameters).
    #[error("cannot take the sync slice: {0}")]
    Slice(#[from] CompressError),
}

/// The slice of `params` seeded by `seed` with the subnet's `train.sync_slice_fraction`.
fn slice_of(cfg: &NodeConfig, params: &Params, seed: &[u8; 32]) -> Result<Slice, SyncError> {
    let tensors = params.to_vecs()?;
    Ok(extract_slice(
        &tensors,
        seed,
        cfg.train.sync_slice_fraction,
    )?)
}

/// The sync proof a miner publishes for a window: the encoded slice of its base model `params`
/// seeded by the window's seed.
pub fn make_proof(
    cfg: &NodeConfig,
    params: &Params,
    seed: &[u8; 32],
) -> Result<Vec<u8>, SyncError> {
    Ok(slice_of(cfg, params, seed)?.to_bytes())
}

/// Checks a miner's sync proof `proof` against this node's base model `params` for the window
/// whose seed is `seed`.
pub fn check_proof(
    cfg: &NodeConfig,
    params: &Params,
    seed: &[u8; 32],
    proof: &[u8],
) -> Result<(), SyncFailure> {
    let theirs = Slice::from_bytes(proof).map_err(|e| SyncFailure::Invalid(e.to_string()))?;
    if theirs.seed() != seed {
        return Err(SyncFailure::Invalid(format!(
            "seeded with {}, but the window's first block hash is {}",
            hex::encode(&theirs.seed()[..8]),
            hex::encode(&seed[..8])
        )));
    }
    let fraction = cfg.train.sync_slice_fraction;
    if theirs.fraction().to_bits() != fraction.to_bits() {
        return Err(SyncFailure::Invalid(format!(
            "fraction {} differs from the subnet's train.sync_slice_fraction {fraction}",
            theirs.fraction()
        )));
    }
    let ours = slice_of(cfg, params, seed)
        .map_err(|e| SyncFailure::Invalid(format!("cannot slice our own model: {e}")))?;
    if theirs.lengths() != ours.lengths() {
        return Err(SyncFailure::Invalid(
            "tensor count or lengths differ from the model's".into(),
        ));
    }
    let (mut checked, mut differing, mut max_diff) = (0usize, 0usize, 0f32);
    for (a, b) in theirs.values().iter().zip(ours.values()) {
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs();
            checked += 1;
            if d > SYNC_TOLERANCE {
                differing += 1;
            }
            max_diff = max_diff.max(d);
        }
    }
    if differing > 0 {
        return Err(SyncFailure::OutOfSync {
            differing,
            checked,
            max_diff,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_model::{OuterState, Update};

    fn seed(tag: u8) -> [u8; 32] {
        [tag; 32]
    }

    #[test]
    fn same_model_and_seed_is_in_sync_a_window_behind_is_not() {
        let cfg = NodeConfig::default();
        let base = Params::init(&cfg.model).expect("init");
        // The model one window later: the outer step of one (random) update.
        let update = Update::random_like(&cfg.model, 3, 0.01).expect("update");
        let (next, _) =
            crate::updates::outer_step(&cfg, &base, &OuterState::new(), &[update]).expect("step");

        let proof = make_proof(&cfg, &next, &seed(1)).expect("proof");
        assert_eq!(check_proof(&cfg, &next, &seed(1), &proof), Ok(()));
        // Small: the default model's proof fits comfortably in a gossip message.
        assert!(proof.len() < 4096, "{} bytes", proof.len());

        // A miner still on the previous window's model.
        let behind = make_proof(&cfg, &base, &seed(1)).expect("proof");
        let err = check_proof(&cfg, &next, &seed(1), &behind).expect_err("behind");
        assert_eq!(err.status(), SyncStatus::OutOfSync, "{err}");
        assert!(err.to_string().contains("out of sync"), "{err}");

        // A proof prepared for another window (seed) is refused, not compared.
        let other = make_proof(&cfg, &next, &seed(2)).expect("proof");
        let err = check_proof(&cfg, &next, &seed(1), &other).expect_err("seed");
        assert_eq!(err.status(), SyncStatus::Invalid, "{err}");

        // Another fraction, garbage and a truncated proof are invalid.
        let mut c2 = cfg.clone();
        c2.train.sync_slice_fraction = 0.01;
        let wide = make_proof(&c2, &next, &seed(1)).expect("proof");
        let err = check_proof(&cfg, &next, &seed(1), &wide).expect_err("fraction");
        assert_eq!(err.status(), SyncStatus::Invalid, "{err}");
        for bad in [&b"garbage"[..], &proof[..proof.len() - 1], &[][..]] {
            let err = check_proof(&cfg, &next, &seed(1), bad).expect_err("malformed");
            assert_eq!(err.status(), SyncStatus::Invalid, "{err}");
        }
    }

    #[test]
    fn differences_within_the_tolerance_are_in_sync() {
        let cfg = NodeConfig::default();
        let params = Params::init(&cfg.model).expect("init");
        let mut vecs = params.to_vecs().expect("vecs");
        // Nudge every parameter by less than the tolerance.
        for v in vecs.iter_mut().flatten() {
            *v += SYNC_TOLERANCE / 4.0;
        }
        let nudged = Params::from_vecs(&cfg.model, vecs).expect("params");
        let proof = make_proof(&cfg, &nudged, &seed(5)).expect("proof");
        assert_eq!(check_proof(&cfg, &params, &seed(5), &proof), Ok(()));
    }
}
