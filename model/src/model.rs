//! The LLaMA forward pass, local training ([`compute_update`]) and evaluation ([`eval_loss`]).
//!
//! Everything is written with basic candle tensor ops (matmul, broadcast arithmetic, `exp`,
//! `sqrt`, `silu`, `index_select`, `narrow`, `cat`) whose backward passes candle implements;
//! candle-nn's fused kernels (`softmax_last_dim`, `rms_norm`, `rope`) have no backward pass and
//! would silently cut parameters off from their gradients.

use crate::error::{ModelError, Result};
use crate::params::{cpu_tensor, param_specs, tensor_vec, Params, Update};
use apiary_config::{ModelConfig, TrainConfig};
use candle_core::{Device, Tensor, Var, D};
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

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * w`.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// Rotary tables `cos`, `sin` of shape `[t, head_dim]` in the half-split layout of HF LLaMA:
/// frequency `i` drives dimensions `i` and `i + head_dim / 2`.
fn rope_tables(cfg: &ModelConfig, t: usize) -> Result<(Tensor, Tensor)> {
    let hd = cfg.d_model / cfg.n_heads;
    let half = hd / 2;
    let theta = f64::from(cfg.rope_theta);
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / hd as f64))
        .collect();
    let mut cos = Vec::with_capacity(t * hd);
    let mut sin = Vec::with_capacity(t * hd);
    for pos in 0..t {
        for _ in 0..2 {
            for f in &inv_freq {
                let a = pos as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
    }
    Ok((cpu_tensor(cos, &[t, hd])?, cpu_tensor(sin, &[t, hd])?))
}

/// `x * cos + rotate_half(x) * sin` with `rotate_half([x1, x2]) = [-x2, x1]`; `x: [B, H, T, hd]`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Additive causal mask `[t, t]`: 0 on and below the diagonal, -inf above.
fn causal_mask(t: usize) -> Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    cpu_tensor(m, &[t, t])
}

/// Checks pages and packs them into a `[B, L]` u32 tensor.
fn pages_tensor(cfg: &ModelConfig, pages: &[&Vec<u32>]) -> Result<Tensor> {
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
    let mut flat = Vec::with_capacity(pages.len() * len);
    for p in pages {
        if p.len() != len {
            return Err(ModelError::Data(format!(
                "all pages must have the same length ({len}), got one of {}",
                p.len()
            )));
        }
        if let Some(tok) = p.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ModelError::Data(format!(
                "token {tok} is outside the vocabulary (size {})",
                cfg.vocab_size
            )));
        }
        flat.extend_from_slice(p);
    }
    Ok(Tensor::from_vec(flat, (pages.len(), len), &Device::Cpu)?)
}

/// Mean next-token cross-entropy of `tokens: [B, L]` (inputs `[:, :L-1]`, targets `[:, 1:]`).
pub(crate) fn forward_loss(cfg: &ModelConfig, w: &Weights, tokens: &Tensor) -> Result<Tensor> {
    let (b, l) = tokens.dims2()?;
    let t = l - 1;
    let (d, nh) = (cfg.d_model, cfg.n_heads);
    let hd = d / nh;
    let inputs = tokens.narrow(1, 0, t)?.contiguous()?.flatten_all()?;
    let targets = tokens.narrow(1, 1, t)?.contiguous()?.flatten_all()?;
    let (cos, sin) = rope_tables(cfg, t)?;
    let mask = causal_mask(t)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let heads = |x: Tensor| -> Result<Tensor> {
        Ok(x.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?)
    };

    let mut x = w.embed.index_select(&inputs, 0)?; // [B*T, D]
    for layer in &w.layers {
        let h = rms_norm(&x, &layer.attn_norm, cfg.norm_eps)?;
        let q = apply_rope(&heads(linear(&h, &layer.q)?)?, &cos, &sin)?;
        let k = apply_rope(&heads(linear(&h, &layer.k)?)?, &cos, &sin)?;
        let v = heads(linear(&h, &layer.v)?)?;
        let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let y = att
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, d))?;
        x = (x + linear(&y, &layer.o)?)?;

        let h = rms_norm(&x, &layer.mlp_norm, cfg.norm_eps)?;
        let gated = (linear(&h, &layer.gate)?.silu()? * linear(&h, &layer.up)?)?;
        x = (x + linear(&gated, &layer.down)?)?;
    }
    let x = rms_norm(&x, &w.norm, cfg.norm_eps)?;
    let logits = linear(&x, &w.lm_head)?;
    Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
}

/// Trainable copies of `base` as candle variables (fresh storage, in name order).
pub(crate) fn make_vars(base: &Params) -> Result<Vec<Var>> {
    base.tensors()
        .iter()
        .map(|t| Ok(Var::from_vec(tensor_vec(t)?, t.dims(), &Device::Cpu)?))
        .collect()
}

/// Trains `train.local_steps` AdamW steps from `base` and returns the pseudo-gradient
/// `base - after` together with the mean loss of the first step's batch (before any update).
///
/// `pages` are split into micro-batches of `train.batch_pages` (the last may be smaller); step
/// `s` uses batch `s % num_batches`. The optimizer (lr `train.learning_rate`, no weight decay,
/// so the update carries only data-driven signal) is fresh on every call.
pub fn compute_update(
    cfg: &ModelConfig,
    train: &TrainConfig,
    base: &Params,
    pages: &[Vec<u32>],
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
    let batches = pages
        .chunks(train.batch_pages)
        .map(|c| pages_tensor(cfg, &c.iter().collect::<Vec<_>>()))
        .collect::<Result<Vec<_>>>()?;
    let vars = make_vars(base)?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let weights = Weights::new(cfg, base.names(), &tensors)?;
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: train.learning_rate,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let mut first_loss = f32::NAN;
    for step in 0..train.local_steps {
        let loss = forward_loss(cfg, &weights, &batches[step % batches.len()])?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(ModelError::NonFinite {
                name: "loss".into(),
            });
        }
        if step == 0 {
            first_loss = value;
        }
        opt.backward_step(&loss)?;
    }
    let before = base.vecs()?;
    let mut delta = Vec::with_capacity(before.len());
    for (b, var) in before.iter().zip(&vars) {
        let after = tensor_vec(var.as_tensor())?;
        delta.push(b.iter().zip(&after).map(|(x, y)| x - y).collect());
    }
    debug_assert_eq!(param_specs(cfg)?.len(), delta.len());
    tracing::debug!(first_loss, steps = train.local_steps, "computed update");
    Ok((Update::from_vecs(cfg, delta)?, first_loss))
}

/// Boltzmann's update rule: the gradient of the mean loss over all `pages` at `base` (each
/// micro-batch of `train.batch_pages` weighs by its page count), with the mean loss. The
/// outer optimizer then applies `base - outer_lr * mean(gradients)`.
pub fn compute_gradient(
    cfg: &ModelConfig,
    train: &TrainConfig,
    base: &Params,
    pages: &[Vec<u32>],
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
    let vars = make_vars(base)?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let weights = Weights::new(cfg, base.names(), &tensors)?;
    let mut sum: Vec<Vec<f64>> = tensors.iter().map(|t| vec![0.0; t.elem_count()]).collect();
    let mut loss_sum = 0.0f64;
    for chunk in pages.chunks(train.batch_pages) {
        let tokens = pages_tensor(cfg, &chunk.iter().collect::<Vec<_>>())?;
        let loss = forward_loss(cfg, &weights, &tokens)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(ModelError::NonFinite {
                name: "loss".into(),
            });
        }
        let share = chunk.len() as f64 / pages.len() as f64;
        loss_sum += f64::from(value) * share;
        let grads = loss.backward()?;
        for (acc, var) in sum.iter_mut().zip(&vars) {
            if let Some(g) = grads.get(var.as_tensor()) {
                for (a, x) in acc.iter_mut().zip(tensor_vec(g)?) {
                    *a += share * f64::from(x);
                }
            }
        }
    }
    let data = sum
        .into_iter()
        .map(|v| v.into_iter().map(|x| x as f32).collect())
        .collect();
    Ok((Update::from_vecs(cfg, data)?, loss_sum as f32))
}

/// Mean next-token cross-entropy over `pages` (each page weighs the same).
pub fn eval_loss(cfg: &ModelConfig, params: &Params, pages: &[Vec<u32>]) -> Result<f32> {
    if pages.is_empty() {
        return Err(ModelError::Data("eval_loss needs at least one page".into()));
    }
    let weights = Weights::new(cfg, params.names(), params.tensors())?;
    let mut total = 0.0f64;
    for chunk in pages.chunks(EVAL_BATCH) {
        let tokens = pages_tensor(cfg, &chunk.iter().collect::<Vec<_>>())?;
        let loss = forward_loss(cfg, &weights, &tokens)?.to_scalar::<f32>()?;
        total += f64::from(loss) * chunk.len() as f64;
    }
    let mean = (total / pages.len() as f64) as f32;
    if !mean.is_finite() {
        return Err(ModelError::NonFinite {
            name: "loss".into(),
        });
    }
    Ok(mean)
}
