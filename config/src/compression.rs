//! `[compression]`: how updates travel on the wire ([`CompressionConfig`]).

use crate::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// `[compression]`: how updates travel. Chunked top-k with error feedback (the residual stays
/// on the miner), an optional DCT per chunk, and values quantized to `quant_bits`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Off: updates travel dense (f32 safetensors).
    pub enabled: bool,
    /// Elements per chunk.
    pub chunk: usize,
    /// Entries kept per chunk (density `topk / chunk`).
    pub topk: usize,
    /// Transform each chunk with an orthonormal DCT before top-k.
    pub dct: bool,
    /// Bits per kept value (2..=8); 0 keeps f32 values.
    pub quant_bits: u8,
    /// Every miner clears its error-feedback residual at windows that are multiples of this
    /// (0: never). Validators replay each miner's residual from their own recomputes to check
    /// its updates bit for bit; after a window they did not see, the reset brings them back
    /// in step.
    pub residual_reset_windows: u64,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            chunk: 256,
            topk: 4,
            dct: false,
            quant_bits: 8,
            residual_reset_windows: 4,
        }
    }
}

impl CompressionConfig {
    /// Checks the `[compression]` keys on their own (only when `enabled`); the error names the
    /// key (`compression.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.chunk < 2 || self.chunk > 1 << 16 {
            return invalid("compression.chunk", "must be between 2 and 65536");
        }
        if self.topk == 0 || self.topk > self.chunk {
            return invalid(
                "compression.topk",
                format!("must be between 1 and compression.chunk ({})", self.chunk),
            );
        }
        if self.quant_bits != 0 && !(2..=8).contains(&self.quant_bits) {
            return invalid(
                "compression.quant_bits",
                "must be 0 (f32 values) or between 2 and 8",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::{assert_invalid, Case};

    fn enabled() -> CompressionConfig {
        CompressionConfig {
            enabled: true,
            ..CompressionConfig::default()
        }
    }

    #[test]
    fn bad_compression_values_name_their_key() {
        enabled().validate().expect("defaults valid");
        let cases: [Case<CompressionConfig>; 5] = [
            ("compression.chunk", |z| z.chunk = 1),
            ("compression.chunk", |z| z.chunk = (1 << 16) + 1),
            ("compression.topk", |z| z.topk = 0),
            ("compression.topk", |z| z.topk = 257),
            ("compression.quant_bits", |z| z.quant_bits = 1),
        ];
        for (key, spoil) in cases {
            let mut z = enabled();
            spoil(&mut z);
            assert_invalid(z.validate(), key);
            z.enabled = false;
            z.validate().expect("not checked while disabled");
        }
    }
}
