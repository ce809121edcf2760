//! [`CompressConfig`]: chunk size, entries kept per chunk, DCT and value quantization.

use crate::error::{CompressError, Result};

/// Largest accepted chunk size (indices are at most 16 bits).
pub const MAX_CHUNK: usize = 1 << 16;

/// How an update is compressed: every tensor is cut into chunks of `chunk` consecutive elements
/// (the last one may be shorter), and the `topk` largest-magnitude entries of every chunk are
/// kept (after an orthonormal DCT-II of the chunk when `dct` is set).
///
/// Density is `topk / chunk`. Bytes per kept entry: `ceil(log2(chunk))` index bits plus 32
/// value bits (`quant_bits = None`) or `quant_bits` value bits plus a 32-bit scale per chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CompressConfig {
    /// Elements per chunk, `2..=65536`; a power of two when `dct` is set.
    pub chunk: usize,
    /// Entries kept per chunk, `1..=chunk` (a shorter last chunk keeps `min(topk, len)`).
    pub topk: usize,
    /// Apply an orthonormal DCT-II to every full chunk before top-k (DeMo/DisTrO style); the
    /// receiver applies the inverse (DCT-III). Shorter last chunks are not transformed.
    pub dct: bool,
    /// `None`: values travel as f32. `Some(b)`, `b` in `2..=8`: sign + `b - 1` magnitude bits
    /// with one f32 scale (largest kept magnitude) per chunk; see the crate docs.
    pub quant_bits: Option<u8>,
}

impl CompressConfig {
    /// 1.5625 % density: 4 of every 256 values, 8-bit indices, 8-bit values
    /// (4 x 16 bits + a 32-bit scale = 12 bytes per 1 KiB of f32: 85x fewer bytes).
    pub const fn density_1_56() -> CompressConfig {
        CompressConfig {
            chunk: 256,
            topk: 4,
            dct: false,
            quant_bits: Some(8),
        }
    }

    /// 0.39 % density: 4 of every 1024 values, 10-bit indices, 8-bit values
    /// (4 x 18 bits + a 32-bit scale = 13 bytes per 4 KiB of f32: 315x fewer bytes).
    pub const fn density_0_4() -> CompressConfig {
        CompressConfig {
            chunk: 1024,
            topk: 4,
            dct: false,
            quant_bits: Some(8),
        }
    }

    /// 1.17 % density: 12 of every 1024 values, 10-bit indices, 4-bit values
    /// (12 x 14 bits + a 32-bit scale = 25 bytes per 4 KiB of f32: 164x fewer bytes). In
    /// `bench/benches/compression.rs` this is the setting that meets ">= 150x fewer bytes,
    /// held-out loss within 3 % of dense", with twice the dense outer learning rate.
    pub const fn density_1_17() -> CompressConfig {
        CompressConfig {
            chunk: 1024,
            topk: 12,
            dct: false,
            quant_bits: Some(4),
        }
    }

    /// Checks every field; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(CompressError::InvalidConfig(m));
        if self.chunk < 2 || self.chunk > MAX_CHUNK {
            return bad(format!(
                "chunk must be in 2..={MAX_CHUNK}, got {}; 256 or 1024 are typical",
                self.chunk
            ));
        }
        if self.topk == 0 || self.topk > self.chunk {
            return bad(format!(
                "topk must be in 1..=chunk ({}), got {}",
                self.chunk, self.topk
            ));
        }
        if self.dct && !self.chunk.is_power_of_two() {
            return bad(format!(
                "dct needs a power-of-two chunk, got {}; use e.g. 256 or 1024, or set dct = false",
                self.chunk
            ));
        }
        if let Some(b) = self.quant_bits {
            if !(2..=8).contains(&b) {
                return bad(format!(
                    "quant_bits must be 2..=8 (or None for f32 values), got {b}"
                ));
            }
        }
        Ok(())
    }

    /// Fraction of entries kept: `topk / chunk`.
    pub fn density(&self) -> f64 {
        self.topk as f64 / self.chunk as f64
    }

    /// Bits per packed index: `ceil(log2(chunk))`.
    pub fn index_bits(&self) -> u32 {
        usize::BITS - (self.chunk.max(2) - 1).leading_zeros()
    }
}
