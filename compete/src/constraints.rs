//! A competition's rules on a model: cheap checks of its manifest before any piece is
//! fetched ([`check_manifest`]) and full checks of the assembled directory
//! ([`check_model_dir`]). A [`Refusal`] carries a stable reason, usable as a counter name.

use crate::package::ModelManifest;
use apiary_config::{CompetitionConfig, ModelConfig};
use apiary_data::Tokenizer;
use apiary_model::{HfConfig, Params};
use std::path::Path;

/// Why a model is not evaluated. `reason` is one of a fixed set, stable across versions:
/// `manifest`, `too_large`, `model_type`, `params`, `tokenizer`, `seq_len`, `tensors`,
/// `unreadable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable short reason (a counter name).
    pub reason: &'static str,
    /// What exactly is wrong.
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Refusal {}

fn refuse<T>(reason: &'static str, detail: String) -> Result<T, Refusal> {
    Err(Refusal { reason, detail })
}

/// A model that passed [`check_model_dir`], ready to evaluate. `cfg.seq_len` is the
/// competition's (the length it is evaluated at).
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The model's shape.
    pub cfg: ModelConfig,
    /// Its weights (f32, CPU).
    pub params: Params,
    /// Its parameter count.
    pub num_params: u64,
}

/// Checks a manifest against the competition before anything is fetched: competition id,
/// declared `model_type` allowed, declared parameter count in `[min_params, max_params]`,
/// declared tokenizer equal to the competition's, total size at most `max_model_bytes`.
pub fn check_manifest(m: &ModelManifest, cfg: &CompetitionConfig) -> Result<(), Refusal> {
    if m.competition != cfg.id {
        return refuse(
            "manifest",
            format!(
                "the manifest is for competition {:?}, not {:?}",
                m.competition, cfg.id
            ),
        );
    }
    check_model_type(&m.model_type, cfg)?;
    check_params(m.num_params, cfg)?;
    if m.tokenizer != cfg.tokenizer {
        return refuse(
            "tokenizer",
            format!(
                "the model declares tokenizer {} but the competition requires {}",
                m.tokenizer, cfg.tokenizer
            ),
        );
    }
    if m.total_bytes() > cfg.max_model_bytes {
        return refuse(
            "too_large",
            format!(
                "{} bytes, more than max_model_bytes = {}",
                m.total_bytes(),
                cfg.max_model_bytes
            ),
        );
    }
    Ok(())
}

fn check_model_type(model_type: &str, cfg: &CompetitionConfig) -> Result<(), Refusal> {
    if !cfg.model_types.iter().any(|t| t == model_type) {
        return refuse(
            "model_type",
            format!("{model_type:?} is not one of {:?}", cfg.model_types),
        );
    }
    Ok(())
}

fn check_params(n: u64, cfg: &CompetitionConfig) -> Result<(), Refusal> {
    if n < cfg.min_params || n > cfg.max_params {
        return refuse(
            "params",
            format!(
                "{n} parameters, outside [{}, {}]",
                cfg.min_params, cfg.max_params
            ),
        );
    }
    Ok(())
}

/// Checks an assembled model directory against the competition and its manifest `m`, and
/// loads it: `config.json` parses with an allowed `model_type` equal to the manifest's and
/// `max_position_embeddings ≥ seq_len`; the weights load (`tensors`); the real parameter count
/// is in range and equals the manifest's; the tokenizer is the competition's (`bytes`: no
/// `tokenizer.json` and a 256-token vocabulary; else `tokenizer.json` hashes to it and fits the
/// model's vocabulary).
pub fn check_model_dir(
    dir: &Path,
    m: &ModelManifest,
    cfg: &CompetitionConfig,
) -> Result<LoadedModel, Refusal> {
    let cfg_path = dir.join("config.json");
    let text =
        std::fs::read(&cfg_path).or_else(|e| refuse("unreadable", format!("config.json: {e}")))?;
    let hf: HfConfig = serde_json::from_slice(&text)
        .or_else(|e| refuse("unreadable", format!("config.json: {e}")))?;
    check_model_type(&hf.model_type, cfg)?;
    if hf.model_type != m.model_type {
        return refuse(
            "model_type",
            format!(
                "config.json says {:?} but the manifest declares {:?}",
                hf.model_type, m.model_type
            ),
        );
    }
    if hf.max_position_embeddings < cfg.seq_len {
        return refuse(
            "seq_len",
            format!(
                "max_position_embeddings = {} is below the competition's seq_len = {}",
                hf.max_position_embeddings, cfg.seq_len
            ),
        );
    }
    check_tokenizer(dir, hf.vocab_size, cfg)?;
    let (mut model_cfg, params) =
        apiary_model::load_hf_dir(dir).or_else(|e| refuse("tensors", e.to_string()))?;
    let num_params = params.num_params() as u64;
    check_params(num_params, cfg)?;
    if num_params != m.num_params {
        return refuse(
            "params",
            format!(
                "the model has {num_params} parameters but its manifest declares {}",
                m.num_params
            ),
        );
    }
    model_cfg.seq_len = cfg.seq_len;
    Ok(LoadedModel {
        cfg: model_cfg,
        params,
        num_params,
    })
}

