//! [`Compressor`] (chunked top-k with error feedback), [`CompressedUpdate`] and its byte format,
//! [`decompress`] and [`accumulate`].

use crate::bits::{BitReader, BitWriter};
use crate::config::CompressConfig;
use crate::dct::Dct;
use crate::error::{CompressError, Result};

/// Version byte of the [`CompressedUpdate`] encoding.
pub const FORMAT_VERSION: u8 = 1;

/// Fixed header: version, chunk (u32), topk (u32), flags, quant_bits, tensor count (u32).
const HEADER_LEN: usize = 1 + 4 + 4 + 1 + 1 + 4;

/// One chunk: its tensor, first element, length and first entry.
#[derive(Debug, Clone, Copy)]
struct ChunkPos {
    tensor: usize,
    start: usize,
    len: usize,
    /// Entries kept in this chunk: `min(topk, len)`.
    kept: usize,
}

/// Every chunk of tensors with `lengths`, in order.
fn chunks<'a>(
    cfg: &CompressConfig,
    lengths: &'a [usize],
) -> impl Iterator<Item = ChunkPos> + use<'a> {
    let (chunk, topk) = (cfg.chunk, cfg.topk);
    lengths.iter().enumerate().flat_map(move |(tensor, &len)| {
        (0..len.div_ceil(chunk)).map(move |c| {
            let start = c * chunk;
            let clen = chunk.min(len - start);
            ChunkPos {
                tensor,
                start,
                len: clen,
                kept: topk.min(clen),
            }
        })
    })
}

/// Total chunks and kept entries for `lengths`, or `None` on overflow.
fn counts(cfg: &CompressConfig, lengths: &[usize]) -> Option<(usize, usize)> {
    let (mut nchunks, mut entries) = (0usize, 0usize);
    for &len in lengths {
        let full = len / cfg.chunk;
        let tail = len % cfg.chunk;
        nchunks = nchunks.checked_add(len.div_ceil(cfg.chunk))?;
        entries = entries
            .checked_add(full.checked_mul(cfg.topk)?)?
            .checked_add(cfg.topk.min(tail))?;
    }
    Some((nchunks, entries))
}

/// Encoded size for a config and lengths, or `None` on overflow.
fn encoded_len(cfg: &CompressConfig, lengths: &[usize]) -> Option<usize> {
    let (nchunks, entries) = counts(cfg, lengths)?;
    let idx_bytes = entries.checked_mul(cfg.index_bits() as usize)?.div_ceil(8);
    let val_bytes = match cfg.quant_bits {
        None => entries.checked_mul(4)?,
        Some(b) => nchunks
            .checked_mul(4)?
            .checked_add(entries.checked_mul(usize::from(b))?.div_ceil(8))?,
    };
    HEADER_LEN
        .checked_add(lengths.len().checked_mul(8)?)?
        .checked_add(idx_bytes)?
        .checked_add(val_bytes)
}

/// Kept values: raw f32 or quantized codes with a per-chunk scale.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    F32(Vec<f32>),
    Quant {
        bits: u8,
        /// One per chunk: the largest kept magnitude (finite, sign bit clear).
        scales: Vec<f32>,
        /// One per entry: sign bit (`bits - 1`) and magnitude bin (low `bits - 1` bits).
        codes: Vec<u8>,
    },
}

/// Quantizes `v` with scale `s` (`s >= max |v|` of the chunk) to a `bits`-bit code.
fn quantize(v: f32, s: f32, bits: u8) -> u8 {
    if s == 0.0 {
        return 0;
    }
    let levels = 1u32 << (bits - 1);
    let bin = ((v.abs() / s) * levels as f32).floor();
    let bin = if bin >= levels as f32 {
        levels - 1
    } else {
        bin as u32
    };
    let sign = u32::from(v < 0.0) << (bits - 1);
    (sign | bin) as u8
}

/// The value of `code` under scale `s`: `+-s (2 bin + 1) / 2^bits` (bin centers).
fn dequantize(code: u8, s: f32, bits: u8) -> f32 {
    let levels = 1u32 << (bits - 1);
    let bin = u32::from(code) & (levels - 1);
    let mag = s * ((2 * bin + 1) as f32 / (2 * levels) as f32);
    if u32::from(code) >> (bits - 1) != 0 {
        -mag
    } else {
        mag
    }
}

