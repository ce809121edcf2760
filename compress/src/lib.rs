//! # apiary-compress
//!
//! Compressed model updates (chunked top-k with error feedback, optional DCT, quantized values,
//! packed indices) and Boltzmann-style window-seeded slices. Plain, single-threaded Rust with a
//! fixed operation order: every node decodes and aggregates to bit-identical results.
//!
//! ## Compression (miners)
//!
//! Every tensor (a flat `Vec<f32>`, e.g. from `Update::to_vecs()`) is cut into chunks of
//! [`CompressConfig::chunk`] consecutive elements; the last chunk of a tensor may be shorter.
//! Per chunk, the `topk` entries of largest magnitude are kept (ties: lower index first;
//! a shorter chunk keeps `min(topk, len)`), optionally after an orthonormal DCT-II of the
//! chunk (full-length chunks only; a shorter last chunk is never transformed).
//!
//! **Error feedback.** A [`Compressor`] belongs to one sender and keeps a residual per tensor.
//! Each round: `x' = x + residual; t = C(x'); residual = x' - D(t)`, where `D` is exactly the
//! decoding every receiver performs ([`decompress`]). Hence, for any number of rounds,
//! `sum_r D(t_r) + residual = sum_r x_r` up to f32 rounding: nothing is dropped, small
//! coordinates are only delayed until they have accumulated enough to be sent.
//!
//! **Values.** `quant_bits = None` sends kept values as f32 (decoded exactly, bit for bit).
//! `Some(b)` (2..=8) sends sign + magnitude: per chunk, scale `s = max |kept value|` (f32); a
//! value `v` is coded as sign bit `v < 0` and bin `q = min(floor(|v| / s * M), M - 1)` with
//! `M = 2^(b-1)`, and decoded to the bin centre `±s (2q + 1) / (2M)`. The error is at most
//! `s / 2^b` per value (`s / 4` at 2 bits, `s / 256` at 8 bits); error feedback carries it over.
//!
//! **DCT.** Forward: Makhoul's reordering plus a radix-2 FFT in f64. Inverse: DCT-III
//! synthesized directly from the few kept coefficients (`topk` multiply-adds per element). Both
//! use a cosine table built from a fixed Taylor series with correctly rounded IEEE operations
//! (no libm `cos`), so the results do not depend on the platform.
//!
//! ## Byte format of a [`CompressedUpdate`] (version 1, little endian)
//!
//! ```text
//! u8   version = 1
//! u32  chunk                 2..=65536
//! u32  topk                  1..=chunk
//! u8   flags                 bit 0: dct; other bits must be 0
//! u8   quant_bits            0 = f32 values, else 2..=8
//! u32  tensor count T
//! u64  length of each tensor (T times)
//! indices: one ceil(log2(chunk))-bit field per kept entry, LSB first, tensor by tensor,
//!          chunk by chunk, strictly ascending within a chunk; zero-padded to a byte
//! values:  f32 per kept entry                         if quant_bits = 0
//!          f32 scale per chunk, then one quant_bits-bit code per kept entry
//!          (bit quant_bits-1 = sign, low bits = bin), LSB first, zero-padded   otherwise
//! ```
//!
//! The number of entries per chunk is implied (`min(topk, chunk length)`), so the total size is
//! a function of the header and lengths; [`CompressedUpdate::from_bytes`] checks it exactly
//! before allocating, then checks index ranges and order, padding bits, finite values and
//! scales (non-negative; scale 0 only with code 0). Every accepted byte string re-encodes to
//! itself: the encoding is canonical, so its hash identifies the update.
//!
//! Bytes per kept entry: index bits + 32 (f32), or index bits + `quant_bits` + 32 / topk for
//! the scale. [`CompressConfig::density_1_56`] (4 of 256, 8-bit values) is 85x smaller than
//! dense f32; [`CompressConfig::density_0_4`] (4 of 1024, 8-bit values) 315x;
//! [`CompressConfig::density_1_17`] (12 of 1024, 4-bit values) 164x.
//!
//! **Outer learning rate.** With error feedback every coordinate is sent rarely (about once
//! per `1 / density` rounds) with its accumulated value, so progress arrives late. In
//! `bench/benches/compression.rs` (tinyshakespeare, 30 windows x 4 miners), compressed
//! updates matched dense best with about twice the dense outer lr (dense itself gets worse at
//! 2x): `density_1_17` at 2x lr was within 3 % of dense held-out loss (+2.1 % to +2.95 % across
//! trainer revisions; +2.3 % at 2.5x) at ~157x fewer bytes.
//!
//! ## Aggregation (validators and leads)
//!
//! [`accumulate`] adds `weight * D(update)` into a dense accumulator touching only kept entries
//! (or the chunks they synthesize with DCT); it is bit-identical to adding [`decompress`]ed
//! updates in the same order.
//!
//! ## Slices (Boltzmann model sync)
//!
//! [`slice_indices`] picks a sorted, distinct, uniformly random `ceil(len * fraction)` subset
//! of every tensor from a ChaCha20 stream keyed by `blake3::derive_key(seed ‖ tensor index)`;
//! with `seed` the block hash at the window's start, nobody can precompute it.
//! [`extract_slice`], [`apply_slice`], [`average_slices`] and [`Slice::to_bytes`] /
//! [`Slice::from_bytes`] build on it.

mod bits;
mod config;
mod dct;
mod error;
mod slice;
mod update;

pub use config::{CompressConfig, MAX_CHUNK};
pub use error::{CompressError, Result};
pub use slice::{apply_slice, average_slices, extract_slice, slice_indices, Slice, SLICE_VERSION};
pub use update::{accumulate, decompress, CompressedUpdate, Compressor, FORMAT_VERSION};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