/// The directory's tokenizer is the competition's and its ids fit a `vocab_size` model.
fn check_tokenizer(dir: &Path, vocab_size: usize, cfg: &CompetitionConfig) -> Result<(), Refusal> {
    let path = dir.join("tokenizer.json");
    let present = path.is_file();
    if cfg.tokenizer == "bytes" {
        if present {
            return refuse(
                "tokenizer",
                "the competition uses the byte tokenizer; remove tokenizer.json".into(),
            );
        }
        let want = Tokenizer::bytes().vocab_size();
        if vocab_size != want {
            return refuse(
                "tokenizer",
                format!("vocab_size = {vocab_size}; the byte tokenizer needs {want}"),
            );
        }
        return Ok(());
    }
    if !present {
        return refuse(
            "tokenizer",
            format!(
                "no tokenizer.json; the competition requires tokenizer {}",
                cfg.tokenizer
            ),
        );
    }
    let bytes =
        std::fs::read(&path).or_else(|e| refuse("unreadable", format!("tokenizer.json: {e}")))?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    // The config may spell the hash in upper case; the manifest never does.
    if !hash.eq_ignore_ascii_case(&cfg.tokenizer) {
        return refuse(
            "tokenizer",
            format!(
                "tokenizer.json is {hash}, the competition requires {}",
                cfg.tokenizer
            ),
        );
    }
    let tok = Tokenizer::from_json_bytes(&bytes, "tokenizer.json")
        .or_else(|e| refuse("tokenizer", e.to_string()))?;
    if tok.vocab_size() > vocab_size {
        return refuse(
            "tokenizer",
            format!(
                "the tokenizer has {} tokens but the model's vocab_size is {vocab_size}",
                tok.vocab_size()
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::package::{FileEntry, MANIFEST_VERSION};

    fn cfg() -> CompetitionConfig {
        CompetitionConfig {
            id: "tiny".into(),
            min_params: 100,
            max_params: 1000,
            max_model_bytes: 50,
            ..CompetitionConfig::default()
        }
    }

    fn manifest() -> ModelManifest {
        ModelManifest {
            version: MANIFEST_VERSION,
            competition: "tiny".into(),
            model_type: "llama".into(),
            num_params: 500,
            tokenizer: "bytes".into(),
            piece_bytes: 100,
            files: vec![FileEntry {
                name: "config.json".into(),
                size: 50,
                pieces: vec!["0".repeat(64)],
            }],
        }
    }

    fn reason(m: ModelManifest) -> Option<&'static str> {
        check_manifest(&m, &cfg()).err().map(|r| r.reason)
    }

    #[test]
    fn manifest_checks() {
        assert_eq!(reason(manifest()), None);
        let with = |f: &dyn Fn(&mut ModelManifest)| {
            let mut m = manifest();
            f(&mut m);
            reason(m)
        };
        assert_eq!(with(&|m| m.competition = "other".into()), Some("manifest"));
        assert_eq!(with(&|m| m.model_type = "gpt2".into()), Some("model_type"));
        assert_eq!(with(&|m| m.num_params = 99), Some("params"));
        assert_eq!(with(&|m| m.num_params = 1001), Some("params"));
        assert_eq!(with(&|m| m.num_params = 1000), None);
        assert_eq!(with(&|m| m.tokenizer = "a".repeat(64)), Some("tokenizer"));
        assert_eq!(with(&|m| m.files[0].size = 51), Some("too_large"));
    }

    #[test]
    fn refusal_display() {
        let r = Refusal {
            reason: "params",
            detail: "too many".into(),
        };
        assert_eq!(r.to_string(), "params: too many");
    }
}
