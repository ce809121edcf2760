//! Boltzmann-style model sync by slices: a window-seeded random subset of every tensor.

use crate::error::{CompressError, Result};
use rand::RngCore;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeSet;

/// Version byte of the [`Slice`] encoding.
pub const SLICE_VERSION: u8 = 1;

/// Header: version, seed, fraction (f64), tensor count (u32).
const SLICE_HEADER_LEN: usize = 1 + 32 + 8 + 4;

/// blake3 key-derivation context of the per-tensor ChaCha20 stream.
const SLICE_CONTEXT: &str = "apiary-compress slice v1";

/// Number of indices a slice takes from a tensor of `len` elements: `min(len, ceil(len *
/// fraction))` (0 for an invalid fraction).
fn slice_count(len: usize, fraction: f64) -> usize {
    if !valid_fraction(fraction) {
        return 0;
    }
    ((len as f64 * fraction).ceil() as usize).min(len)
}

fn valid_fraction(fraction: f64) -> bool {
    fraction.is_finite() && fraction > 0.0 && fraction <= 1.0
}

/// Uniform in `0..bound` (`bound >= 1`) by rejection, independent of `rand`'s algorithms.
fn below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % bound;
        }
    }
}

/// The sorted, distinct indices of tensor `tensor_index` (of `len` elements) in the slice
/// seeded by `seed` (e.g. the block hash at the window's start): `ceil(len * fraction)` of them
/// (all if `fraction >= 1`), none if `fraction` is not in `(0, 1]` or `len > u32::MAX`.
///
/// Floyd's sampling over a ChaCha20 stream keyed by
/// `blake3::derive_key("apiary-compress slice v1", seed ‖ tensor_index as u64 LE)`, with
/// rejection sampling for uniform integers: every node derives the same indices, and nobody
/// can know them before the seed is public.
pub fn slice_indices(seed: &[u8; 32], tensor_index: usize, len: usize, fraction: f64) -> Vec<u32> {
    if len > u32::MAX as usize {
        return Vec::new();
    }
    let k = slice_count(len, fraction);
    if k == len {
        return (0..len as u32).collect();
    }
    let mut material = [0u8; 40];
    material[..32].copy_from_slice(seed);
    material[32..].copy_from_slice(&(tensor_index as u64).to_le_bytes());
    let mut rng = ChaCha20Rng::from_seed(blake3::derive_key(SLICE_CONTEXT, &material));
    let mut set = BTreeSet::new();
    for j in (len - k)..len {
        let t = below(&mut rng, j as u64 + 1) as u32;
        if !set.insert(t) {
            set.insert(j as u32);
        }
    }
    set.into_iter().collect()
}

/// The values of every tensor at its [`slice_indices`], with the seed and fraction that
/// determine those indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    seed: [u8; 32],
    fraction: f64,
    lengths: Vec<usize>,
    values: Vec<Vec<f32>>,
}

/// Checks that `fraction` is in `(0, 1]` and every length fits u32 indices.
fn check_slice_args(lengths: &[usize], fraction: f64) -> Result<()> {
    if !valid_fraction(fraction) {
        return Err(CompressError::InvalidArgument(format!(
            "slice fraction must be in (0, 1], got {fraction}; Boltzmann uses 0.01"
        )));
    }
    if lengths.len() > u32::MAX as usize {
        return Err(CompressError::InvalidArgument("too many tensors".into()));
    }
    if let Some(t) = lengths.iter().position(|&l| l > u32::MAX as usize) {
        return Err(CompressError::InvalidArgument(format!(
            "tensor {t} has more than u32::MAX elements; slices index with u32"
        )));
    }
    Ok(())
}

/// Takes the slice of `tensors` (one flat vector per tensor, in name order) seeded by `seed`.
/// Errors on an invalid fraction, oversized tensors or NaN/Inf among the sliced values.
pub fn extract_slice(tensors: &[Vec<f32>], seed: &[u8; 32], fraction: f64) -> Result<Slice> {
    let lengths: Vec<usize> = tensors.iter().map(Vec::len).collect();
    check_slice_args(&lengths, fraction)?;
    let mut values = Vec::with_capacity(tensors.len());
    for (t, x) in tensors.iter().enumerate() {
        let mut v = Vec::new();
        for i in slice_indices(seed, t, x.len(), fraction) {
            let val = x[i as usize];
            if !val.is_finite() {
                return Err(CompressError::NonFinite {
                    index: t,
                    element: i as usize,
                });
            }
            v.push(val);
        }
        values.push(v);
    }
    Ok(Slice {
        seed: *seed,
        fraction,
        lengths,
        values,
    })
}

/// Writes the slice's values into `tensors` at its indices (other elements are untouched).
/// `tensors` must have the slice's tensor count and lengths.
pub fn apply_slice(tensors: &mut [Vec<f32>], slice: &Slice) -> Result<()> {
    if tensors.len() != slice.lengths.len() {
        return Err(CompressError::TensorCount {
            expected: slice.lengths.len(),
            got: tensors.len(),
        });
    }
    for (index, (x, &l)) in tensors.iter().zip(&slice.lengths).enumerate() {
        if x.len() != l {
            return Err(CompressError::TensorLength {
                index,
                expected: l,
                got: x.len(),
            });
        }
    }
    for (t, (x, v)) in tensors.iter_mut().zip(&slice.values).enumerate() {
        for (i, &val) in slice_indices(&slice.seed, t, x.len(), slice.fraction)
            .into_iter()
            .zip(v)
        {
            x[i as usize] = val;
        }
    }
    Ok(())
}

