//! `[validator]`: scoring and weights ([`ValidatorConfig`]).

use crate::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// `[validator]`: scoring and weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ValidatorConfig {
    /// EMA factor for scores: `ema = alpha * new + (1 - alpha) * ema`.
    pub ema_alpha: f64,
    /// Updates whose cosine score is below this are not aggregated.
    pub min_score: f64,
    /// Submit weights every this many windows.
    pub weights_every_windows: u64,
    /// Weights version key sent with `set_weights`.
    pub version_key: u64,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        Self {
            ema_alpha: 0.3,
            min_score: 0.1,
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
        if !(-1.0..=1.0).contains(&self.min_score) {
            return invalid(
                "validator.min_score",
                "a cosine threshold, must be in [-1, 1]",
            );
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
        let cases: [Case<ValidatorConfig>; 4] = [
            ("validator.ema_alpha", |v| v.ema_alpha = 0.0),
            ("validator.ema_alpha", |v| v.ema_alpha = f64::NAN),
            ("validator.min_score", |v| v.min_score = 1.5),
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
