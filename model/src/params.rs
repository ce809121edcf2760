//! Named parameter sets ([`Params`]), pseudo-gradients ([`Update`]), their safetensors encoding
//! and the deterministic arithmetic on them ([`cosine`], [`aggregate`]).

use crate::error::{ModelError, Result};
use apiary_config::ModelConfig;
use candle_core::{Device, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// Standard deviation of the initial linear and embedding weights.
const INIT_STD: f32 = 0.02;

/// The tensor names and shapes of the model described by `cfg`, sorted by name.
///
/// Fails with [`ModelError::InvalidConfig`] if `cfg` cannot describe a model.
pub(crate) fn param_specs(cfg: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
    check_config(cfg)?;
    let (v, d, f) = (cfg.vocab_size, cfg.d_model, cfg.d_ff);
    let mut specs = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, d]),
        ("model.norm.weight".to_string(), vec![d]),
        ("lm_head.weight".to_string(), vec![v, d]),
    ];
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            specs.push((format!("{p}.self_attn.{proj}.weight"), vec![d, d]));
        }
        specs.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
        specs.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
        specs.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
        specs.push((format!("{p}.input_layernorm.weight"), vec![d]));
        specs.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
    }
    specs.sort();
    Ok(specs)
}

/// Checks the parts of a [`ModelConfig`] this crate relies on.
pub(crate) fn check_config(cfg: &ModelConfig) -> Result<()> {
    let bad = |m: &str| Err(ModelError::InvalidConfig(m.to_string()));
    if cfg.vocab_size == 0 || cfg.d_model == 0 || cfg.d_ff == 0 || cfg.n_layers == 0 {
        return bad("vocab_size, d_model, d_ff and n_layers must be > 0");
    }
    if cfg.n_heads == 0 || !cfg.d_model.is_multiple_of(cfg.n_heads) {
        return bad("n_heads must be > 0 and divide d_model");
    }
    if !(cfg.d_model / cfg.n_heads).is_multiple_of(2) {
        return bad("head dimension d_model / n_heads must be even (rotary embeddings)");
    }
    if cfg.seq_len < 2 {
        return bad("seq_len must be at least 2");
    }
    if !(cfg.rope_theta.is_finite() && cfg.rope_theta > 0.0) {
        return bad("rope_theta must be a positive number");
    }
    if !(cfg.norm_eps.is_finite() && cfg.norm_eps > 0.0) {
        return bad("norm_eps must be a positive number");
    }
    Ok(())
}

/// `n` approximately standard-normal samples times `std`, fully determined by
/// (`context`, `material`).
///
/// Each sample is an Irwin–Hall sum of 12 uniforms minus 6 (mean 0, variance 1 up to the
/// 16-bit quantisation of each uniform), drawn from a ChaCha20 stream keyed by
/// `blake3::derive_key(context, material)`. Unlike Box–Muller it needs no `ln`/`cos`, whose
/// last bit differs between libm implementations: it uses only exact integer sums and one
/// correctly rounded multiply, so every platform produces identical bits.
fn seeded_normal(context: &str, material: &[u8], n: usize, std: f32) -> Vec<f32> {
    const TERMS: usize = 12;
    const BLOCK: usize = 1024;
    let mut rng = ChaCha20Rng::from_seed(blake3::derive_key(context, material));
    // Sum of 12 values (k + 0.5) / 65536 with k uniform in 0..65536, minus 6, equals
    // (sum_k + 6 - 6 * 65536) / 65536: an exact integer, scaled once.
    let scale = f64::from(std) / 65536.0;
    let offset = 6 - 6 * 65536i64;
    let mut buf = vec![0u8; BLOCK * TERMS * 2];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let take = (n - out.len()).min(BLOCK);
        let bytes = &mut buf[..take * TERMS * 2];
        rng.fill_bytes(bytes);
        out.extend(bytes.chunks_exact(TERMS * 2).map(|sample| {
            let sum: i64 = sample
                .chunks_exact(2)
                .map(|b| i64::from(u16::from_le_bytes([b[0], b[1]])))
                .sum();
            ((sum + offset) as f64 * scale) as f32
        }));
    }
    out
}

/// Seed material for one tensor: the seed's little-endian bytes followed by the tensor name.
fn tensor_material(seed: u64, name: &str) -> Vec<u8> {
    let mut m = seed.to_le_bytes().to_vec();
    m.extend_from_slice(name.as_bytes());
    m
}

