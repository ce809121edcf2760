//! Windowed collaborative training (Boltzmann / Templar style) as a [`Mechanism`]: the first
//! implementation of the seam.
//!
//! Per window each miner publishes an update. A validator admits it through the check list
//! [`Windowed::new`] builds — `size`, `unique_content` (the blob names the announcing uid as
//! its author, [`crate::updates::Author`]), `decodes` (finite tensors of the model's shapes),
//! `in_sync` (the miner's [`crate::sync`] proof matches this validator's model), `recomputes`
//! (the validator redoes the miner's work on its pages, and once per window on **control
//! pages** no miner is assigned), `norm` (not a scaled-up poison) — and scores it with
//! [`score_parts`]:
//!
//! - **fidelity** `f = cos(u, r)`: the update against the recompute on the miner's own pages, in
//!   the wire's domain (with compression the validator replays each miner's error-feedback
//!   residual, so honest CPU work matches bit for bit; a GPU miner's matches to 0.9–0.99);
//! - **credit** = `(f − fidelity_zero) / (fidelity_full − fidelity_zero)` clipped to [0, 1]:
//!   only work that matches the recompute far better than other work does earns. Measured on
//!   the test model (`actors/tests` has no copy of this; see the README's table): honest 1.0,
//!   work from a model 3 windows old 0.35–0.65, another miner's work 0.45–0.6, work on other
//!   pages 0.45–0.6, one local step instead of three 0.68–0.90;
//! - **excess** = `(f − cos(u, b)) / (1 − cos(r, b))` clipped to [0, 1], with `b` the control
//!   recompute: the part of the match that comes from the miner's own pages rather than from
//!   what every update of this model shares (1 for `u = r`; ≈ 0 for work done elsewhere),
//!   so the credit cannot be earned by an update that is merely like every update;
//! - **magnitude** `m = |u| / |r|`: the score is `credit × excess × min(m, 1)²`, so an update
//!   scaled by 0.01 earns 10⁻⁴; `m > max_norm_ratio` is refused (`norm`).
//!
//! Accepted updates are aggregated into the next model by the lead validator
//! ([`crate::updates::outer_step`]).

use crate::context::NodeContext;
use crate::mechanism::{Cadence, Check, Mechanism, Rejection};
use crate::protocol::UpdateAnnouncement;
use crate::sync::{SyncFailure, SyncStatus};
use crate::updates::Encoder;
use apiary_model::{Params, Update};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// Name of the check that an update blob is the announcer's own work for this window: its
/// author header ([`crate::updates::Author`]) names the announcing uid, window and subnet
/// ([`Authored`]). A blob announced by another uid — a copy, whether heard before or after the
/// original — is refused here; the original is not affected by the order.
pub const UNIQUE_CONTENT: &str = "unique_content";
/// Name of the check on the announced size.
pub const SIZE: &str = "size";
/// Name of the check that decodes an update.
pub const DECODES: &str = "decodes";
/// Name of the sync-proof check.
pub const IN_SYNC: &str = "in_sync";
/// Name of the recompute check.
pub const RECOMPUTES: &str = "recomputes";
/// Name of the check on the update's norm.
pub const NORM: &str = "norm";
/// Name of the rule that scores the less faithful of two near-identical updates 0 (applied
/// when the window closes, where every update of the window is known).
pub const NEAR_DUPLICATE: &str = "near_duplicate";

/// The parts of an update's score, kept per miner for the operator (`apiary admin scores`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreParts {
    /// `cos(u, r)`: the update against the recompute on the miner's own pages.
    pub fidelity: f32,
    /// `cos(u, b)`: the update against the recompute on the window's control pages.
    pub control: f32,
    /// `cos(r, b)`: how alike any two updates of this model are in this window.
    pub baseline: f32,
    /// `|u| / |r|`.
    pub magnitude: f32,
    /// Fidelity mapped onto [0, 1] by `fidelity_zero` and `fidelity_full`.
    pub credit: f32,
    /// `(f − cos(u, b)) / (1 − cos(r, b))` in [0, 1].
    pub excess: f32,
    /// `credit × excess × min(magnitude, 1)²`.
    pub score: f32,
}

/// The thresholds [`score_parts`] uses (from `[validator]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Fidelity that earns full credit.
    pub full: f32,
    /// Fidelity that earns nothing.
    pub zero: f32,
}

