//! `[validator]`: scoring and weights ([`ValidatorConfig`]).

use crate::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// `[validator]`: scoring and weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ValidatorConfig {
    /// EMA factor for scores: `ema = alpha * new + (1 - alpha) * ema`.
    pub ema_alpha: f64,
    /// Updates whose score (see `fidelity_full`) is below this are not aggregated.
    pub min_score: f64,
    /// Fidelity (cosine of the miner's update with this validator's recompute on the miner's
    /// pages, in the wire's domain) at and above which the work earns full credit. Honest CPU
    /// work is bit-identical (1.0); a GPU miner's is 0.9–0.99.
    pub fidelity_full: f64,
    /// Fidelity at and below which the work earns nothing (credit is linear in between).
    /// Measured on the test model: work from a model 3 windows old 0.35–0.65, another
    /// miner's work 0.45–0.6, one local step instead of three 0.68–0.90.
    pub fidelity_zero: f64,
    /// Updates whose L2 norm is more than this many times the recompute's are refused
    /// (check `norm`): a poisoner's scaled update.
    pub max_norm_ratio: f64,
    /// Two updates of one window whose cosine is at least this are a copy: the one less like
    /// its own recompute (or, if equal, the later observed) scores 0. Honest miners' updates
    /// have cosines of 0.3–0.65 with each other.
    pub duplicate_cosine: f64,
    /// Full recomputes per window at most (0: every update). When more miners announce, a
    /// sample is recomputed (every miner regularly, suspects more often) and the others are
    /// only checked (size, decoding, sync proof) and aggregated if their standing is good.
    pub max_recomputes_per_window: usize,
    /// A uid that receives `burn_share` of the weight (e.g. the subnet owner's, to burn
    /// emission); unset: none.
    pub burn_uid: Option<u16>,
    /// Share of the weight for `burn_uid`, in [0, 1).
    pub burn_share: f64,
    /// The top `top_k` miners by smoothed score share `top_share` of the miners' weight in
    /// proportion to their scores; the rest share the remainder (0: plain proportional).
    pub top_k: usize,
    /// Share of the miners' weight for the top `top_k`, in (0, 1].
    pub top_share: f64,
    /// Submit weights every this many windows.
    pub weights_every_windows: u64,
    /// Weights version key sent with `set_weights`.
    pub version_key: u64,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        Self {
            ema_alpha: 0.3,
            min_score: 0.5,
            fidelity_full: 0.9,
            fidelity_zero: 0.75,
            max_norm_ratio: 3.0,
            duplicate_cosine: 0.95,
            max_recomputes_per_window: 0,
            burn_uid: None,
            burn_share: 0.0,
            top_k: 0,
            top_share: 1.0,
            weights_every_windows: 1,
            version_key: 0,
        }
    }
}

impl ValidatorConfig {
    /// Checks the `[validator]` keys on their own; the error names the key (`validator.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.ema_alpha > 0.0 && self.ema_alpha <= 1.0) {
            return invalid("validator.ema_alpha", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_score) {
            return invalid(
                "validator.min_score",
                "a score threshold, must be in [0, 1]",
            );
        }
        if !(self.fidelity_full > 0.0 && self.fidelity_full <= 1.0) {
            return invalid("validator.fidelity_full", "a cosine, must be in (0, 1]");
        }
        if !(self.fidelity_zero >= -1.0 && self.fidelity_zero < self.fidelity_full) {
            return invalid(
                "validator.fidelity_zero",
                format!(
                    "must be in [-1, validator.fidelity_full ({}))",
                    self.fidelity_full
                ),
            );
        }
        if !(self.max_norm_ratio.is_finite() && self.max_norm_ratio >= 1.0) {
            return invalid(
                "validator.max_norm_ratio",
                "must be at least 1 (3 refuses updates three times the recompute's norm)",
            );
        }
        if !(self.duplicate_cosine > 0.0 && self.duplicate_cosine <= 1.0) {
            return invalid("validator.duplicate_cosine", "a cosine, must be in (0, 1]");
        }
        if !(self.burn_share.is_finite() && (0.0..1.0).contains(&self.burn_share)) {
            return invalid("validator.burn_share", "must be in [0, 1)");
        }
        if self.burn_share > 0.0 && self.burn_uid.is_none() {
            return invalid(
                "validator.burn_share",
                "is set but validator.burn_uid is not; name the uid that receives it",
            );
        }
        if !(self.top_share > 0.0 && self.top_share <= 1.0) {
            return invalid("validator.top_share", "must be in (0, 1]");
        }
        if self.weights_every_windows == 0 {
            return invalid("validator.weights_every_windows", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::{assert_invalid, Case};

    #[test]
    fn bad_validator_values_name_their_key() {
        ValidatorConfig::default()
            .validate()
            .expect("defaults valid");
        let cases: [Case<ValidatorConfig>; 11] = [
            ("validator.ema_alpha", |v| v.ema_alpha = 0.0),
            ("validator.ema_alpha", |v| v.ema_alpha = f64::NAN),
            ("validator.min_score", |v| v.min_score = 1.5),
            ("validator.fidelity_full", |v| v.fidelity_full = 1.5),
            ("validator.fidelity_zero", |v| v.fidelity_zero = 0.95),
            ("validator.max_norm_ratio", |v| v.max_norm_ratio = 0.5),
            ("validator.duplicate_cosine", |v| v.duplicate_cosine = 0.0),
            ("validator.burn_share", |v| v.burn_share = 1.0),
            ("validator.burn_share", |v| v.burn_share = 0.1),
            ("validator.top_share", |v| v.top_share = 0.0),
            ("validator.weights_every_windows", |v| {
                v.weights_every_windows = 0
            }),
        ];
        for (key, spoil) in cases {
            let mut v = ValidatorConfig::default();
            spoil(&mut v);
            assert_invalid(v.validate(), key);
        }
    }
}
