use super::*;
use apiary_config::{ModelConfig, TrainConfig};
use safetensors::tensor::{Dtype, TensorView};
use std::sync::OnceLock;
use std::time::Instant;

fn tiny() -> ModelConfig {
    ModelConfig {
        vocab_size: 256,
        d_model: 32,
        n_layers: 2,
        n_heads: 2,
        d_ff: 64,
        seq_len: 32,
        ..ModelConfig::default()
    }
}

fn shakespeare() -> Vec<u8> {
    static DATA: OnceLock<Vec<u8>> = OnceLock::new();
    DATA.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");
        std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    })
    .clone()
}

fn dataset(seq_len: usize) -> Dataset {
    Dataset::from_bytes(shakespeare(), seq_len, 0.05).expect("dataset")
}

fn pages(ds: &Dataset, uid: u16, n: usize) -> Vec<Vec<u32>> {
    assign_pages(uid, 3, 7, ds.train_pages(), n)
        .into_iter()
        .map(|i| ds.page(i))
        .collect()
}

fn train_cfg() -> TrainConfig {
    TrainConfig {
        pages_per_window: 8,
        batch_pages: 8,
        local_steps: 4,
        learning_rate: 3e-3,
        ..TrainConfig::default()
    }
}

/// Safetensors bytes of `tensors` (name, shape, values) as given, for corrupt-input tests.
fn raw_safetensors(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let raw: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&raw)
        .map(|((n, s, _), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

fn update_parts(u: &Update) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    u.names()
        .iter()
        .zip(u.tensors())
        .map(|(n, t)| {
            (
                n.clone(),
                t.dims().to_vec(),
                t.flatten_all()
                    .expect("flatten")
                    .to_vec1::<f32>()
                    .expect("vec"),
            )
        })
        .collect()
}

#[test]
fn init_is_deterministic_and_sensible() {
    let cfg = tiny();
    let a = Params::init(&cfg).expect("init");
    let b = Params::init(&cfg).expect("init");
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.to_bytes().expect("bytes"), b.to_bytes().expect("bytes"));
    let other = Params::init(&ModelConfig {
        init_seed: 43,
        ..tiny()
    })
    .expect("init");
    assert_ne!(a.hash(), other.hash());

    let mut sorted = a.names().to_vec();
    sorted.sort();
    assert_eq!(a.names(), sorted.as_slice());
    assert_eq!(a.names().len(), 3 + 9 * cfg.n_layers);
    assert!(a
        .names()
        .contains(&"model.layers.1.mlp.down_proj.weight".to_string()));
    let (d, f, v) = (32, 64, 256);
    assert_eq!(
        a.num_params(),
        2 * v * d + d + 2 * (4 * d * d + 3 * d * f + 2 * d)
    );
    for (name, t) in a.names().iter().zip(a.tensors()) {
        let vals = t.flatten_all().expect("f").to_vec1::<f32>().expect("v");
        if name.ends_with("norm.weight") {
            assert!(vals.iter().all(|&x| x == 1.0), "{name}");
        } else {
            let n = vals.len() as f64;
            let mean = vals.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let std = (vals
                .iter()
                .map(|&x| (f64::from(x) - mean).powi(2))
                .sum::<f64>()
                / n)
                .sqrt();
            assert!(mean.abs() < 0.003, "{name} mean {mean}");
            assert!((std - 0.02).abs() < 0.002, "{name} std {std}");
        }
    }
}

#[test]
fn params_bytes_roundtrip_is_bit_identical() {
    let cfg = tiny();
    let p = Params::init(&cfg).expect("init");
    let bytes = p.to_bytes().expect("bytes");
    assert_eq!(p.hash(), *blake3::hash(&bytes).as_bytes());
    let q = Params::from_bytes(&cfg, &bytes).expect("decode");
    assert_eq!(q.to_bytes().expect("bytes"), bytes);
    assert_eq!(q.hash(), p.hash());
    assert_eq!(q.names(), p.names());
    // A checkpoint of another architecture is rejected.
    let bigger = ModelConfig {
        d_model: 64,
        ..tiny()
    };
    assert!(matches!(
        Params::from_bytes(&bigger, &bytes),
        Err(ModelError::ShapeMismatch { .. })
    ));
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    let cfg = tiny();
    let ds = dataset(cfg.seq_len);
    let p = Params::init(&cfg).expect("init");
    let vars = model::make_vars(&p).expect("vars");
    let tensors: Vec<_> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let w = model::Weights::new(&cfg, p.names(), &tensors).expect("weights");
    let batch = pages(&ds, 0, 4);
    let flat: Vec<u32> = batch.iter().flatten().copied().collect();
    let tokens = candle_core::Tensor::from_vec(
        flat,
        (batch.len(), cfg.seq_len + 1),
        &candle_core::Device::Cpu,
    )
    .expect("tokens");
    let loss = model::forward_loss(&cfg, &w, &tokens).expect("loss");
    let l = loss.to_scalar::<f32>().expect("scalar");
    assert!((l - 256f32.ln()).abs() < 0.5, "initial loss {l}");
    let grads = loss.backward().expect("backward");
    for (name, var) in p.names().iter().zip(&vars) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let abs = g
            .abs()
            .expect("abs")
            .sum_all()
            .expect("sum")
            .to_scalar::<f32>()
            .expect("s");
        assert!(abs.is_finite() && abs > 0.0, "{name}: |grad| = {abs}");
    }
}