impl Calibration {
    /// The node's `[validator]` thresholds.
    pub fn of(cfg: &apiary_config::NodeConfig) -> Calibration {
        Calibration {
            full: cfg.validator.fidelity_full as f32,
            zero: cfg.validator.fidelity_zero as f32,
        }
    }
}

/// The score of an update from its cosines and norms (see the module docs): pure, so each
/// term is unit-tested by hand.
pub fn score_from(
    fidelity: f32,
    control: f32,
    baseline: f32,
    magnitude: f32,
    cal: Calibration,
) -> ScoreParts {
    let unit = |x: f32| {
        if x.is_finite() {
            x.clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let credit = unit((fidelity - cal.zero) / (cal.full - cal.zero));
    let excess = unit((fidelity - control) / (1.0 - baseline).max(1e-3));
    let m = unit(magnitude);
    ScoreParts {
        fidelity,
        control,
        baseline,
        magnitude,
        credit,
        excess,
        score: credit * excess * m * m,
    }
}

/// [`score_from`] computed from the update `u`, the recompute `r` and the control `b`.
pub fn score_parts(
    u: &Update,
    r: &Update,
    b: &Update,
    cal: Calibration,
) -> Result<ScoreParts, String> {
    let cos = |x: &Update, y: &Update| apiary_model::cosine(x, y).map_err(|e| e.to_string());
    let (nu, nr) = (
        u.norm().map_err(|e| e.to_string())?,
        r.norm().map_err(|e| e.to_string())?,
    );
    let magnitude = if nr > 0.0 { nu / nr } else { 0.0 };
    Ok(score_from(
        cos(u, r)?,
        cos(u, b)?,
        cos(r, b)?,
        magnitude,
        cal,
    ))
}

/// The window's control recompute (in the wire's domain), computed once by whichever
/// evaluation of the window needs it first and shared by the rest.
#[derive(Default)]
pub struct Controls(Mutex<BTreeMap<u64, Arc<ControlCell>>>);

/// One window's control, once computed (or why it could not be).
type ControlCell = OnceLock<Result<Arc<Update>, String>>;

impl Controls {
    /// Windows whose controls are kept.
    const KEPT: usize = 4;

    /// The control of `window`, computing it with `make` if no evaluation has yet.
    pub fn get(
        &self,
        window: u64,
        make: impl FnOnce() -> Result<Update, String>,
    ) -> Result<Arc<Update>, String> {
        let cell = {
            let mut map = self
                .0
                .lock()
                .map_err(|_| "control cache poisoned by an earlier panic".to_string())?;
            let cell = Arc::clone(map.entry(window).or_default());
            while map.len() > Self::KEPT {
                map.pop_first();
            }
            cell
        };
        cell.get_or_init(|| make().map(Arc::new)).clone()
    }
}

/// Each miner's error-feedback residual as this validator replays it from its recomputes
/// (compression only): `(window of the last replayed update, encoder)` per uid.
#[derive(Default)]
pub struct Residuals(Mutex<HashMap<u16, (u64, Encoder)>>);

impl Residuals {
    /// The reference a miner's compressed update for `window` is compared with: this
    /// validator's recompute `r` encoded as the miner encodes it, with the residual replayed
    /// when this validator also replayed the miner's previous window (and the schedule does not
    /// clear it now), and with a cleared residual otherwise; of the two, the one closer to the
    /// miner's update `u` (both are honest work: a miner gains nothing by the choice). The
    /// chosen encoder is kept for the miner's next window.
    pub fn reference(
        &self,
        cfg: &apiary_config::NodeConfig,
        uid: u16,
        window: u64,
        r: &Update,
        u: &Update,
    ) -> Result<Update, String> {
        let poisoned = || "residual replay poisoned by an earlier panic".to_string();
        let prev = self.0.lock().map_err(|_| poisoned())?.remove(&uid);
        let encode = |enc: &mut Encoder| -> Result<Update, String> {
            crate::updates::decode(cfg, &enc.encode(r)?)
        };
        let mut fresh = Encoder::new(cfg)?;
        let mut best = (encode(&mut fresh)?, fresh);
        if let Some((last, mut enc)) = prev {
            let replayable = last.checked_add(1) == Some(window)
                && !crate::updates::residual_resets_at(cfg, window);
            if replayable {
                let replayed = encode(&mut enc)?;
                let cos = |x: &Update| apiary_model::cosine(u, x).map_err(|e| e.to_string());
                if cos(&replayed)? > cos(&best.0)? {
                    best = (replayed, enc);
                }
            }
        }
        let (reference, enc) = best;
        self.0
            .lock()
            .map_err(|_| poisoned())?
            .insert(uid, (window, enc));
        Ok(reference)
    }
}

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
    /// The update's blob (author header and wire bytes), verified against `ann.update`.
    pub bytes: Vec<u8>,
    /// The sync proof.
    pub proof: SyncProof,
    /// The hash of the window's first block (it seeds the window's pages), if this validator
    /// knows it.
    pub window_hash: Option<[u8; 32]>,
    /// The window's control recomputes (shared by the validator's evaluations).
    pub controls: Arc<Controls>,
    /// The validator's replay of miners' error-feedback residuals (compression).
    pub residuals: Arc<Residuals>,
    /// The decoded update (filled by `decodes`).
    pub update: Option<Update>,
    /// The validator's recompute on the miner's pages, in the wire's domain (filled by
    /// `recomputes`).
    pub own: Option<Update>,
    /// The window's control recompute, in the wire's domain (filled by `recomputes`).
    pub control: Option<Arc<Update>>,
    /// How the sync proof fared (filled by `in_sync`, pass or fail).
    pub sync: Option<SyncStatus>,
    /// The score's parts (filled by the score).
    pub parts: Option<ScoreParts>,
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

/// Check `unique_content`: the blob's author header names the announcement's subnet, window and
/// uid (`decodes` then reads the wire bytes behind it).
pub struct Authored;

impl Check<Candidate> for Authored {
    fn name(&self) -> &'static str {
        UNIQUE_CONTENT
    }
    fn check(&self, c: &mut Candidate) -> Result<(), Rejection> {
        crate::updates::authored(&c.ann, &c.bytes).map_err(|e| Rejection::new(self.name(), e))?;
        Ok(())
    }
}

/// Check `decodes`: the bytes decode to finite tensors of the model's shapes.
pub struct Decodes;

impl Check<Candidate> for Decodes {
    fn name(&self) -> &'static str {
        DECODES
    }
    fn check(&self, c: &mut Candidate) -> Result<(), Rejection> {
        let u = crate::updates::decode_sealed(&c.ctx.cfg, &c.bytes)
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
/// same deterministic pages from the same base model — and, once per window, the same work on
/// the window's control pages; both are taken into the wire's domain (compressed as the miner
/// compresses, [`Residuals::reference`]).
pub struct Recomputes;

impl Check<Candidate> for Recomputes {
    fn name(&self) -> &'static str {
        RECOMPUTES
    }
    fn check(&self, c: &mut Candidate) -> Result<(), Rejection> {
        let reject = |e: String| Rejection::new(RECOMPUTES, e);
        let Some(hash) = c.window_hash else {
            return Err(reject(
                "this validator does not know the window's first block hash, so it cannot tell \
                 the miner's pages"
                    .into(),
            ));
        };
        let Some(u) = &c.update else {
            return Err(reject(
                "nothing to compare: the update was not decoded".into(),
            ));
        };
        let (ctx, window) = (&c.ctx, c.ann.window);
        let pages = ctx
            .window_pages(c.ann.uid, window, &hash)
            .map_err(|e| reject(format!("recompute failed: cannot read the pages: {e}")))?;
        let (r, _) = crate::updates::compute(&ctx.cfg, &c.base, &pages)
            .map_err(|e| reject(format!("recompute failed: {e}")))?;
        let control = c
            .controls
            .get(window, || {
                let pages = ctx.control_pages(window, &hash)?;
                let (b, _) = crate::updates::compute(&ctx.cfg, &c.base, &pages)?;
                match crate::updates::compress_config(&ctx.cfg) {
                    None => Ok(b),
                    Some(_) => {
                        let mut enc = Encoder::new(&ctx.cfg)?;
                        crate::updates::decode(&ctx.cfg, &enc.encode(&b)?)
                    }
                }
            })
            .map_err(|e| reject(format!("control recompute failed: {e}")))?;
        let own = match crate::updates::compress_config(&ctx.cfg) {
            None => r,
            Some(_) => c
                .residuals
                .reference(&ctx.cfg, c.ann.uid, window, &r, u)
                .map_err(|e| reject(format!("encoding the recompute failed: {e}")))?,
        };
        c.own = Some(own);
        c.control = Some(control);
        Ok(())
    }
}

/// Check `norm`: the update is at most `max_norm_ratio` times the recompute's L2 norm (a
/// scaled-up update would pull the aggregate; the outer step clips to the median norm too).
pub struct Norm;

impl Check<Candidate> for Norm {
    fn name(&self) -> &'static str {
        NORM
    }
    fn check(&self, c: &mut Candidate) -> Result<(), Rejection> {
        let (Some(u), Some(r)) = (&c.update, &c.own) else {
            return Err(Rejection::new(
                NORM,
                "nothing to compare: a check did not run",
            ));
        };
        let norm = |x: &Update| x.norm().map_err(|e| Rejection::new(NORM, e));
        let (nu, nr) = (norm(u)?, norm(r)?);
        let max = c.ctx.cfg.validator.max_norm_ratio as f32;
        if !(nu.is_finite() && nu <= max * nr) {
            return Err(Rejection::new(
                NORM,
                format!(
                    "the update's norm {nu:.3e} is more than {max} times the recompute's ({nr:.3e})"
                ),
            ));
        }
        Ok(())
    }
}

