//! `[model]`: the decoder's architecture ([`ModelConfig`]).

use crate::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[model]`: a LLaMA-style decoder. Defaults are tiny so it trains on a 2-core CPU.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Vocabulary size (256 for byte-level tokens).
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Attention heads; must divide `d_model`, head dim must be even (rotary).
    pub n_heads: usize,
    /// SwiGLU inner size.
    pub d_ff: usize,
    /// Tokens per page (sequence length).
    pub seq_len: usize,
    /// Rotary base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Seed of the deterministic initial parameters shared by the whole subnet.
    pub init_seed: u64,
    /// Start from a Hugging Face LLaMA checkpoint directory (`config.json` +
    /// `model.safetensors`) instead of `init_seed`; its shapes must match this section. Every
    /// node of a subnet must start from the same checkpoint.
    pub init_from: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            vocab_size: 256,
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            d_ff: 172,
            seq_len: 64,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            init_seed: 42,
            init_from: None,
        }
    }
}

impl ModelConfig {
    /// Checks the `[model]` keys on their own; the error names the key (`model.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vocab_size == 0 || self.vocab_size > 1 << 20 {
            return invalid(
                "model.vocab_size",
                "must be between 1 and 1048576 (256 for bytes)",
            );
        }
        if self.vocab_size < 256 {
            return invalid("model.vocab_size", "byte-level tokens need at least 256");
        }
        if self.d_model == 0 {
            return invalid("model.d_model", "must be > 0 (a multiple of model.n_heads)");
        }
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return invalid(
                "model.n_heads",
                format!("must be > 0 and divide model.d_model ({})", self.d_model),
            );
        }
        if !(self.d_model / self.n_heads).is_multiple_of(2) {
            return invalid(
                "model.n_heads",
                "head dimension d_model / n_heads must be even for rotary embeddings",
            );
        }
        if self.n_layers == 0 || self.n_layers > 256 {
            return invalid("model.n_layers", "must be between 1 and 256");
        }
        if self.d_ff == 0 {
            return invalid("model.d_ff", "must be > 0");
        }
        if self.seq_len < 2 || self.seq_len > 1 << 16 {
            return invalid("model.seq_len", "must be between 2 and 65536");
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return invalid("model.rope_theta", "must be a positive number");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::{assert_invalid, Case};

    #[test]
    fn bad_model_values_name_their_key() {
        ModelConfig::default().validate().expect("defaults valid");
        let cases: [Case<ModelConfig>; 10] = [
            ("model.vocab_size", |m| m.vocab_size = 0),
            ("model.vocab_size", |m| m.vocab_size = 255),
            ("model.vocab_size", |m| m.vocab_size = (1 << 20) + 1),
            ("model.d_model", |m| m.d_model = 0),
            ("model.n_heads", |m| m.n_heads = 3),
            ("model.n_heads", |m| m.n_heads = 64),
            ("model.n_layers", |m| m.n_layers = 0),
            ("model.d_ff", |m| m.d_ff = 0),
            ("model.seq_len", |m| m.seq_len = 1),
            ("model.rope_theta", |m| m.rope_theta = f32::NAN),
        ];
        for (key, spoil) in cases {
            let mut m = ModelConfig::default();
            spoil(&mut m);
            assert_invalid(m.validate(), key);
        }
    }
}
