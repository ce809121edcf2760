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
//! This file holds the step itself: gemm, attention, the parameter layout, the buffers and the
//! forward/backward passes. The element-wise math it shares with `ops.rs` (RMSNorm, rotary,
//! softmax rows, SwiGLU, the lane-summed reductions) lives in the leaf module
//! [`crate::kernels`].
//!
//! Results are deterministic: every output element is produced by one task in a fixed order and
//! the cross-row reductions (norm-weight gradients, the loss) are summed in a fixed block order,
//! so a step is bit-identical from run to run. The tests check loss and every gradient against
//! candle's autograd on the composed reference path.

use crate::error::{ModelError, Result};
use crate::kernels::{
    exp_in_place, lane_max, merge_heads, rms_norm_bwd, rms_norm_fwd, softmax_bwd_in_place,
    softmax_in_place, split_heads, swiglu_rows_bwd, swiglu_rows_fwd, Cols, RopeTables,
    ROWS_PER_TASK,
};
use apiary_config::ModelConfig;
use rayon::prelude::*;
use std::ops::Range;

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
            softmax_in_place(live, scale);
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
            softmax_bwd_in_place(pr, dr, scale);
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

/// Where one layer's tensors lie in the flat parameter buffer (see [`FlatLayout`]).
#[derive(Clone, Debug)]
struct LayerAt {
    attn_norm: Range<usize>,
    /// `q_proj`, `k_proj`, `v_proj` back to back: one `[3d, d]` matrix.
    qkv: Range<usize>,
    o: Range<usize>,
    mlp_norm: Range<usize>,
    /// `gate_proj`, `up_proj` back to back: one `[2f, d]` matrix.
    gate_up: Range<usize>,
    down: Range<usize>,
}

/// The flat layout of all parameters used by [`CpuStep`]: one `f32` buffer in which each
/// layer's q/k/v projections are adjacent (so the three are one matmul) and so are its
/// gate/up projections. [`FlatLayout::flatten`] / [`FlatLayout::unflatten`] convert from and
/// to the name-sorted tensors of [`crate::Params`].
#[derive(Clone, Debug)]
pub(crate) struct FlatLayout {
    /// Range of each name-sorted tensor.
    ranges: Vec<Range<usize>>,
    total: usize,
    layers: Vec<LayerAt>,
    embed: Range<usize>,
    norm: Range<usize>,
    lm_head: Range<usize>,
}

impl FlatLayout {
    fn new(cfg: &ModelConfig, names: &[String]) -> Result<FlatLayout> {
        let find = |name: String| -> Result<usize> {
            names
                .binary_search(&name)
                .map_err(|_| ModelError::MissingTensor(name))
        };
        let specs = crate::params::param_specs(cfg)?;
        if specs.len() != names.len() || specs.iter().zip(names).any(|((n, _), m)| n != m) {
            return Err(ModelError::InvalidConfig(
                "the parameter names do not match the model config".into(),
            ));
        }
        let mut ranges = vec![0..0; names.len()];
        let mut at = 0usize;
        let mut place = |i: usize| -> Range<usize> {
            let len: usize = specs[i].1.iter().product();
            ranges[i] = at..at + len;
            at += len;
            at - len..at
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = format!("model.layers.{l}");
            let q = place(find(format!("{p}.self_attn.q_proj.weight"))?);
            place(find(format!("{p}.self_attn.k_proj.weight"))?);
            let v = place(find(format!("{p}.self_attn.v_proj.weight"))?);
            let o = place(find(format!("{p}.self_attn.o_proj.weight"))?);
            let g = place(find(format!("{p}.mlp.gate_proj.weight"))?);
            let u = place(find(format!("{p}.mlp.up_proj.weight"))?);
            let down = place(find(format!("{p}.mlp.down_proj.weight"))?);
            let attn_norm = place(find(format!("{p}.input_layernorm.weight"))?);
            let mlp_norm = place(find(format!("{p}.post_attention_layernorm.weight"))?);
            layers.push(LayerAt {
                attn_norm,
                qkv: q.start..v.end,
                o,
                mlp_norm,
                gate_up: g.start..u.end,
                down,
            });
        }
        let embed = place(find("model.embed_tokens.weight".into())?);
        let norm = place(find("model.norm.weight".into())?);
        let lm_head = place(find("lm_head.weight".into())?);
        if ranges.iter().any(|r| r.is_empty()) {
            return Err(ModelError::InvalidConfig(
                "the model has tensors the CPU step does not know".into(),
            ));
        }
        Ok(FlatLayout {
            ranges,
            total: at,
            layers,
            embed,
            norm,
            lm_head,
        })
    }

