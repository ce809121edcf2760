//! # CPU kernels: the plain-slice math under both CPU paths
//!
//! Design note. The model has two CPU implementations of the same forward/backward pass:
//! `ops.rs` wraps kernels as candle custom ops (used by evaluation and compared against candle
//! autograd in the tests), and `cpu_step.rs` runs the whole training step by hand over flat
//! buffers. Everything they have in common lives here, over `&[f32]` slices:
//!
//! - `e^x` without libm ([`fast_exp`]) and the logistic family built on it: [`silu`],
//!   [`swiglu`] and its gradient [`swiglu_grad`] (the only place this math is written);
//! - deterministic lane-summed reductions ([`lane_sum`], [`lane_max`], [`exp_in_place`]) and
//!   the softmax rows built from them;
//! - RMSNorm forward and backward, row-parallel;
//! - rotary tables ([`RopeTables`]) and the split-heads-with-rotary / merge-heads copies;
//! - the SwiGLU row kernels of the step's `[gate | up]` layout;
//! - the in-place AdamW update.
//!
//! This module is a leaf: it uses only `std`, `rayon` and candle-nn's AdamW hyper-parameter
//! type, never another module of this crate. `ops` and `cpu_step` both import it and never
//! each other, so there is no module cycle, and a change to a kernel changes both paths at
//! once.
//!
//! Determinism: every output element is written by exactly one rayon task in a fixed order,
//! and every reduction has a fixed order (lanes summed in lane order, row blocks summed in block
//! order), so results are bit-identical from run to run whatever the thread count. Rust never
//! contracts or reorders float arithmetic, so where a kernel is inlined does not change its
//! bits.

use rayon::prelude::*;
use std::sync::Arc;

/// Rows handled per rayon task in row-wise kernels.
pub(crate) const ROWS_PER_TASK: usize = 16;
/// Elements handled per rayon task in element-wise kernels.
pub(crate) const ELEMS_PER_TASK: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// exp and the logistic family

/// `e^x` for f32 in a form that vectorizes (no libm call): range reduction to
/// `x = n ln2 + r`, a degree-6 polynomial for `e^r` and an exponent-bits `2^n`. Relative error
/// about 2e-7; inputs are clamped to [-87, 88] (so it never returns 0 or inf).
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `1 + e^-x`, the denominator of the logistic function.
#[inline(always)]
fn logistic_denom(x: f32) -> f32 {
    1.0 + fast_exp(-x)
}

/// The logistic function `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / logistic_denom(x)
}

/// `silu(x) = x * sigmoid(x)`, computed as `x / (1 + e^-x)` (one rounding fewer).
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / logistic_denom(x)
}

/// SwiGLU of one element: `silu(g) * u`.
#[inline(always)]
pub(crate) fn swiglu(g: f32, u: f32) -> f32 {
    silu(g) * u
}

/// Gradients `(dg, du)` of [`swiglu`] at `(g, u)` given the output gradient `dy`:
/// `dg = dy u s (1 + g (1 - s))`, `du = dy g s` with `s = sigmoid(g)`.
#[inline(always)]
pub(crate) fn swiglu_grad(g: f32, u: f32, dy: f32) -> (f32, f32) {
    let s = sigmoid(g);
    (dy * u * s * (1.0 + g * (1.0 - s)), dy * g * s)
}

// ---------------------------------------------------------------------------------------------
// Lane-summed reductions

/// Independent accumulators of the reductions below. A plain `iter().sum()` over f32 is one
/// serial chain of additions (the compiler may not reorder them), so it neither vectorizes nor
/// pipelines; eight lanes summed in a fixed order do both and stay deterministic.
const LANES: usize = 8;

/// Folds `f(i)` for `i in 0..len` into [`LANES`] partial sums, then adds them in lane order.
#[inline(always)]
pub(crate) fn lane_sum(len: usize, mut f: impl FnMut(usize) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let full = len / LANES * LANES;
    let mut i = 0;
    while i < full {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
        i += LANES;
    }
    let mut s = acc.iter().sum::<f32>();
    for j in full..len {
        s += f(j);
    }
    s
}

/// Largest element (`-inf` for an empty slice), in lanes.
#[inline(always)]
pub(crate) fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    let m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    chunks.remainder().iter().fold(m, |a, &b| a.max(b))
}

