//! The LLaMA forward pass, local training ([`Trainer`], [`compute_update`]) and evaluation
//! ([`eval_loss`]).
//!
//! Two implementations of the same forward pass share this file:
//! - on the CPU, the fused kernels of [`crate::ops`] (RMSNorm, split heads + rotary, causal
//!   softmax, SwiGLU, merge heads), each with a hand-written backward pass (training on the CPU
//!   runs [`crate::cpu_step`] and the in-place AdamW of [`crate::kernels`] instead);
//! - on other devices (CUDA), basic candle tensor ops (matmul, broadcast arithmetic, `exp`,
//!   `sqrt`, `silu`, `narrow`, `cat`) whose backward passes candle implements, and
//!   `candle_nn::AdamW`. candle-nn's fused kernels (`softmax_last_dim`, `rms_norm`, `rope`)
//!   have no backward pass and would silently cut parameters off from their gradients.
//!
//! The tests check both paths against each other (loss and every gradient).

use crate::cpu_step::CpuStep;
use crate::device::select_device;
use crate::error::{ModelError, Result};
use crate::kernels::{self, RopeTables};
use crate::ops;
use crate::params::{param_specs, tensor_vec, Params, Update};
use apiary_config::{ModelConfig, TrainConfig};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

/// Pages evaluated per forward pass in [`eval_loss`].
const EVAL_BATCH: usize = 32;

