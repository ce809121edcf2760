//! Windowed collaborative training (Boltzmann / Templar style) as a [`Mechanism`]: the first
//! implementation of the seam.
//!
//! Per window each miner publishes an update. A validator admits it through the check list
//! [`Windowed::new`] builds — `decodes` (finite tensors of the model's shapes), `in_sync` (the
//! miner's [`crate::sync`] proof matches this validator's model), `recomputes` (the validator
//! redoes the miner's work on its pages) — and scores it by the cosine of the miner's update
//! with the recomputed one. Accepted updates are aggregated into the next model by the lead
//! validator ([`crate::updates::outer_step`]).

use crate::context::NodeContext;
use crate::mechanism::{Cadence, Check, Mechanism, Rejection};
use crate::protocol::UpdateAnnouncement;
use crate::sync::{SyncFailure, SyncStatus};
use apiary_model::{Params, Update};
use std::sync::Arc;

/// Name of the rule that accepts an update id once per window (applied by the window machine,
/// [`crate::window`], where every announcement of a window is seen).
pub const UNIQUE_CONTENT: &str = "unique_content";
/// Name of the check on the announced size.
pub const SIZE: &str = "size";
/// Name of the check that decodes an update.
pub const DECODES: &str = "decodes";
/// Name of the sync-proof check.
pub const IN_SYNC: &str = "in_sync";
/// Name of the recompute check.
pub const RECOMPUTES: &str = "recomputes";

/// What the evaluator has of an update's sync proof before checking it.
pub enum SyncProof {
    /// This validator does not know the window's seed (why), so it cannot check.
    Unknown(String),
    /// The window's seed, and the proof's bytes or why there are none.
    Fetched([u8; 32], Result<Vec<u8>, SyncFailure>),
}

/// One miner's update while the validator checks and scores it.
pub struct Candidate {
    /// The node (config, data pages).
    pub ctx: Arc<NodeContext>,
    /// The announcement.
    pub ann: UpdateAnnouncement,
    /// The model the update claims to be computed on (this validator's copy).
    pub base: Arc<Params>,
    /// The update's bytes, verified against `ann.update`.
    pub bytes: Vec<u8>,
    /// The sync proof.
    pub proof: SyncProof,
    /// The hash of the window's first block (it seeds the window's pages), if this validator
    /// knows it.
    pub window_hash: Option<[u8; 32]>,
    /// The decoded update (filled by `decodes`).
    pub update: Option<Update>,
    /// The validator's recompute (filled by `recomputes`).
    pub own: Option<Update>,
    /// How the sync proof fared (filled by `in_sync`, pass or fail).
    pub sync: Option<SyncStatus>,
}

/// Largest update blob a model of `num_params` parameters can need: dense f32 twice over (a
/// compressed encoding with every value kept carries indices too) plus 1 MiB of header.
pub fn max_update_bytes(num_params: usize) -> u64 {
    (num_params as u64)
        .saturating_mul(8)
        .saturating_add(1 << 20)
}

/// The rule of check `size`: the announcement states the blob's true size, and no update of
/// the model needs more than `max` bytes.
pub fn size_ok(announced: u64, actual: usize, max: u64) -> Result<(), String> {
    if announced > max {
        return Err(format!(
            "announced {announced} bytes, more than any update of this model needs ({max})"
        ));
    }
    if announced != actual as u64 {
        return Err(format!(
            "announced {announced} bytes but the blob has {actual}"
        ));
    }
    Ok(())
}

/// Check `size`: the announced size is the blob's and within what the model's updates need.
pub struct AnnouncedSize;

impl Check<Candidate> for AnnouncedSize {
    fn name(&self) -> &'static str {
        SIZE
    }
    fn check(&self, c: &mut Candidate) -> Result<(), Rejection> {
        size_ok(
            c.ann.size,
            c.bytes.len(),
            max_update_bytes(c.base.num_params()),
        )
        .map_err(|e| Rejection::new(self.name(), e))
    }
}

/// Check `decodes`: the bytes decode to finite tensors of the model's shapes.
pub struct Decodes;

impl Check<Candidate> for Decodes {
    fn name(&self) -> &'static str {
        DECODES
    }
    fn check(&self, c: &mut Candidate) -> Result<(), Rejection> {
        let u = crate::updates::decode(&c.ctx.cfg, &c.bytes)
            .map_err(|e| Rejection::new(self.name(), e))?;
        c.update = Some(u);
        Ok(())
    }
}