/// Replaces each `x` by `e^(scale (x - m))` and returns their sum (in lanes).
#[inline(always)]
pub(crate) fn exp_in_place(x: &mut [f32], m: f32, scale: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = fast_exp((*v - m) * scale);
            *a += *v;
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for v in chunks.into_remainder() {
        *v = fast_exp((*v - m) * scale);
        s += *v;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Softmax rows

/// Replaces the row `x` by `softmax(scale * x)`.
#[inline(always)]
pub(crate) fn softmax_in_place(x: &mut [f32], scale: f32) {
    let m = lane_max(x);
    let inv = 1.0 / exp_in_place(x, m, scale);
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Softmax backward of one row: replaces the output gradient `dy` by the input gradient
/// `scale * y * (dy - sum(y * dy))`, where `y` is the row [`softmax_in_place`] produced.
#[inline(always)]
pub(crate) fn softmax_bwd_in_place(y: &[f32], dy: &mut [f32], scale: f32) {
    let dot = lane_sum(y.len(), |i| y[i] * dy[i]);
    for (d, &yv) in dy.iter_mut().zip(y) {
        *d = scale * yv * (*d - dot);
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `1 / sqrt(mean(row^2) + eps)`.
pub(crate) fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss = lane_sum(row.len(), |i| row[i] * row[i]);
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

/// `y = x * inv_rms(x) * w` row by row (`x`, `y`: `[N, D]`, `w`: `[D]`); stores each row's
/// `inv_rms` in `r` (`[N]`).
pub(crate) fn rms_norm_fwd(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], r: &mut [f32]) {
    let d = w.len().max(1);
    y.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .zip(r.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|((yc, xc), rc)| {
            for ((yr, xr), rv) in yc.chunks_mut(d).zip(xc.chunks(d)).zip(rc.iter_mut()) {
                let inv = inv_rms(xr, eps);
                *rv = inv;
                for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                    *o = v * inv * g;
                }
            }
        });
}

/// RMSNorm backward given the forward's `r`: `dx += d(norm)/dx . dy`,
/// `dw = sum over rows of dy * x * inv_rms` (block partials summed in block order).
pub(crate) fn rms_norm_bwd(
    x: &[f32],
    w: &[f32],
    r: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let d = w.len();
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(d * ROWS_PER_TASK)
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .zip(dy.par_chunks(d * ROWS_PER_TASK))
        .zip(r.par_chunks(ROWS_PER_TASK))
        .map(|(((dxc, xc), dyc), rc)| {
            let mut pw = vec![0f32; d];
            for (((dxr, xr), dyr), &inv) in dxc
                .chunks_mut(d)
                .zip(xc.chunks(d))
                .zip(dyc.chunks(d))
                .zip(rc)
            {
                let (dyr, w, xr) = (&dyr[..d], &w[..d], &xr[..d]);
                let dot = lane_sum(d, |i| dyr[i] * w[i] * xr[i]);
                let c = inv * inv * inv * dot / d as f32;
                for ((((o, &g), &wv), &xv), p) in
                    dxr.iter_mut().zip(dyr).zip(w).zip(xr).zip(pw.iter_mut())
                {
                    *o += inv * g * wv - xv * c;
                    *p += g * xv * inv;
                }
            }
            pw
        })
        .collect();
    dw.fill(0.0);
    for pw in &partials {
        for (a, b) in dw.iter_mut().zip(pw) {
            *a += b;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU rows

/// `a = silu(g) * u` row by row, `gu: [N, 2f]` holding `g` then `u` in each row, `a: [N, f]`.
pub(crate) fn swiglu_rows_fwd(gu: &[f32], a: &mut [f32], f: usize) {
    a.par_chunks_mut(f * ROWS_PER_TASK)
        .zip(gu.par_chunks(2 * f * ROWS_PER_TASK))
        .for_each(|(ac, guc)| {
            for (ar, gur) in ac.chunks_mut(f).zip(guc.chunks(2 * f)) {
                let (g, u) = gur.split_at(f);
                for ((o, &x), &y) in ar.iter_mut().zip(g).zip(u) {
                    *o = swiglu(x, y);
                }
            }
        });
}

/// Gradients of [`swiglu_rows_fwd`]: `dgu: [N, 2f]` (`dg` then `du` per row) from `da: [N, f]`.
pub(crate) fn swiglu_rows_bwd(gu: &[f32], da: &[f32], dgu: &mut [f32], f: usize) {
    dgu.par_chunks_mut(2 * f * ROWS_PER_TASK)
        .zip(gu.par_chunks(2 * f * ROWS_PER_TASK))
        .zip(da.par_chunks(f * ROWS_PER_TASK))
        .for_each(|((dc, guc), dac)| {
            for ((dr, gur), dar) in dc
                .chunks_mut(2 * f)
                .zip(guc.chunks(2 * f))
                .zip(dac.chunks(f))
            {
                let (g, u) = gur.split_at(f);
                let (dg, du) = dr.split_at_mut(f);
                for ((((a, b), &gv), &uv), &d) in
                    dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dar)
                {
                    (*a, *b) = swiglu_grad(gv, uv, d);
                }
            }
        });
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding and heads

/// Rotary tables for positions `0..len`: `cos[p * half + i]`, `sin[p * half + i]` with
/// frequency `theta^(-2i / head_dim)`, the half-split layout of HF LLaMA (frequency `i` drives
/// dims `i` and `i + half`).
#[derive(Clone)]
pub(crate) struct RopeTables {
    /// Half the head dimension.
    pub(crate) half: usize,
    /// Positions covered.
    pub(crate) len: usize,
    /// `cos(p * f_i)`, `[len, half]` row-major.
    pub(crate) cos: Arc<Vec<f32>>,
    /// `sin(p * f_i)`, `[len, half]` row-major.
    pub(crate) sin: Arc<Vec<f32>>,
}

impl RopeTables {
    /// Tables for `len` positions, head dimension `head_dim`, base `theta`.
    pub(crate) fn new(len: usize, head_dim: usize, theta: f64) -> RopeTables {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in 0..len {
            for f in &inv_freq {
                let a = pos as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        RopeTables {
            half,
            len,
            cos: Arc::new(cos),
            sin: Arc::new(sin),
        }
    }
}

/// Where a `[B*T, H*hd]` block of rows lies in a wider row-major buffer: rows of `ld` elements,
/// the block starting at column `off`.
#[derive(Clone, Copy)]
pub(crate) struct Cols {
    /// Elements per row of the buffer.
    pub(crate) ld: usize,
    /// Column at which the block starts.
    pub(crate) off: usize,
}

/// Rows (batch-major, see [`Cols`]) to heads `[B, H, T, hd]`, applying the rotary embedding
/// `x * cos + rotate_half(x) * sin` when `rope` is given.
pub(crate) fn split_heads(
    x: &[f32],
    at: Cols,
    y: &mut [f32],
    (t, h, hd): (usize, usize, usize),
    rope: Option<&RopeTables>,
) {
    let half = hd / 2;
    y.par_chunks_mut(t * hd).enumerate().for_each(|(bh, yc)| {
        let (bi, hi) = (bh / h, bh % h);
        for (p, yr) in yc.chunks_mut(hd).enumerate() {
            let src = (bi * t + p) * at.ld + at.off + hi * hd;
            let xr = &x[src..src + hd];
            match rope {
                None => yr.copy_from_slice(xr),
                Some(r) => {
                    let cos = &r.cos[p * half..(p + 1) * half];
                    let sin = &r.sin[p * half..(p + 1) * half];
                    let (x1, x2) = xr.split_at(half);
                    let (y1, y2) = yr.split_at_mut(half);
                    for i in 0..half {
                        y1[i] = x1[i] * cos[i] - x2[i] * sin[i];
                        y2[i] = x2[i] * cos[i] + x1[i] * sin[i];
                    }
                }
            }
        }
    });
}

/// Heads `[B, H, T, hd]` back to rows (see [`Cols`]; other columns untouched), applying the
/// transposed rotation `dx1 = g1 cos + g2 sin`, `dx2 = g2 cos - g1 sin` of `rope` if given (the
/// gradient of [`split_heads`]; without rope, the plain merge of heads).
pub(crate) fn merge_heads(
    g: &[f32],
    x: &mut [f32],
    at: Cols,
    (t, h, hd): (usize, usize, usize),
    rope: Option<&RopeTables>,
) {
    let half = hd / 2;
    let dm = h * hd;
    x.par_chunks_mut(at.ld * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(c, xc)| {
            for (k, xr) in xc.chunks_mut(at.ld).enumerate() {
                let row = c * ROWS_PER_TASK + k;
                let (bi, p) = (row / t, row % t);
                let xr = &mut xr[at.off..at.off + dm];
                for (hi, dh) in xr.chunks_mut(hd).enumerate() {
                    let src = ((bi * h + hi) * t + p) * hd;
                    let gr = &g[src..src + hd];
                    match rope {
                        None => dh.copy_from_slice(gr),
                        Some(r) => {
                            let cos = &r.cos[p * half..(p + 1) * half];
                            let sin = &r.sin[p * half..(p + 1) * half];
                            let (g1, g2) = gr.split_at(half);
                            let (d1, d2) = dh.split_at_mut(half);
                            for i in 0..half {
                                d1[i] = g1[i] * cos[i] + g2[i] * sin[i];
                                d2[i] = g2[i] * cos[i] - g1[i] * sin[i];
                            }
                        }
                    }
                }
            }
        });
}

// ---------------------------------------------------------------------------------------------
// AdamW

/// One in-place AdamW step on a CPU parameter `p` given its gradient `g` and moments `m`, `v`
/// (all the same length), at 1-based step `step`.
///
/// Same formula as `candle_nn::AdamW`: `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
/// `p = p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.
pub(crate) fn adamw_step(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    params: &candle_nn::ParamsAdamW,
    step: i32,
) {
    let (b1, b2) = (params.beta1 as f32, params.beta2 as f32);
    let c1 = 1.0 / (1.0 - b1.powi(step));
    let c2 = 1.0 / (1.0 - b2.powi(step));
    let (lr, eps) = (params.lr as f32, params.eps as f32);
    let decay = 1.0 - lr * params.weight_decay as f32;
    p.par_chunks_mut(ELEMS_PER_TASK)
        .zip(m.par_chunks_mut(ELEMS_PER_TASK))
        .zip(v.par_chunks_mut(ELEMS_PER_TASK))
        .zip(g.par_chunks(ELEMS_PER_TASK))
        .for_each(|(((pc, mc), vc), gc)| {
            for (((pv, mv), vv), &gv) in pc.iter_mut().zip(mc).zip(vc).zip(gc) {
                *mv = b1 * *mv + (1.0 - b1) * gv;
                *vv = b2 * *vv + (1.0 - b2) * gv * gv;
                let step = lr * (*mv * c1) / ((*vv * c2).sqrt() + eps);
                *pv = *pv * decay - step;
            }
        });
}
