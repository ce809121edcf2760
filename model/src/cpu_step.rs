//! # The CPU training step, forward and backward written out
//!
//! candle's autograd is general but costly on the CPU: every gradient it propagates is first
//! materialised as `zeros_like` and then summed into with `add` (two extra passes and an
//! allocation per graph node), every matmul allocates and zero-fills its output, and batched
//! attention matmuls run one head at a time with thread-level parallelism inside each small
//! matmul. For a fixed architecture none of that is needed. [`CpuStep`] runs the LLaMA
//! forward pass and its backward pass by hand over plain `f32` buffers:
//!
//! - **Buffers are allocated once** per batch shape and reused every step (activations saved for
//!   the backward pass, gradients, scratch), so a step neither allocates nor page-faults.
//! - **Matmuls go straight to `gemm`** (the kernel candle itself uses), reading transposed
//!   operands through strides instead of copies, and writing residual additions in place
//!   (`x += y W^T` is one gemm with `read_dst`).
//! - **Attention is head-parallel**: one rayon task per (page, head) runs its own single-threaded
//!   gemms, and only the causal (lower-triangular) blocks of `Q K^T` and `P V` are computed.
//! - The element-wise parts (RMSNorm, rotary, causal softmax, SwiGLU, cross-entropy) are fused
//!   loops, parallel over rows.
//!
//! Results are deterministic: every output element is produced by one task in a fixed order and
//! the cross-row reductions (norm-weight gradients, the loss) are summed in a fixed block order,
//! so a step is bit-identical from run to run. The tests check loss and every gradient against
//! candle's autograd on the composed reference path.

use crate::error::{ModelError, Result};
use crate::ops::RopeTables;
use apiary_config::ModelConfig;
use rayon::prelude::*;

/// Rows per rayon task in row-wise kernels.
const ROWS_PER_TASK: usize = 16;
/// Rows of a causal attention block: `Q K^T` and `P V` are computed per block of this many
/// query rows, against only the keys at or before the block's last row.
const ATTN_BLOCK: usize = 64;

// ---------------------------------------------------------------------------------------------
// gemm

/// How a matrix lies in its slice: element `(i, j)` is at `i * rs + j * cs`.
#[derive(Clone, Copy, Debug)]
struct View {
    rs: usize,
    cs: usize,
}

/// A row-major matrix with `ld` elements per row.
const fn rows(ld: usize) -> View {
    View { rs: ld, cs: 1 }
}

/// The transpose of a row-major matrix with `ld` elements per row.
const fn cols(ld: usize) -> View {
    View { rs: 1, cs: ld }
}

/// Whether a `r x c` matrix laid out as `v` stays inside `len` elements.
fn fits(len: usize, r: usize, c: usize, v: View) -> bool {
    r == 0 || c == 0 || (r - 1) * v.rs + (c - 1) * v.cs < len
}

