//! [`ConfigError`]: what can be wrong with a configuration, naming the key and the fix.

use std::path::PathBuf;

/// A configuration problem. The message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}; check the path passed to --config")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said (includes line and column).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config value `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `model.n_heads`.
        key: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ConfigError {
    /// The dotted key of an [`ConfigError::Invalid`] value (e.g. `model.n_heads`); `None` for
    /// read and parse errors.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Parse { .. } => None,
        }
    }
}

/// `Err(ConfigError::Invalid { key, message })`: the shorthand every `validate` uses.
pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        message: message.into(),
    })
}

/// Checks an optional hex seed: when set it must be exactly 32 bytes of hex.
pub(crate) fn check_seed(key: &'static str, seed: Option<&str>) -> Result<(), ConfigError> {
    match seed {
        Some(s) if hex::decode(s).map(|b| b.len() != 32).unwrap_or(true) => {
            invalid(key, "must be 64 hex characters (a 32-byte seed)")
        }
        _ => Ok(()),
    }
}

/// Test helpers shared by every section's tests.
#[cfg(test)]
pub(crate) mod test_util {
    use super::ConfigError;

    /// A table row of the section tests: the key expected, and how to spoil a valid value.
    pub(crate) type Case<T> = (&'static str, fn(&mut T));

    /// Asserts that `result` is an `Invalid` error for `key`, whose message names the key.
    pub(crate) fn assert_invalid(result: Result<(), ConfigError>, key: &str) {
        let err = result.expect_err(key);
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.to_string().contains(key), "{err}");
    }
}