/// A compressed update: for every chunk of every tensor, the chunk-local indices (ascending)
/// and values of its kept entries. Built by [`Compressor::compress`] or decoded (and fully
/// validated) by [`CompressedUpdate::from_bytes`]; see the crate docs for the byte format.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedUpdate {
    config: CompressConfig,
    lengths: Vec<usize>,
    /// Chunk-local index of every entry, chunk by chunk, ascending within a chunk.
    pub(crate) indices: Vec<u32>,
    values: Values,
}

impl CompressedUpdate {
    /// The configuration it was compressed with.
    pub fn config(&self) -> &CompressConfig {
        &self.config
    }

    /// Element count of every tensor.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Number of kept entries over all tensors.
    pub fn num_entries(&self) -> usize {
        self.indices.len()
    }

    /// Bytes the same tensors take as dense f32 (`4 * total elements`).
    pub fn dense_bytes(&self) -> usize {
        self.lengths.iter().sum::<usize>().saturating_mul(4)
    }

    /// Length in bytes of [`CompressedUpdate::to_bytes`] (computed, not encoded).
    pub fn len(&self) -> usize {
        encoded_len(&self.config, &self.lengths).unwrap_or(usize::MAX)
    }

    /// True if no entry is kept (every tensor is empty).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Value of entry `e` (in chunk `c`), as every receiver decodes it.
    fn value(&self, c: usize, e: usize) -> f32 {
        match &self.values {
            Values::F32(v) => v[e],
            Values::Quant {
                bits,
                scales,
                codes,
            } => dequantize(codes[e], scales[c], *bits),
        }
    }

