//! `[checkpoint]`: which past models a node keeps ([`CheckpointConfig`]).

use crate::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// `[checkpoint]`: what a node keeps of past models.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Keep every model checkpoint whose window is a multiple of this (and always the latest
    /// `keep_recent`); others are deleted from the store once superseded.
    pub every_windows: u64,
    /// Most recent window checkpoints always kept (peers that are a few windows behind
    /// catch up from them).
    pub keep_recent: usize,
    /// Of the periodic checkpoints, how many (the latest) are kept; 0 keeps them all.
    pub keep_periodic: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_windows: 10,
            keep_recent: 4,
            keep_periodic: 0,
        }
    }
}

impl CheckpointConfig {
    /// Checks the `[checkpoint]` keys on their own; the error names the key (`checkpoint.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.every_windows == 0 {
            return invalid("checkpoint.every_windows", "must be at least 1");
        }
        if self.keep_recent == 0 {
            return invalid(
                "checkpoint.keep_recent",
                "must be at least 1 (the current model)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::assert_invalid;

    #[test]
    fn bad_checkpoint_values_name_their_key() {
        CheckpointConfig::default()
            .validate()
            .expect("defaults valid");
        let c = CheckpointConfig {
            every_windows: 0,
            ..CheckpointConfig::default()
        };
        assert_invalid(c.validate(), "checkpoint.every_windows");
        let c = CheckpointConfig {
            keep_recent: 0,
            ..CheckpointConfig::default()
        };
        assert_invalid(c.validate(), "checkpoint.keep_recent");
    }
}