/// A CPU f32 tensor holding `data` with `shape`.
pub(crate) fn cpu_tensor(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// The elements of `t` as a flat vector (row-major).
pub(crate) fn tensor_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Names and tensors in the same order; shared by [`Params`] and [`Update`].
#[derive(Clone)]
struct Named {
    names: Vec<String>,
    tensors: Vec<Tensor>,
}

impl Named {
    fn from_vecs(specs: Vec<(String, Vec<usize>)>, data: Vec<Vec<f32>>) -> Result<Named> {
        let mut names = Vec::with_capacity(specs.len());
        let mut tensors = Vec::with_capacity(specs.len());
        for ((name, shape), d) in specs.into_iter().zip(data) {
            tensors.push(cpu_tensor(d, &shape)?);
            names.push(name);
        }
        Ok(Named { names, tensors })
    }

    fn vecs(&self) -> Result<Vec<Vec<f32>>> {
        self.tensors.iter().map(tensor_vec).collect()
    }

    fn num_params(&self) -> usize {
        self.tensors.iter().map(|t| t.elem_count()).sum()
    }

    /// Safetensors bytes without metadata; safetensors orders tensors by (dtype, name), so the
    /// output depends only on the names, shapes and values.
    fn to_bytes(&self) -> Result<Vec<u8>> {
        let raw: Vec<Vec<u8>> = self
            .vecs()?
            .iter()
            .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let mut views = Vec::with_capacity(raw.len());
        for ((name, t), bytes) in self.names.iter().zip(&self.tensors).zip(&raw) {
            let view = TensorView::new(Dtype::F32, t.dims().to_vec(), bytes)
                .map_err(|e| ModelError::Decode(format!("tensor `{name}`: {e}")))?;
            views.push((name.as_str(), view));
        }
        safetensors::serialize(views, None).map_err(|e| ModelError::Decode(e.to_string()))
    }

    /// Decodes and validates safetensors bytes against the model described by `cfg`.
    fn from_bytes(cfg: &ModelConfig, bytes: &[u8]) -> Result<Named> {
        let specs = param_specs(cfg)?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
        let mut found: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        found.sort();
        for name in &found {
            if specs
                .binary_search_by(|(n, _)| n.as_str().cmp(name))
                .is_err()
            {
                return Err(ModelError::UnexpectedTensor(name.clone()));
            }
        }
        let mut data = Vec::with_capacity(specs.len());
        for (name, shape) in &specs {
            let view = st
                .tensor(name)
                .map_err(|_| ModelError::MissingTensor(name.clone()))?;
            if view.dtype() != Dtype::F32 {
                return Err(ModelError::WrongDtype {
                    name: name.clone(),
                    got: format!("{:?}", view.dtype()),
                });
            }
            if view.shape() != shape.as_slice() {
                return Err(ModelError::ShapeMismatch {
                    name: name.clone(),
                    expected: shape.clone(),
                    got: view.shape().to_vec(),
                });
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if values.iter().any(|x| !x.is_finite()) {
                return Err(ModelError::NonFinite { name: name.clone() });
            }
            data.push(values);
        }
        Named::from_vecs(specs, data)
    }

    /// Errors unless `other` has exactly the same names and shapes.
    fn check_same_layout(&self, other: &Named) -> Result<()> {
        for name in &self.names {
            if !other.names.contains(name) {
                return Err(ModelError::MissingTensor(name.clone()));
            }
        }
        for name in &other.names {
            if !self.names.contains(name) {
                return Err(ModelError::UnexpectedTensor(name.clone()));
            }
        }
        for ((name, a), b) in self.names.iter().zip(&self.tensors).zip(&other.tensors) {
            if a.dims() != b.dims() {
                return Err(ModelError::ShapeMismatch {
                    name: name.clone(),
                    expected: a.dims().to_vec(),
                    got: b.dims().to_vec(),
                });
            }
        }
        Ok(())
    }
}

/// Ordered, named f32 parameters of the LLaMA model (CPU tensors), using Hugging Face names
/// (`model.embed_tokens.weight`, `model.layers.N.self_attn.q_proj.weight`, ...,
/// `model.norm.weight`, `lm_head.weight`), sorted by name.
///
/// Immutable once built; cloning is cheap (tensors are reference counted). The content hash is
/// computed once at construction.
#[derive(Clone)]
pub struct Params {
    inner: Named,
    hash: [u8; 32],
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("tensors", &self.inner.names.len())
            .field("num_params", &self.num_params())
            .field("hash", &hex::encode(self.hash))
            .finish()
    }
}

impl Params {
    fn from_named(inner: Named) -> Result<Params> {
        let hash = *blake3::hash(&inner.to_bytes()?).as_bytes();
        Ok(Params { inner, hash })
    }

    /// The deterministic initial parameters for `cfg`, identical on every machine.
    ///
    /// Every tensor draws from its own ChaCha20 stream keyed by `blake3(init_seed, name)`:
    /// linear and embedding weights are approximately normal with std 0.02, norm weights are 1.
    pub fn init(cfg: &ModelConfig) -> Result<Params> {
        let specs = param_specs(cfg)?;
        let data = specs
            .iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                if shape.len() == 1 {
                    vec![1.0f32; n]
                } else {
                    let material = tensor_material(cfg.init_seed, name);
                    seeded_normal("apiary-model init v1", &material, n, INIT_STD)
                }
            })
            .collect();
        Params::from_named(Named::from_vecs(specs, data)?)
    }

    /// `blake3(self.to_bytes())`: the content id of this checkpoint.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Deterministic safetensors encoding (no metadata, tensors in safetensors' canonical order).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.inner.to_bytes()
    }

    /// Decodes a checkpoint, rejecting missing/unexpected tensors, wrong shapes or dtypes and
    /// non-finite values. [`Params::hash`] is that of the canonical re-encoding, which equals
    /// `blake3(bytes)` for any blob produced by [`Params::to_bytes`].
    pub fn from_bytes(cfg: &ModelConfig, bytes: &[u8]) -> Result<Params> {
        Params::from_named(Named::from_bytes(cfg, bytes)?)
    }

    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.inner.num_params()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> &[String] {
        &self.inner.names
    }

    /// Tensors, in the order of [`Params::names`].
    pub fn tensors(&self) -> &[Tensor] {
        &self.inner.tensors
    }

    /// Flat values of every tensor, in the order of [`Params::names`].
    pub(crate) fn vecs(&self) -> Result<Vec<Vec<f32>>> {
        self.inner.vecs()
    }

    /// Flat values of every tensor, in the order of [`Params::names`].
    pub fn to_vecs(&self) -> Result<Vec<Vec<f32>>> {
        self.inner.vecs()
    }

    /// Builds parameters from flat per-tensor values in name order; rejects non-finite values
    /// and lengths that do not match the model described by `cfg`.
    pub fn from_vecs(cfg: &ModelConfig, data: Vec<Vec<f32>>) -> Result<Params> {
        let specs = param_specs(cfg)?;
        check_vecs(&specs, &data)?;
        Params::from_named(Named::from_vecs(specs, data)?)
    }
}