#[test]
fn compute_update_reduces_loss_and_is_deterministic() {
    let cfg = tiny();
    let train = train_cfg();
    let ds = dataset(cfg.seq_len);
    let base = Params::init(&cfg).expect("init");
    let my_pages = pages(&ds, 1, 8);
    let before = eval_loss(&cfg, &base, &my_pages).expect("eval");
    let (u, first) = compute_update(&cfg, &train, &base, &my_pages).expect("update");
    assert!(
        (first - before).abs() < 1e-4,
        "first {first} vs eval {before}"
    );
    let after_params = aggregate(&base, std::slice::from_ref(&u), 1.0).expect("agg");
    let after = eval_loss(&cfg, &after_params, &my_pages).expect("eval");
    assert!(after < before - 0.05, "loss {before} -> {after}");
    assert!(u.norm().expect("norm") > 0.0);

    let (again, _) = compute_update(&cfg, &train, &base, &my_pages).expect("update");
    let c = cosine(&u, &again).expect("cos");
    assert!(c > 0.99, "recomputed cosine {c}");

    let noise = Update::random_like(&cfg, 99, u.norm().expect("n") / 200.0).expect("noise");
    let c = cosine(&u, &noise).expect("cos");
    assert!(c.abs() < 0.1, "noise cosine {c}");

    // Another miner's pages give a related but different update.
    let (other, _) = compute_update(&cfg, &train, &base, &pages(&ds, 2, 8)).expect("update");
    let c = cosine(&u, &other).expect("cos");
    assert!(c < 0.99, "different pages cosine {c}");
}

