//! Hugging Face checkpoints: a directory with `config.json` (`LlamaForCausalLM`),
//! `model.safetensors` (or shards listed in `model.safetensors.index.json`) and optionally
//! `tokenizer.json`, as `transformers.AutoModelForCausalLM.from_pretrained` reads it.
//!
//! apiary's tensor names are already Hugging Face's, and its rotary embedding uses HF LLaMA's
//! half-split `rotate_half` layout with `inv_freq[i] = theta^(-2i / head_dim)`, so export and
//! import are a change of container, not of weights: `transformers` computes the same loss on
//! the same tokens (see `bench/reference/hf_check.py`).
//!
//! What loads: LLaMA with one K/V head per query head (no grouped-query attention), SiLU MLP,
//! no biases, no rope scaling, f32 / bf16 / f16 tensors (converted to f32 for training). A
//! checkpoint with tied embeddings (`tie_word_embeddings: true`, or no `lm_head.weight`) loads
//! with `lm_head.weight` set to a copy of the embedding; apiary then trains the two separately
//! and exports them untied.

use crate::error::{ModelError, Result};
use crate::params::{param_specs, Params};
use apiary_config::ModelConfig;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// The `config.json` fields of a `LlamaForCausalLM` checkpoint that apiary reads or writes.
/// Other keys are kept in `extra` (and written back unchanged).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HfConfig {
    /// Model classes; must contain `LlamaForCausalLM`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Model family; `"llama"`.
    pub model_type: String,
    /// Width of the residual stream (apiary's `d_model`).
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer (apiary's `d_ff`).
    pub intermediate_size: usize,
    /// Number of decoder layers (apiary's `n_layers`).
    pub num_hidden_layers: usize,
    /// Number of attention heads (apiary's `n_heads`).
    pub num_attention_heads: usize,
    /// Must equal `num_attention_heads` (no grouped-query attention); absent means equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head size; if present must be `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Longest sequence; apiary writes its `seq_len`.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base (transformers 4.x location; 5.x reads it too, or `rope_parameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// transformers 5.x rotary settings: `{"rope_type": "default", "rope_theta": ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// transformers 4.x rotary scaling; must be null/absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Whether `lm_head` shares the embedding matrix (apiary writes `false`).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Storage dtype name (`"float32"`, `"bfloat16"`); transformers 4.x key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    /// Storage dtype name; transformers 5.x key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// MLP activation; must be `"silu"`.
    #[serde(default = "silu")]
    pub hidden_act: String,
    /// Biases on q/k/v/o; must be false.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases in the MLP; must be false.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Every other key, preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn silu() -> String {
    "silu".into()
}

/// Storage dtype of an exported checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfDtype {
    /// 32-bit floats: bit-exact round trip.
    F32,
    /// bfloat16 (round to nearest even): half the size, loads back as the rounded values.
    BF16,
}

impl HfDtype {
    /// The name used in `config.json` (`"float32"` / `"bfloat16"`).
    pub fn as_str(self) -> &'static str {
        match self {
            HfDtype::F32 => "float32",
            HfDtype::BF16 => "bfloat16",
        }
    }
}

/// apiary-only keys stored in `config.json` (ignored by transformers) so a round trip
/// restores the whole [`ModelConfig`].
const APIARY_SEQ_LEN: &str = "apiary_seq_len";
const APIARY_INIT_SEED: &str = "apiary_init_seed";

