//! Fused CPU kernels with hand-written backward passes, used by the training step on the CPU.
//!
//! candle-nn's own fused kernels have no backward pass (they silently drop gradients), and the
//! same computations written with basic candle ops allocate a tensor per elementary op, forward
//! and backward. These kernels do each computation in one pass, in safe Rust, parallel over
//! rows with rayon. Every output element is computed by exactly one task in a fixed order, and
//! cross-row reductions (the RMSNorm weight gradient) sum fixed-size row blocks in block order,
//! so results are bit-identical from run to run whatever the thread count.
//!
//! Each op is a candle `CustomOp` whose `bwd` calls a second, gradient-free op; candle's
//! autograd chains them like its built-in ops. They only have CPU implementations: on other
//! devices the model uses the composed reference path in `model.rs` (which the tests compare
//! against these kernels, value and gradient).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Rows handled per rayon task in row-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// The contiguous f32 elements of a CPU tensor argument.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

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

/// `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

// ---------------------------------------------------------------------------------------------
// Causal softmax

/// `softmax(scale * x + causal_mask)` over the last dimension of `x: [..., T, T]` (row `i` of
/// each `T x T` matrix keeps columns `0..=i`; the others become exactly 0).
pub(crate) fn causal_softmax(x: &Tensor, scale: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op1(CausalSoftmax { scale })
}

struct CausalSoftmax {
    scale: f32,
}

/// Row `r` of a stack of `T x T` matrices attends to `r % T + 1` columns.
fn causal_len(row: usize, t: usize) -> usize {
    row % t + 1
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "apiary-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let t = l.dims().last().copied().unwrap_or(1).max(1);
        let scale = self.scale;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(t * ROWS_PER_TASK)
            .zip(x.par_chunks(t * ROWS_PER_TASK))
            .enumerate()
            .for_each(|(c, (yc, xc))| {
                for (k, (yr, xr)) in yc.chunks_mut(t).zip(xc.chunks(t)).enumerate() {
                    let n = causal_len(c * ROWS_PER_TASK + k, t);
                    let (xr, yr) = (&xr[..n], &mut yr[..n]);
                    let m = xr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let mut sum = 0f32;
                    for (yv, &xv) in yr.iter_mut().zip(xr) {
                        let e = fast_exp((xv - m) * scale);
                        *yv = e;
                        sum += e;
                    }
                    let inv = 1.0 / sum;
                    yr.iter_mut().for_each(|v| *v *= inv);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(
            &grad,
            &CausalSoftmaxBwd { scale: self.scale },
        )?))
    }
}