    /// Canonical encoding (see the crate docs); `from_bytes(to_bytes(u)) == u` and
    /// `to_bytes(from_bytes(b)) == b` for every accepted `b`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let cfg = &self.config;
        let mut out = Vec::with_capacity(self.len().min(1 << 30));
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&(cfg.chunk as u32).to_le_bytes());
        out.extend_from_slice(&(cfg.topk as u32).to_le_bytes());
        out.push(u8::from(cfg.dct));
        out.push(cfg.quant_bits.unwrap_or(0));
        out.extend_from_slice(&(self.lengths.len() as u32).to_le_bytes());
        for &l in &self.lengths {
            out.extend_from_slice(&(l as u64).to_le_bytes());
        }
        let ib = cfg.index_bits();
        let mut w = BitWriter::new(&mut out);
        for &i in &self.indices {
            w.push(i, ib);
        }
        w.finish();
        match &self.values {
            Values::F32(v) => {
                for x in v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            Values::Quant {
                bits,
                scales,
                codes,
            } => {
                for s in scales {
                    out.extend_from_slice(&s.to_le_bytes());
                }
                let mut w = BitWriter::new(&mut out);
                for &c in codes {
                    w.push(u32::from(c), u32::from(*bits));
                }
                w.finish();
            }
        }
        out
    }

    /// Decodes and validates `bytes`: version, config, tensor count and lengths, exact total
    /// size (checked before anything proportional to the header is allocated), index ranges
    /// and order, zero padding bits, finite values and scales. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<CompressedUpdate> {
        let err = |m: String| Err(CompressError::Decode(m));
        if bytes.len() < HEADER_LEN {
            return err(format!(
                "{} bytes is shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            ));
        }
        if bytes[0] != FORMAT_VERSION {
            return err(format!(
                "unknown format version {} (this node reads version {FORMAT_VERSION}); upgrade \
                 the node if peers use a newer format",
                bytes[0]
            ));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let flags = bytes[9];
        if flags > 1 {
            return err(format!("unknown flags {flags:#x}"));
        }
        let qb = bytes[10];
        let config = CompressConfig {
            chunk: u32_at(1) as usize,
            topk: u32_at(5) as usize,
            dct: flags == 1,
            quant_bits: if qb == 0 { None } else { Some(qb) },
        };
        config
            .validate()
            .map_err(|e| CompressError::Decode(e.to_string()))?;
        let ntensors = u32_at(11) as usize;
        let rest = bytes.len() - HEADER_LEN;
        if ntensors > rest / 8 {
            return err(format!(
                "header claims {ntensors} tensors but only {rest} bytes follow"
            ));
        }
        let mut lengths = Vec::with_capacity(ntensors);
        for t in 0..ntensors {
            let o = HEADER_LEN + 8 * t;
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            let l = usize::try_from(u64::from_le_bytes(b))
                .map_err(|_| CompressError::Decode(format!("tensor {t} length too large")))?;
            lengths.push(l);
        }
        let expected = encoded_len(&config, &lengths)
            .ok_or_else(|| CompressError::Decode("tensor lengths overflow".into()))?;
        if expected != bytes.len() {
            return err(format!(
                "expected {expected} bytes for these tensor lengths and config, got {}",
                bytes.len()
            ));
        }
        let (nchunks, entries) = counts(&config, &lengths)
            .ok_or_else(|| CompressError::Decode("tensor lengths overflow".into()))?;
        let mut pos = HEADER_LEN + 8 * ntensors;
        let ib = config.index_bits();
        let idx_len = (entries * ib as usize).div_ceil(8);
        let mut r = BitReader::new(&bytes[pos..pos + idx_len]);
        pos += idx_len;
        let mut indices = Vec::with_capacity(entries);
        for (c, ch) in chunks(&config, &lengths).enumerate() {
            let mut prev: Option<u32> = None;
            for _ in 0..ch.kept {
                let i = r
                    .read(ib)
                    .ok_or_else(|| CompressError::Decode("index section truncated".into()))?;
                if i as usize >= ch.len {
                    return err(format!(
                        "index {i} out of range in chunk {c} of length {}",
                        ch.len
                    ));
                }
                if prev.is_some_and(|p| i <= p) {
                    return err(format!("indices of chunk {c} are not strictly increasing"));
                }
                prev = Some(i);
                indices.push(i);
            }
        }
        if !r.finished_cleanly() {
            return err("non-zero padding bits after the indices".into());
        }
        let f32_at =
            |o: usize| f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let values = match config.quant_bits {
            None => {
                let mut v = Vec::with_capacity(entries);
                for e in 0..entries {
                    let x = f32_at(pos + 4 * e);
                    if !x.is_finite() {
                        return err(format!("value {e} is NaN or infinite"));
                    }
                    v.push(x);
                }
                Values::F32(v)
            }
            Some(bits) => {
                let mut scales = Vec::with_capacity(nchunks);
                for c in 0..nchunks {
                    let s = f32_at(pos + 4 * c);
                    if !s.is_finite() || s.is_sign_negative() {
                        return err(format!(
                            "scale of chunk {c} is {s}; scales must be finite and non-negative"
                        ));
                    }
                    scales.push(s);
                }
                pos += 4 * nchunks;
                let mut r = BitReader::new(&bytes[pos..]);
                let mut codes = Vec::with_capacity(entries);
                for (c, ch) in chunks(&config, &lengths).enumerate() {
                    for _ in 0..ch.kept {
                        let code = r.read(u32::from(bits)).ok_or_else(|| {
                            CompressError::Decode("value section truncated".into())
                        })? as u8;
                        if scales[c] == 0.0 && code != 0 {
                            return err(format!(
                                "chunk {c} has scale 0 but a non-zero code (not canonical)"
                            ));
                        }
                        codes.push(code);
                    }
                }
                if !r.finished_cleanly() {
                    return err("non-zero padding bits after the values".into());
                }
                Values::Quant {
                    bits,
                    scales,
                    codes,
                }
            }
        };
        Ok(CompressedUpdate {
            config,
            lengths,
            indices,
            values,
        })
    }

    /// Fraction of this update's kept positions (tensor, chunk, index) that `other` also keeps,
    /// in `[0, 1]`: the top-k index overlap used for copy detection. Both must share config and
    /// lengths.
    pub fn overlap(&self, other: &CompressedUpdate) -> Result<f64> {
        if self.config != other.config || self.lengths != other.lengths {
            return Err(CompressError::InvalidArgument(
                "overlap needs two updates with the same config and tensor lengths".into(),
            ));
        }
        if self.indices.is_empty() {
            return Ok(0.0);
        }
        let mut shared = 0usize;
        let mut e = 0usize;
        for ch in chunks(&self.config, &self.lengths) {
            let (a, b) = (
                &self.indices[e..e + ch.kept],
                &other.indices[e..e + ch.kept],
            );
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                match a[i].cmp(&b[j]) {
                    std::cmp::Ordering::Less => i += 1,
                    std::cmp::Ordering::Greater => j += 1,
                    std::cmp::Ordering::Equal => {
                        shared += 1;
                        i += 1;
                        j += 1;
                    }
                }
            }
            e += ch.kept;
        }
        Ok(shared as f64 / self.indices.len() as f64)
    }
}