impl HfConfig {
    /// The `config.json` of `cfg` stored as `dtype`.
    pub fn from_model(cfg: &ModelConfig, dtype: HfDtype) -> HfConfig {
        let theta = f64::from(cfg.rope_theta);
        let mut extra = BTreeMap::new();
        extra.insert(APIARY_SEQ_LEN.into(), cfg.seq_len.into());
        extra.insert(APIARY_INIT_SEED.into(), cfg.init_seed.into());
        extra.insert("initializer_range".into(), serde_json::json!(0.02));
        extra.insert("attention_dropout".into(), serde_json::json!(0.0));
        extra.insert("pretraining_tp".into(), serde_json::json!(1));
        extra.insert("use_cache".into(), serde_json::json!(true));
        HfConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            hidden_size: cfg.d_model,
            intermediate_size: cfg.d_ff,
            num_hidden_layers: cfg.n_layers,
            num_attention_heads: cfg.n_heads,
            num_key_value_heads: Some(cfg.n_heads),
            head_dim: Some(cfg.d_model / cfg.n_heads.max(1)),
            max_position_embeddings: cfg.seq_len,
            rms_norm_eps: cfg.norm_eps,
            rope_theta: Some(theta),
            rope_parameters: Some(serde_json::json!({"rope_type": "default", "rope_theta": theta})),
            rope_scaling: None,
            vocab_size: cfg.vocab_size,
            tie_word_embeddings: false,
            torch_dtype: Some(dtype.as_str().into()),
            dtype: Some(dtype.as_str().into()),
            hidden_act: silu(),
            attention_bias: false,
            mlp_bias: false,
            extra,
        }
    }

    /// The apiary model this config describes, or [`ModelError::Hf`] naming the unsupported
    /// option. `seq_len` and `init_seed` come from apiary's own keys when present, else
    /// `max_position_embeddings` and the default seed (set `seq_len` to your page length).
    pub fn to_model(&self) -> Result<ModelConfig> {
        let bad = |m: String| Err(ModelError::Hf(m));
        if !self.architectures.iter().any(|a| a == "LlamaForCausalLM") || self.model_type != "llama"
        {
            return bad(format!(
                "unsupported architecture {:?} (model_type {:?}); apiary loads LlamaForCausalLM \
                 (model_type \"llama\") only",
                self.architectures, self.model_type
            ));
        }
        if let Some(kv) = self.num_key_value_heads {
            if kv != self.num_attention_heads {
                return bad(format!(
                    "grouped-query attention (num_key_value_heads = {kv}, num_attention_heads = \
                     {}) is not supported; apiary's model has one K/V head per query head",
                    self.num_attention_heads
                ));
            }
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad("num_attention_heads must be > 0 and divide hidden_size".into());
        }
        if let Some(hd) = self.head_dim {
            if hd != self.hidden_size / self.num_attention_heads {
                return bad(format!(
                    "head_dim = {hd} differs from hidden_size / num_attention_heads = {}; not \
                     supported",
                    self.hidden_size / self.num_attention_heads
                ));
            }
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act = {:?} is not supported (only \"silu\")",
                self.hidden_act
            ));
        }
        if self.attention_bias || self.mlp_bias {
            return bad(
                "attention_bias / mlp_bias are not supported (apiary has no biases)".into(),
            );
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return bad("rope_scaling is not supported (plain RoPE only)".into());
        }
        let mut theta = self.rope_theta;
        if let Some(rp) = &self.rope_parameters {
            let kind = rp
                .get("rope_type")
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return bad(format!(
                    "rope_parameters.rope_type = {kind:?} is not supported (plain RoPE only)"
                ));
            }
            if let Some(t) = rp.get("rope_theta").and_then(|v| v.as_f64()) {
                theta = Some(t);
            }
        }
        let theta = theta.unwrap_or(10_000.0);
        let get = |k: &str| self.extra.get(k).and_then(|v| v.as_u64());
        let cfg = ModelConfig {
            vocab_size: self.vocab_size,
            d_model: self.hidden_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            d_ff: self.intermediate_size,
            seq_len: get(APIARY_SEQ_LEN)
                .map(|v| v as usize)
                .unwrap_or(self.max_position_embeddings),
            rope_theta: theta as f32,
            norm_eps: self.rms_norm_eps,
            init_seed: get(APIARY_INIT_SEED).unwrap_or(ModelConfig::default().init_seed),
            init_from: None,
        };
        param_specs(&cfg)?;
        Ok(cfg)
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Hf(format!("cannot {what} {}: {e}", path.display()))
}

/// Writes `params` (the model `cfg`) as a Hugging Face model directory `dir` (created if
/// needed): `model.safetensors` in `dtype` with `{"format": "pt"}` metadata, `config.json`,
/// and a copy of `tokenizer_json` as `tokenizer.json` when given. Existing files are replaced.
pub fn export_hf_dir(
    params: &Params,
    cfg: &ModelConfig,
    dir: &Path,
    dtype: HfDtype,
    tokenizer_json: Option<&Path>,
) -> Result<()> {
    let specs = param_specs(cfg)?;
    if specs.len() != params.names().len()
        || specs
            .iter()
            .zip(params.names().iter().zip(params.tensors()))
            .any(|((n, s), (pn, pt))| n != pn || s.as_slice() != pt.dims())
    {
        return Err(ModelError::InvalidConfig(
            "the parameters do not match the model config".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
    let raw: Vec<Vec<u8>> = params
        .to_vecs()?
        .iter()
        .map(|v| match dtype {
            HfDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HfDtype::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
                .collect(),
        })
        .collect();
    let st_dtype = match dtype {
        HfDtype::F32 => Dtype::F32,
        HfDtype::BF16 => Dtype::BF16,
    };
    let mut views = Vec::with_capacity(raw.len());
    for ((name, shape), bytes) in specs.iter().zip(&raw) {
        let view = TensorView::new(st_dtype, shape.clone(), bytes)
            .map_err(|e| ModelError::Hf(format!("tensor `{name}`: {e}")))?;
        views.push((name.as_str(), view));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let st_path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &st_path)
        .map_err(|e| ModelError::Hf(format!("cannot write {}: {e}", st_path.display())))?;
    let json = serde_json::to_string_pretty(&HfConfig::from_model(cfg, dtype))
        .map_err(|e| ModelError::Hf(format!("cannot encode config.json: {e}")))?;
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, json + "\n").map_err(|e| io_err("write", &cfg_path, e))?;
    if let Some(tok) = tokenizer_json {
        let dst = dir.join("tokenizer.json");
        std::fs::copy(tok, &dst).map_err(|e| io_err("copy tokenizer", tok, e))?;
    }
    Ok(())
}

/// Decodes one tensor to f32 (from f32, bf16 or f16).
fn view_to_f32(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        other => {
            return Err(ModelError::WrongDtype {
                name: name.into(),
                got: format!("{other:?} (supported: F32, BF16, F16)"),
            })
        }
    })
}

