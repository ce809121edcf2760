//! The outer optimizer of DiLoCo-style training: SGD with (Nesterov) momentum applied to the
//! clipped mean of the window's accepted pseudo-gradients.
//!
//! Every node that follows the subnet applies the same outer step to the same inputs, so the
//! step must be bit-identical everywhere: all arithmetic is plain Rust f64 in a fixed order (no
//! threads, no BLAS), and the momentum buffer is part of the replicated state ([`OuterState`]),
//! content-addressed and shipped with checkpoints so a late joiner resumes exactly.
//!
//! With `momentum = 0` the step is exactly [`crate::aggregate`]: `base - lr * mean(clip(u_i))`.

use crate::error::{ModelError, Result};
use crate::params::{Params, Update};
use apiary_config::ModelConfig;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// Outer optimizer settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OuterConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum `mu` in `[0, 1)`; 0 disables momentum (and the state stays empty).
    pub momentum: f64,
    /// Nesterov look-ahead (`step = mean + mu * v`) instead of heavy ball (`step = v`).
    pub nesterov: bool,
}

impl OuterConfig {
    /// Plain SGD with learning rate `lr`.
    pub fn sgd(lr: f64) -> OuterConfig {
        OuterConfig {
            lr,
            momentum: 0.0,
            nesterov: false,
        }
    }

    fn check(&self) -> Result<()> {
        if !self.lr.is_finite() {
            return Err(ModelError::InvalidConfig("outer lr must be finite".into()));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(ModelError::InvalidConfig(
                "outer momentum must be in [0, 1)".into(),
            ));
        }
        Ok(())
    }
}

/// The replicated state of the outer optimizer: one momentum buffer per parameter tensor (in
/// [`Params::names`] order), or none before the first step / when momentum is off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OuterState {
    momentum: Option<Vec<Vec<f32>>>,
}

/// Prefix of momentum tensor names in the encoded state.
const MOMENTUM_PREFIX: &str = "outer.momentum.";

impl OuterState {
    /// The empty state (all-zero momentum).
    pub fn new() -> OuterState {
        OuterState::default()
    }

    /// True when no momentum has accumulated.
    pub fn is_empty(&self) -> bool {
        self.momentum.is_none()
    }

    /// Canonical safetensors encoding: tensors `outer.momentum.<param name>`, f32; the empty
    /// state encodes as a safetensors file with no tensors.
    pub fn to_bytes(&self, cfg: &ModelConfig) -> Result<Vec<u8>> {
        let specs = crate::params::param_specs(cfg)?;
        let Some(m) = &self.momentum else {
            let none: Vec<(String, TensorView<'_>)> = Vec::new();
            return safetensors::serialize(none, None)
                .map_err(|e| ModelError::Decode(e.to_string()));
        };
        let raw: Vec<Vec<u8>> = m
            .iter()
            .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let mut views = Vec::with_capacity(raw.len());
        for ((name, shape), bytes) in specs.iter().zip(&raw) {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map_err(|e| ModelError::Decode(format!("momentum of `{name}`: {e}")))?;
            views.push((format!("{MOMENTUM_PREFIX}{name}"), view));
        }
        safetensors::serialize(views, None).map_err(|e| ModelError::Decode(e.to_string()))
    }

    /// Decodes and validates a state for the model described by `cfg`.
    pub fn from_bytes(cfg: &ModelConfig, bytes: &[u8]) -> Result<OuterState> {
        let specs = crate::params::param_specs(cfg)?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
        if st.is_empty() {
            return Ok(OuterState::new());
        }
        if st.len() != specs.len() {
            return Err(ModelError::Decode(format!(
                "outer state has {} tensors, the model has {}",
                st.len(),
                specs.len()
            )));
        }
        let mut out = Vec::with_capacity(specs.len());
        for (name, shape) in &specs {
            let key = format!("{MOMENTUM_PREFIX}{name}");
            let view = st
                .tensor(&key)
                .map_err(|_| ModelError::MissingTensor(key.clone()))?;
            if view.dtype() != Dtype::F32 || view.shape() != shape.as_slice() {
                return Err(ModelError::ShapeMismatch {
                    name: key,
                    expected: shape.clone(),
                    got: view.shape().to_vec(),
                });
            }
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(ModelError::NonFinite { name: key });
            }
            out.push(v);
        }
        Ok(OuterState {
            momentum: Some(out),
        })
    }
}

