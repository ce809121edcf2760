//! `[train]`: data and the per-window update rule ([`TrainConfig`], [`UpdateRule`]).

use crate::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[train]`: data and the per-window update rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The dataset: one shard file, or a directory of `*.txt` (a file is one document),
    /// `*.jsonl` (a string `text` field per line) and `*.parquet` (a UTF-8 `text` column) shards.
    pub data: PathBuf,
    /// A Hugging Face `tokenizer.json`; unset means the byte tokenizer (vocabulary 256).
    /// `model.vocab_size` must be at least the tokenizer's vocabulary.
    pub tokenizer: Option<PathBuf>,
    /// Where the tokenized page cache and its `manifest.json` live (default
    /// `<data_dir>/dataset`); rebuilt when the shards, tokenizer or `seq_len` change.
    pub data_cache: Option<PathBuf>,
    /// Pages a miner trains on per window.
    pub pages_per_window: usize,
    /// Pages per local step (micro-batch); `pages_per_window` is split into batches of this size.
    pub batch_pages: usize,
    /// Local optimizer steps per window; the update is `params_before - params_after`.
    pub local_steps: usize,
    /// Inner AdamW learning rate.
    pub learning_rate: f64,
    /// What a miner shares each window (see [`UpdateRule`]).
    pub rule: UpdateRule,
    /// Outer learning rate applied to the mean of accepted updates.
    pub outer_lr: f64,
    /// Outer momentum `mu` (0 disables it): `v = mu * v + mean; step = mean + mu * v` with
    /// Nesterov, `step = v` without.
    pub outer_momentum: f64,
    /// Nesterov momentum for the outer optimizer (DiLoCo's choice).
    pub outer_nesterov: bool,
    /// Seed mixed into page assignment.
    pub data_seed: u64,
    /// Fraction of pages (at the end of the data) held out for evaluation.
    pub held_out_fraction: f64,
    /// Held-out pages used to report loss.
    pub held_out_pages: usize,
    /// Fraction of every model tensor in a miner's **sync proof**: with each update a miner
    /// publishes the values of its base model at `ceil(len * fraction)` positions per tensor,
    /// drawn from the hash of the window's first block; validators compare them with the same
    /// positions of their own model and reject updates from miners that are out of sync.
    /// Subnet-wide (miners and validators must agree), in `(0, 1]`.
    pub sync_slice_fraction: f64,
    /// Adversary simulation for devnets and tests: publish random noise of the right shape
    /// instead of training (a "lazy" miner that validators must catch).
    pub lazy: bool,
    /// Compute device for local training: `"cpu"` (default), `"cuda"` / `"cuda:N"` (needs a
    /// binary built with the `cuda` feature and a GPU) or `"auto"` (a GPU if there is one).
    pub device: String,
    /// Adversary simulation for tests and devnets: the cheat this miner plays instead of honest
    /// work (see [`AdversaryKind`]). Needs a binary built with the `adversary` feature; a
    /// release build refuses to start a node that names one. Miners only.
    pub adversary: Option<AdversaryKind>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("data/tinyshakespeare.txt"),
            tokenizer: None,
            data_cache: None,
            pages_per_window: 8,
            batch_pages: 8,
            local_steps: 4,
            learning_rate: 3e-3,
            rule: UpdateRule::Diloco,
            outer_lr: 1.0,
            outer_momentum: 0.0,
            outer_nesterov: true,
            data_seed: 7,
            held_out_fraction: 0.05,
            held_out_pages: 16,
            sync_slice_fraction: 0.001,
            lazy: false,
            device: "cpu".into(),
            adversary: None,
        }
    }
}

/// A cheat of the adversary kit (`train.adversary`; kebab-case in TOML and on the command
/// line). Every cheat still follows the swarm (it applies the records and sends a valid sync
/// proof of the current model); it only cheats on the work it announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdversaryKind {
    /// Re-announces, under its own uid, another miner's update blob byte for byte.
    Copier,
    /// Another miner's update plus Gaussian noise of 10 % of its norm, re-encoded.
    NoisyCopier,
    /// Its own first honest update, re-announced every window.
    Replay,
    /// Honest work computed from the model it had 3 windows ago, announced on the current base.
    Stale,
    /// Honest work on the current model, always on the pages of the first window it trained.
    WrongPages,
    /// One local step instead of `train.local_steps`.
    Partial,
    /// The honest update × 0.01.
    Tiny,
    /// Random noise of the honest update's norm.
    Noise,
    /// The honest update negated.
    Negated,
    /// Announces an update whose blob it never stores nor serves.
    NeverServe,
    /// Poisoner: the honest update × 100.
    PoisonLarge,
    /// Poisoner: the honest update with a NaN inside (bytes crafted past the encoder).
    PoisonNan,
    /// Poisoner: the honest update × −10.
    PoisonInverted,
    /// Griefer: computes another miner's update from its public pages (the lowest other miner
    /// uid), seals it with that miner's author header (the victim's exact blob and content id)
    /// and announces it under its own uid as soon as the window starts, before the victim.
    Precomputer,
}

impl AdversaryKind {
    /// Every cheat, in declaration order.
    pub const ALL: [AdversaryKind; 14] = [
        AdversaryKind::Copier,
        AdversaryKind::NoisyCopier,
        AdversaryKind::Replay,
        AdversaryKind::Stale,
        AdversaryKind::WrongPages,
        AdversaryKind::Partial,
        AdversaryKind::Tiny,
        AdversaryKind::Noise,
        AdversaryKind::Negated,
        AdversaryKind::NeverServe,
        AdversaryKind::PoisonLarge,
        AdversaryKind::PoisonNan,
        AdversaryKind::PoisonInverted,
        AdversaryKind::Precomputer,
    ];

    /// The kebab-case name (as in TOML and on the command line).
    pub fn name(self) -> &'static str {
        match self {
            AdversaryKind::Copier => "copier",
            AdversaryKind::NoisyCopier => "noisy-copier",
            AdversaryKind::Replay => "replay",
            AdversaryKind::Stale => "stale",
            AdversaryKind::WrongPages => "wrong-pages",
            AdversaryKind::Partial => "partial",
            AdversaryKind::Tiny => "tiny",
            AdversaryKind::Noise => "noise",
            AdversaryKind::Negated => "negated",
            AdversaryKind::NeverServe => "never-serve",
            AdversaryKind::PoisonLarge => "poison-large",
            AdversaryKind::PoisonNan => "poison-nan",
            AdversaryKind::PoisonInverted => "poison-inverted",
            AdversaryKind::Precomputer => "precomputer",
        }
    }
}

impl std::fmt::Display for AdversaryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AdversaryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AdversaryKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = AdversaryKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown adversary `{s}`; one of {}", names.join(", "))
            })
    }
}

/// What a miner computes and shares each window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpdateRule {
    /// DiLoCo-style: `train.local_steps` inner AdamW steps; the pseudo-gradient
    /// `before - after` is shared and the outer optimizer applies the aggregate.
    #[default]
    Diloco,
    /// Boltzmann-style: one gradient (mean over the window's pages) is shared; the outer
    /// optimizer applies the aggregate with `train.outer_lr` as the learning rate.
    Gradient,
}

impl TrainConfig {
    /// Checks the `[train]` keys on their own; the error names the key (`train.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pages_per_window == 0 {
            return invalid("train.pages_per_window", "must be at least 1");
        }
        if self.batch_pages == 0 {
            return invalid("train.batch_pages", "must be at least 1");
        }
        if self.local_steps == 0 {
            return invalid("train.local_steps", "must be at least 1");
        }
        let lr = self.learning_rate;
        if !(lr.is_finite() && lr > 0.0 && lr < 10.0) {
            return invalid("train.learning_rate", "must be in (0, 10)");
        }
        if !(self.outer_lr.is_finite() && self.outer_lr > 0.0 && self.outer_lr <= 10.0) {
            return invalid("train.outer_lr", "must be in (0, 10]");
        }
        if !(self.outer_momentum.is_finite() && (0.0..1.0).contains(&self.outer_momentum)) {
            return invalid(
                "train.outer_momentum",
                "must be in [0, 1) (0.9 is DiLoCo's)",
            );
        }
        let dev = self.device.as_str();
        let cuda_ordinal = dev
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok());
        if !(matches!(dev, "cpu" | "cuda" | "auto") || cuda_ordinal) {
            return invalid(
                "train.device",
                format!("unknown device `{dev}`; use \"cpu\", \"cuda\", \"cuda:N\" or \"auto\""),
            );
        }
        if !(self.held_out_fraction > 0.0 && self.held_out_fraction < 0.5) {
            return invalid("train.held_out_fraction", "must be in (0, 0.5)");
        }
        if self.held_out_pages == 0 {
            return invalid("train.held_out_pages", "must be at least 1");
        }
        let f = self.sync_slice_fraction;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return invalid(
                "train.sync_slice_fraction",
                "must be in (0, 1] (0.001 sends 0.1 % of the model as the sync proof)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::{assert_invalid, Case};

    #[test]
    fn bad_train_values_name_their_key() {
        TrainConfig::default().validate().expect("defaults valid");
        let cases: [Case<TrainConfig>; 11] = [
            ("train.pages_per_window", |t| t.pages_per_window = 0),
            ("train.batch_pages", |t| t.batch_pages = 0),
            ("train.local_steps", |t| t.local_steps = 0),
            ("train.learning_rate", |t| t.learning_rate = 0.0),
            ("train.outer_lr", |t| t.outer_lr = f64::INFINITY),
            ("train.outer_momentum", |t| t.outer_momentum = 1.0),
            ("train.device", |t| t.device = "tpu".into()),
            ("train.device", |t| t.device = "cuda:x".into()),
            ("train.held_out_fraction", |t| t.held_out_fraction = 0.5),
            ("train.held_out_pages", |t| t.held_out_pages = 0),
            ("train.sync_slice_fraction", |t| t.sync_slice_fraction = 0.0),
        ];
        for (key, spoil) in cases {
            let mut t = TrainConfig::default();
            spoil(&mut t);
            assert_invalid(t.validate(), key);
        }
        for k in AdversaryKind::ALL {
            assert_eq!(k.name().parse::<AdversaryKind>(), Ok(k));
            let t: TrainConfig =
                toml::from_str(&format!("adversary = \"{k}\"")).expect("adversary parses");
            assert_eq!(t.adversary, Some(k));
        }
        assert!("cheater"
            .parse::<AdversaryKind>()
            .expect_err("unknown")
            .contains("noisy-copier"));
        for device in ["cpu", "cuda", "cuda:1", "auto"] {
            let t = TrainConfig {
                device: device.into(),
                ..TrainConfig::default()
            };
            t.validate().expect(device);
        }
    }
}
