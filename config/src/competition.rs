//! `[[competition]]`: whole-model competitions ([`CompetitionConfig`]), SN9 / AI-factory style.
//!
//! Miners publish whole models (a Hugging Face LLaMA directory) and commit their id on chain;
//! validators evaluate every eligible model on the same pages and rank them by pairwise wins,
//! the earlier commit's loss taken as `loss × (1 − ε)`.

use crate::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How a competition turns evaluations into weights.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CompetitionRule {
    /// SN9: per-page pairwise wins with the earlier-commit advantage, an EMA of win rates,
    /// softmax at `temperature`.
    #[default]
    WinRate,
    /// Today's king-of-the-hill subnets: a challenger replaces the leader only if the lower
    /// bound of a paired bootstrap of its per-token advantage exceeds `koth_margin`; the
    /// leader takes all of the competition's weight.
    KingOfTheHill,
}

/// One evaluation dataset and its mixing weight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalDataset {
    /// A shard file or a directory of shards (as `train.data`).
    pub path: PathBuf,
    /// Relative share of the evaluation pages drawn from it (> 0).
    pub weight: f64,
}

/// `[[competition]]`: one model competition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompetitionConfig {
    /// Stable id: what miners name in `apiary compete submit --competition` and what their
    /// on-chain commitment carries. Letters, digits, `-` and `_`, at most 32 characters.
    pub id: String,
    /// Allowed `config.json` `model_type`s (today `llama`).
    pub model_types: Vec<String>,
    /// Smallest parameter count allowed.
    pub min_params: u64,
    /// Largest parameter count allowed.
    pub max_params: u64,
    /// blake3 (hex) of the required `tokenizer.json`, or `bytes` for apiary's byte tokenizer
    /// (a model directory without `tokenizer.json`).
    pub tokenizer: String,
    /// Sequence length of the evaluation pages; a model's `max_position_embeddings` must be at
    /// least this.
    pub seq_len: usize,
    /// Evaluation data with mixing weights; empty: the node's `train.data`.
    pub datasets: Vec<EvalDataset>,
    /// Pages every model is evaluated on, per evaluation round.
    pub eval_pages: usize,
    /// Share of the subnet's weight for this competition, in (0, 1]; the shares of all
    /// competitions add up to at most 1, and windowed training gets the rest.
    pub share: f64,
    /// Blocks after a commitment before its model is evaluated: the pages come from the hash
    /// of a block nobody knew at commit time.
    pub eval_delay_blocks: u64,
    /// Blocks between evaluation rounds.
    pub eval_every_blocks: u64,
    /// ε at commit time: the earlier commit's loss counts as `loss × (1 − ε)`.
    pub epsilon_start: f64,
    /// ε once a commitment is `epsilon_decay_blocks` old.
    pub epsilon_end: f64,
    /// Blocks over which ε decays linearly (SN9: 7 days, 50 400 blocks of 12 s).
    pub epsilon_decay_blocks: u64,
    /// Softmax temperature over win rates (SN9: 0.01).
    pub temperature: f64,
    /// EMA factor of win rates.
    pub ema_alpha: f64,
    /// Win rate (SN9) or king of the hill.
    pub rule: CompetitionRule,
    /// King of the hill: the margin (nats per token) the bootstrap's lower bound must exceed.
    pub koth_margin: f64,
    /// King of the hill: the bootstrap's one-sided level (lower bound at quantile α).
    pub koth_alpha: f64,
    /// King of the hill: bootstrap resamples.
    pub bootstrap_samples: usize,
    /// Two models whose logits on the validator's private probe differ by less than this
    /// (relative L2 distance) are one model: the later commit scores nothing.
    pub copy_distance: f64,
    /// Tokens in the private probe (drawn from the evaluation data with a validator seed).
    pub probe_tokens: usize,
    /// Models evaluated per round at most (new and top models first, the rest in turn).
    pub max_models_per_round: usize,
    /// Size of the pieces a model is stored and fetched in, in bytes.
    pub piece_bytes: usize,
    /// Largest model (all files) fetched, in bytes.
    pub max_model_bytes: u64,
}

impl Default for CompetitionConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            model_types: vec!["llama".into()],
            min_params: 0,
            max_params: 10_000_000_000,
            tokenizer: "bytes".into(),
            seq_len: 64,
            datasets: Vec::new(),
            eval_pages: 32,
            share: 1.0,
            eval_delay_blocks: 2,
            eval_every_blocks: 10,
            epsilon_start: 0.005,
            epsilon_end: 0.0005,
            epsilon_decay_blocks: 50_400,
            temperature: 0.01,
            ema_alpha: 0.5,
            rule: CompetitionRule::WinRate,
            koth_margin: 0.0015,
            koth_alpha: 0.001,
            bootstrap_samples: 2000,
            copy_distance: 1e-3,
            probe_tokens: 256,
            max_models_per_round: 16,
            piece_bytes: 16 * 1024 * 1024,
            max_model_bytes: 64 * 1024 * 1024 * 1024,
        }
    }
}