/// A model update: the pseudo-gradient `params_before - params_after` of a miner's local
/// training, with the same names and shapes as [`Params`].
#[derive(Clone)]
pub struct Update {
    inner: Named,
}

impl std::fmt::Debug for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Update")
            .field("tensors", &self.inner.names.len())
            .field("num_params", &self.inner.num_params())
            .finish()
    }
}

/// Checks that `data` has one vector per spec, of the spec's element count, all finite.
fn check_vecs(specs: &[(String, Vec<usize>)], data: &[Vec<f32>]) -> Result<()> {
    if specs.len() != data.len() {
        return Err(ModelError::Decode(format!(
            "expected {} tensors, got {}",
            specs.len(),
            data.len()
        )));
    }
    for ((name, shape), d) in specs.iter().zip(data) {
        let n: usize = shape.iter().product();
        if d.len() != n {
            return Err(ModelError::ShapeMismatch {
                name: name.clone(),
                expected: shape.clone(),
                got: vec![d.len()],
            });
        }
        if d.iter().any(|x| !x.is_finite()) {
            return Err(ModelError::NonFinite { name: name.clone() });
        }
    }
    Ok(())
}

impl Update {
    /// Builds an update from flat per-tensor values in name order (the order of
    /// [`Update::names`]); rejects non-finite values.
    pub fn from_vecs(cfg: &ModelConfig, data: Vec<Vec<f32>>) -> Result<Update> {
        let specs = param_specs(cfg)?;
        check_vecs(&specs, &data)?;
        Ok(Update {
            inner: Named::from_vecs(specs, data)?,
        })
    }