/// The weights of one decoder layer.
struct Layer {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    mlp_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// All weights, resolved by name.
pub(crate) struct Weights {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
}

impl Weights {
    /// Resolves the named tensors (sorted `names`, aligned `tensors`).
    pub(crate) fn new(cfg: &ModelConfig, names: &[String], tensors: &[Tensor]) -> Result<Weights> {
        let get = |name: String| -> Result<Tensor> {
            names
                .binary_search(&name)
                .ok()
                .and_then(|i| tensors.get(i).cloned())
                .ok_or(ModelError::MissingTensor(name))
        };
        let layers = (0..cfg.n_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Layer {
                    attn_norm: get(format!("{p}.input_layernorm.weight"))?,
                    q: get(format!("{p}.self_attn.q_proj.weight"))?,
                    k: get(format!("{p}.self_attn.k_proj.weight"))?,
                    v: get(format!("{p}.self_attn.v_proj.weight"))?,
                    o: get(format!("{p}.self_attn.o_proj.weight"))?,
                    mlp_norm: get(format!("{p}.post_attention_layernorm.weight"))?,
                    gate: get(format!("{p}.mlp.gate_proj.weight"))?,
                    up: get(format!("{p}.mlp.up_proj.weight"))?,
                    down: get(format!("{p}.mlp.down_proj.weight"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Weights {
            embed: get("model.embed_tokens.weight".into())?,
            layers,
            norm: get("model.norm.weight".into())?,
            lm_head: get("lm_head.weight".into())?,
        })
    }
}

/// `x @ w^T` for `x: [N, in]`, `w: [out, in]`.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?)
}

/// Per-model constants of the forward pass, built once per [`Trainer`] / evaluation: the device,
/// whether the fused CPU kernels are used, and the rotary tables (plus, for the composed path,
/// the causal mask) for `seq_len` positions.
pub(crate) struct Ctx {
    cfg: ModelConfig,
    device: Device,
    fused: bool,
    rope: RopeTables,
    /// Composed path only: `cos`, `sin` as `[seq_len, head_dim]` (halves duplicated) and the
    /// additive causal mask `[seq_len, seq_len]`.
    composed: Option<(Tensor, Tensor, Tensor)>,
}

impl Ctx {
    /// Constants for `cfg` on `device`; `fused` selects the CPU kernels (only valid on the CPU).
    pub(crate) fn new(cfg: &ModelConfig, device: &Device, fused: bool) -> Result<Ctx> {
        let fused = fused && device.is_cpu();
        let hd = cfg.d_model / cfg.n_heads.max(1);
        let t = cfg.seq_len;
        let rope = RopeTables::new(t, hd, f64::from(cfg.rope_theta));
        let composed = if fused {
            None
        } else {
            let half = rope.half;
            let dup = |tab: &[f32]| -> Vec<f32> {
                tab.chunks(half.max(1))
                    .flat_map(|row| row.iter().chain(row.iter()).copied())
                    .collect()
            };
            let cos = Tensor::from_vec(dup(&rope.cos), (t, hd), device)?;
            let sin = Tensor::from_vec(dup(&rope.sin), (t, hd), device)?;
            let m: Vec<f32> = (0..t)
                .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(m, (t, t), device)?;
            Some((cos, sin, mask))
        };
        Ok(Ctx {
            cfg: cfg.clone(),
            device: device.clone(),
            fused,
            rope,
            composed,
        })
    }
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * w` (composed ops).
fn rms_norm_composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// `x * cos + rotate_half(x) * sin` with `rotate_half([x1, x2]) = [-x2, x1]`; `x: [B, H, T, hd]`.
fn apply_rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Checks pages and packs them into a `[B, L]` u32 tensor on `device`.
fn pages_tensor(cfg: &ModelConfig, pages: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let (flat, b, l) = flat_pages(cfg, pages)?;
    Ok(Tensor::from_vec(flat, (b, l), device)?)
}

/// Mean next-token cross-entropy of `tokens: [B, L]` (inputs `[:, :L-1]`, targets `[:, 1:]`),
/// on the tokens' device, with the fused kernels when that device is the CPU.
#[cfg(test)]
pub(crate) fn forward_loss(cfg: &ModelConfig, w: &Weights, tokens: &Tensor) -> Result<Tensor> {
    forward_loss_ctx(&Ctx::new(cfg, tokens.device(), true)?, w, tokens)
}

/// [`forward_loss`] with precomputed constants.
pub(crate) fn forward_loss_ctx(ctx: &Ctx, w: &Weights, tokens: &Tensor) -> Result<Tensor> {
    let cfg = &ctx.cfg;
    let (b, l) = tokens.dims2()?;
    let t = l - 1;
    let (d, nh) = (cfg.d_model, cfg.n_heads);
    let hd = d / nh;
    let inputs = tokens.narrow(1, 0, t)?.contiguous()?.flatten_all()?;
    let targets = tokens.narrow(1, 1, t)?.contiguous()?.flatten_all()?;
    let scale = 1.0 / (hd as f64).sqrt();
    let norm = |x: &Tensor, wt: &Tensor| -> Result<Tensor> {
        if ctx.fused {
            Ok(ops::rms_norm(x, wt, cfg.norm_eps)?)
        } else {
            rms_norm_composed(x, wt, cfg.norm_eps)
        }
    };

    let mut x = w.embed.index_select(&inputs, 0)?; // [B*T, D]
    for layer in &w.layers {
        let h = norm(&x, &layer.attn_norm)?;
        let (q, k, v) = (
            linear(&h, &layer.q)?,
            linear(&h, &layer.k)?,
            linear(&h, &layer.v)?,
        );
        let y = match &ctx.composed {
            None => {
                let q = ops::split_heads(&q, b, t, nh, Some(&ctx.rope))?;
                let k = ops::split_heads(&k, b, t, nh, Some(&ctx.rope))?;
                let v = ops::split_heads(&v, b, t, nh, None)?;
                let att = ops::causal_softmax(&q.matmul(&k.t()?)?, scale as f32)?;
                ops::merge_heads(&att.matmul(&v)?)?
            }
            Some((cos, sin, mask)) => {
                let (cos, sin) = (cos.narrow(0, 0, t)?, sin.narrow(0, 0, t)?);
                let mask = mask.narrow(0, 0, t)?.narrow(1, 0, t)?;
                let heads = |x: Tensor| -> Result<Tensor> {
                    Ok(x.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?)
                };
                let q = apply_rope_composed(&heads(q)?, &cos, &sin)?;
                let k = apply_rope_composed(&heads(k)?, &cos, &sin)?;
                let v = heads(v)?;
                let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
                let att = candle_nn::ops::softmax(&att, D::Minus1)?;
                att.matmul(&v)?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((b * t, d))?
            }
        };
        x = (x + linear(&y, &layer.o)?)?;

        let h = norm(&x, &layer.mlp_norm)?;
        let (g, u) = (linear(&h, &layer.gate)?, linear(&h, &layer.up)?);
        let gated = if ctx.fused {
            ops::swiglu(&g, &u)?
        } else {
            (g.silu()? * u)?
        };
        x = (x + linear(&gated, &layer.down)?)?;
    }
    let x = norm(&x, &w.norm)?;
    let logits = linear(&x, &w.lm_head)?;
    Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
}

/// Trainable CPU copies of `base` as candle variables (fresh storage, in name order).
#[cfg(test)]
pub(crate) fn make_vars(base: &Params) -> Result<Vec<Var>> {
    make_vars_on(base, &Device::Cpu)
}

/// Trainable copies of `base` on `device` (fresh storage, never shared with `base`).
fn make_vars_on(base: &Params, device: &Device) -> Result<Vec<Var>> {
    base.tensors()
        .iter()
        .map(|t| Ok(Var::from_vec(tensor_vec(t)?, t.dims(), device)?))
        .collect()
}

/// AdamW hyper-parameters of a trainer: lr `train.learning_rate`, no weight decay (so updates
/// carry only data-driven signal), default betas and eps.
fn adamw_params(train: &TrainConfig) -> ParamsAdamW {
    ParamsAdamW {
        lr: train.learning_rate,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    }
}

/// The CPU trainer's state.
struct CpuEngine {
    /// All parameters in the step's flat layout ([`crate::cpu_step::FlatLayout`]).
    params: Vec<f32>,
    grads: Vec<f32>,
    /// AdamW's first and second moments, same layout.
    moments: (Vec<f32>, Vec<f32>),
    step: CpuStep,
    adam: ParamsAdamW,
    /// Steps taken (AdamW bias correction).
    t: i32,
}

/// How a [`Trainer`] computes.
enum Engine {
    /// On the CPU: the hand-written forward/backward of [`CpuStep`] over plain vectors and an
    /// in-place AdamW ([`kernels::adamw_step`]).
    Cpu(Box<CpuEngine>),
    /// Elsewhere (and the CPU reference path): candle autograd and `candle_nn::AdamW`.
    Candle {
        vars: Vec<Var>,
        weights: Weights,
        opt: AdamW,
    },
}

/// Local AdamW training from a starting point on a chosen device.
///
/// The parameters live on the device for the trainer's lifetime; the optimizer state is fresh.
/// On the CPU every step is bit-for-bit reproducible (hand-written kernels with fixed
/// reduction orders, see [`crate::cpu_step`]); on a GPU results agree with the CPU's to float
/// rounding, not bit-for-bit.
///
/// ```no_run
/// # use apiary_model::{Params, Trainer, select_device};
/// # fn f(cfg: &apiary_config::ModelConfig, train: &apiary_config::TrainConfig,
/// #      base: &Params, batch: &[Vec<u32>]) -> apiary_model::Result<()> {
/// let mut t = Trainer::new(cfg, train, base, &select_device("auto")?)?;
/// let loss = t.step(batch)?;
/// let update = t.update()?; // base - trained
/// # Ok(()) }
/// ```
pub struct Trainer {
    ctx: Ctx,
    base: Params,
    engine: Engine,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("device", &self.ctx.device)
            .field("cpu_step", &matches!(self.engine, Engine::Cpu(_)))
            .field("tensors", &self.base.names().len())
            .finish()
    }
}

impl Trainer {
    /// A trainer starting from `base` on `device`, with AdamW at `train.learning_rate`, no
    /// weight decay (so updates carry only data-driven signal) and default betas/eps.
    pub fn new(
        cfg: &ModelConfig,
        train: &TrainConfig,
        base: &Params,
        device: &Device,
    ) -> Result<Trainer> {
        Trainer::build(cfg, train, base, device, true)
    }

    /// Like [`Trainer::new`] but always on the reference path (composed candle ops, candle
    /// autograd and `candle_nn::AdamW`, what non-CPU devices use), also on the CPU: slower
    /// there; for comparisons and benchmarks.
    pub fn new_reference(
        cfg: &ModelConfig,
        train: &TrainConfig,
        base: &Params,
        device: &Device,
    ) -> Result<Trainer> {
        Trainer::build(cfg, train, base, device, false)
    }

    fn build(
        cfg: &ModelConfig,
        train: &TrainConfig,
        base: &Params,
        device: &Device,
        fused: bool,
    ) -> Result<Trainer> {
        let specs = param_specs(cfg)?;
        if specs.len() != base.names().len()
            || specs
                .iter()
                .zip(base.names().iter().zip(base.tensors()))
                .any(|((n, s), (bn, bt))| n != bn || s.as_slice() != bt.dims())
        {
            return Err(ModelError::InvalidConfig(
                "the parameters do not match the model config".into(),
            ));
        }
        let ctx = Ctx::new(cfg, device, fused)?;
        let engine = if ctx.fused {
            let step = CpuStep::new(cfg, base.names())?;
            let params = step.layout().flatten(&base.vecs()?)?;
            let len = params.len();
            Engine::Cpu(Box::new(CpuEngine {
                params,
                grads: vec![0f32; len],
                moments: (vec![0f32; len], vec![0f32; len]),
                step,
                adam: adamw_params(train),
                t: 0,
            }))
        } else {
            let vars = make_vars_on(base, device)?;
            let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let weights = Weights::new(cfg, base.names(), &tensors)?;
            let opt = AdamW::new(vars.clone(), adamw_params(train))?;
            Engine::Candle { vars, weights, opt }
        };
        Ok(Trainer {
            ctx,
            base: base.clone(),
            engine,
        })
    }

    /// The device the trainer computes on.
    pub fn device(&self) -> &Device {
        &self.ctx.device
    }

    /// Mean loss of `pages` (a batch of equal-length pages) under the current parameters,
    /// without training (the evaluation forward pass, as [`eval_loss`]).
    pub fn loss(&self, pages: &[Vec<u32>]) -> Result<f32> {
        match &self.engine {
            Engine::Cpu(_) => eval_loss_on(&self.ctx.cfg, &self.params()?, pages, &self.ctx.device),
            Engine::Candle { weights, .. } => {
                let tokens = pages_tensor(&self.ctx.cfg, pages, &self.ctx.device)?;
                let loss = forward_loss_ctx(&self.ctx, weights, &tokens)?;
                finite_loss(loss.to_scalar::<f32>()?)
            }
        }
    }

    /// One AdamW step on the batch `pages`; returns the batch's loss before the step.
    pub fn step(&mut self, pages: &[Vec<u32>]) -> Result<f32> {
        match &mut self.engine {
            Engine::Cpu(e) => {
                let CpuEngine {
                    params,
                    grads,
                    moments,
                    step,
                    adam,
                    t,
                } = &mut **e;
                let (flat, b, l) = flat_pages(&self.ctx.cfg, pages)?;
                let value = finite_loss(step.run(params, &flat, b, l, Some(grads))?)?;
                *t += 1;
                kernels::adamw_step(params, grads, &mut moments.0, &mut moments.1, adam, *t);
                Ok(value)
            }
            Engine::Candle { weights, opt, .. } => {
                let tokens = pages_tensor(&self.ctx.cfg, pages, &self.ctx.device)?;
                let loss = forward_loss_ctx(&self.ctx, weights, &tokens)?;
                let value = finite_loss(loss.to_scalar::<f32>()?)?;
                opt.backward_step(&loss)?;
                Ok(value)
            }
        }
    }

    /// The current parameters, as f32 vectors on the CPU in name order.
    fn vecs(&self) -> Result<Vec<Vec<f32>>> {
        match &self.engine {
            Engine::Cpu(e) => Ok(e.step.layout().unflatten(&e.params)),
            Engine::Candle { vars, .. } => vars
                .iter()
                .map(|v| tensor_vec(&v.as_tensor().to_device(&Device::Cpu)?))
                .collect(),
        }
    }

    /// The current parameters (copied to the CPU).
    pub fn params(&self) -> Result<Params> {
        Params::from_vecs(&self.ctx.cfg, self.vecs()?)
    }

    /// The pseudo-gradient `base - current`, computed element-wise in f32 on the CPU.
    pub fn update(&self) -> Result<Update> {
        let before = self.base.vecs()?;
        let after = self.vecs()?;
        let delta = before
            .iter()
            .zip(&after)
            .map(|(b, a)| b.iter().zip(a).map(|(x, y)| x - y).collect())
            .collect();
        Update::from_vecs(&self.ctx.cfg, delta)
    }
}

/// Pages flattened row-major, with their count and (common) length; checks lengths and tokens.
fn flat_pages(cfg: &ModelConfig, pages: &[Vec<u32>]) -> Result<(Vec<u32>, usize, usize)> {
    let len = match pages.first() {
        Some(p) => p.len(),
        None => return Err(ModelError::Data("no pages".into())),
    };
    if len < 2 || len > cfg.seq_len + 1 {
        return Err(ModelError::Data(format!(
            "pages must have between 2 and seq_len + 1 = {} tokens, got {len}",
            cfg.seq_len + 1
        )));
    }
    if let Some(p) = pages.iter().find(|p| p.len() != len) {
        return Err(ModelError::Data(format!(
            "all pages must have the same length ({len}), got one of {}",
            p.len()
        )));
    }
    if let Some(tok) = pages
        .iter()
        .flatten()
        .find(|&&t| t as usize >= cfg.vocab_size)
    {
        return Err(ModelError::Data(format!(
            "token {tok} is outside the vocabulary (size {})",
            cfg.vocab_size
        )));
    }
    Ok((pages.concat(), pages.len(), len))
}

/// `value`, or [`ModelError::NonFinite`] for a NaN/inf loss.
fn finite_loss(value: f32) -> Result<f32> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ModelError::NonFinite {
            name: "loss".into(),
        })
    }
}