/// The element-wise mean of slices sharing seed, fraction and lengths (summed in f64 in the
/// given order, so every node gets the same bits): what Boltzmann peers apply after gathering
/// everyone's slice.
pub fn average_slices(slices: &[Slice]) -> Result<Slice> {
    let first = slices.first().ok_or_else(|| {
        CompressError::InvalidArgument("average_slices needs at least one slice".into())
    })?;
    if slices.iter().any(|s| {
        s.seed != first.seed
            || s.fraction.to_bits() != first.fraction.to_bits()
            || s.lengths != first.lengths
    }) {
        return Err(CompressError::InvalidArgument(
            "slices to average must share seed, fraction and tensor lengths".into(),
        ));
    }
    let n = slices.len() as f64;
    let values = (0..first.values.len())
        .map(|t| {
            (0..first.values[t].len())
                .map(|i| {
                    let sum: f64 = slices.iter().map(|s| f64::from(s.values[t][i])).sum();
                    (sum / n) as f32
                })
                .collect()
        })
        .collect();
    Ok(Slice {
        values,
        ..first.clone()
    })
}

impl Slice {
    /// The seed the indices derive from.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// Fraction of every tensor in the slice.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Element count of every tensor the slice was taken from.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Sliced values of every tensor, in the order of its [`slice_indices`].
    pub fn values(&self) -> &[Vec<f32>] {
        &self.values
    }

    /// Canonical encoding: version (u8), seed (32 bytes), fraction (f64 LE), tensor count
    /// (u32 LE), tensor lengths (u64 LE each), then every sliced value (f32 LE), tensor by
    /// tensor. The value counts are implied by lengths and fraction.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n: usize = self.values.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(SLICE_HEADER_LEN + 8 * self.lengths.len() + 4 * n);
        out.push(SLICE_VERSION);
        out.extend_from_slice(&self.seed);
        out.extend_from_slice(&self.fraction.to_le_bytes());
        out.extend_from_slice(&(self.lengths.len() as u32).to_le_bytes());
        for &l in &self.lengths {
            out.extend_from_slice(&(l as u64).to_le_bytes());
        }
        for v in self.values.iter().flatten() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes and validates: version, fraction in `(0, 1]`, lengths, exact total size (checked
    /// before allocating), finite values. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Slice> {
        let err = |m: String| Err(CompressError::SliceDecode(m));
        if bytes.len() < SLICE_HEADER_LEN {
            return err(format!(
                "{} bytes is shorter than the {SLICE_HEADER_LEN}-byte header",
                bytes.len()
            ));
        }
        if bytes[0] != SLICE_VERSION {
            return err(format!(
                "unknown slice version {} (this node reads {SLICE_VERSION})",
                bytes[0]
            ));
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[1..33]);
        let mut f = [0u8; 8];
        f.copy_from_slice(&bytes[33..41]);
        let fraction = f64::from_le_bytes(f);
        if !valid_fraction(fraction) {
            return err(format!("fraction {fraction} is not in (0, 1]"));
        }
        let ntensors = u32::from_le_bytes([bytes[41], bytes[42], bytes[43], bytes[44]]) as usize;
        let rest = bytes.len() - SLICE_HEADER_LEN;
        if ntensors > rest / 8 {
            return err(format!(
                "header claims {ntensors} tensors but only {rest} bytes follow"
            ));
        }
        let mut lengths = Vec::with_capacity(ntensors);
        let mut total = 0usize;
        for t in 0..ntensors {
            let o = SLICE_HEADER_LEN + 8 * t;
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            let l = u64::from_le_bytes(b);
            if l > u64::from(u32::MAX) {
                return err(format!("tensor {t} length {l} exceeds u32::MAX"));
            }
            let l = l as usize;
            total = total.saturating_add(slice_count(l, fraction));
            lengths.push(l);
        }
        let expected = (SLICE_HEADER_LEN + 8 * ntensors).saturating_add(total.saturating_mul(4));
        if expected != bytes.len() {
            return err(format!(
                "expected {expected} bytes for these lengths and fraction, got {}",
                bytes.len()
            ));
        }
        let mut pos = SLICE_HEADER_LEN + 8 * ntensors;
        let mut values = Vec::with_capacity(ntensors);
        for (t, &l) in lengths.iter().enumerate() {
            let k = slice_count(l, fraction);
            let mut v = Vec::with_capacity(k);
            for _ in 0..k {
                let x = f32::from_le_bytes([
                    bytes[pos],
                    bytes[pos + 1],
                    bytes[pos + 2],
                    bytes[pos + 3],
                ]);
                if !x.is_finite() {
                    return err(format!("tensor {t} has a NaN or infinite value"));
                }
                v.push(x);
                pos += 4;
            }
            values.push(v);
        }
        Ok(Slice {
            seed,
            fraction,
            lengths,
            values,
        })
    }
}