/// Checks that `tensors` has the expected count and lengths.
fn check_lengths(expected: &[usize], got: impl ExactSizeIterator<Item = usize>) -> Result<()> {
    if got.len() != expected.len() {
        return Err(CompressError::TensorCount {
            expected: expected.len(),
            got: got.len(),
        });
    }
    for (index, (&e, g)) in expected.iter().zip(got).enumerate() {
        if e != g {
            return Err(CompressError::TensorLength {
                index,
                expected: e,
                got: g,
            });
        }
    }
    Ok(())
}

/// Keeps the `k` largest-magnitude entries of `src` (ties: lower index), ascending by index.
fn select_topk(src: &[f32], k: usize, buf: &mut Vec<(f32, u32)>, out: &mut Vec<u32>) {
    buf.clear();
    let k = k.min(src.len());
    for (i, &v) in src[..k].iter().enumerate() {
        let m = v.abs();
        let p = buf.partition_point(|&(bm, _)| bm >= m);
        buf.insert(p, (m, i as u32));
    }
    // Smallest kept magnitude; equal magnitude never displaces (the kept entry has the lower
    // index), so only strictly larger values enter.
    let mut threshold = buf.last().map_or(f32::INFINITY, |&(m, _)| m);
    for (i, &v) in src.iter().enumerate().skip(k) {
        let m = v.abs();
        if m > threshold {
            buf.pop();
            let p = buf.partition_point(|&(bm, _)| bm >= m);
            buf.insert(p, (m, i as u32));
            threshold = buf[k - 1].0;
        }
    }
    out.clear();
    out.extend(buf.iter().map(|&(_, i)| i));
    out.sort_unstable();
}

/// A sender's compressor: holds the error-feedback residual of every tensor.
///
/// Each call to [`Compressor::compress`] computes `x' = x + residual`, transmits
/// `t = C(x')` and keeps `residual = x' - D(t)`, so nothing is lost, only delayed: after any
/// number of rounds, `sum(D(t_r)) + residual = sum(x_r)` (up to f32 rounding).
pub struct Compressor {
    config: CompressConfig,
    lengths: Vec<usize>,
    residual: Vec<Vec<f32>>,
    dct: Option<Dct>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("config", &self.config)
            .field("lengths", &self.lengths)
            .finish()
    }
}