/// What the sampler knows of a miner: its last recomputed window and that window's score.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Standing {
    /// The last window in which this validator recomputed the miner's update.
    pub last_recomputed: Option<u64>,
    /// The score of that update.
    pub last_score: f32,
}

/// Which updates a validator recomputes when `validator.max_recomputes_per_window` is below the
/// number of miners: every **suspect** (never recomputed, or last scored below `min_score`)
/// first, every miner not recomputed for `2 × ceil(miners / budget)` windows, and the others
/// each with probability `budget / (2 × miners)`, drawn from a keyed hash with a salt that only this
/// validator knows (so a miner cannot tell in which windows it will be checked, and cheating in
/// a fraction of its windows costs it that fraction of its smoothed score; the draws use half
/// the budget, leaving the rest for suspects and overdue miners); never more than the budget
/// per window. Those not recomputed still pass the cheap checks; their smoothed score is
/// left as it was and they are not aggregated.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// Recomputes per window at most (0: every update).
    pub budget: usize,
    /// Updates scoring below this make a miner a suspect.
    pub min_score: f32,
    /// This validator's secret salt.
    pub salt: [u8; 32],
}

impl Sampler {
    /// Whether to recompute `uid`'s update for `window`, given the miner's standing, the number
    /// of miners, and the recomputes already started in this window.
    pub fn recompute(
        &self,
        uid: u16,
        window: u64,
        standing: Standing,
        miners: usize,
        started: usize,
    ) -> bool {
        if self.budget == 0 || miners <= self.budget {
            return true;
        }
        if started >= self.budget {
            return false;
        }
        let Some(last) = standing.last_recomputed else {
            return true;
        };
        if standing.last_score < self.min_score || !standing.last_score.is_finite() {
            return true;
        }
        let max_gap = 2 * miners.div_ceil(self.budget) as u64;
        if window.saturating_sub(last) >= max_gap {
            return true;
        }
        let mut h = blake3::Hasher::new_keyed(&self.salt);
        h.update(&window.to_le_bytes());
        h.update(&uid.to_le_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&h.finalize().as_bytes()[..8]);
        let draw = u64::from_le_bytes(head) as f64 / u64::MAX as f64;
        // Half the budget goes to random draws, leaving room for suspects and overdue miners.
        draw < self.budget as f64 / (2 * miners) as f64
    }
}