/// Trains `train.local_steps` AdamW steps from `base` on the device named by `train.device`
/// (see [`select_device`]; `"cpu"` by default) and returns the pseudo-gradient
/// `base - after` together with the mean loss of the first step's batch (before any update).
///
/// `pages` are split into micro-batches of `train.batch_pages` (the last may be smaller); step
/// `s` uses batch `s % num_batches`. The optimizer (lr `train.learning_rate`, no weight decay,
/// so the update carries only data-driven signal) is fresh on every call. On the CPU the
/// result is bit-identical across runs.
pub fn compute_update(
    cfg: &ModelConfig,
    train: &TrainConfig,
    base: &Params,
    pages: &[Vec<u32>],
) -> Result<(Update, f32)> {
    compute_update_on(cfg, train, base, pages, &select_device(&train.device)?)
}

/// [`compute_update`] on an explicit device (ignores `train.device`).
pub fn compute_update_on(
    cfg: &ModelConfig,
    train: &TrainConfig,
    base: &Params,
    pages: &[Vec<u32>],
    device: &Device,
) -> Result<(Update, f32)> {
    if pages.is_empty() {
        return Err(ModelError::Data(
            "compute_update needs at least one page".into(),
        ));
    }
    if train.batch_pages == 0 || train.local_steps == 0 {
        return Err(ModelError::InvalidConfig(
            "train.batch_pages and train.local_steps must be at least 1".into(),
        ));
    }
    // Check every batch before training on any.
    for chunk in pages.chunks(train.batch_pages) {
        flat_pages(cfg, chunk)?;
    }
    let batches: Vec<&[Vec<u32>]> = pages.chunks(train.batch_pages).collect();
    let mut trainer = Trainer::new(cfg, train, base, device)?;
    let mut first_loss = f32::NAN;
    for step in 0..train.local_steps {
        let value = trainer.step(batches[step % batches.len()])?;
        if step == 0 {
            first_loss = value;
        }
    }
    let update = trainer.update()?;
    tracing::debug!(first_loss, steps = train.local_steps, "computed update");
    Ok((update, first_loss))
}