#[test]
fn update_bytes_roundtrip_and_rejections() {
    let cfg = tiny();
    let u = Update::random_like(&cfg, 5, 0.01).expect("noise");
    let bytes = u.to_bytes().expect("bytes");
    let back = Update::from_bytes(&cfg, &bytes).expect("decode");
    assert_eq!(back.to_bytes().expect("bytes"), bytes);
    assert!((cosine(&u, &back).expect("cos") - 1.0).abs() < 1e-6);
    assert!((u.norm().expect("n") - back.norm().expect("n")).abs() < 1e-6);

    // NaN
    let mut parts = update_parts(&u);
    parts[3].2[7] = f32::NAN;
    let name = parts[3].0.clone();
    match Update::from_bytes(&cfg, &raw_safetensors(&parts)) {
        Err(ModelError::NonFinite { name: n }) => assert_eq!(n, name),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    // Infinity
    let mut parts = update_parts(&u);
    parts[0].2[0] = f32::INFINITY;
    assert!(matches!(
        Update::from_bytes(&cfg, &raw_safetensors(&parts)),
        Err(ModelError::NonFinite { .. })
    ));
    // Wrong shape
    let mut parts = update_parts(&u);
    let (_, shape, vals) = &mut parts[1];
    if shape.len() == 2 {
        *shape = vec![shape[1], shape[0]];
    } else {
        vals.push(0.0);
        shape[0] += 1;
    }
    assert!(matches!(
        Update::from_bytes(&cfg, &raw_safetensors(&parts)),
        Err(ModelError::ShapeMismatch { .. })
    ));
    // Missing tensor
    let mut parts = update_parts(&u);
    let removed = parts.remove(2).0;
    match Update::from_bytes(&cfg, &raw_safetensors(&parts)) {
        Err(ModelError::MissingTensor(n)) => assert_eq!(n, removed),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    // Unexpected tensor
    let mut parts = update_parts(&u);
    parts.push(("model.extra.weight".into(), vec![2], vec![0.0, 0.0]));
    assert!(matches!(
        Update::from_bytes(&cfg, &raw_safetensors(&parts)),
        Err(ModelError::UnexpectedTensor(_))
    ));
    // Garbage and truncation
    assert!(matches!(
        Update::from_bytes(&cfg, b"definitely not safetensors"),
        Err(ModelError::Decode(_))
    ));
    assert!(matches!(
        Update::from_bytes(&cfg, &bytes[..bytes.len() - 1]),
        Err(ModelError::Decode(_))
    ));
    assert!(Update::from_bytes(&cfg, &[]).is_err());
}

#[test]
fn aggregate_rules() {
    let cfg = tiny();
    let base = Params::init(&cfg).expect("init");
    let same = aggregate(&base, &[], 1.0).expect("agg");
    assert_eq!(same.hash(), base.hash());

    let a = Update::random_like(&cfg, 1, 0.001).expect("a");
    let b = Update::random_like(&cfg, 2, 0.001).expect("b");
    let huge = Update::random_like(&cfg, 3, 1.0).expect("huge");
    let set = [a.clone(), b.clone(), huge];
    let x = aggregate(&base, &set, 0.7).expect("agg");
    let y = aggregate(&base, &set, 0.7).expect("agg");
    assert_eq!(x.hash(), y.hash());
    assert_ne!(x.hash(), base.hash());
    // The huge update is clipped to the median norm: the step stays small.
    let bv = base.vecs().expect("v");
    let xv = x.vecs().expect("v");
    let step: f64 = bv
        .iter()
        .flatten()
        .zip(xv.iter().flatten())
        .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
        .sum::<f64>()
        .sqrt();
    let med = f64::from(a.norm().expect("n").max(b.norm().expect("n")));
    assert!(step <= 0.7 * med * 1.001, "step {step} vs median {med}");

    // Applying an update then its negation returns (nearly) to base.
    let neg = Update::from_vecs(
        &cfg,
        a.tensors()
            .iter()
            .map(|t| {
                t.flatten_all()
                    .expect("f")
                    .to_vec1::<f32>()
                    .expect("v")
                    .iter()
                    .map(|x| -x)
                    .collect()
            })
            .collect(),
    )
    .expect("neg");
    let there = aggregate(&base, std::slice::from_ref(&a), 1.0).expect("agg");
    let back = aggregate(&there, &[neg], 1.0).expect("agg");
    let diff: f32 = base
        .vecs()
        .expect("v")
        .iter()
        .flatten()
        .zip(back.vecs().expect("v").iter().flatten())
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-6, "{diff}");

    // Updates of another architecture are rejected.
    let other = Update::random_like(&ModelConfig { d_ff: 32, ..tiny() }, 1, 0.1).expect("other");
    assert!(matches!(
        aggregate(&base, &[other], 1.0),
        Err(ModelError::ShapeMismatch { .. })
    ));
}

#[test]
fn assign_pages_is_deterministic_and_in_range() {
    let a = assign_pages(3, 10, 7, 1000, 8);
    assert_eq!(a, assign_pages(3, 10, 7, 1000, 8));
    assert_eq!(a.len(), 8);
    assert!(a.iter().all(|&i| i < 1000));
    let mut d = a.clone();
    d.sort();
    d.dedup();
    assert_eq!(d.len(), 8, "distinct when n <= num_pages");
    assert_ne!(a, assign_pages(4, 10, 7, 1000, 8));
    assert_ne!(a, assign_pages(3, 11, 7, 1000, 8));
    assert_ne!(a, assign_pages(3, 10, 8, 1000, 8));
    // More pages than exist: every page once before repeats.
    let b = assign_pages(1, 1, 1, 5, 12);
    assert_eq!(b.len(), 12);
    let mut first: Vec<_> = b[..5].to_vec();
    first.sort();
    assert_eq!(first, vec![0, 1, 2, 3, 4]);
    assert!(assign_pages(1, 1, 1, 0, 4).is_empty());
    assert!(assign_pages(1, 1, 1, 1, 3).iter().all(|&i| i == 0));
}

#[test]
fn dataset_pages_and_held_out_are_disjoint() {
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let ds = Dataset::from_bytes(bytes.clone(), 9, 0.1).expect("ds");
    // 1000 / 10 = 100 pages, 10 held out.
    assert_eq!(ds.train_pages(), 90);
    assert_eq!(ds.held_out_pages(), 10);
    assert_eq!(ds.page(0).len(), 10);
    assert_eq!(ds.page(1)[0], u32::from(bytes[10]));
    assert_eq!(ds.page(90), ds.page(0), "index wraps within training pages");
    let held = ds.held_out(100);
    assert_eq!(held.len(), 10);
    assert_eq!(held[0][0], u32::from(bytes[900]));
    assert_eq!(ds.held_out(3), held[..3].to_vec());
    // Disjoint by position: training pages cover bytes [0, 900), held-out [900, 1000).
    let train_bytes: usize = (0..ds.train_pages()).map(|i| ds.page(i).len()).sum();
    assert_eq!(train_bytes, 900);
    assert_eq!(ds.hash(), *blake3::hash(&bytes).as_bytes());

    let shakes = dataset(32);
    assert_eq!(
        shakes.train_pages() + shakes.held_out_pages(),
        shakespeare().len() / 33
    );
    assert!(shakes.held_out_pages() >= 16);

    assert!(matches!(
        Dataset::from_bytes(Vec::new(), 32, 0.05),
        Err(ModelError::Data(_))
    ));
    let err = Dataset::from_bytes(vec![1; 40], 32, 0.05).expect_err("too small");
    assert!(err.to_string().contains("too small"), "{err}");
}

#[test]
fn dataset_load_file_and_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let a: Vec<u8> = vec![b'a'; 300];
    let b: Vec<u8> = vec![b'b'; 300];
    std::fs::write(dir.path().join("b.txt"), &b).expect("w");
    std::fs::write(dir.path().join("a.txt"), &a).expect("w");
    std::fs::write(dir.path().join("ignored.bin"), [0u8; 50]).expect("w");
    let ds = Dataset::load(dir.path(), 9, 0.1).expect("load dir");
    let mut all = a.clone();
    all.extend(&b);
    assert_eq!(ds.hash(), *blake3::hash(&all).as_bytes());
    assert_eq!(ds.train_pages() + ds.held_out_pages(), 60);

    let file = Dataset::load(&dir.path().join("a.txt"), 9, 0.1).expect("load file");
    assert_eq!(file.hash(), *blake3::hash(&a).as_bytes());

    let empty = tempfile::tempdir().expect("tmp");
    let err = Dataset::load(empty.path(), 9, 0.1).expect_err("no txt");
    assert!(err.to_string().contains(".txt"), "{err}");
    let err = Dataset::load(&dir.path().join("missing.txt"), 9, 0.1).expect_err("missing");
    assert!(err.to_string().contains("missing.txt"), "{err}");
}