/// How smoothed scores become weight shares (`[validator]`: `top_k`, `top_share`,
/// `burn_uid`, `burn_share`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shaping {
    /// Size of the top group (0: none).
    pub top_k: usize,
    /// The top group's share of the miners' weight.
    pub top_share: f64,
    /// The uid that receives `burn_share`.
    pub burn_uid: Option<u16>,
    /// Share of all weight for `burn_uid`.
    pub burn_share: f64,
}

impl Shaping {
    /// The node's `[validator]` shaping.
    pub fn of(v: &apiary_config::ValidatorConfig) -> Shaping {
        Shaping {
            top_k: v.top_k,
            top_share: v.top_share,
            burn_uid: v.burn_uid,
            burn_share: v.burn_share,
        }
    }

    /// Smoothed scores → weight shares summing to 1 (empty if no miner earned anything):
    /// proportional to the scores; with a top group, its `top_k` best (ties: lower uid) share
    /// `top_share` in proportion to their scores and the rest share the remainder (all of it
    /// goes to the top group when the rest earned nothing); with a burn uid, every share is
    /// scaled by `1 − burn_share` and the burn uid gets `burn_share` on top of its own.
    pub fn shares(&self, smoothed: &[(u16, f64)]) -> Vec<(u16, f64)> {
        let mut s: Vec<(u16, f64)> = smoothed
            .iter()
            .map(|&(u, x)| (u, if x.is_finite() { x.max(0.0) } else { 0.0 }))
            .filter(|(_, x)| *x > 0.0)
            .collect();
        if s.is_empty() {
            return Vec::new();
        }
        s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let split = if self.top_k > 0 && self.top_k < s.len() {
            self.top_k
        } else {
            s.len()
        };
        let (top, rest) = s.split_at(split);
        let sum = |g: &[(u16, f64)]| g.iter().map(|(_, x)| x).sum::<f64>();
        let (st, sr) = (sum(top), sum(rest));
        let top_share = if sr > 0.0 { self.top_share } else { 1.0 };
        let mut out: Vec<(u16, f64)> = top
            .iter()
            .map(|&(u, x)| (u, top_share * x / st))
            .chain(rest.iter().map(|&(u, x)| (u, (1.0 - top_share) * x / sr)))
            .collect();
        if let Some(burn) = self.burn_uid.filter(|_| self.burn_share > 0.0) {
            for (_, x) in &mut out {
                *x *= 1.0 - self.burn_share;
            }
            match out.iter_mut().find(|(u, _)| *u == burn) {
                Some((_, x)) => *x += self.burn_share,
                None => out.push((burn, self.burn_share)),
            }
        }
        out.sort_by_key(|(u, _)| *u);
        out
    }
}