/// `dst (m x n) = [dst +] a (m x k) @ b (k x n)`, with `threaded` spreading the work over the
/// rayon pool (otherwise it runs on the calling thread, for use inside a parallel loop).
///
/// Panics when a view does not fit its slice or `dst` is not row-major with rows at least `n`
/// long (both programming errors: every call site derives them from the same shapes).
#[allow(clippy::too_many_arguments)]
#[allow(unsafe_code)]
fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dv: View,
    accumulate: bool,
    a: &[f32],
    av: View,
    b: &[f32],
    bv: View,
    threaded: bool,
) {
    assert!(
        dv.cs == 1 && dv.rs >= n && fits(dst.len(), m, n, dv),
        "gemm: destination {m}x{n} does not fit"
    );
    assert!(fits(a.len(), m, k, av), "gemm: lhs {m}x{k} does not fit");
    assert!(fits(b.len(), k, n, bv), "gemm: rhs {k}x{n} does not fit");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dv.rs..i * dv.rs + n].fill(0.0);
            }
        }
        return;
    }
    let par = if threaded && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three views were checked to lie inside their slices (every element (i, j) of
    // an r x c view is at most (r-1)*rs + (c-1)*cs < len), `dst` is row-major with rows of at
    // least `n` elements so distinct elements never alias, and `dst` is a unique borrow that
    // cannot overlap the shared borrows `a` and `b`. gemm computes
    // dst = alpha * dst + beta * a b, reading dst only when `read_dst` is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dv.cs as isize,
            dv.rs as isize,
            accumulate,
            a.as_ptr(),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr(),
            bv.cs as isize,
            bv.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Element-wise kernels

/// `e^x` (see `ops::fast_exp`).
#[inline(always)]
fn exp(x: f32) -> f32 {
    crate::ops::fast_exp(x)
}

/// `1 / sqrt(mean(row^2) + eps)`.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

/// `y = x * inv_rms(x) * w` row by row; stores each row's `inv_rms` in `r`.
fn rms_norm_fwd(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], r: &mut [f32]) {
    let d = w.len();
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

/// RMSNorm backward: `dx += d(norm)/dx . dy`, `dw = sum over rows of dy * x * inv_rms`
/// (block partials summed in block order).
fn rms_norm_bwd(x: &[f32], w: &[f32], r: &[f32], dy: &[f32], dx: &mut [f32], dw: &mut [f32]) {
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
                let dot: f32 = dyr
                    .iter()
                    .zip(w)
                    .zip(xr)
                    .map(|((g, wv), xv)| g * wv * xv)
                    .sum();
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

/// Rows `[B*T, H*hd]` (batch-major) to heads `[B, H, T, hd]`, rotating with `rope` if given.
fn split_heads(x: &[f32], y: &mut [f32], t: usize, h: usize, hd: usize, rope: Option<&RopeTables>) {
    let dm = h * hd;
    let half = hd / 2;
    y.par_chunks_mut(t * hd).enumerate().for_each(|(bh, yc)| {
        let (bi, hi) = (bh / h, bh % h);
        for (p, yr) in yc.chunks_mut(hd).enumerate() {
            let src = (bi * t + p) * dm + hi * hd;
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

/// Heads `[B, H, T, hd]` back to rows `[B*T, H*hd]`, applying the transposed rotation of
/// `rope` if given (the gradient of [`split_heads`]).
fn merge_heads(g: &[f32], x: &mut [f32], t: usize, h: usize, hd: usize, rope: Option<&RopeTables>) {
    let dm = h * hd;
    let half = hd / 2;
    x.par_chunks_mut(dm * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(c, xc)| {
            for (k, xr) in xc.chunks_mut(dm).enumerate() {
                let row = c * ROWS_PER_TASK + k;
                let (bi, p) = (row / t, row % t);
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

/// Elements per rayon task in element-wise kernels.
const ELEMS_PER_TASK: usize = 16 * 1024;

/// `a = silu(g) * u`.
fn swiglu_fwd(g: &[f32], u: &[f32], a: &mut [f32]) {
    a.par_chunks_mut(ELEMS_PER_TASK)
        .zip(g.par_chunks(ELEMS_PER_TASK))
        .zip(u.par_chunks(ELEMS_PER_TASK))
        .for_each(|((ac, gc), uc)| {
            for ((o, &x), &y) in ac.iter_mut().zip(gc).zip(uc) {
                *o = x / (1.0 + exp(-x)) * y;
            }
        });
}

/// Gradients of [`swiglu_fwd`]: `dg`, `du` from `da`.
fn swiglu_bwd(g: &[f32], u: &[f32], da: &[f32], dg: &mut [f32], du: &mut [f32]) {
    dg.par_chunks_mut(ELEMS_PER_TASK)
        .zip(du.par_chunks_mut(ELEMS_PER_TASK))
        .zip(g.par_chunks(ELEMS_PER_TASK))
        .zip(u.par_chunks(ELEMS_PER_TASK))
        .zip(da.par_chunks(ELEMS_PER_TASK))
        .for_each(|((((dgc, duc), gc), uc), dac)| {
            for ((((a, b), &gv), &uv), &d) in
                dgc.iter_mut().zip(duc.iter_mut()).zip(gc).zip(uc).zip(dac)
            {
                let s = 1.0 / (1.0 + exp(-gv));
                *a = d * uv * s * (1.0 + gv * (1.0 - s));
                *b = d * gv * s;
            }
        });
}

// ---------------------------------------------------------------------------------------------
// Attention

/// One (page, head)'s rotated queries, rotated keys and values, `[T, hd]` each.
#[derive(Clone, Copy)]
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

/// Sequence length, head dimension and score scale of an attention call.
#[derive(Clone, Copy)]
struct AttnDims {
    t: usize,
    hd: usize,
    scale: f32,
}

/// Causal attention for one (page, head): `P = softmax(scale Q K^T + mask)` (`P: [T, T]`, the
/// masked upper triangle set to 0) and `O = P V` (`[T, hd]`).
fn attention_fwd(head: Head<'_>, p: &mut [f32], o: &mut [f32], dims: AttnDims) {
    let Head { q, k, v, .. } = head;
    let AttnDims { t, hd, scale } = dims;
    let mut r0 = 0;
    while r0 < t {
        let r1 = (r0 + ATTN_BLOCK).min(t);
        // Scores of rows r0..r1 against keys 0..r1.
        gemm(
            (r1 - r0, r1, hd),
            &mut p[r0 * t..],
            rows(t),
            false,
            &q[r0 * hd..],
            rows(hd),
            k,
            cols(hd),
            false,
        );
        for row in r0..r1 {
            // Entries past r1 are never read (every later use stops at the block's r1).
            let pr = &mut p[row * t..row * t + r1];
            let (live, masked) = pr.split_at_mut(row + 1);
            let m = live.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut sum = 0f32;
            for x in live.iter_mut() {
                let e = exp((*x - m) * scale);
                *x = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            live.iter_mut().for_each(|x| *x *= inv);
            masked.fill(0.0);
        }
        gemm(
            (r1 - r0, hd, r1),
            &mut o[r0 * hd..],
            rows(hd),
            false,
            &p[r0 * t..],
            rows(t),
            v,
            rows(hd),
            false,
        );
        r0 = r1;
    }
}

/// Backward of [`attention_fwd`] for one (page, head): from `dO`, the gradients `dQ`, `dK`,
/// `dV` (each `[T, hd]`), using `dp` (`[T, T]`) as scratch.
fn attention_bwd(
    head: Head<'_>,
    p: &[f32],
    d_o: &[f32],
    dp: &mut [f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    dims: AttnDims,
) {
    let Head { q, k, v } = head;
    let AttnDims { t, hd, scale } = dims;
    // dV = P^T dO: key row j gets contributions from query rows >= j. Over blocks of query
    // rows, block r0..r1 touches keys 0..r1.
    let mut r0 = 0;
    while r0 < t {
        let r1 = (r0 + ATTN_BLOCK).min(t);
        // dP rows r0..r1 (keys 0..r1) = dO V^T.
        gemm(
            (r1 - r0, r1, hd),
            &mut dp[r0 * t..],
            rows(t),
            false,
            &d_o[r0 * hd..],
            rows(hd),
            v,
            cols(hd),
            false,
        );
        // dS = scale * P * (dP - rowsum(P * dP)), live part only.
        for row in r0..r1 {
            let pr = &p[row * t..row * t + row + 1];
            let dr = &mut dp[row * t..row * t + row + 1];
            let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
            for (d, &pv) in dr.iter_mut().zip(pr) {
                *d = scale * pv * (*d - dot);
            }
            // Masked entries of this block are read by the dQ/dK gemms below: zero them.
            dp[row * t + row + 1..row * t + r1].fill(0.0);
        }
        // dQ rows r0..r1 = dS[r0..r1, 0..r1] K[0..r1].
        gemm(
            (r1 - r0, hd, r1),
            &mut dq[r0 * hd..],
            rows(hd),
            false,
            &dp[r0 * t..],
            rows(t),
            k,
            rows(hd),
            false,
        );
        // dK[0..r1] (+)= dS[r0..r1, 0..r1]^T Q[r0..r1]; dV[0..r1] (+)= P[r0..r1, 0..r1]^T dO.
        // Keys r0..r1 are first touched by this block; earlier keys accumulate.
        for (acc, len) in [(true, r0), (false, r1 - r0)] {
            if len == 0 {
                continue;
            }
            let c0 = if acc { 0 } else { r0 };
            gemm(
                (len, hd, r1 - r0),
                &mut dk[c0 * hd..],
                rows(hd),
                acc,
                &dp[r0 * t + c0..],
                cols(t),
                &q[r0 * hd..],
                rows(hd),
                false,
            );
            gemm(
                (len, hd, r1 - r0),
                &mut dv[c0 * hd..],
                rows(hd),
                acc,
                &p[r0 * t + c0..],
                cols(t),
                &d_o[r0 * hd..],
                rows(hd),
                false,
            );
        }
        r0 = r1;
    }
}

// ---------------------------------------------------------------------------------------------
// The step

/// Indices of one layer's tensors in the name-sorted parameter list.
#[derive(Clone, Copy, Debug)]
struct LayerIdx {
    attn_norm: usize,
    q: usize,
    k: usize,
    v: usize,
    o: usize,
    mlp_norm: usize,
    gate: usize,
    up: usize,
    down: usize,
}

/// Activations of one layer saved for the backward pass.
struct LayerActs {
    /// inv-RMS of the attention norm's input rows.
    r1: Vec<f32>,
    /// Attention-norm output `[N, d]`.
    h1: Vec<f32>,
    /// Rotated queries, rotated keys, values, `[B, H, T, hd]` each.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities `[B, H, T, T]` (upper triangle 0).
    p: Vec<f32>,
    /// Attention output merged back to rows `[N, d]`.
    y: Vec<f32>,
    /// inv-RMS of the MLP norm's input rows.
    r2: Vec<f32>,
    /// MLP-norm output `[N, d]`.
    h2: Vec<f32>,
    /// Gate and up projections `[N, f]`.
    g: Vec<f32>,
    u: Vec<f32>,
    /// `silu(g) * u` `[N, f]`.
    a: Vec<f32>,
}

/// Every buffer of a step for one batch shape.
struct Buffers {
    b: usize,
    t: usize,
    /// The residual stream: `xs[0]` the embeddings, `xs[2l + 1]` after layer `l`'s attention,
    /// `xs[2l + 2]` after its MLP; each `[N, d]`.
    xs: Vec<Vec<f32>>,
    layers: Vec<LayerActs>,
    /// Final norm: inv-RMS and output.
    rf: Vec<f32>,
    hf: Vec<f32>,
    /// Logits `[N, V]`, overwritten by their gradient.
    logits: Vec<f32>,
    // Scratch.
    rows_a: Vec<f32>,
    rows_b: Vec<f32>,
    rows_c: Vec<f32>,
    heads_a: Vec<f32>,
    heads_b: Vec<f32>,
    heads_c: Vec<f32>,
    heads_d: Vec<f32>,
    dp: Vec<f32>,
    ff_a: Vec<f32>,
    ff_b: Vec<f32>,
    ff_c: Vec<f32>,
    dx: Vec<f32>,
}

impl Buffers {
    fn new(cfg: &ModelConfig, b: usize, t: usize) -> Buffers {
        let n = b * t;
        let (d, f, h) = (cfg.d_model, cfg.d_ff, cfg.n_heads);
        let z = |len: usize| vec![0f32; len];
        Buffers {
            b,
            t,
            xs: (0..2 * cfg.n_layers + 1).map(|_| z(n * d)).collect(),
            layers: (0..cfg.n_layers)
                .map(|_| LayerActs {
                    r1: z(n),
                    h1: z(n * d),
                    q: z(n * d),
                    k: z(n * d),
                    v: z(n * d),
                    p: z(b * h * t * t),
                    y: z(n * d),
                    r2: z(n),
                    h2: z(n * d),
                    g: z(n * f),
                    u: z(n * f),
                    a: z(n * f),
                })
                .collect(),
            rf: z(n),
            hf: z(n * d),
            logits: z(n * cfg.vocab_size),
            rows_a: z(n * d),
            rows_b: z(n * d),
            rows_c: z(n * d),
            heads_a: z(n * d),
            heads_b: z(n * d),
            heads_c: z(n * d),
            heads_d: z(n * d),
            dp: z(b * h * t * t),
            ff_a: z(n * f),
            ff_b: z(n * f),
            ff_c: z(n * f),
            dx: z(n * d),
        }
    }
}

/// The hand-written CPU forward and backward pass of one model configuration (see the module
/// documentation). Holds the buffers of the last batch shape it ran.
pub(crate) struct CpuStep {
    cfg: ModelConfig,
    embed: usize,
    norm: usize,
    lm_head: usize,
    layers: Vec<LayerIdx>,
    rope: RopeTables,
    bufs: Option<Buffers>,
}

impl CpuStep {
    /// A step for `cfg`, whose parameters come in the order of `names` (sorted).
    pub(crate) fn new(cfg: &ModelConfig, names: &[String]) -> Result<CpuStep> {
        let find = |name: String| -> Result<usize> {
            names
                .binary_search(&name)
                .map_err(|_| ModelError::MissingTensor(name))
        };
        if cfg.n_heads == 0
            || !cfg.d_model.is_multiple_of(cfg.n_heads)
            || !(cfg.d_model / cfg.n_heads).is_multiple_of(2)
        {
            return Err(ModelError::InvalidConfig(
                "d_model must split into an even head dimension per head".into(),
            ));
        }
        let layers = (0..cfg.n_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(LayerIdx {
                    attn_norm: find(format!("{p}.input_layernorm.weight"))?,
                    q: find(format!("{p}.self_attn.q_proj.weight"))?,
                    k: find(format!("{p}.self_attn.k_proj.weight"))?,
                    v: find(format!("{p}.self_attn.v_proj.weight"))?,
                    o: find(format!("{p}.self_attn.o_proj.weight"))?,
                    mlp_norm: find(format!("{p}.post_attention_layernorm.weight"))?,
                    gate: find(format!("{p}.mlp.gate_proj.weight"))?,
                    up: find(format!("{p}.mlp.up_proj.weight"))?,
                    down: find(format!("{p}.mlp.down_proj.weight"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuStep {
            cfg: cfg.clone(),
            embed: find("model.embed_tokens.weight".into())?,
            norm: find("model.norm.weight".into())?,
            lm_head: find("lm_head.weight".into())?,
            layers,
            rope: RopeTables::new(
                cfg.seq_len,
                cfg.d_model / cfg.n_heads,
                f64::from(cfg.rope_theta),
            ),
            bufs: None,
        })
    }

    /// The mean next-token loss of `tokens` (`b` pages of `l` tokens, row-major; inputs
    /// `[:, :l-1]`, targets `[:, 1:]`) under `params`, and, when `grads` is given, the gradient
    /// of that loss for every parameter (overwritten, same order and sizes as `params`).
    pub(crate) fn run(
        &mut self,
        params: &[Vec<f32>],
        tokens: &[u32],
        b: usize,
        l: usize,
        grads: Option<&mut [Vec<f32>]>,
    ) -> Result<f32> {
        let cfg = &self.cfg;
        if l < 2 || l > cfg.seq_len + 1 || tokens.len() != b * l || b == 0 {
            return Err(ModelError::Data(format!(
                "{b} pages of {l} tokens (between 2 and seq_len + 1 = {}) expected, got {} tokens",
                cfg.seq_len + 1,
                tokens.len()
            )));
        }
        if let Some(tok) = tokens.iter().find(|&&x| x as usize >= cfg.vocab_size) {
            return Err(ModelError::Data(format!(
                "token {tok} is outside the vocabulary (size {})",
                cfg.vocab_size
            )));
        }
        let t = l - 1;
        if self.bufs.as_ref().is_none_or(|x| x.b != b || x.t != t) {
            // Free the old shape's buffers before allocating the new ones.
            self.bufs = None;
            self.bufs = Some(Buffers::new(cfg, b, t));
        }
        let Some(bufs) = self.bufs.as_mut() else {
            return Err(ModelError::Data("step buffers missing".into()));
        };
        let loss = forward(
            cfg,
            &self.layers,
            (self.embed, self.norm, self.lm_head),
            &self.rope,
            params,
            tokens,
            b,
            t,
            bufs,
        );
        if let Some(grads) = grads {
            backward(
                cfg,
                &self.layers,
                (self.embed, self.norm, self.lm_head),
                &self.rope,
                params,
                tokens,
                b,
                t,
                bufs,
                grads,
            );
        }
        Ok(loss)
    }
}

/// The forward pass; fills `bufs` and returns the mean loss. On return `bufs.logits` holds the
/// gradient of the mean loss with respect to the logits.
#[allow(clippy::too_many_arguments)]
fn forward(
    cfg: &ModelConfig,
    layers: &[LayerIdx],
    (embed, norm, lm_head): (usize, usize, usize),
    rope: &RopeTables,
    params: &[Vec<f32>],
    tokens: &[u32],
    b: usize,
    t: usize,
    bufs: &mut Buffers,
) -> f32 {
    let (d, f, h, vsz) = (cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.vocab_size);
    let hd = d / h;
    let n = b * t;
    let eps = cfg.norm_eps as f32;
    let dims = AttnDims {
        t,
        hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let input = |i: usize| tokens[(i / t) * (t + 1) + i % t] as usize;

    // Embeddings.
    let e = &params[embed];
    bufs.xs[0]
        .par_chunks_mut(d)
        .enumerate()
        .for_each(|(i, row)| row.copy_from_slice(&e[input(i) * d..(input(i) + 1) * d]));

    for (li, (ix, acts)) in layers.iter().zip(bufs.layers.iter_mut()).enumerate() {
        let (before, after) = bufs.xs.split_at_mut(2 * li + 1);
        let x_in = &before[2 * li];
        let (x_mid, rest) = after.split_at_mut(1);
        let (x_mid, x_out) = (&mut x_mid[0], &mut rest[0]);

        rms_norm_fwd(x_in, &params[ix.attn_norm], eps, &mut acts.h1, &mut acts.r1);
        for (w, rows_buf) in [
            (ix.q, &mut bufs.rows_a),
            (ix.k, &mut bufs.rows_b),
            (ix.v, &mut bufs.rows_c),
        ] {
            gemm(
                (n, d, d),
                rows_buf,
                rows(d),
                false,
                &acts.h1,
                rows(d),
                &params[w],
                cols(d),
                true,
            );
        }
        split_heads(&bufs.rows_a, &mut acts.q, t, h, hd, Some(rope));
        split_heads(&bufs.rows_b, &mut acts.k, t, h, hd, Some(rope));
        split_heads(&bufs.rows_c, &mut acts.v, t, h, hd, None);
        let th = t * hd;
        acts.p
            .par_chunks_mut(t * t)
            .zip(bufs.heads_a.par_chunks_mut(th))
            .enumerate()
            .for_each(|(bh, (p, o))| {
                let s = bh * th..(bh + 1) * th;
                let head = Head {
                    q: &acts.q[s.clone()],
                    k: &acts.k[s.clone()],
                    v: &acts.v[s],
                };
                attention_fwd(head, p, o, dims);
            });
        merge_heads(&bufs.heads_a, &mut acts.y, t, h, hd, None);
        x_mid.copy_from_slice(x_in);
        gemm(
            (n, d, d),
            x_mid,
            rows(d),
            true,
            &acts.y,
            rows(d),
            &params[ix.o],
            cols(d),
            true,
        );

        rms_norm_fwd(x_mid, &params[ix.mlp_norm], eps, &mut acts.h2, &mut acts.r2);
        gemm(
            (n, f, d),
            &mut acts.g,
            rows(f),
            false,
            &acts.h2,
            rows(d),
            &params[ix.gate],
            cols(d),
            true,
        );
        gemm(
            (n, f, d),
            &mut acts.u,
            rows(f),
            false,
            &acts.h2,
            rows(d),
            &params[ix.up],
            cols(d),
            true,
        );
        swiglu_fwd(&acts.g, &acts.u, &mut acts.a);
        x_out.copy_from_slice(x_mid);
        gemm(
            (n, d, f),
            x_out,
            rows(d),
            true,
            &acts.a,
            rows(f),
            &params[ix.down],
            cols(f),
            true,
        );
    }

    let last = &bufs.xs[2 * layers.len()];
    rms_norm_fwd(last, &params[norm], eps, &mut bufs.hf, &mut bufs.rf);
    gemm(
        (n, vsz, d),
        &mut bufs.logits,
        rows(vsz),
        false,
        &bufs.hf,
        rows(d),
        &params[lm_head],
        cols(d),
        true,
    );

    // Cross-entropy, and its gradient in place: (softmax - onehot) / N.
    let inv_n = 1.0 / n as f32;
    let target = |i: usize| tokens[(i / t) * (t + 1) + i % t + 1] as usize;
    let losses: Vec<f64> = bufs
        .logits
        .par_chunks_mut(vsz * ROWS_PER_TASK)
        .enumerate()
        .map(|(c, lc)| {
            let mut sum = 0f64;
            for (k, row) in lc.chunks_mut(vsz).enumerate() {
                let i = c * ROWS_PER_TASK + k;
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let tgt = target(i);
                let x_t = row[tgt];
                let mut z = 0f32;
                for x in row.iter_mut() {
                    let e = exp(*x - m);
                    z += e;
                    *x = e;
                }
                // -log softmax(x)_t = ln z - (x_t - m), without forming a tiny p_t.
                sum += f64::from(z.ln() - (x_t - m));
                let s = inv_n / z;
                row.iter_mut().for_each(|x| *x *= s);
                row[tgt] -= inv_n;
            }
            sum
        })
        .collect();
    (losses.iter().sum::<f64>() / n as f64) as f32
}

/// The backward pass after [`forward`]; overwrites every gradient in `grads`.
#[allow(clippy::too_many_arguments)]
fn backward(
    cfg: &ModelConfig,
    layers: &[LayerIdx],
    (embed, norm, lm_head): (usize, usize, usize),
    rope: &RopeTables,
    params: &[Vec<f32>],
    tokens: &[u32],
    b: usize,
    t: usize,
    bufs: &mut Buffers,
    grads: &mut [Vec<f32>],
) {
    let (d, f, h, vsz) = (cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.vocab_size);
    let hd = d / h;
    let n = b * t;
    let dims = AttnDims {
        t,
        hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let dlogits = &bufs.logits;

    // lm_head and the final norm.
    gemm(
        (vsz, d, n),
        &mut grads[lm_head],
        rows(d),
        false,
        dlogits,
        cols(vsz),
        &bufs.hf,
        rows(d),
        true,
    );
    gemm(
        (n, d, vsz),
        &mut bufs.rows_a,
        rows(d),
        false,
        dlogits,
        rows(vsz),
        &params[lm_head],
        rows(d),
        true,
    );
    bufs.dx.fill(0.0);
    rms_norm_bwd(
        &bufs.xs[2 * layers.len()],
        &params[norm],
        &bufs.rf,
        &bufs.rows_a,
        &mut bufs.dx,
        &mut grads[norm],
    );

    for (li, (ix, acts)) in layers.iter().zip(bufs.layers.iter()).enumerate().rev() {
        let x_in = &bufs.xs[2 * li];
        let x_mid = &bufs.xs[2 * li + 1];
        let dx = &mut bufs.dx;

        // MLP: x_out = x_mid + a W_down^T.
        gemm(
            (d, f, n),
            &mut grads[ix.down],
            rows(f),
            false,
            dx,
            cols(d),
            &acts.a,
            rows(f),
            true,
        );
        gemm(
            (n, f, d),
            &mut bufs.ff_a,
            rows(f),
            false,
            dx,
            rows(d),
            &params[ix.down],
            rows(f),
            true,
        );
        swiglu_bwd(&acts.g, &acts.u, &bufs.ff_a, &mut bufs.ff_b, &mut bufs.ff_c);
        gemm(
            (f, d, n),
            &mut grads[ix.gate],
            rows(d),
            false,
            &bufs.ff_b,
            cols(f),
            &acts.h2,
            rows(d),
            true,
        );
        gemm(
            (f, d, n),
            &mut grads[ix.up],
            rows(d),
            false,
            &bufs.ff_c,
            cols(f),
            &acts.h2,
            rows(d),
            true,
        );
        gemm(
            (n, d, f),
            &mut bufs.rows_a,
            rows(d),
            false,
            &bufs.ff_b,
            rows(f),
            &params[ix.gate],
            rows(d),
            true,
        );
        gemm(
            (n, d, f),
            &mut bufs.rows_a,
            rows(d),
            true,
            &bufs.ff_c,
            rows(f),
            &params[ix.up],
            rows(d),
            true,
        );
        rms_norm_bwd(
            x_mid,
            &params[ix.mlp_norm],
            &acts.r2,
            &bufs.rows_a,
            dx,
            &mut grads[ix.mlp_norm],
        );

        // Attention: x_mid = x_in + y W_o^T.
        gemm(
            (d, d, n),
            &mut grads[ix.o],
            rows(d),
            false,
            dx,
            cols(d),
            &acts.y,
            rows(d),
            true,
        );
        gemm(
            (n, d, d),
            &mut bufs.rows_a,
            rows(d),
            false,
            dx,
            rows(d),
            &params[ix.o],
            rows(d),
            true,
        );
        split_heads(&bufs.rows_a, &mut bufs.heads_a, t, h, hd, None);
        let th = t * hd;
        bufs.dp
            .par_chunks_mut(t * t)
            .zip(bufs.heads_b.par_chunks_mut(th))
            .zip(bufs.heads_c.par_chunks_mut(th))
            .zip(bufs.heads_d.par_chunks_mut(th))
            .enumerate()
            .for_each(|(bh, (((dp, dq), dk), dv))| {
                let s = bh * th..(bh + 1) * th;
                let p = &acts.p[bh * t * t..(bh + 1) * t * t];
                let head = Head {
                    q: &acts.q[s.clone()],
                    k: &acts.k[s.clone()],
                    v: &acts.v[s.clone()],
                };
                attention_bwd(head, p, &bufs.heads_a[s], dp, (dq, dk, dv), dims);
            });
        merge_heads(&bufs.heads_b, &mut bufs.rows_a, t, h, hd, Some(rope));
        merge_heads(&bufs.heads_c, &mut bufs.rows_b, t, h, hd, Some(rope));
        merge_heads(&bufs.heads_d, &mut bufs.rows_c, t, h, hd, None);
        for (w, rows_buf) in [
            (ix.q, &bufs.rows_a),
            (ix.k, &bufs.rows_b),
            (ix.v, &bufs.rows_c),
        ] {
            gemm(
                (d, d, n),
                &mut grads[w],
                rows(d),
                false,
                rows_buf,
                cols(d),
                &acts.h1,
                rows(d),
                true,
            );
        }
        // dh1 = dq Wq + dk Wk + dv Wv, into heads_a (free again) as rows.
        let dh = &mut bufs.heads_a;
        gemm(
            (n, d, d),
            dh,
            rows(d),
            false,
            &bufs.rows_a,
            rows(d),
            &params[ix.q],
            rows(d),
            true,
        );
        gemm(
            (n, d, d),
            dh,
            rows(d),
            true,
            &bufs.rows_b,
            rows(d),
            &params[ix.k],
            rows(d),
            true,
        );
        gemm(
            (n, d, d),
            dh,
            rows(d),
            true,
            &bufs.rows_c,
            rows(d),
            &params[ix.v],
            rows(d),
            true,
        );
        rms_norm_bwd(
            x_in,
            &params[ix.attn_norm],
            &acts.r1,
            dh,
            dx,
            &mut grads[ix.attn_norm],
        );
    }

    // Embeddings: scatter-add the residual gradient, token by token in order.
    let de = &mut grads[embed];
    de.fill(0.0);
    for i in 0..n {
        let tok = tokens[(i / t) * (t + 1) + i % t] as usize;
        for (a, &g) in de[tok * d..(tok + 1) * d]
            .iter_mut()
            .zip(&bufs.dx[i * d..(i + 1) * d])
        {
            *a += g;
        }
    }
}