#[test]
fn bad_pages_are_rejected() {
    let cfg = tiny();
    let p = Params::init(&cfg).expect("init");
    assert!(matches!(eval_loss(&cfg, &p, &[]), Err(ModelError::Data(_))));
    assert!(eval_loss(&cfg, &p, &[vec![1; 34]]).is_err(), "too long");
    assert!(
        eval_loss(&cfg, &p, &[vec![1; 33], vec![1; 20]]).is_err(),
        "ragged"
    );
    assert!(
        eval_loss(&cfg, &p, &[vec![300; 33]]).is_err(),
        "out of vocab"
    );
    assert!(compute_update(&cfg, &train_cfg(), &p, &[]).is_err());
    assert!(Params::init(&ModelConfig {
        n_heads: 3,
        ..tiny()
    })
    .is_err());
}

#[test]
fn time_default_compute_update() {
    let cfg = ModelConfig::default();
    let train = TrainConfig::default();
    let ds = dataset(cfg.seq_len);
    let t0 = Instant::now();
    let base = Params::init(&cfg).expect("init");
    let init_time = t0.elapsed();
    let my_pages = pages(&ds, 0, train.pages_per_window);
    let t0 = Instant::now();
    let (u, loss) = compute_update(&cfg, &train, &base, &my_pages).expect("update");
    let dt = t0.elapsed();
    eprintln!(
        "default config: {} params, init {:?}, compute_update ({} steps x {} pages) {:?}, \
         first loss {loss:.3}, |update| {:.4}",
        base.num_params(),
        init_time,
        train.local_steps,
        train.batch_pages,
        dt,
        u.norm().expect("norm")
    );
}

// ---------------------------------------------------------------------------------------------
// Fused CPU kernels, devices, Hugging Face checkpoints

/// Loss and per-parameter gradients of one batch, on the fused or the reference path.
fn loss_and_grads(
    cfg: &ModelConfig,
    p: &Params,
    batch: &[Vec<u32>],
    fused: bool,
) -> (f32, Vec<Vec<f32>>) {
    let vars = model::make_vars(p).expect("vars");
    let tensors: Vec<_> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let w = model::Weights::new(cfg, p.names(), &tensors).expect("weights");
    let flat: Vec<u32> = batch.iter().flatten().copied().collect();
    let tokens = candle_core::Tensor::from_vec(
        flat,
        (batch.len(), batch[0].len()),
        &candle_core::Device::Cpu,
    )
    .expect("tokens");
    let ctx = model::Ctx::new(cfg, &candle_core::Device::Cpu, fused).expect("ctx");
    let loss = model::forward_loss_ctx(&ctx, &w, &tokens).expect("loss");
    let grads = loss.backward().expect("backward");
    let g = vars
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .expect("grad")
                .flatten_all()
                .expect("f")
                .to_vec1::<f32>()
                .expect("v")
        })
        .collect();
    (loss.to_scalar::<f32>().expect("s"), g)
}

#[test]
fn fused_kernels_match_reference_path_in_loss_and_every_gradient() {
    // Odd sizes on purpose: rows that do not fill a rayon task, short pages (t < seq_len).
    let cfg = ModelConfig {
        d_model: 48,
        n_heads: 3,
        d_ff: 72,
        seq_len: 40,
        ..tiny()
    };
    let ds = dataset(cfg.seq_len);
    // Train a few steps first so norm weights are not all 1 and activations are varied.
    let (u, _) = compute_update(
        &cfg,
        &train_cfg(),
        &Params::init(&cfg).expect("init"),
        &pages(&ds, 0, 8),
    )
    .expect("update");
    let p = aggregate(&Params::init(&cfg).expect("init"), &[u], 1.0).expect("agg");
    let mut batch = pages(&ds, 3, 5);
    for page in &mut batch {
        page.truncate(30);
    }
    let (lf, gf) = loss_and_grads(&cfg, &p, &batch, true);
    let (lr, gr) = loss_and_grads(&cfg, &p, &batch, false);
    assert_close(p.names(), (lf, &gf), (lr, &gr), "fused kernels");
}

