//! # apiary-model
//!
//! The model, data and update arithmetic of an apiary subnet. Everything here is synchronous
//! and deterministic on the CPU; training can also run on a CUDA GPU (cargo feature `cuda`).
//!
//! ## Model
//!
//! A LLaMA decoder (sizes from [`apiary_config::ModelConfig`], byte vocabulary by default):
//! token embedding, then per layer `x += o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))))`
//! with causal multi-head attention and half-split rotary embeddings (HF `rotate_half`), and
//! `x += down(silu(gate(n2(x))) * up(n2(x)))` (SwiGLU); a final RMSNorm and an untied
//! `lm_head`. No biases; linear weights are `[out, in]` and tensors carry Hugging Face names.
//!
//! Two implementations of the forward/backward pass (see `model.rs`):
//! - **CPU (default)**: training runs the hand-written forward/backward step of `cpu_step.rs`
//!   plus an in-place AdamW; evaluation runs the fused candle custom ops of `ops.rs` (RMSNorm,
//!   split heads + rotary, causal softmax, SwiGLU, merge heads, each with a hand-written
//!   backward pass). Both build on the shared slice kernels of `kernels.rs`, a leaf module.
//!   Rotary tables are built once per [`Trainer`]. Kernels are row-parallel with rayon and
//!   every reduction has a fixed order, so [`compute_update`] is bit-identical run to run
//!   (validators recompute miners' updates).
//! - **Reference / GPU**: basic candle ops only (matmul, broadcast arithmetic, `exp`, `sqrt`,
//!   `silu`, `narrow`, `cat`) and `candle_nn::AdamW`. candle-nn's own fused kernels
//!   (`softmax_last_dim`, `rms_norm`, `rope`) have no backward pass and would silently drop
//!   gradients, so they are never used. Tests check both paths agree (loss and every gradient)
//!   and that every parameter receives a gradient.
//!
//! ## Devices
//!
//! [`select_device`] maps `train.device` (`cpu` | `cuda` | `cuda:N` | `auto`) to a candle
//! device, with a clear error when CUDA is asked for in a build without the `cuda` feature or
//! without a GPU. [`Params`] and [`Update`] always live on the CPU (hashing, serialization);
//! [`Trainer`] copies them to the device. [`compute_update`] / [`compute_gradient`] honour
//! `train.device`; [`compute_update_on`], [`compute_gradient_on`], [`eval_loss_on`] take an
//! explicit device; [`eval_loss`] runs on the CPU.
//!
//! ## Hugging Face checkpoints
//!
//! [`export_hf_dir`] writes `model.safetensors` (f32 or bf16, `{"format": "pt"}` metadata),
//! `config.json` (`LlamaForCausalLM`) and optionally `tokenizer.json`; `transformers` loads it
//! with no conversion and computes the same loss. [`load_hf_dir`] reads such a directory
//! (f32/bf16/f16, sharded or not; tied embeddings become an untied copy) and rejects
//! grouped-query attention, rope scaling, biases and other architectures with clear errors.
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

mod cpu_step;
mod data;
mod device;
mod error;
mod hf;
mod kernels;
mod model;
mod ops;
mod outer;
mod params;

pub use data::{assign_pages, Dataset};
pub use device::{cuda_compiled, select_device, DeviceChoice};
pub use error::{ModelError, Result};
pub use hf::{export_hf_dir, load_hf_dir, HfConfig, HfDtype};
pub use model::{
    compute_gradient, compute_gradient_on, compute_update, compute_update_on, eval_loss,
    eval_loss_on, Trainer,
};
pub use outer::{outer_step, OuterConfig, OuterState};
pub use params::{aggregate, cosine, Params, Update};

#[cfg(test)]
mod tests;