    /// The name-sorted tensors `vecs` laid out flat.
    pub(crate) fn flatten(&self, vecs: &[Vec<f32>]) -> Result<Vec<f32>> {
        if vecs.len() != self.ranges.len()
            || vecs
                .iter()
                .zip(&self.ranges)
                .any(|(v, r)| v.len() != r.len())
        {
            return Err(ModelError::InvalidConfig(
                "the parameters do not match the model config".into(),
            ));
        }
        let mut flat = vec![0f32; self.total];
        for (v, r) in vecs.iter().zip(&self.ranges) {
            flat[r.clone()].copy_from_slice(v);
        }
        Ok(flat)
    }

    /// The flat buffer back to name-sorted tensors.
    pub(crate) fn unflatten(&self, flat: &[f32]) -> Vec<Vec<f32>> {
        self.ranges
            .iter()
            .map(|r| flat[r.clone()].to_vec())
            .collect()
    }
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
    /// Attention probabilities `[B, H, T, T]` (each causal block's masked part 0).
    p: Vec<f32>,
    /// Attention output merged back to rows `[N, d]`.
    y: Vec<f32>,
    /// inv-RMS of the MLP norm's input rows.
    r2: Vec<f32>,
    /// MLP-norm output `[N, d]`.
    h2: Vec<f32>,
    /// Gate and up projections `[N, 2f]` (gate then up in each row).
    gu: Vec<f32>,
    /// `silu(gate) * up` `[N, f]`.
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
    /// `[N, 3d]`: q/k/v rows in the forward pass, their gradients in the backward pass.
    qkv: Vec<f32>,
    rows_a: Vec<f32>,
    rows_b: Vec<f32>,
    heads_a: Vec<f32>,
    heads_b: Vec<f32>,
    heads_c: Vec<f32>,
    heads_d: Vec<f32>,
    dp: Vec<f32>,
    /// `[N, f]`: gradient of the SwiGLU output.
    da: Vec<f32>,
    /// `[N, 2f]`: gradient of the gate/up projections.
    dgu: Vec<f32>,
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
                    gu: z(n * 2 * f),
                    a: z(n * f),
                })
                .collect(),
            rf: z(n),
            hf: z(n * d),
            logits: z(n * cfg.vocab_size),
            qkv: z(n * 3 * d),
            rows_a: z(n * d),
            rows_b: z(n * d),
            heads_a: z(n * d),
            heads_b: z(n * d),
            heads_c: z(n * d),
            heads_d: z(n * d),
            dp: z(b * h * t * t),
            da: z(n * f),
            dgu: z(n * 2 * f),
            dx: z(n * d),
        }
    }
}

/// The hand-written CPU forward and backward pass of one model configuration (see the module
/// documentation), over parameters laid out by its [`FlatLayout`]. Holds the buffers of the
/// last batch shape it ran.
pub(crate) struct CpuStep {
    cfg: ModelConfig,
    layout: FlatLayout,
    rope: RopeTables,
    bufs: Option<Buffers>,
}

impl CpuStep {
    /// A step for `cfg`, whose parameters are named `names` (sorted, as in [`crate::Params`]).
    pub(crate) fn new(cfg: &ModelConfig, names: &[String]) -> Result<CpuStep> {
        if cfg.n_heads == 0
            || !cfg.d_model.is_multiple_of(cfg.n_heads)
            || !(cfg.d_model / cfg.n_heads).is_multiple_of(2)
        {
            return Err(ModelError::InvalidConfig(
                "d_model must split into an even head dimension per head".into(),
            ));
        }
        Ok(CpuStep {
            cfg: cfg.clone(),
            layout: FlatLayout::new(cfg, names)?,
            rope: RopeTables::new(
                cfg.seq_len,
                cfg.d_model / cfg.n_heads,
                f64::from(cfg.rope_theta),
            ),
            bufs: None,
        })
    }