/// Asserts a loss within 1e-5 (relative) and every gradient within 2e-4 of its largest
/// reference entry, each reference gradient non-zero.
fn assert_close(
    names: &[String],
    (l, g): (f32, &[Vec<f32>]),
    (lr, gr): (f32, &[Vec<f32>]),
    what: &str,
) {
    assert!(
        (l - lr).abs() < 1e-5 * lr.abs().max(1.0),
        "{what}: loss {l} vs reference {lr}"
    );
    for ((name, a), b) in names.iter().zip(g).zip(gr) {
        let diff: f32 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let scale: f32 = b.iter().map(|x| x.abs()).fold(0.0, f32::max);
        assert!(scale > 0.0, "{name}: zero reference gradient");
        assert!(
            diff <= 2e-4 * scale + 1e-7,
            "{what}, {name}: max |grad - reference| = {diff}, max |grad| = {scale}"
        );
    }
}

/// Loss and gradients of the hand-written CPU step.
fn cpu_step_loss_and_grads(
    cfg: &ModelConfig,
    p: &Params,
    batch: &[Vec<u32>],
) -> (f32, Vec<Vec<f32>>) {
    let mut step = crate::cpu_step::CpuStep::new(cfg, p.names()).expect("step");
    let params = step
        .layout()
        .flatten(&p.vecs().expect("vecs"))
        .expect("flat");
    let mut grads = vec![f32::NAN; params.len()];
    let flat: Vec<u32> = batch.concat();
    let (b, l) = (batch.len(), batch[0].len());
    let loss = step
        .run(&params, &flat, b, l, Some(&mut grads))
        .expect("run");
    (loss, step.layout().unflatten(&grads))
}

#[test]
fn cpu_step_matches_candle_autograd_in_loss_and_every_gradient() {
    // Pages longer than two causal attention blocks (64 rows) and a last block that is short;
    // odd sizes so rows do not fill a rayon task.
    let cfg = ModelConfig {
        d_model: 48,
        n_heads: 3,
        d_ff: 72,
        seq_len: 150,
        ..tiny()
    };
    let ds = dataset(cfg.seq_len);
    let base = Params::init(&cfg).expect("init");
    let (u, _) = compute_update(&cfg, &train_cfg(), &base, &pages(&ds, 0, 4)).expect("update");
    let p = aggregate(&base, &[u], 1.0).expect("agg");
    for len in [141, 30, 151] {
        let mut batch = pages(&ds, 3, 3);
        for page in &mut batch {
            page.truncate(len);
        }
        let (lc, gc) = cpu_step_loss_and_grads(&cfg, &p, &batch);
        let (lr, gr) = loss_and_grads(&cfg, &p, &batch, false);
        let what = format!("cpu step, pages of {len}");
        assert_close(p.names(), (lc, &gc), (lr, &gr), &what);
        // Same inputs, same bits (buffers reused from the previous run).
        let (lc2, gc2) = cpu_step_loss_and_grads(&cfg, &p, &batch);
        assert_eq!(lc.to_bits(), lc2.to_bits());
        assert!(gc
            .iter()
            .zip(&gc2)
            .all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())));
    }
}

#[test]
fn cpu_step_rejects_bad_batches() {
    let cfg = tiny();
    let p = Params::init(&cfg).expect("init");
    let mut step = crate::cpu_step::CpuStep::new(&cfg, p.names()).expect("step");
    let params = step
        .layout()
        .flatten(&p.vecs().expect("vecs"))
        .expect("flat");
    assert_eq!(step.layout().unflatten(&params), p.vecs().expect("vecs"));
    assert!(step.run(&params[1..], &[1, 2, 3], 1, 3, None).is_err());
    // Token outside the vocabulary, too long a page, length mismatch.
    let err = step
        .run(&params, &[1, 2, 300], 1, 3, None)
        .expect_err("vocab");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let long = vec![1u32; cfg.seq_len + 2];
    assert!(step.run(&params, &long, 1, long.len(), None).is_err());
    assert!(step.run(&params, &[1, 2, 3], 2, 2, None).is_err());
}

