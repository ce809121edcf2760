//! `[supervisor]`: the restart budget of the node's actors ([`SupervisorConfig`]).

use crate::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// `[supervisor]`: restart budget for the node's actors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Restarts allowed within `restart_window_secs`; one more stops the node.
    pub max_restarts: u32,
    /// Length of the restart budget window in seconds.
    pub restart_window_secs: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            restart_window_secs: 60,
        }
    }
}

impl SupervisorConfig {
    /// Checks the `[supervisor]` keys on their own; the error names the key (`supervisor.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.restart_window_secs == 0 {
            return invalid("supervisor.restart_window_secs", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::assert_invalid;

    #[test]
    fn a_bad_supervisor_value_names_its_key() {
        SupervisorConfig::default()
            .validate()
            .expect("defaults valid");
        let s = SupervisorConfig {
            restart_window_secs: 0,
            ..SupervisorConfig::default()
        };
        assert_invalid(s.validate(), "supervisor.restart_window_secs");
    }
}