/// The clipped mean of `updates` in f64: each update is scaled to at most the median L2 norm
/// of the set, then all are averaged element-wise in the given order.
pub(crate) fn clipped_mean(base: &Params, updates: &[Update]) -> Result<Vec<Vec<f64>>> {
    let base_shapes: Vec<Vec<usize>> = base.tensors().iter().map(|t| t.dims().to_vec()).collect();
    let mut vecs = Vec::with_capacity(updates.len());
    let mut norms = Vec::with_capacity(updates.len());
    for u in updates {
        if u.names() != base.names() {
            return Err(ModelError::Decode(
                "update tensor names differ from the model's".into(),
            ));
        }
        for ((name, a), b) in base.names().iter().zip(&base_shapes).zip(u.shapes()) {
            if *a != b {
                return Err(ModelError::ShapeMismatch {
                    name: name.clone(),
                    expected: a.clone(),
                    got: b,
                });
            }
        }
        let v = u.to_vecs()?;
        let ss: f64 = v
            .iter()
            .flatten()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum();
        norms.push(ss.sqrt());
        vecs.push(v);
    }
    let mut sorted = norms.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    };
    let n = updates.len().max(1) as f64;
    let weights: Vec<f64> = norms
        .iter()
        .map(|&x| {
            let clip = if x > median { median / x } else { 1.0 };
            clip / n
        })
        .collect();
    let mut out: Vec<Vec<f64>> = base_shapes
        .iter()
        .map(|s| vec![0.0f64; s.iter().product()])
        .collect();
    for (t, acc) in out.iter_mut().enumerate() {
        for (v, w) in vecs.iter().zip(&weights) {
            for (a, &x) in acc.iter_mut().zip(&v[t]) {
                *a += w * f64::from(x);
            }
        }
    }
    Ok(out)
}