    /// The parameter layout `run` expects.
    pub(crate) fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// The mean next-token loss of `tokens` (`b` pages of `l` tokens, row-major; inputs
    /// `[:, :l-1]`, targets `[:, 1:]`) under the flat `params`, and, when `grads` is given, the
    /// gradient of that loss for every parameter (overwritten, same layout as `params`).
    pub(crate) fn run(
        &mut self,
        params: &[f32],
        tokens: &[u32],
        b: usize,
        l: usize,
        grads: Option<&mut [f32]>,
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
        if params.len() != self.layout.total
            || grads.as_ref().is_some_and(|g| g.len() != params.len())
        {
            return Err(ModelError::InvalidConfig(
                "the parameters do not match the model config".into(),
            ));
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
        let shape = Shape { b, t };
        let loss = forward(cfg, &self.layout, &self.rope, params, tokens, shape, bufs);
        if let Some(grads) = grads {
            backward(
                cfg,
                &self.layout,
                &self.rope,
                params,
                tokens,
                shape,
                bufs,
                grads,
            );
        }
        Ok(loss)
    }
}

/// Pages and tokens per page (inputs) of a step.
#[derive(Clone, Copy)]
struct Shape {
    b: usize,
    t: usize,
}

/// The forward pass; fills `bufs` and returns the mean loss. On return `bufs.logits` holds the
/// gradient of the mean loss with respect to the logits.
fn forward(
    cfg: &ModelConfig,
    at: &FlatLayout,
    rope: &RopeTables,
    params: &[f32],
    tokens: &[u32],
    Shape { b, t }: Shape,
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
    let w = |r: &Range<usize>| &params[r.clone()];

    // Embeddings.
    let e = w(&at.embed);
    bufs.xs[0]
        .par_chunks_mut(d)
        .enumerate()
        .for_each(|(i, row)| row.copy_from_slice(&e[input(i) * d..(input(i) + 1) * d]));

    for (li, (lw, acts)) in at.layers.iter().zip(bufs.layers.iter_mut()).enumerate() {
        let (before, after) = bufs.xs.split_at_mut(2 * li + 1);
        let x_in = &before[2 * li];
        let (x_mid, rest) = after.split_at_mut(1);
        let (x_mid, x_out) = (&mut x_mid[0], &mut rest[0]);

        rms_norm_fwd(x_in, w(&lw.attn_norm), eps, &mut acts.h1, &mut acts.r1);
        let qkv = &mut bufs.qkv;
        gemm(
            (n, 3 * d, d),
            qkv,
            rows(3 * d),
            false,
            &acts.h1,
            rows(d),
            w(&lw.qkv),
            cols(d),
            true,
        );
        let col = |off: usize| Cols { ld: 3 * d, off };
        split_heads(qkv, col(0), &mut acts.q, (t, h, hd), Some(rope));
        split_heads(qkv, col(d), &mut acts.k, (t, h, hd), Some(rope));
        split_heads(qkv, col(2 * d), &mut acts.v, (t, h, hd), None);
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
        let plain = Cols { ld: d, off: 0 };
        merge_heads(&bufs.heads_a, &mut acts.y, plain, (t, h, hd), None);
        x_mid.copy_from_slice(x_in);
        gemm(
            (n, d, d),
            x_mid,
            rows(d),
            true,
            &acts.y,
            rows(d),
            w(&lw.o),
            cols(d),
            true,
        );

        rms_norm_fwd(x_mid, w(&lw.mlp_norm), eps, &mut acts.h2, &mut acts.r2);
        let gu = &mut acts.gu;
        gemm(
            (n, 2 * f, d),
            gu,
            rows(2 * f),
            false,
            &acts.h2,
            rows(d),
            w(&lw.gate_up),
            cols(d),
            true,
        );
        swiglu_rows_fwd(&acts.gu, &mut acts.a, f);
        x_out.copy_from_slice(x_mid);
        gemm(
            (n, d, f),
            x_out,
            rows(d),
            true,
            &acts.a,
            rows(f),
            w(&lw.down),
            cols(f),
            true,
        );
    }

    let last = &bufs.xs[2 * at.layers.len()];
    rms_norm_fwd(last, w(&at.norm), eps, &mut bufs.hf, &mut bufs.rf);
    let logits = &mut bufs.logits;
    gemm(
        (n, vsz, d),
        logits,
        rows(vsz),
        false,
        &bufs.hf,
        rows(d),
        w(&at.lm_head),
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
                let m = lane_max(row);
                let tgt = target(i);
                let x_t = row[tgt];
                let z = exp_in_place(row, m, 1.0);
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
    at: &FlatLayout,
    rope: &RopeTables,
    params: &[f32],
    tokens: &[u32],
    Shape { b, t }: Shape,
    bufs: &mut Buffers,
    grads: &mut [f32],
) {
    let (d, f, h, vsz) = (cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.vocab_size);
    let hd = d / h;
    let n = b * t;
    let dims = AttnDims {
        t,
        hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let w = |r: &Range<usize>| &params[r.clone()];
    let dlogits = &bufs.logits;

    // lm_head and the final norm.
    let g_lm = &mut grads[at.lm_head.clone()];
    gemm(
        (vsz, d, n),
        g_lm,
        rows(d),
        false,
        dlogits,
        cols(vsz),
        &bufs.hf,
        rows(d),
        true,
    );
    let dh = &mut bufs.rows_a;
    gemm(
        (n, d, vsz),
        dh,
        rows(d),
        false,
        dlogits,
        rows(vsz),
        w(&at.lm_head),
        rows(d),
        true,
    );
    bufs.dx.fill(0.0);
    let last = &bufs.xs[2 * at.layers.len()];
    let g_norm = &mut grads[at.norm.clone()];
    rms_norm_bwd(
        last,
        w(&at.norm),
        &bufs.rf,
        &bufs.rows_a,
        &mut bufs.dx,
        g_norm,
    );

    for (li, (lw, acts)) in at.layers.iter().zip(bufs.layers.iter()).enumerate().rev() {
        let x_in = &bufs.xs[2 * li];
        let x_mid = &bufs.xs[2 * li + 1];
        let dx = &mut bufs.dx;

        // MLP: x_out = x_mid + a W_down^T, a = silu(g) * u, [g u] = h2 [W_gate W_up]^T.
        let g_down = &mut grads[lw.down.clone()];
        gemm(
            (d, f, n),
            g_down,
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
            &mut bufs.da,
            rows(f),
            false,
            dx,
            rows(d),
            w(&lw.down),
            rows(f),
            true,
        );
        swiglu_rows_bwd(&acts.gu, &bufs.da, &mut bufs.dgu, f);
        let g_gu = &mut grads[lw.gate_up.clone()];
        gemm(
            (2 * f, d, n),
            g_gu,
            rows(d),
            false,
            &bufs.dgu,
            cols(2 * f),
            &acts.h2,
            rows(d),
            true,
        );
        let dh = &mut bufs.rows_a;
        gemm(
            (n, d, 2 * f),
            dh,
            rows(d),
            false,
            &bufs.dgu,
            rows(2 * f),
            w(&lw.gate_up),
            rows(d),
            true,
        );
        let g_mn = &mut grads[lw.mlp_norm.clone()];
        rms_norm_bwd(x_mid, w(&lw.mlp_norm), &acts.r2, &bufs.rows_a, dx, g_mn);

        // Attention: x_mid = x_in + y W_o^T.
        let g_o = &mut grads[lw.o.clone()];
        gemm(
            (d, d, n),
            g_o,
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
            &mut bufs.rows_b,
            rows(d),
            false,
            dx,
            rows(d),
            w(&lw.o),
            rows(d),
            true,
        );
        let plain = Cols { ld: d, off: 0 };
        split_heads(&bufs.rows_b, plain, &mut bufs.heads_a, (t, h, hd), None);
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
        let col = |off: usize| Cols { ld: 3 * d, off };
        let dqkv = &mut bufs.qkv;
        merge_heads(&bufs.heads_b, dqkv, col(0), (t, h, hd), Some(rope));
        merge_heads(&bufs.heads_c, dqkv, col(d), (t, h, hd), Some(rope));
        merge_heads(&bufs.heads_d, dqkv, col(2 * d), (t, h, hd), None);
        let g_qkv = &mut grads[lw.qkv.clone()];
        gemm(
            (3 * d, d, n),
            g_qkv,
            rows(d),
            false,
            dqkv,
            cols(3 * d),
            &acts.h1,
            rows(d),
            true,
        );
        let dh = &mut bufs.rows_a;
        gemm(
            (n, d, 3 * d),
            dh,
            rows(d),
            false,
            dqkv,
            rows(3 * d),
            w(&lw.qkv),
            rows(d),
            true,
        );
        let g_an = &mut grads[lw.attn_norm.clone()];
        rms_norm_bwd(x_in, w(&lw.attn_norm), &acts.r1, &bufs.rows_a, dx, g_an);
    }

    // Embeddings: scatter-add the residual gradient, token by token in order.
    let de = &mut grads[at.embed.clone()];
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