/// Mean next-token cross-entropy over `pages` (each page weighs the same), on the CPU.
pub fn eval_loss(cfg: &ModelConfig, params: &Params, pages: &[Vec<u32>]) -> Result<f32> {
    eval_loss_on(cfg, params, pages, &Device::Cpu)
}

/// [`eval_loss`] on `device` (the parameters are copied there for the evaluation).
pub fn eval_loss_on(
    cfg: &ModelConfig,
    params: &Params,
    pages: &[Vec<u32>],
    device: &Device,
) -> Result<f32> {
    if pages.is_empty() {
        return Err(ModelError::Data("eval_loss needs at least one page".into()));
    }
    let ctx = Ctx::new(cfg, device, true)?;
    let tensors = params
        .tensors()
        .iter()
        .map(|t| Ok(t.to_device(device)?.to_dtype(DType::F32)?))
        .collect::<Result<Vec<_>>>()?;
    let weights = Weights::new(cfg, params.names(), &tensors)?;
    let mut total = 0.0f64;
    for chunk in pages.chunks(EVAL_BATCH) {
        let tokens = pages_tensor(cfg, chunk, device)?;
        let loss = forward_loss_ctx(&ctx, &weights, &tokens)?.to_scalar::<f32>()?;
        total += f64::from(loss) * chunk.len() as f64;
    }
    finite_loss((total / pages.len() as f64) as f32)
}

