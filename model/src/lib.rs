//! # apiary-model
//!
//! The model, data and update arithmetic of an apiary subnet. Everything here is synchronous,
//! runs on the CPU and is deterministic.
//!
//! ## Model
//!
//! A small LLaMA-style decoder over bytes (vocabulary 256): token embedding, then per layer
//! `x += o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))))` with causal multi-head attention
//! and half-split rotary embeddings (HF `rotate_half`), and `x += down(silu(gate(n2(x))) *
//! up(n2(x)))` (SwiGLU); a final RMSNorm and an untied `lm_head`. No biases; linear weights are
//! `[out, in]` and tensors carry Hugging Face names, so a checkpoint loads in `transformers`.
//! The forward pass is written from basic candle ops only, because candle-nn's fused kernels
//! (`softmax_last_dim`, `rms_norm`, `rope`) have no backward pass and silently drop gradients;
//! a test checks that every parameter receives a non-zero gradient.
//!
//! ## Parameters and updates
//!
//! [`Params::init`] derives every tensor from `init_seed` with a ChaCha20 stream per tensor and
//! only correctly rounded IEEE arithmetic, so every node starts from bit-identical weights.
//! Checkpoints and updates travel as safetensors ([`Params::to_bytes`]); the encoding is
//! canonical, so a checkpoint's content id is `blake3(bytes)` = [`Params::hash`].
//!
//! ## Update rule (DiLoCo-style)
//!
//! Each window a miner trains `local_steps` AdamW steps (fresh optimizer state) on its assigned
//! pages ([`assign_pages`]) from the current global parameters and publishes the
//! pseudo-gradient `u = before - after` ([`compute_update`]). A validator recomputes the
//! update for the same pages and scores a miner by [`cosine`] similarity; accepted updates are
//! combined by [`aggregate`]: each is clipped to the median L2 norm of the set, and
//! `new = base - outer_lr * mean(u_i)`, computed element-wise in f64 in a fixed order so every
//! node that aggregates the same updates obtains the same [`Params::hash`].

mod data;
mod error;
mod model;
mod outer;
mod params;

pub use data::{assign_pages, Dataset};
pub use error::{ModelError, Result};
pub use model::{compute_gradient, compute_update, eval_loss};
pub use outer::{outer_step, OuterConfig, OuterState};
pub use params::{aggregate, cosine, Params, Update};

#[cfg(test)]
mod tests;