/// Whether a checkpoint tensor carries no weights apiary needs (rotary caches of old exports).
fn ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Reads a Hugging Face LLaMA model directory: `config.json` plus `model.safetensors` (or the
/// shards of `model.safetensors.index.json`). Tensors are converted to f32.
///
/// Errors ([`ModelError::Hf`], [`ModelError::MissingTensor`], [`ModelError::ShapeMismatch`],
/// [`ModelError::UnexpectedTensor`], [`ModelError::WrongDtype`], [`ModelError::NonFinite`])
/// name the file, option or tensor at fault. Tied embeddings load as a copy (see module docs).
pub fn load_hf_dir(dir: &Path) -> Result<(ModelConfig, Params)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| io_err("read", &cfg_path, e))?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| {
        ModelError::Hf(format!(
            "{} is not a LLaMA config.json: {e}",
            cfg_path.display()
        ))
    })?;
    let cfg = hf.to_model()?;
    let specs = param_specs(&cfg)?;

    // The safetensors files to read.
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| io_err("read", &index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Hf(format!("bad {}: {e}", index.display())))?;
        let shards: BTreeSet<String> = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if shards.is_empty() {
            return Err(ModelError::Hf(format!(
                "{} has no weight_map",
                index.display()
            )));
        }
        shards.into_iter().map(|f| dir.join(f)).collect()
    } else {
        return Err(ModelError::Hf(format!(
            "no model.safetensors (or model.safetensors.index.json) in {}",
            dir.display()
        )));
    };

    let mut found: HashMap<String, Vec<f32>> = HashMap::new();
    let mut shapes: HashMap<String, Vec<usize>> = HashMap::new();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|e| io_err("read", file, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            ModelError::Hf(format!("{} is not valid safetensors: {e}", file.display()))
        })?;
        for (name, view) in st.tensors() {
            if ignorable(&name) {
                continue;
            }
            if specs
                .binary_search_by(|(n, _)| n.as_str().cmp(&name))
                .is_err()
            {
                return Err(ModelError::UnexpectedTensor(name));
            }
            shapes.insert(name.clone(), view.shape().to_vec());
            found.insert(name.clone(), view_to_f32(&name, &view)?);
        }
    }
    const EMBED: &str = "model.embed_tokens.weight";
    const HEAD: &str = "lm_head.weight";
    if !found.contains_key(HEAD) && (hf.tie_word_embeddings || found.contains_key(EMBED)) {
        if let (Some(e), Some(s)) = (found.get(EMBED).cloned(), shapes.get(EMBED).cloned()) {
            if !hf.tie_word_embeddings {
                tracing::warn!("checkpoint has no lm_head.weight; using a copy of the embedding");
            }
            found.insert(HEAD.into(), e);
            shapes.insert(HEAD.into(), s);
        }
    }
    let mut data = Vec::with_capacity(specs.len());
    for (name, shape) in &specs {
        let Some(values) = found.remove(name) else {
            return Err(ModelError::MissingTensor(name.clone()));
        };
        let got = shapes.remove(name).unwrap_or_default();
        if &got != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.clone(),
                expected: shape.clone(),
                got,
            });
        }
        if values.iter().any(|x| !x.is_finite()) {
            return Err(ModelError::NonFinite { name: name.clone() });
        }
        data.push(values);
    }
    Ok((cfg.clone(), Params::from_vecs(&cfg, data)?))
}