/// The mean gradient of the next-token loss over `pages` at `base` (Boltzmann-style rule), on
/// the device named by `train.device`, with the mean loss over the pages.
///
/// Pages are processed in micro-batches of `train.batch_pages`; batch gradients are weighted by
/// their page counts and summed in f64 in batch order, so every page weighs the same and the
/// result is bit-identical across runs on the CPU. The returned [`Update`] is the gradient
/// itself (`base - lr * g` descends).
pub fn compute_gradient(
    cfg: &ModelConfig,
    train: &TrainConfig,
    base: &Params,
    pages: &[Vec<u32>],
) -> Result<(Update, f32)> {
    compute_gradient_on(cfg, train, base, pages, &select_device(&train.device)?)
}

/// [`compute_gradient`] on an explicit device (ignores `train.device`).
pub fn compute_gradient_on(
    cfg: &ModelConfig,
    train: &TrainConfig,
    base: &Params,
    pages: &[Vec<u32>],
    device: &Device,
) -> Result<(Update, f32)> {
    if pages.is_empty() {
        return Err(ModelError::Data(
            "compute_gradient needs at least one page".into(),
        ));
    }
    if train.batch_pages == 0 {
        return Err(ModelError::InvalidConfig(
            "train.batch_pages must be at least 1".into(),
        ));
    }
    let n = pages.len() as f64;
    let mut loss_sum = 0.0f64;
    // Adds one batch's gradient, weighted by its share of the pages.
    let add = |acc: &mut [f64], w: f64, grads: &[f32]| {
        for (x, &y) in acc.iter_mut().zip(grads) {
            *x += w * f64::from(y);
        }
    };
    let to_f32 = |acc: &[f64]| -> Vec<f32> { acc.iter().map(|&x| x as f32).collect() };
    let grad = if device.is_cpu() {
        let mut step = CpuStep::new(cfg, base.names())?;
        let params = step.layout().flatten(&base.vecs()?)?;
        let mut grads = vec![0f32; params.len()];
        let mut acc = vec![0f64; params.len()];
        for chunk in pages.chunks(train.batch_pages) {
            let (flat, b, l) = flat_pages(cfg, chunk)?;
            let loss = finite_loss(step.run(&params, &flat, b, l, Some(&mut grads))?)?;
            let w = chunk.len() as f64 / n;
            loss_sum += f64::from(loss) * w;
            add(&mut acc, w, &grads);
        }
        step.layout().unflatten(&to_f32(&acc))
    } else {
        let ctx = Ctx::new(cfg, device, true)?;
        let vars = make_vars_on(base, device)?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let weights = Weights::new(cfg, base.names(), &tensors)?;
        let mut acc: Vec<Vec<f64>> = tensors.iter().map(|t| vec![0.0; t.elem_count()]).collect();
        for chunk in pages.chunks(train.batch_pages) {
            let tokens = pages_tensor(cfg, chunk, device)?;
            let loss = forward_loss_ctx(&ctx, &weights, &tokens)?;
            let w = chunk.len() as f64 / n;
            loss_sum += f64::from(finite_loss(loss.to_scalar::<f32>()?)?) * w;
            let grads = loss.backward()?;
            for (a, var) in acc.iter_mut().zip(&vars) {
                if let Some(g) = grads.get(var.as_tensor()) {
                    add(a, w, &tensor_vec(&g.to_device(&Device::Cpu)?)?);
                }
            }
        }
        acc.iter().map(|a| to_f32(a)).collect()
    };
    Ok((Update::from_vecs(cfg, grad)?, loss_sum as f32))
}