#[test]
fn compute_update_is_bit_identical_across_runs() {
    let cfg = tiny();
    let ds = dataset(cfg.seq_len);
    let base = Params::init(&cfg).expect("init");
    let my_pages = pages(&ds, 4, 8);
    let (a, la) = compute_update(&cfg, &train_cfg(), &base, &my_pages).expect("update");
    let (b, lb) = compute_update(&cfg, &train_cfg(), &base, &my_pages).expect("update");
    assert_eq!(la.to_bits(), lb.to_bits());
    assert_eq!(a.to_bytes().expect("b"), b.to_bytes().expect("b"));
    // The explicit-device variant and the Trainer API give the same bits.
    let (c, _) = compute_update_on(
        &cfg,
        &train_cfg(),
        &base,
        &my_pages,
        &candle_core::Device::Cpu,
    )
    .expect("on");
    assert_eq!(a.to_bytes().expect("b"), c.to_bytes().expect("b"));
    let mut t =
        Trainer::new(&cfg, &train_cfg(), &base, &candle_core::Device::Cpu).expect("trainer");
    for _ in 0..train_cfg().local_steps {
        t.step(&my_pages).expect("step");
    }
    assert_eq!(
        a.to_bytes().expect("b"),
        t.update().expect("u").to_bytes().expect("b")
    );
    let after = t.params().expect("params");
    assert!(t.loss(&my_pages).expect("loss") < la);
    assert_eq!(
        eval_loss(&cfg, &after, &my_pages).expect("eval").to_bits(),
        t.loss(&my_pages).expect("loss").to_bits()
    );
}

#[test]
fn reference_path_trains_close_to_fused_path() {
    let cfg = tiny();
    let ds = dataset(cfg.seq_len);
    let base = Params::init(&cfg).expect("init");
    let batch = pages(&ds, 5, 8);
    let cpu = candle_core::Device::Cpu;
    let mut f = Trainer::new(&cfg, &train_cfg(), &base, &cpu).expect("fused");
    let mut r = Trainer::new_reference(&cfg, &train_cfg(), &base, &cpu).expect("reference");
    for _ in 0..3 {
        let (a, b) = (f.step(&batch).expect("f"), r.step(&batch).expect("r"));
        assert!((a - b).abs() < 1e-3, "fused {a} vs reference {b}");
    }
    let c = cosine(&f.update().expect("u"), &r.update().expect("u")).expect("cos");
    assert!(c > 0.999, "fused vs reference update cosine {c}");
}

#[test]
fn device_selection() {
    assert!(matches!(select_device("cpu"), Ok(candle_core::Device::Cpu)));
    assert_eq!(
        "cuda:1".parse::<DeviceChoice>().expect("p"),
        DeviceChoice::Cuda(1)
    );
    assert_eq!(
        "cuda".parse::<DeviceChoice>().expect("p"),
        DeviceChoice::Cuda(0)
    );
    let err = select_device("tpu").expect_err("unknown");
    assert!(err.to_string().contains("\"cpu\""), "{err}");
    if !cuda_compiled() {
        assert!(select_device("auto").expect("auto").is_cpu());
        let err = select_device("cuda").expect_err("no cuda in this build");
        assert!(err.to_string().contains("--features cuda"), "{err}");
        let train = TrainConfig {
            device: "cuda".into(),
            ..train_cfg()
        };
        let cfg = tiny();
        let p = Params::init(&cfg).expect("init");
        let err = compute_update(&cfg, &train, &p, &pages(&dataset(cfg.seq_len), 0, 2))
            .expect_err("cuda asked for");
        assert!(matches!(err, ModelError::Device(_)), "{err}");
    }
}

fn trained_tiny() -> (ModelConfig, Params) {
    let cfg = tiny();
    let ds = dataset(cfg.seq_len);
    let base = Params::init(&cfg).expect("init");
    let (u, _) = compute_update(&cfg, &train_cfg(), &base, &pages(&ds, 0, 8)).expect("update");
    (cfg.clone(), aggregate(&base, &[u], 1.0).expect("agg"))
}

#[test]
fn hf_export_load_roundtrip_f32_is_bit_identical() {
    let (cfg, p) = trained_tiny();
    let dir = tempfile::tempdir().expect("tmp");
    let tok = dir.path().join("tok.json");
    std::fs::write(&tok, b"{\"version\": \"1.0\"}").expect("w");
    let out = dir.path().join("hf");
    export_hf_dir(&p, &cfg, &out, HfDtype::F32, Some(&tok)).expect("export");
    assert!(out.join("tokenizer.json").exists());
    let (cfg2, q) = load_hf_dir(&out).expect("load");
    assert_eq!(cfg2, cfg);
    assert_eq!(q.hash(), p.hash());
    assert_eq!(q.to_bytes().expect("b"), p.to_bytes().expect("b"));
    // The safetensors file carries transformers' {"format": "pt"} metadata.
    let bytes = std::fs::read(out.join("model.safetensors")).expect("read");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("meta");
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
}

#[test]
fn hf_bf16_export_loads_as_rounded_params() {
    let (cfg, p) = trained_tiny();
    let dir = tempfile::tempdir().expect("tmp");
    export_hf_dir(&p, &cfg, dir.path(), HfDtype::BF16, None).expect("export");
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).expect("r"))
            .expect("json");
    assert_eq!(cfg_json["torch_dtype"], "bfloat16");
    let (_, q) = load_hf_dir(dir.path()).expect("load");
    let rounded: Vec<Vec<f32>> = p
        .to_vecs()
        .expect("v")
        .iter()
        .map(|v| {
            v.iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect()
        })
        .collect();
    assert_eq!(q.to_vecs().expect("v"), rounded);
    assert_ne!(q.hash(), p.hash());
    let size = std::fs::metadata(dir.path().join("model.safetensors"))
        .expect("m")
        .len() as usize;
    assert!(
        size < p.num_params() * 2 + 8192,
        "bf16 file is {size} bytes"
    );
}

