//! Updates, end to end: what a miner computes, how it travels, and the outer step.
//!
//! - **Compute** ([`compute`]): by `train.rule`, either DiLoCo's pseudo-gradient (`local_steps`
//!   inner AdamW steps, `before - after`) or Boltzmann's single gradient over the window's pages.
//!   Validators call the same function to recompute a miner's work.
//! - **Wire** ([`Encoder`], [`decode`]): dense f32 safetensors, or — with `[compression]` on —
//!   chunked top-k with error feedback (the residual stays in the miner's [`Encoder`]), optional
//!   DCT and quantized values ([`apiary_compress`]). Decoding validates everything and yields a
//!   dense [`Update`] of the model's shapes; anything else is an error, never a panic.
//! - **Outer step** ([`outer_step`]): every node applies the same deterministic
//!   [`apiary_model::outer_step`] (median-norm clipping, mean, SGD with optional Nesterov
//!   momentum) to the same accepted updates in uid order, so all nodes agree on the model hash.

use apiary_compress::{CompressConfig, CompressedUpdate, Compressor};
use apiary_config::{NodeConfig, UpdateRule};
use apiary_model::{OuterConfig, OuterState, Params, Update};

/// The outer optimizer the subnet's config describes.
pub fn outer_config(cfg: &NodeConfig) -> OuterConfig {
    OuterConfig {
        lr: cfg.train.outer_lr,
        momentum: cfg.train.outer_momentum,
        nesterov: cfg.train.outer_nesterov,
    }
}

/// The compression settings of the subnet, if compression is on.
pub fn compress_config(cfg: &NodeConfig) -> Option<CompressConfig> {
    let z = &cfg.compression;
    z.enabled.then(|| CompressConfig {
        chunk: z.chunk,
        topk: z.topk,
        dct: z.dct,
        quant_bits: (z.quant_bits != 0).then_some(z.quant_bits),
    })
}

/// The update a miner owes for `pages` from `params`, by `train.rule`, with the loss of the
/// first batch.
pub fn compute(
    cfg: &NodeConfig,
    params: &Params,
    pages: &[Vec<u32>],
) -> Result<(Update, f32), String> {
    match cfg.train.rule {
        UpdateRule::Diloco => apiary_model::compute_update(&cfg.model, &cfg.train, params, pages),
        UpdateRule::Gradient => {
            apiary_model::compute_gradient(&cfg.model, &cfg.train, params, pages)
        }
    }
    .map_err(|e| e.to_string())
}

/// Element counts of every model tensor, in name order.
fn lengths(cfg: &NodeConfig) -> Result<Vec<usize>, String> {
    Ok(Update::zeros(&cfg.model)
        .map_err(|e| e.to_string())?
        .shapes()
        .iter()
        .map(|s| s.iter().product())
        .collect())
}

/// Turns a miner's updates into wire bytes, keeping the error-feedback residual between
/// windows when compression is on.
///
/// Validators keep one per miner too, fed with their recomputes, so they can check a
/// compressed update bit for bit ([`crate::windowed`]); for that both sides clear the residual
/// at the same windows ([`residual_resets_at`]).
pub struct Encoder {
    compressor: Option<Compressor>,
}

/// Whether every miner clears its error-feedback residual before encoding its update for
/// `window` (`compression.residual_reset_windows`; 0 never).
pub fn residual_resets_at(cfg: &NodeConfig, window: u64) -> bool {
    let every = cfg.compression.residual_reset_windows;
    every != 0 && window.is_multiple_of(every)
}

impl Encoder {
    /// An encoder for the subnet's settings.
    pub fn new(cfg: &NodeConfig) -> Result<Encoder, String> {
        let compressor = match compress_config(cfg) {
            Some(z) => Some(Compressor::new(z, &lengths(cfg)?).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Encoder { compressor })
    }

    /// Encodes a miner's update for `window`: clears the residual first where the subnet's
    /// schedule says so ([`residual_resets_at`]), then [`Encoder::encode`]s.
    pub fn encode_window(
        &mut self,
        cfg: &NodeConfig,
        window: u64,
        update: &Update,
    ) -> Result<Vec<u8>, String> {
        if residual_resets_at(cfg, window) {
            *self = Encoder::new(cfg)?;
        }
        self.encode(update)
    }

    /// Encodes `update`; with compression, `update + residual` is compressed and the residual
    /// keeps what was not sent.
    pub fn encode(&mut self, update: &Update) -> Result<Vec<u8>, String> {
        match &mut self.compressor {
            None => update.to_bytes().map_err(|e| e.to_string()),
            Some(c) => {
                let vecs = update.to_vecs().map_err(|e| e.to_string())?;
                let packed = c.compress(&vecs).map_err(|e| e.to_string())?;
                Ok(packed.to_bytes())
            }
        }
    }
}

/// Decodes wire bytes into a dense update of the model's shapes, validating everything.
pub fn decode(cfg: &NodeConfig, bytes: &[u8]) -> Result<Update, String> {
    match compress_config(cfg) {
        None => Update::from_bytes(&cfg.model, bytes).map_err(|e| format!("invalid update: {e}")),
        Some(z) => {
            let packed = CompressedUpdate::from_bytes(bytes)
                .map_err(|e| format!("invalid compressed update: {e}"))?;
            if packed.config() != &z {
                return Err(format!(
                    "compressed update uses {:?}, the subnet uses {z:?}",
                    packed.config()
                ));
            }
            let dense = apiary_compress::decompress(&packed, &lengths(cfg)?)
                .map_err(|e| format!("invalid compressed update: {e}"))?;
            Update::from_vecs(&cfg.model, dense).map_err(|e| format!("invalid update: {e}"))
        }
    }
}

/// The outer step of the subnet's optimizer.
pub fn outer_step(
    cfg: &NodeConfig,
    base: &Params,
    outer: &OuterState,
    updates: &[Update],
) -> Result<(Params, OuterState), String> {
    apiary_model::outer_step(&cfg.model, base, outer, updates, &outer_config(cfg))
        .map_err(|e| e.to_string())
}