impl Compressor {
    /// A compressor for tensors of `lengths` elements (e.g. the products of
    /// `Update::shapes()`), with a zero residual.
    pub fn new(config: CompressConfig, lengths: &[usize]) -> Result<Compressor> {
        config.validate()?;
        if lengths.len() > u32::MAX as usize {
            return Err(CompressError::InvalidArgument("too many tensors".into()));
        }
        Ok(Compressor {
            config,
            lengths: lengths.to_vec(),
            residual: lengths.iter().map(|&l| vec![0.0; l]).collect(),
            dct: config.dct.then(|| Dct::new(config.chunk)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CompressConfig {
        &self.config
    }

    /// The error-feedback residual of every tensor (what has not been transmitted yet).
    pub fn residual(&self) -> &[Vec<f32>] {
        &self.residual
    }

    /// Compresses `tensors` (one flat vector per tensor, in construction order) with error
    /// feedback. On error (wrong shapes, NaN/Inf in input or input + residual) the residual is
    /// left unchanged.
    pub fn compress(&mut self, tensors: &[Vec<f32>]) -> Result<CompressedUpdate> {
        check_lengths(&self.lengths, tensors.iter().map(Vec::len))?;
        for (index, (x, r)) in tensors.iter().zip(&self.residual).enumerate() {
            if let Some(element) = x.iter().zip(r).position(|(a, b)| !(a + b).is_finite()) {
                return Err(CompressError::NonFinite { index, element });
            }
        }
        let cfg = self.config;
        let (nchunks, entries) = counts(&cfg, &self.lengths)
            .ok_or_else(|| CompressError::InvalidArgument("tensors too large".into()))?;
        let mut indices = Vec::with_capacity(entries);
        let mut vals: Vec<f32> = Vec::with_capacity(entries);
        let mut scales = Vec::with_capacity(if cfg.quant_bits.is_some() { nchunks } else { 0 });
        let mut codes = Vec::with_capacity(if cfg.quant_bits.is_some() { entries } else { 0 });
        let (mut buf, mut sel) = (
            Vec::with_capacity(cfg.topk + 1),
            Vec::with_capacity(cfg.topk),
        );
        let mut kept: Vec<f32> = Vec::with_capacity(cfg.topk);
        let mut coeffs = vec![0.0f32; if cfg.dct { cfg.chunk } else { 0 }];
        let mut recon = coeffs.clone();
        let mut scratch = vec![0.0f64; coeffs.len()];
        for ch in chunks(&cfg, &self.lengths) {
            let x = &mut self.residual[ch.tensor][ch.start..ch.start + ch.len];
            // x' = x + residual, chunk by chunk (while the chunk is in cache).
            for (ri, &xi) in x.iter_mut().zip(&tensors[ch.tensor][ch.start..]) {
                *ri += xi;
            }
            let transform = match &mut self.dct {
                Some(d) if ch.len == cfg.chunk => {
                    d.forward(x, &mut coeffs);
                    Some(d)
                }
                _ => None,
            };
            let src: &[f32] = if transform.is_some() { &coeffs } else { x };
            select_topk(src, ch.kept, &mut buf, &mut sel);
            kept.clear();
            kept.extend(sel.iter().map(|&i| src[i as usize]));
            if let Some(bits) = cfg.quant_bits {
                let s = kept.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                scales.push(s);
                for v in kept.iter_mut() {
                    let code = quantize(*v, s, bits);
                    codes.push(code);
                    *v = dequantize(code, s, bits);
                }
            } else {
                vals.extend_from_slice(&kept);
            }
            match transform {
                Some(d) => {
                    d.inverse_sparse(&sel, &kept, &mut scratch, &mut recon);
                    for (xi, &ri) in x.iter_mut().zip(&recon) {
                        *xi -= ri;
                    }
                }
                None => {
                    for (&i, &v) in sel.iter().zip(&kept) {
                        x[i as usize] -= v;
                    }
                }
            }
            indices.extend_from_slice(&sel);
        }
        let values = match cfg.quant_bits {
            None => Values::F32(vals),
            Some(bits) => Values::Quant {
                bits,
                scales,
                codes,
            },
        };
        Ok(CompressedUpdate {
            config: cfg,
            lengths: self.lengths.clone(),
            indices,
            values,
        })
    }
}

/// Adds `weight * D(update)` to `acc` (one dense vector per tensor) without materialising the
/// dense update: only kept entries are touched (or, with DCT, the chunks they synthesize).
///
/// Per element it computes exactly `acc[i] += weight * d[i]` with `d = decompress(update)`,
/// so summing many updates this way is bit-identical to summing their decompressions in the
/// same order, on every node.
pub fn accumulate(acc: &mut [Vec<f32>], update: &CompressedUpdate, weight: f32) -> Result<()> {
    if !weight.is_finite() {
        return Err(CompressError::InvalidArgument(format!(
            "accumulate weight must be finite, got {weight}"
        )));
    }
    check_lengths(&update.lengths, acc.iter().map(Vec::len))?;
    let cfg = update.config;
    let dct = cfg.dct.then(|| Dct::new(cfg.chunk));
    let n = if cfg.dct { cfg.chunk } else { 0 };
    let (mut scratch, mut recon) = (vec![0.0f64; n], vec![0.0f32; n]);
    let mut kept: Vec<f32> = Vec::with_capacity(cfg.topk);
    let mut e = 0usize;
    for (c, ch) in chunks(&cfg, &update.lengths).enumerate() {
        let a = &mut acc[ch.tensor][ch.start..ch.start + ch.len];
        let idx = &update.indices[e..e + ch.kept];
        kept.clear();
        kept.extend((e..e + ch.kept).map(|j| update.value(c, j)));
        match &dct {
            Some(d) if ch.len == cfg.chunk => {
                d.inverse_sparse(idx, &kept, &mut scratch, &mut recon);
                for (ai, &ri) in a.iter_mut().zip(&recon) {
                    *ai += weight * ri;
                }
            }
            _ => {
                for (&i, &v) in idx.iter().zip(&kept) {
                    a[i as usize] += weight * v;
                }
            }
        }
        e += ch.kept;
    }
    Ok(())
}

/// The dense tensors `D(update)`; `lengths` are the receiver's expected tensor lengths and must
/// match the update's (a mismatch is an error, so a peer cannot choose the allocation size).
pub fn decompress(update: &CompressedUpdate, lengths: &[usize]) -> Result<Vec<Vec<f32>>> {
    check_lengths(lengths, update.lengths.iter().copied())?;
    let mut out: Vec<Vec<f32>> = lengths.iter().map(|&l| vec![0.0; l]).collect();
    accumulate(&mut out, update, 1.0)?;
    Ok(out)
}