    /// Deterministic safetensors encoding.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.inner.to_bytes()
    }

    /// Decodes an update, rejecting missing/unexpected tensors, wrong shapes or dtypes, garbage
    /// bytes and NaN/Inf values.
    pub fn from_bytes(cfg: &ModelConfig, bytes: &[u8]) -> Result<Update> {
        Ok(Update {
            inner: Named::from_bytes(cfg, bytes)?,
        })
    }

    /// Flat values of every tensor, in the order of [`Update::names`].
    pub fn to_vecs(&self) -> Result<Vec<Vec<f32>>> {
        self.inner.vecs()
    }

    /// Tensor shapes, in the order of [`Update::names`].
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        self.inner
            .tensors
            .iter()
            .map(|t| t.dims().to_vec())
            .collect()
    }

    /// L2 norm over all tensors.
    pub fn norm(&self) -> Result<f32> {
        Ok(sum_sq(&self.inner.vecs()?).sqrt() as f32)
    }

    /// The all-zero update for the model described by `cfg`.
    pub fn zeros(cfg: &ModelConfig) -> Result<Update> {
        let specs = param_specs(cfg)?;
        let data = specs
            .iter()
            .map(|(_, shape)| vec![0.0f32; shape.iter().product()])
            .collect();
        Ok(Update {
            inner: Named::from_vecs(specs, data)?,
        })
    }

    /// Noise with the update's shapes: approximately normal with std `scale`, determined by
    /// `seed`. Useful to simulate a miner that does not train.
    pub fn random_like(cfg: &ModelConfig, seed: u64, scale: f32) -> Result<Update> {
        let specs = param_specs(cfg)?;
        let data = specs
            .iter()
            .map(|(name, shape)| {
                let material = tensor_material(seed, name);
                seeded_normal(
                    "apiary-model noise v1",
                    &material,
                    shape.iter().product(),
                    scale,
                )
            })
            .collect();
        Update::from_vecs(cfg, data)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> &[String] {
        &self.inner.names
    }

    /// Tensors, in the order of [`Update::names`].
    pub fn tensors(&self) -> &[Tensor] {
        &self.inner.tensors
    }

    /// Total number of scalars.
    pub fn num_params(&self) -> usize {
        self.inner.num_params()
    }
}

/// Sum of squares in f64, in a fixed order.
fn sum_sq(v: &[Vec<f32>]) -> f64 {
    v.iter()
        .flatten()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum()
}

/// Cosine similarity of two updates over all tensors flattened; 0 if either is all zeros.
pub fn cosine(a: &Update, b: &Update) -> Result<f32> {
    a.inner.check_same_layout(&b.inner)?;
    let (va, vb) = (a.inner.vecs()?, b.inner.vecs()?);
    let dot: f64 = va
        .iter()
        .flatten()
        .zip(vb.iter().flatten())
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let denom = (sum_sq(&va) * sum_sq(&vb)).sqrt();
    if denom == 0.0 {
        return Ok(0.0);
    }
    Ok((dot / denom).clamp(-1.0, 1.0) as f32)
}

/// The outer step: `new = base - outer_lr * mean(clip(u_i))`, where every update is first
/// scaled down to at most the median L2 norm of the set (so one huge update cannot dominate).
///
/// Computed element-wise in f64 in the given order with plain Rust arithmetic (no threads, no
/// BLAS), so every node that aggregates the same updates in the same order gets bit-identical
/// parameters. An empty list returns `base` unchanged.
pub fn aggregate(base: &Params, updates: &[Update], outer_lr: f64) -> Result<Params> {
    if updates.is_empty() {
        return Ok(base.clone());
    }
    if !outer_lr.is_finite() {
        return Err(ModelError::InvalidConfig("outer_lr must be finite".into()));
    }
    let mut vecs = Vec::with_capacity(updates.len());
    let mut norms = Vec::with_capacity(updates.len());
    for u in updates {
        base.inner.check_same_layout(&u.inner)?;
        let v = u.inner.vecs()?;
        norms.push(sum_sq(&v).sqrt());
        vecs.push(v);
    }
    let mut sorted = norms.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if !sorted.len().is_multiple_of(2) {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    let weights: Vec<f64> = norms
        .iter()
        .map(|&n| {
            let clip = if n > median { median / n } else { 1.0 };
            clip / updates.len() as f64
        })
        .collect();
    let base_vecs = base.vecs()?;
    let mut out = Vec::with_capacity(base_vecs.len());
    for (t, b) in base_vecs.iter().enumerate() {
        let mut acc = vec![0.0f64; b.len()];
        for (v, w) in vecs.iter().zip(&weights) {
            for (a, &x) in acc.iter_mut().zip(&v[t]) {
                *a += w * f64::from(x);
            }
        }
        let new: Vec<f32> = b
            .iter()
            .zip(&acc)
            .map(|(&p, &m)| (f64::from(p) - outer_lr * m) as f32)
            .collect();
        if new.iter().any(|x| !x.is_finite()) {
            return Err(ModelError::NonFinite {
                name: base.inner.names[t].clone(),
            });
        }
        out.push(new);
    }
    let specs: Vec<(String, Vec<usize>)> = base
        .inner
        .names
        .iter()
        .cloned()
        .zip(base.inner.tensors.iter().map(|t| t.dims().to_vec()))
        .collect();
    Params::from_named(Named::from_vecs(specs, out)?)
}