impl CompetitionConfig {
    /// Checks one competition's keys; errors name the key (`competition.<key>`) and the
    /// competition's id.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_keys().map_err(|e| match e {
            ConfigError::Invalid { key, message } if key != "competition.id" => {
                ConfigError::Invalid {
                    key,
                    message: format!("in competition `{}`: {message}", self.id),
                }
            }
            other => other,
        })
    }

    fn validate_keys(&self) -> Result<(), ConfigError> {
        if self.id.is_empty()
            || self.id.len() > 32
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return invalid(
                "competition.id",
                format!(
                    "`{}` must be 1–32 letters, digits, `-` or `_` (e.g. `tiny-llama`)",
                    self.id
                ),
            );
        }
        if self.model_types.is_empty() {
            return invalid(
                "competition.model_types",
                "name at least one, e.g. [\"llama\"]",
            );
        }
        if self.min_params > self.max_params || self.max_params == 0 {
            return invalid(
                "competition.max_params",
                "must be > 0 and at least min_params",
            );
        }
        if self.tokenizer != "bytes"
            && !(self.tokenizer.len() == 64
                && self.tokenizer.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return invalid(
                "competition.tokenizer",
                "must be `bytes` or the 64-hex blake3 of a tokenizer.json (`b3sum tokenizer.json`)",
            );
        }
        if self.seq_len < 2 || self.eval_pages == 0 {
            return invalid(
                "competition.eval_pages",
                "seq_len must be ≥ 2 and eval_pages ≥ 1",
            );
        }
        if let Some(d) = self
            .datasets
            .iter()
            .find(|d| !(d.weight.is_finite() && d.weight > 0.0))
        {
            return invalid(
                "competition.datasets",
                format!("the weight of {} must be > 0", d.path.display()),
            );
        }
        if !(self.share.is_finite() && self.share > 0.0 && self.share <= 1.0) {
            return invalid("competition.share", "must be in (0, 1]");
        }
        if self.eval_every_blocks == 0 {
            return invalid("competition.eval_every_blocks", "must be at least 1");
        }
        let eps_ok = |e: f64| e.is_finite() && (0.0..0.5).contains(&e);
        if !eps_ok(self.epsilon_start) || !eps_ok(self.epsilon_end) {
            return invalid("competition.epsilon_start", "ε values must be in [0, 0.5)");
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return invalid("competition.temperature", "must be > 0 (SN9 uses 0.01)");
        }
        if !(self.ema_alpha > 0.0 && self.ema_alpha <= 1.0) {
            return invalid("competition.ema_alpha", "must be in (0, 1]");
        }
        let koth_ok = self.koth_margin.is_finite()
            && self.koth_margin >= 0.0
            && self.koth_alpha > 0.0
            && self.koth_alpha < 0.5
            && self.bootstrap_samples >= 10;
        if !koth_ok {
            return invalid(
                "competition.koth_margin",
                "koth_margin ≥ 0, koth_alpha in (0, 0.5), bootstrap_samples ≥ 10",
            );
        }
        if !(self.copy_distance.is_finite() && self.copy_distance >= 0.0) || self.probe_tokens == 0
        {
            return invalid(
                "competition.copy_distance",
                "must be ≥ 0, with probe_tokens ≥ 1",
            );
        }
        if self.max_models_per_round == 0 {
            return invalid("competition.max_models_per_round", "must be at least 1");
        }
        if self.piece_bytes < 4096 || self.piece_bytes > 256 * 1024 * 1024 {
            return invalid(
                "competition.piece_bytes",
                "must be between 4 KiB and 256 MiB",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeConfig;

    fn comp(id: &str) -> CompetitionConfig {
        CompetitionConfig {
            id: id.into(),
            ..CompetitionConfig::default()
        }
    }

    fn key_of(r: Result<(), ConfigError>) -> Option<&'static str> {
        r.err().and_then(|e| e.key())
    }

    #[test]
    fn each_bad_key_is_named() {
        assert!(comp("tiny").validate().is_ok());
        assert_eq!(key_of(comp("").validate()), Some("competition.id"));
        assert_eq!(key_of(comp("a/b").validate()), Some("competition.id"));
        type Case = (fn(&mut CompetitionConfig), &'static str);
        let cases: Vec<Case> = vec![
            (|c| c.tokenizer = "gpt2".into(), "competition.tokenizer"),
            (|c| c.max_params = 0, "competition.max_params"),
            (|c| c.min_params = 20_000_000_000, "competition.max_params"),
            (|c| c.share = 0.0, "competition.share"),
            (|c| c.share = f64::NAN, "competition.share"),
            (|c| c.temperature = 0.0, "competition.temperature"),
            (|c| c.epsilon_start = 0.7, "competition.epsilon_start"),
            (|c| c.piece_bytes = 10, "competition.piece_bytes"),
            (|c| c.eval_every_blocks = 0, "competition.eval_every_blocks"),
            (
                |c| {
                    c.datasets = vec![EvalDataset {
                        path: "x".into(),
                        weight: -1.0,
                    }]
                },
                "competition.datasets",
            ),
        ];
        for (f, key) in cases {
            let mut c = comp("tiny");
            f(&mut c);
            let err = c.validate().expect_err(key);
            assert_eq!(err.key(), Some(key), "{err}");
            assert!(
                err.to_string().contains("tiny"),
                "names the competition: {err}"
            );
        }
    }

    #[test]
    fn competitions_parse_from_toml_and_are_checked_together() {
        let text = "[[competition]]\nid = \"a\"\nshare = 0.6\n[[competition]]\nid = \"b\"\nshare = 0.3\nrule = \"king_of_the_hill\"\n";
        let cfg = NodeConfig::from_toml_str(text, std::path::Path::new("x.toml")).expect("parses");
        cfg.validate().expect("valid");
        assert_eq!(cfg.competitions.len(), 2);
        assert_eq!(cfg.competitions[1].rule, CompetitionRule::KingOfTheHill);
        let mut over = cfg.clone();
        over.competitions[1].share = 0.5;
        assert_eq!(key_of(over.validate()), Some("competition.share"));
        let mut dup = cfg.clone();
        dup.competitions[1].id = "a".into();
        assert_eq!(key_of(dup.validate()), Some("competition.id"));
        let mut big = cfg;
        big.net.max_blob_bytes = 1 << 20;
        assert_eq!(key_of(big.validate()), Some("competition.piece_bytes"));
    }
}
