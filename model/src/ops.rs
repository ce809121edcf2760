//! Fused CPU kernels as candle custom ops with hand-written backward passes, used by the CPU
//! forward pass of `model.rs` (evaluation) and checked against candle autograd in the tests.
//!
//! candle-nn's own fused kernels have no backward pass (they silently drop gradients), and the
//! same computations written with basic candle ops allocate a tensor per elementary op, forward
//! and backward. These kernels do each computation in one pass, in safe Rust, parallel over
//! rows with rayon. Every output element is computed by exactly one task in a fixed order, and
//! cross-row reductions (the RMSNorm weight gradient) sum fixed-size row blocks in block order,
//! so results are bit-identical from run to run whatever the thread count.
//!
//! This file only adapts candle storage to slices; the math shared with the hand-written
//! training step (`cpu_step.rs`) lives in the leaf module [`crate::kernels`].
//!
//! Each op is a candle `CustomOp` whose `bwd` calls a second, gradient-free op; candle's
//! autograd chains them like its built-in ops. They only have CPU implementations: on other
//! devices the model uses the composed reference path in `model.rs` (which the tests compare
//! against these kernels, value and gradient).

use crate::kernels::{self, fast_exp, inv_rms, Cols, RopeTables, ELEMS_PER_TASK, ROWS_PER_TASK};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The contiguous f32 elements of a CPU tensor argument.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
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
                    // A serial sum, not `kernels::softmax_in_place`'s lanes: evaluation losses
                    // keep the bits they have always had.
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
        let mut y = vec![0f32; x.len()];
        let mut r = vec![0f32; x.len().div_ceil(w.len().max(1))];
        kernels::rms_norm_fwd(x, w, self.eps, &mut y, &mut r);
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
                    *o = kernels::swiglu(a, b);
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
                    (*a, *b) = kernels::swiglu_grad(gv, uv, d);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }
}

// ---------------------------------------------------------------------------------------------
// Split heads (+ rotary embedding)

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
        let at = Cols {
            ld: self.h * self.hd,
            off: 0,
        };
        let dims = (self.t, self.h, self.hd);
        kernels::split_heads(x, at, &mut y, dims, self.rope.as_ref());
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
    let at = Cols {
        ld: op.h * op.hd,
        off: 0,
    };
    kernels::merge_heads(g, &mut dx, at, (op.t, op.h, op.hd), op.rope.as_ref());
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