/// `dx = scale * y * (dy - sum(y * dy))` on the causal part, 0 elsewhere.
struct CausalSoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "apiary-causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let dy = slice(s2, l2, self.name())?;
        let t = l1.dims().last().copied().unwrap_or(1).max(1);
        let scale = self.scale;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(t * ROWS_PER_TASK)
            .zip(y.par_chunks(t * ROWS_PER_TASK))
            .zip(dy.par_chunks(t * ROWS_PER_TASK))
            .enumerate()
            .for_each(|(c, ((dxc, yc), dyc))| {
                for (k, ((dxr, yr), dyr)) in dxc
                    .chunks_mut(t)
                    .zip(yc.chunks(t))
                    .zip(dyc.chunks(t))
                    .enumerate()
                {
                    let n = causal_len(c * ROWS_PER_TASK + k, t);
                    let (yr, dyr) = (&yr[..n], &dyr[..n]);
                    let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
                    for ((d, &yv), &g) in dxr[..n].iter_mut().zip(yr).zip(dyr) {
                        *d = scale * yv * (g - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `x / sqrt(mean(x^2) + eps) * w` over the last dimension; `x: [N, D]`, `w: [D]`.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

use crate::cpu_step::inv_rms;

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "apiary-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let d = w.len().max(1);
        let eps = self.eps;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let r = inv_rms(xr, eps);
                    for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                        *o = v * r * g;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, d) = x.dims2()?;
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBwd { eps: self.eps })?;
        let dx = both.narrow(0, 0, n)?;
        let dw = both.narrow(0, n, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Gradients of [`RmsNorm`]: output `[N + 1, D]`, rows `0..N` are `dx`, row `N` is `dw`.
struct RmsNormBwd {
    eps: f32,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "apiary-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let dy = slice(s3, l3, self.name())?;
        let d = w.len().max(1);
        let n = x.len() / d;
        let eps = self.eps;
        let mut out = vec![0f32; (n + 1) * d];
        let (dx, dw) = out.split_at_mut(n * d);
        // Per block of rows: dx rows, and the block's partial dw (summed below in block order).
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .zip(dy.par_chunks(d * ROWS_PER_TASK))
            .map(|((dxc, xc), dyc)| {
                let mut pw = vec![0f32; d];
                for ((dxr, xr), dyr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(dyc.chunks(d)) {
                    let r = inv_rms(xr, eps);
                    // dot = sum(dy * w * x)
                    let dot: f32 = dyr
                        .iter()
                        .zip(w)
                        .zip(xr)
                        .map(|((g, wv), xv)| g * wv * xv)
                        .sum();
                    let c = r * r * r * dot / d as f32;
                    for ((((o, &g), &wv), &xv), p) in
                        dxr.iter_mut().zip(dyr).zip(w).zip(xr).zip(pw.iter_mut())
                    {
                        *o = r * g * wv - xv * c;
                        *p += g * xv * r;
                    }
                }
                pw
            })
            .collect();
        for pw in &partials {
            for (a, b) in dw.iter_mut().zip(pw) {
                *a += b;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n + 1, d))))
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// `silu(g) * u`, element-wise (same shapes).
pub(crate) fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)
}

struct SwiGlu;

/// Elements per rayon task in element-wise kernels.
const ELEMS_PER_TASK: usize = 16 * 1024;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "apiary-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, self.name())?;
        let u = slice(s2, l2, self.name())?;
        if g.len() != u.len() {
            candle_core::bail!("{}: shape mismatch", self.name());
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(g.par_chunks(ELEMS_PER_TASK))
            .zip(u.par_chunks(ELEMS_PER_TASK))
            .for_each(|((yc, gc), uc)| {
                for ((o, &a), &b) in yc.iter_mut().zip(gc).zip(uc) {
                    *o = a * sigmoid(a) * b;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &grad.contiguous()?, &SwiGluBwd)?;
        Ok((
            Some(both.get(0)?.reshape(g.shape())?),
            Some(both.get(1)?.reshape(u.shape())?),
        ))
    }
}

/// Gradients of [`SwiGlu`]: output `[2, len]` holding `dg` then `du`.
struct SwiGluBwd;

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "apiary-swiglu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, self.name())?;
        let u = slice(s2, l2, self.name())?;
        let dy = slice(s3, l3, self.name())?;
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(ELEMS_PER_TASK)
            .zip(du.par_chunks_mut(ELEMS_PER_TASK))
            .zip(g.par_chunks(ELEMS_PER_TASK))
            .zip(u.par_chunks(ELEMS_PER_TASK))
            .zip(dy.par_chunks(ELEMS_PER_TASK))
            .for_each(|((((dgc, duc), gc), uc), dyc)| {
                for ((((a, b), &gv), &uv), &d) in
                    dgc.iter_mut().zip(duc.iter_mut()).zip(gc).zip(uc).zip(dyc)
                {
                    let s = sigmoid(gv);
                    *a = d * uv * s * (1.0 + gv * (1.0 - s));
                    *b = d * gv * s;
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }
}

// ---------------------------------------------------------------------------------------------
// Split heads (+ rotary embedding)

/// Rotary tables for positions `0..t`: `cos[p * half + i]`, `sin[p * half + i]` with frequency
/// `theta^(-2i / head_dim)`, the half-split layout of HF LLaMA (frequency `i` drives dims `i`
/// and `i + half`).
#[derive(Clone)]
pub(crate) struct RopeTables {
    /// Half the head dimension.
    pub half: usize,
    /// Positions covered.
    pub len: usize,
    /// `cos(p * f_i)`, `[len, half]` row-major.
    pub cos: Arc<Vec<f32>>,
    /// `sin(p * f_i)`, `[len, half]` row-major.
    pub sin: Arc<Vec<f32>>,
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

/// `x: [B * T, H * hd]` (rows batch-major) to `[B, H, T, hd]`, applying the rotary embedding
/// `x * cos + rotate_half(x) * sin` when `rope` is given.
pub(crate) fn split_heads(
    x: &Tensor,
    b: usize,
    t: usize,
    h: usize,
    rope: Option<&RopeTables>,
) -> Result<Tensor> {
    let (_, dm) = x.dims2()?;
    let op = SplitHeads {
        b,
        t,
        h,
        hd: dm / h.max(1),
        rope: rope.cloned(),
    };
    if let Some(r) = &op.rope {
        if r.len < t || r.half * 2 != op.hd {
            candle_core::bail!(
                "rotary tables do not cover {t} positions of head dim {}",
                op.hd
            );
        }
    }
    x.contiguous()?.apply_op1(op)
}

#[derive(Clone)]
struct SplitHeads {
    b: usize,
    t: usize,
    h: usize,
    hd: usize,
    rope: Option<RopeTables>,
}

impl SplitHeads {
    fn check(&self, len: usize) -> Result<()> {
        if len != self.b * self.t * self.h * self.hd {
            candle_core::bail!("split heads: {len} elements, expected B*T*H*hd");
        }
        Ok(())
    }
}

impl CustomOp1 for SplitHeads {
    fn name(&self) -> &'static str {
        "apiary-split-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        self.check(x.len())?;
        let mut y = vec![0f32; x.len()];
        let at = crate::cpu_step::Cols {
            ld: self.h * self.hd,
            off: 0,
        };
        let dims = (self.t, self.h, self.hd);
        crate::cpu_step::split_heads(x, at, &mut y, dims, self.rope.as_ref());
        Ok((
            CpuStorage::F32(y),
            Shape::from((self.b, self.h, self.t, self.hd)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&SplitHeadsBwd(self.clone()))?,
        ))
    }
}

/// `[B, H, T, hd]` back to `[B * T, H * hd]`, undoing the rotation of `op.rope` with the
/// transposed rotation `dx1 = g1 cos + g2 sin`, `dx2 = g2 cos - g1 sin` (the gradient of
/// [`SplitHeads`]; without rope, the plain merge of heads).
fn merge_impl(op: &SplitHeads, g: &[f32]) -> Result<Vec<f32>> {
    op.check(g.len())?;
    let mut dx = vec![0f32; g.len()];
    let at = crate::cpu_step::Cols {
        ld: op.h * op.hd,
        off: 0,
    };
    crate::cpu_step::merge_heads(g, &mut dx, at, (op.t, op.h, op.hd), op.rope.as_ref());
    Ok(dx)
}

/// Gradient of [`SplitHeads`] (see [`merge_impl`]).
struct SplitHeadsBwd(SplitHeads);

impl CustomOp1 for SplitHeadsBwd {
    fn name(&self) -> &'static str {
        "apiary-split-heads-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice(s, l, self.name())?;
        let dx = merge_impl(&self.0, g)?;
        Ok((
            CpuStorage::F32(dx),
            Shape::from((self.0.b * self.0.t, self.0.h * self.0.hd)),
        ))
    }
}

/// `y: [B, H, T, hd]` to `[B * T, H * hd]` (attention output back to rows).
pub(crate) fn merge_heads(y: &Tensor) -> Result<Tensor> {
    let (b, h, t, hd) = y.dims4()?;
    y.contiguous()?.apply_op1(MergeHeads(SplitHeads {
        b,
        t,
        h,
        hd,
        rope: None,
    }))
}

struct MergeHeads(SplitHeads);

impl CustomOp1 for MergeHeads {
    fn name(&self) -> &'static str {
        "apiary-merge-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        SplitHeadsBwd(self.0.clone()).cpu_fwd(s, l)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&self.0)?))
    }
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