/// Check `in_sync`: the miner's slice of its base model matches this validator's model
/// (before any costly work). Without the window's seed the proof cannot be checked; it is
/// recorded as [`SyncStatus::Unchecked`] and `recomputes` refuses the update (the seed also
/// draws the miner's pages).
pub struct InSync;

impl Check<Candidate> for InSync {
    fn name(&self) -> &'static str {
        IN_SYNC
    }
    fn check(&self, c: &mut Candidate) -> Result<(), Rejection> {
        let proof = std::mem::replace(&mut c.proof, SyncProof::Unknown(String::new()));
        match proof {
            SyncProof::Unknown(e) => {
                tracing::warn!(uid = c.ann.uid, window = c.ann.window, error = %e, "cannot check the sync proof; scoring the update without it");
                c.sync = Some(SyncStatus::Unchecked);
                Ok(())
            }
            SyncProof::Fetched(seed, bytes) => {
                match bytes.and_then(|b| crate::sync::check_proof(&c.ctx.cfg, &c.base, &seed, &b)) {
                    Ok(()) => {
                        c.sync = Some(SyncStatus::InSync);
                        Ok(())
                    }
                    Err(f) => {
                        c.sync = Some(f.status());
                        Err(Rejection::new(self.name(), f))
                    }
                }
            }
        }
    }
}

/// Check `recomputes`: the validator redoes the miner's work — the same local steps on the
/// same deterministic pages from the same base model.
pub struct Recomputes;

impl Check<Candidate> for Recomputes {
    fn name(&self) -> &'static str {
        RECOMPUTES
    }
    fn check(&self, c: &mut Candidate) -> Result<(), Rejection> {
        let Some(hash) = c.window_hash else {
            return Err(Rejection::new(
                self.name(),
                "this validator does not know the window's first block hash, so it cannot tell \
                 the miner's pages",
            ));
        };
        let pages = c
            .ctx
            .window_pages(c.ann.uid, c.ann.window, &hash)
            .map_err(|e| {
                Rejection::new(
                    self.name(),
                    format!("recompute failed: cannot read the pages: {e}"),
                )
            })?;
        let (own, _) = crate::updates::compute(&c.ctx.cfg, &c.base, &pages)
            .map_err(|e| Rejection::new(self.name(), format!("recompute failed: {e}")))?;
        c.own = Some(own);
        Ok(())
    }
}

/// Windowed training.
pub struct Windowed {
    checks: Vec<Box<dyn Check<Candidate>>>,
}

impl Windowed {
    /// The mechanism with its check list.
    pub fn new() -> Self {
        Windowed {
            checks: vec![
                Box::new(AnnouncedSize),
                Box::new(Decodes),
                Box::new(InSync),
                Box::new(Recomputes),
            ],
        }
    }
}

impl Default for Windowed {
    fn default() -> Self {
        Self::new()
    }
}

impl Mechanism for Windowed {
    type Submission = Candidate;

    fn name(&self) -> &'static str {
        "windowed"
    }

    fn cadence(&self) -> Cadence {
        Cadence::PerWindow
    }

    fn checks(&self) -> &[Box<dyn Check<Candidate>>] {
        &self.checks
    }

    /// Cosine similarity of the miner's update with the recompute.
    fn score(&self, c: &mut Candidate) -> Result<f32, Rejection> {
        let (Some(u), Some(own)) = (&c.update, &c.own) else {
            return Err(Rejection::new(
                "score",
                "nothing to score: a check did not run",
            ));
        };
        match apiary_model::cosine(u, own) {
            Ok(s) if s.is_finite() => Ok(s),
            Ok(_) => Err(Rejection::new("score", "cosine is not finite")),
            Err(e) => Err(Rejection::new("score", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_size_must_be_true_and_plausible() {
        let max = max_update_bytes(1000);
        assert_eq!(max, 8000 + (1 << 20));
        assert!(size_ok(100, 100, max).is_ok());
        assert!(size_ok(100, 99, max)
            .expect_err("a lie")
            .contains("blob has 99"));
        assert!(size_ok(u64::MAX, 100, max)
            .expect_err("absurd")
            .contains("more than any update"));
        assert_eq!(max_update_bytes(usize::MAX), u64::MAX);
    }
}