/// Windowed training.
pub struct Windowed {
    checks: Vec<Box<dyn Check<Candidate>>>,
    shaping: Shaping,
}

impl Windowed {
    /// The mechanism with its check list and the validator's weight shaping.
    pub fn new(v: &apiary_config::ValidatorConfig) -> Self {
        Windowed {
            shaping: Shaping::of(v),
            checks: vec![
                Box::new(AnnouncedSize),
                Box::new(Authored),
                Box::new(Decodes),
                Box::new(InSync),
                Box::new(Recomputes),
                Box::new(Norm),
            ],
        }
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

    /// [`Shaping::shares`], then Bittensor's normalization.
    fn weights(&self, smoothed: &[(u16, f64)]) -> (Vec<u16>, Vec<u16>) {
        apiary_chain::normalize_weights(&self.shaping.shares(smoothed))
    }

    /// [`score_parts`] of the update, its recompute and the window's control.
    fn score(&self, c: &mut Candidate) -> Result<f32, Rejection> {
        let (Some(u), Some(own), Some(control)) = (&c.update, &c.own, &c.control) else {
            return Err(Rejection::new(
                "score",
                "nothing to score: a check did not run",
            ));
        };
        let parts = score_parts(u, own, control, Calibration::of(&c.ctx.cfg))
            .map_err(|e| Rejection::new("score", e))?;
        c.parts = Some(parts);
        Ok(parts.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAL: Calibration = Calibration {
        full: 0.9,
        zero: 0.75,
    };

    /// The sampling policy over 64 miners, 8 of them cheats, with a budget of 15 recomputes
    /// per window (+1 control): the validator's compute per miner per window relative to a
    /// miner's own is at most (15 + 1) / 64 = 0.25, every honest miner is recomputed at least
    /// every 3 × ceil(64 / 15) = 15 windows, and a cheat, once caught, is recomputed every window
    /// (the numbers are printed; `cargo test -p apiary-actors sampling -- --nocapture`).
    /// Measured: 14.9 recomputes per window, 0.248 of a miner's compute per miner, longest gap
    /// 12 windows, every cheat first checked within 3 windows.
    #[test]
    fn sampling_bounds_cost_and_keeps_checking_everyone() {
        let (miners, budget, windows) = (64usize, 15usize, 200u64);
        let sampler = Sampler {
            budget,
            min_score: 0.1,
            salt: [7; 32],
        };
        let cheat = |uid: u16| uid % 8 == 3;
        let mut standing = vec![Standing::default(); miners];
        let mut total = 0usize;
        let mut max_gap = 0u64;
        let mut caught_after = Vec::new();
        for w in 0..windows {
            let mut started = 0;
            // Announcements arrive in a different order every window.
            let offset = (w as usize * 17) % miners;
            for i in 0..miners {
                let uid = ((i + offset) % miners) as u16;
                let s = &mut standing[uid as usize];
                if sampler.recompute(uid, w, *s, miners, started) {
                    started += 1;
                    if let Some(last) = s.last_recomputed {
                        if !cheat(uid) {
                            max_gap = max_gap.max(w - last);
                        }
                    } else if cheat(uid) {
                        caught_after.push(w);
                    }
                    s.last_recomputed = Some(w);
                    s.last_score = if cheat(uid) { 0.0 } else { 1.0 };
                }
            }
            assert!(started <= budget, "window {w}: {started} recomputes");
            total += started;
        }
        let ratio = (total as f64 / windows as f64 + 1.0) / miners as f64;
        let first_seen = caught_after.iter().max().copied().unwrap_or(u64::MAX);
        eprintln!(
            "sampling: {miners} miners, budget {budget}: {:.2} recomputes/window, validator \
             compute per miner per window {ratio:.3} of a miner's; longest gap between checks \
             of an honest miner {max_gap} windows; every cheat first checked by window \
             {first_seen}",
            total as f64 / windows as f64
        );
        assert!(ratio <= 0.25 + 1e-9, "ratio {ratio}");
        // Overdue miners are due after 2 × ceil(64 / 15) = 10 windows, but wait when the
        // window's budget is already spent by the time they announce.
        assert!(
            max_gap <= 3 * miners.div_ceil(budget) as u64,
            "gap {max_gap}"
        );
        assert_eq!(caught_after.len(), 8, "every cheat is checked");
        // Caught cheats are suspects: checked in every window after the first few.
        let late = standing
            .iter()
            .enumerate()
            .filter(|(u, _)| cheat(*u as u16))
            .all(|(_, s)| s.last_recomputed >= Some(windows - 3));
        assert!(late, "cheats are re-checked every window");
        // Without a budget, everything is recomputed.
        let all = Sampler {
            budget: 0,
            ..sampler
        };
        assert!(all.recompute(1, 1, Standing::default(), 1000, 999));
    }

    #[test]
    fn shaping_by_hand() {
        let plain = Shaping {
            top_k: 0,
            top_share: 1.0,
            burn_uid: None,
            burn_share: 0.0,
        };
        let scores = [(1, 3.0), (2, 1.0), (3, 0.0), (4, f64::NAN), (5, -1.0)];
        assert_eq!(plain.shares(&scores), vec![(1, 0.75), (2, 0.25)]);
        assert!(plain.shares(&[(1, 0.0)]).is_empty());
        // Top 1 gets 0.8, the rest 0.2 in proportion.
        let top = Shaping {
            top_k: 1,
            top_share: 0.8,
            ..plain
        };
        let s = top.shares(&[(1, 1.0), (2, 3.0), (3, 1.0)]);
        let want = [(1, 0.1), (2, 0.8), (3, 0.1)];
        assert_eq!(s.len(), 3);
        for ((u, x), (wu, wx)) in s.iter().zip(want) {
            assert_eq!(*u, wu);
            assert!((x - wx).abs() < 1e-12, "{s:?}");
        }
        // With nobody else earning, the top group takes everything.
        assert_eq!(top.shares(&[(2, 3.0)]), vec![(2, 1.0)]);
        // Burn 0.5 to uid 0.
        let burn = Shaping {
            burn_uid: Some(0),
            burn_share: 0.5,
            ..plain
        };
        assert_eq!(
            burn.shares(&[(1, 3.0), (2, 1.0)]),
            vec![(0, 0.5), (1, 0.375), (2, 0.125)]
        );
    }

    #[test]
    fn honest_work_earns_full_score() {
        // u = r: f = 1, cos(u, b) = cos(r, b).
        let p = score_from(1.0, 0.5, 0.5, 1.0, CAL);
        assert_eq!((p.credit, p.excess, p.score), (1.0, 1.0, 1.0));
        // A GPU miner: f = 0.95 and noise orthogonal to everything, so cos(u, b) = 0.95 * 0.5.
        let p = score_from(0.95, 0.475, 0.5, 1.0, CAL);
        assert_eq!(p.credit, 1.0);
        assert!((p.excess - 0.95).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn work_done_elsewhere_earns_nothing() {
        // Values measured on the test model (module docs).
        for (what, f, c, base) in [
            ("stale (3 windows)", 0.65, 0.49, 0.58),
            ("another miner's", 0.59, 0.52, 0.58),
            ("other pages", 0.61, 0.56, 0.60),
        ] {
            let p = score_from(f, c, base, 1.0, CAL);
            assert_eq!(p.score, 0.0, "{what}: {p:?}");
        }
        // Like every update but not like its own recompute beyond that: credit but no excess.
        let p = score_from(0.95, 0.95, 0.95, 1.0, CAL);
        assert_eq!((p.credit, p.excess, p.score), (1.0, 0.0, 0.0));
    }

    #[test]
    fn less_work_earns_less() {
        // One local step of three: f = 0.85 (credit 2/3), c = 0.4, base 0.5 (excess 0.9),
        // m = 0.5: 2/3 * 0.9 * 0.25 = 0.15.
        let p = score_from(0.85, 0.4, 0.5, 0.5, CAL);
        assert!((p.credit - 2.0 / 3.0).abs() < 1e-5, "{p:?}");
        assert!((p.excess - 0.9).abs() < 1e-5, "{p:?}");
        assert!((p.score - 0.15).abs() < 1e-5, "{p:?}");
        // × 0.01: 1e-4.
        let p = score_from(1.0, 0.5, 0.5, 0.01, CAL);
        assert!((p.score - 1e-4).abs() < 1e-9, "{p:?}");
        // Negated or not finite: nothing.
        assert_eq!(score_from(-1.0, -0.5, 0.5, 1.0, CAL).score, 0.0);
        assert_eq!(score_from(f32::NAN, 0.5, 0.5, 1.0, CAL).score, 0.0);
        // Larger than the recompute: no more than full.
        assert_eq!(score_from(1.0, 0.5, 0.5, 2.0, CAL).score, 1.0);
    }

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

#[cfg(test)]
mod replay_tests {
    use super::*;
    use apiary_config::NodeConfig;

    fn compressed() -> NodeConfig {
        let mut c = NodeConfig::default();
        c.model.d_model = 16;
        c.model.n_layers = 1;
        c.model.n_heads = 2;
        c.model.d_ff = 32;
        c.model.seq_len = 8;
        c.compression.enabled = true;
        c.compression.residual_reset_windows = 4;
        c
    }

    #[test]
    fn replayed_residuals_match_a_miner_bit_for_bit_and_resync_at_resets() {
        let cfg = compressed();
        let mut miner = Encoder::new(&cfg).expect("encoder");
        let residuals = Residuals::default();
        let work = |w: u64| Update::random_like(&cfg.model, w, 1.0).expect("update");
        for w in 1..10u64 {
            let r = work(w);
            let bytes = miner.encode_window(&cfg, w, &r).expect("encode");
            let u = crate::updates::decode(&cfg, &bytes).expect("decode");
            // The validator misses window 5 (it sees nothing of it).
            if w == 5 {
                continue;
            }
            let reference = residuals.reference(&cfg, 7, w, &r, &u).expect("reference");
            let cos = apiary_model::cosine(&u, &reference).expect("cos");
            if w == 6 || w == 7 {
                // Out of step until the reset at window 8: the residual of window 5 is missing.
                assert!(cos < 0.99, "window {w}: cos {cos}");
            } else {
                assert_eq!(u.to_vecs().ok(), reference.to_vecs().ok(), "window {w}");
            }
        }
    }

    #[test]
    fn controls_are_computed_once_per_window() {
        let controls = Controls::default();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let make = || {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Update::random_like(&compressed().model, 1, 1.0).map_err(|e| e.to_string())
        };
        let a = controls.get(3, make).expect("control");
        let b = controls.get(3, make).expect("control");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        for w in 4..10 {
            controls.get(w, make).expect("control");
        }
        assert!(controls.0.lock().expect("lock").len() <= Controls::KEPT);
    }
}