#[test]
fn hf_config_json_has_the_llama_fields() {
    let (cfg, p) = trained_tiny();
    let dir = tempfile::tempdir().expect("tmp");
    export_hf_dir(&p, &cfg, dir.path(), HfDtype::F32, None).expect("export");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).expect("r"))
            .expect("json");
    assert_eq!(v["architectures"], serde_json::json!(["LlamaForCausalLM"]));
    assert_eq!(v["model_type"], "llama");
    assert_eq!(v["hidden_size"], 32);
    assert_eq!(v["intermediate_size"], 64);
    assert_eq!(v["num_hidden_layers"], 2);
    assert_eq!(v["num_attention_heads"], 2);
    assert_eq!(v["num_key_value_heads"], 2);
    assert_eq!(v["head_dim"], 16);
    assert_eq!(v["max_position_embeddings"], 32);
    assert_eq!(v["vocab_size"], 256);
    assert_eq!(v["rms_norm_eps"], 1e-5);
    assert_eq!(v["rope_theta"], 10000.0);
    assert_eq!(v["rope_parameters"]["rope_type"], "default");
    assert_eq!(v["tie_word_embeddings"], false);
    assert_eq!(v["torch_dtype"], "float32");
    assert_eq!(v["hidden_act"], "silu");
    assert_eq!(v["attention_bias"], false);
    assert_eq!(v["mlp_bias"], false);
}

/// Writes `config.json` (from `edit` applied to apiary's) and `tensors` as `model.safetensors`.
fn write_hf(
    dir: &std::path::Path,
    cfg: &ModelConfig,
    edit: impl FnOnce(&mut serde_json::Value),
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) {
    let mut v = serde_json::to_value(HfConfig::from_model(cfg, HfDtype::F32)).expect("v");
    edit(&mut v);
    std::fs::write(dir.join("config.json"), v.to_string()).expect("w");
    std::fs::write(dir.join("model.safetensors"), raw_safetensors(tensors)).expect("w");
}

fn params_parts(p: &Params) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    p.names()
        .iter()
        .zip(p.tensors())
        .zip(p.to_vecs().expect("v"))
        .map(|((n, t), v)| (n.clone(), t.dims().to_vec(), v))
        .collect()
}

#[test]
fn hf_load_rejects_bad_checkpoints_clearly() {
    let cfg = tiny();
    let p = Params::init(&cfg).expect("init");
    let parts = params_parts(&p);
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();

    write_hf(
        d,
        &cfg,
        |v| v["architectures"] = serde_json::json!(["MistralForCausalLM"]),
        &parts,
    );
    let err = load_hf_dir(d).expect_err("arch");
    assert!(err.to_string().contains("LlamaForCausalLM"), "{err}");

    write_hf(
        d,
        &cfg,
        |v| v["num_key_value_heads"] = serde_json::json!(1),
        &parts,
    );
    let err = load_hf_dir(d).expect_err("gqa");
    assert!(err.to_string().contains("grouped-query"), "{err}");

    write_hf(
        d,
        &cfg,
        |v| v["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0}),
        &parts,
    );
    assert!(load_hf_dir(d)
        .expect_err("scaling")
        .to_string()
        .contains("rope_scaling"));

    let mut missing = parts.clone();
    let removed = missing.remove(4).0;
    write_hf(d, &cfg, |_| {}, &missing);
    match load_hf_dir(d) {
        Err(ModelError::MissingTensor(n)) => assert_eq!(n, removed),
        other => panic!("expected MissingTensor, got {other:?}"),
    }

    let mut wrong = parts.clone();
    let (name, shape, _) = &mut wrong[5];
    let name = name.clone();
    shape.reverse();
    if shape.len() == 1 {
        wrong[5].1 = vec![1, wrong[5].2.len()];
    }
    write_hf(d, &cfg, |_| {}, &wrong);
    match load_hf_dir(d) {
        Err(ModelError::ShapeMismatch { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }

    let mut extra = parts.clone();
    extra.push((
        "model.layers.0.self_attn.q_proj.bias".into(),
        vec![32],
        vec![0.0; 32],
    ));
    write_hf(d, &cfg, |_| {}, &extra);
    assert!(matches!(
        load_hf_dir(d),
        Err(ModelError::UnexpectedTensor(_))
    ));

    std::fs::remove_file(d.join("model.safetensors")).expect("rm");
    assert!(load_hf_dir(d)
        .expect_err("no weights")
        .to_string()
        .contains("model.safetensors"));
    assert!(load_hf_dir(&d.join("nowhere"))
        .expect_err("no dir")
        .to_string()
        .contains("config.json"));
}

#[test]
fn hf_loads_tied_embeddings_and_f16() {
    let cfg = tiny();
    let p = Params::init(&cfg).expect("init");
    let dir = tempfile::tempdir().expect("tmp");
    // Tied: no lm_head.weight in the file.
    let parts: Vec<_> = params_parts(&p)
        .into_iter()
        .filter(|(n, _, _)| n != "lm_head.weight")
        .collect();
    write_hf(
        dir.path(),
        &cfg,
        |v| v["tie_word_embeddings"] = serde_json::json!(true),
        &parts,
    );
    let (_, q) = load_hf_dir(dir.path()).expect("tied");
    let v = q.to_vecs().expect("v");
    let idx = |n: &str| q.names().iter().position(|x| x == n).expect("name");
    assert_eq!(
        v[idx("lm_head.weight")],
        v[idx("model.embed_tokens.weight")]
    );

    // f16 tensors convert to f32.
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = params_parts(&p)
        .into_iter()
        .map(|(n, s, v)| {
            let b = v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
                .collect();
            (n, s, b)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F16, s.clone(), b).expect("view"),
            )
        })
        .collect();
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(views, None).expect("s"),
    )
    .expect("w");
    write_hf_config_only(dir.path(), &cfg);
    let (_, q) = load_hf_dir(dir.path()).expect("f16");
    let want: Vec<Vec<f32>> = p
        .to_vecs()
        .expect("v")
        .iter()
        .map(|v| v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect())
        .collect();
    assert_eq!(q.to_vecs().expect("v"), want);
}