/// One outer step: `m = clipped_mean(updates)`; with momentum `v' = mu * v + m` and the step is
/// `m + mu * v'` (Nesterov) or `v'`; `new = base - lr * step`. Returns the new parameters and
/// optimizer state. An empty `updates` leaves both unchanged (a window nobody trained in does
/// not decay the momentum).
pub fn outer_step(
    cfg: &ModelConfig,
    base: &Params,
    state: &OuterState,
    updates: &[Update],
    opt: &OuterConfig,
) -> Result<(Params, OuterState)> {
    opt.check()?;
    if updates.is_empty() {
        return Ok((base.clone(), state.clone()));
    }
    let mean = clipped_mean(base, updates)?;
    let base_vecs = base.to_vecs()?;
    let mu = opt.momentum;
    let mut new_params = Vec::with_capacity(base_vecs.len());
    let mut new_mom: Option<Vec<Vec<f32>>> = (mu > 0.0).then(Vec::new);
    for (t, (b, m)) in base_vecs.iter().zip(&mean).enumerate() {
        let prev = state.momentum.as_ref().and_then(|v| v.get(t));
        if let Some(p) = prev {
            if p.len() != b.len() {
                return Err(ModelError::Decode(format!(
                    "outer state tensor {t} has {} values, the model {}",
                    p.len(),
                    b.len()
                )));
            }
        }
        let mut params = Vec::with_capacity(b.len());
        let mut mom = Vec::with_capacity(if mu > 0.0 { b.len() } else { 0 });
        for (i, (&p, &g)) in b.iter().zip(m).enumerate() {
            let step = if mu > 0.0 {
                let v_prev = prev.map_or(0.0, |v| f64::from(v[i]));
                let v = mu * v_prev + g;
                mom.push(v as f32);
                if opt.nesterov {
                    g + mu * v
                } else {
                    v
                }
            } else {
                g
            };
            params.push((f64::from(p) - opt.lr * step) as f32);
        }
        if params.iter().any(|x| !x.is_finite()) {
            return Err(ModelError::NonFinite {
                name: base.names()[t].clone(),
            });
        }
        new_params.push(params);
        if let Some(nm) = new_mom.as_mut() {
            nm.push(mom);
        }
    }
    Ok((
        Params::from_vecs(cfg, new_params)?,
        OuterState { momentum: new_mom },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelConfig {
        ModelConfig {
            vocab_size: 256,
            d_model: 16,
            n_layers: 1,
            n_heads: 2,
            d_ff: 24,
            seq_len: 8,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn zero_momentum_equals_aggregate() {
        let cfg = tiny();
        let base = Params::init(&cfg).expect("init");
        let us: Vec<Update> = (0..3)
            .map(|i| Update::random_like(&cfg, i, 0.01 * (i + 1) as f32).expect("noise"))
            .collect();
        let a = crate::aggregate(&base, &us, 0.7).expect("aggregate");
        let (b, st) =
            outer_step(&cfg, &base, &OuterState::new(), &us, &OuterConfig::sgd(0.7)).expect("step");
        assert_eq!(a.hash(), b.hash());
        assert!(st.is_empty());
    }

    #[test]
    fn nesterov_matches_reference_and_state_roundtrips() {
        let cfg = tiny();
        let base = Params::init(&cfg).expect("init");
        let opt = OuterConfig {
            lr: 0.5,
            momentum: 0.9,
            nesterov: true,
        };
        let u1 = vec![Update::random_like(&cfg, 1, 0.01).expect("noise")];
        let u2 = vec![Update::random_like(&cfg, 2, 0.01).expect("noise")];
        let (p1, s1) = outer_step(&cfg, &base, &OuterState::new(), &u1, &opt).expect("step 1");
        let bytes = s1.to_bytes(&cfg).expect("encode");
        let s1b = OuterState::from_bytes(&cfg, &bytes).expect("decode");
        assert_eq!(s1, s1b);
        let (p2, _) = outer_step(&cfg, &p1, &s1b, &u2, &opt).expect("step 2");
        // Reference for one element, by hand.
        let (b0, g1, g2) = (
            base.to_vecs().expect("v")[0][3] as f64,
            u1[0].to_vecs().expect("v")[0][3] as f64,
            u2[0].to_vecs().expect("v")[0][3] as f64,
        );
        let v1 = g1;
        let x1 = (b0 - 0.5 * (g1 + 0.9 * v1)) as f32;
        let v2 = 0.9 * (v1 as f32 as f64) + g2;
        let x2 = (x1 as f64 - 0.5 * (g2 + 0.9 * v2)) as f32;
        assert_eq!(p1.to_vecs().expect("v")[0][3], x1);
        assert_eq!(p2.to_vecs().expect("v")[0][3], x2);
        let empty = OuterState::new().to_bytes(&cfg).expect("encode empty");
        assert!(OuterState::from_bytes(&cfg, &empty)
            .expect("decode empty")
            .is_empty());
        assert!(OuterState::from_bytes(&cfg, b"garbage").is_err());
    }

    #[test]
    fn gradient_rule_descends_and_is_deterministic() {
        let cfg = tiny();
        let train = apiary_config::TrainConfig {
            batch_pages: 2,
            ..apiary_config::TrainConfig::default()
        };
        let text = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/tinyshakespeare.txt"
        ))
        .expect("corpus");
        let ds = crate::Dataset::from_bytes(text, cfg.seq_len, 0.05).expect("dataset");
        let pages: Vec<Vec<u32>> = (0..5).map(|i| ds.page(i * 13)).collect();
        let base = Params::init(&cfg).expect("init");
        let (g, loss) = crate::compute_gradient(&cfg, &train, &base, &pages).expect("grad");
        let (g2, _) = crate::compute_gradient(&cfg, &train, &base, &pages).expect("grad");
        assert_eq!(g.to_bytes().expect("b"), g2.to_bytes().expect("b"));
        assert!(g.norm().expect("norm") > 0.0);
        let (next, _) = outer_step(
            &cfg,
            &base,
            &OuterState::new(),
            &[g],
            &OuterConfig::sgd(0.5),
        )
        .expect("step");
        let before = crate::eval_loss(&cfg, &base, &pages).expect("loss");
        let after = crate::eval_loss(&cfg, &next, &pages).expect("loss");
        assert!((before - loss).abs() < 1e-3, "{before} vs {loss}");
        assert!(
            after < before,
            "a gradient step must lower the loss: {before} -> {after}"
        );
    }

    /// Trains `windows` DiLoCo windows of two miners from `(params, state)`; returns the
    /// held-out loss after each window and the final model and state.
    fn run_windows(
        cfg: &ModelConfig,
        ds: &crate::Dataset,
        start: u64,
        windows: u64,
        mut params: Params,
        mut state: OuterState,
    ) -> (Vec<f32>, Params, OuterState) {
        let train = apiary_config::TrainConfig {
            pages_per_window: 2,
            batch_pages: 2,
            local_steps: 2,
            learning_rate: 5e-3,
            ..apiary_config::TrainConfig::default()
        };
        let opt = OuterConfig {
            lr: 0.7,
            momentum: 0.9,
            nesterov: true,
        };
        let held = ds.held_out(4);
        let mut losses = Vec::new();
        for w in start..start + windows {
            let updates: Vec<Update> = (0..2u16)
                .map(|uid| {
                    let pages: Vec<Vec<u32>> = crate::assign_pages(uid, w, 7, ds.train_pages(), 2)
                        .into_iter()
                        .map(|i| ds.page(i))
                        .collect();
                    crate::compute_update(cfg, &train, &params, &pages)
                        .expect("update")
                        .0
                })
                .collect();
            let (p, s) = outer_step(cfg, &params, &state, &updates, &opt).expect("step");
            params = p;
            state = s;
            losses.push(crate::eval_loss(cfg, &params, &held).expect("loss"));
        }
        (losses, params, state)
    }

    #[test]
    fn resuming_from_a_checkpoint_continues_the_same_loss_curve() {
        let cfg = tiny();
        let text = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/tinyshakespeare.txt"
        ))
        .expect("corpus");
        let ds = crate::Dataset::from_bytes(text, cfg.seq_len, 0.05).expect("dataset");
        let genesis = Params::init(&cfg).expect("init");
        let (all, p_all, s_all) = run_windows(&cfg, &ds, 0, 6, genesis.clone(), OuterState::new());
        // Stop after 3 windows: write the checkpoint (model + outer state) and read it back.
        let (first, p3, s3) = run_windows(&cfg, &ds, 0, 3, genesis, OuterState::new());
        let (pb, sb) = (
            p3.to_bytes().expect("encode"),
            s3.to_bytes(&cfg).expect("encode"),
        );
        let p3r = Params::from_bytes(&cfg, &pb).expect("decode");
        let s3r = OuterState::from_bytes(&cfg, &sb).expect("decode");
        assert_eq!(
            p3r.to_vecs().expect("v"),
            p3.to_vecs().expect("v"),
            "bit-identical"
        );
        assert_eq!(p3r.hash(), p3.hash());
        assert_eq!(s3r, s3);
        let (rest, p_res, s_res) = run_windows(&cfg, &ds, 3, 3, p3r, s3r);
        let resumed: Vec<f32> = first.into_iter().chain(rest).collect();
        assert_eq!(
            resumed, all,
            "resumed loss curve equals the uninterrupted one"
        );
        assert_eq!(p_res.hash(), p_all.hash());
        assert_eq!(s_res, s_all);
        assert!(
            all[5] < all[0],
            "training lowers the held-out loss: {all:?}"
        );
    }
}