/// Whether to compare against `transformers`: `APIARY_HF_CHECK=1` demands it, `0` skips it, and
/// unset runs it when python3 can import torch and transformers.
fn hf_check_enabled() -> bool {
    match std::env::var("APIARY_HF_CHECK").as_deref() {
        Ok("1") => true,
        Ok(_) => false,
        Err(_) => std::process::Command::new("python3")
            .args(["-c", "import torch, transformers"])
            .output()
            .is_ok_and(|o| o.status.success()),
    }
}

fn write_hf_config_only(dir: &std::path::Path, cfg: &ModelConfig) {
    let v = serde_json::to_value(HfConfig::from_model(cfg, HfDtype::F32)).expect("v");
    std::fs::write(dir.join("config.json"), v.to_string()).expect("w");
}

/// Exports a trained tiny model and, when [`hf_check_enabled`] (python3 has torch and
/// transformers), checks that transformers computes the same loss with
/// `bench/reference/hf_check.py`. Otherwise it only checks the export writes.
#[test]
fn hf_export_matches_transformers_loss() {
    let (cfg, p) = trained_tiny();
    let ds = dataset(cfg.seq_len);
    let held = ds.held_out(8);
    let ours = eval_loss(&cfg, &p, &held).expect("eval");
    let dir = tempfile::tempdir().expect("tmp");
    export_hf_dir(&p, &cfg, dir.path(), HfDtype::F32, None).expect("export");
    let tokens = dir.path().join("tokens.json");
    std::fs::write(&tokens, serde_json::to_string(&held).expect("json")).expect("w");
    if !hf_check_enabled() {
        eprintln!("skipped the transformers comparison: python3 lacks torch + transformers");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/reference/hf_check.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(dir.path())
        .arg(&tokens)
        .args(["--expect", &ours.to_string(), "--tol", "1e-4"])
        .output()
        .expect("run python3");
    eprintln!(
        "apiary {ours}; {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "transformers disagrees");
}

/// When [`hf_check_enabled`] (python3 with torch + transformers): a bf16 checkpoint written by
/// transformers' `save_pretrained` loads in apiary, and both compute the same loss.
#[test]
fn hf_import_from_transformers_checkpoint() {
    if !hf_check_enabled() {
        eprintln!("skipped: python3 lacks torch + transformers (pip install torch transformers)");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/reference/hf_check.py"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("python3")
            .arg(script)
            .args(args)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let model_dir = dir.path().join("m");
    let m = model_dir.to_str().expect("utf8");
    run(&[m, "--init-random", "--dtype", "bfloat16", "--max-pos", "32"]);
    let (cfg, p) = load_hf_dir(&model_dir).expect("load transformers checkpoint");
    assert_eq!((cfg.d_model, cfg.n_layers, cfg.seq_len), (32, 2, 32));
    let held = dataset(cfg.seq_len).held_out(4);
    let ours = eval_loss(&cfg, &p, &held).expect("eval");
    let tokens = dir.path().join("tokens.json");
    std::fs::write(&tokens, serde_json::to_string(&held).expect("json")).expect("w");
    let out = run(&[
        m,
        tokens.to_str().expect("utf8"),
        "--expect",
        &ours.to_string(),
        "--tol",
        "1e-4",
    ]);
    eprintln!("apiary {ours}; transformers {out}");
}
