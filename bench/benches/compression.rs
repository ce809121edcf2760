//! Does compression hurt training? Simulates `WINDOWS` windows of `MINERS` miners on
//! tinyshakespeare (each runs `compute_update` on its assigned pages), aggregated densely
//! (`apiary_model::aggregate`) or through `apiary-compress` (each miner has its own
//! `Compressor` with error feedback; the lead decodes the bytes, decompresses, builds
//! `Update::from_vecs` and calls `aggregate`). Prints bytes per update (and the ratio vs dense
//! f32), the held-out loss after the last window and its difference vs dense.
//!
//! Run: `cargo bench -p apiary-bench --bench compression`. Environment overrides:
//! `BENCH_WINDOWS` (default 30), `BENCH_MINERS` (default 4), `BENCH_LR_SCALES` (e.g.
//! `2,4`: also runs four compressed configs and dense with outer_lr multiplied by each),
//! `BENCH_VARIANTS` (comma-separated name substrings to run, e.g. `q4,lr x2`; dense always
//! runs). Prints only; never asserts.
//!
//! Finding (30 windows): sparse updates with error feedback want about twice the dense outer
//! lr (each coordinate is sent rarely, so its accumulated value arrives late), while dense
//! training gets worse at 2x; see `BENCH_LR_SCALES`.

use anyhow::Context;
use apiary_compress::{decompress, CompressConfig, CompressedUpdate, Compressor};
use apiary_config::{ModelConfig, TrainConfig};
use apiary_model::{aggregate, assign_pages, compute_update, eval_loss, Dataset, Params, Update};
use std::path::PathBuf;
use std::time::Instant;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One way to aggregate: dense, or compressed with a config; `lr_scale` multiplies outer_lr.
struct Variant {
    name: String,
    compress: Option<CompressConfig>,
    lr_scale: f64,
}

struct Outcome {
    loss: f32,
    mean_bytes: f64,
    dense_bytes: usize,
    secs: f64,
}

struct Setup {
    cfg: ModelConfig,
    train: TrainConfig,
    data: Dataset,
    held: Vec<Vec<u32>>,
    windows: usize,
    miners: usize,
}

fn run(s: &Setup, v: &Variant) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let mut params = Params::init(&s.cfg)?;
    let lengths: Vec<usize> = params.tensors().iter().map(|t| t.elem_count()).collect();
    let mut compressors = match v.compress {
        Some(c) => (0..s.miners)
            .map(|_| Compressor::new(c, &lengths))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let (mut total_bytes, mut n_updates) = (0usize, 0usize);
    let dense_bytes = 4 * lengths.iter().sum::<usize>();
    for window in 0..s.windows as u64 {
        let mut updates = Vec::with_capacity(s.miners);
        for uid in 0..s.miners {
            let pages: Vec<Vec<u32>> = assign_pages(
                uid as u16,
                window,
                s.train.data_seed,
                s.data.train_pages(),
                s.train.pages_per_window,
            )
            .into_iter()
            .map(|i| s.data.page(i))
            .collect();
            let (u, _) = compute_update(&s.cfg, &s.train, &params, &pages)?;
            match compressors.get_mut(uid) {
                None => updates.push(u),
                Some(comp) => {
                    let bytes = comp.compress(&u.to_vecs()?)?.to_bytes();
                    total_bytes += bytes.len();
                    n_updates += 1;
                    // The lead's side: decode the wire bytes, decompress, aggregate.
                    let received = CompressedUpdate::from_bytes(&bytes)?;
                    let dense = decompress(&received, &lengths)?;
                    updates.push(Update::from_vecs(&s.cfg, dense)?);
                }
            }
        }
        params = aggregate(&params, &updates, s.train.outer_lr * v.lr_scale)?;
    }
    Ok(Outcome {
        loss: eval_loss(&s.cfg, &params, &s.held)?,
        mean_bytes: if n_updates == 0 {
            dense_bytes as f64
        } else {
            total_bytes as f64 / n_updates as f64
        },
        dense_bytes,
        secs: start.elapsed().as_secs_f64(),
    })
}

fn main() -> anyhow::Result<()> {
    let windows = env_or("BENCH_WINDOWS", 30);
    let miners = env_or("BENCH_MINERS", 4);
    let cfg = ModelConfig {
        d_model: 96,
        n_layers: 2,
        n_heads: 4,
        d_ff: 256,
        seq_len: 64,
        ..ModelConfig::default()
    };
    let train = TrainConfig {
        pages_per_window: 8,
        batch_pages: 8,
        local_steps: 4,
        ..TrainConfig::default()
    };
    let repo_copy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/tinyshakespeare.txt");
    let path = if repo_copy.exists() {
        repo_copy
    } else {
        PathBuf::from("/work/shared/data/tinyshakespeare.txt")
    };
    let data = Dataset::load(&path, cfg.seq_len, train.held_out_fraction)
        .with_context(|| format!("loading {}", path.display()))?;
    let held = data.held_out(64);
    let setup = Setup {
        cfg,
        train,
        data,
        held,
        windows,
        miners,
    };
    let init = eval_loss(&setup.cfg, &Params::init(&setup.cfg)?, &setup.held)?;
    println!(
        "compression: {windows} windows x {miners} miners, model d_model {} layers {} d_ff {} \
         ({} params), {} local AdamW steps on {} pages/window, inner lr {}, outer lr {}; \
         held-out loss on {} pages, initial {init:.4}",
        setup.cfg.d_model,
        setup.cfg.n_layers,
        setup.cfg.d_ff,
        Params::init(&setup.cfg)?.num_params(),
        setup.train.local_steps,
        setup.train.pages_per_window,
        setup.train.learning_rate,
        setup.train.outer_lr,
        setup.held.len()
    );
    let c = |chunk, topk, dct, quant_bits| CompressConfig {
        chunk,
        topk,
        dct,
        quant_bits,
    };
    let mut variants = vec![Variant {
        name: "dense f32".into(),
        compress: None,
        lr_scale: 1.0,
    }];
    for (name, cc) in [
        ("1.56% 256/4 f32", c(256, 4, false, None)),
        ("1.56% 256/4 q8", c(256, 4, false, Some(8))),
        ("1.56% 256/4 q4", c(256, 4, false, Some(4))),
        ("1.56% 256/4 DCT q8", c(256, 4, true, Some(8))),
        ("1.56% 4096/64 q2 (Templar)", c(4096, 64, false, Some(2))),
        ("1.17% 1024/12 q4", c(1024, 12, false, Some(4))),
        ("0.78% 1024/8 q4", c(1024, 8, false, Some(4))),
        ("0.39% 1024/4 q8", c(1024, 4, false, Some(8))),
        ("0.39% 1024/4 q4", c(1024, 4, false, Some(4))),
        ("0.39% 1024/4 DCT q8", c(1024, 4, true, Some(8))),
        ("0.39% 1024/4 DCT q4", c(1024, 4, true, Some(4))),
    ] {
        variants.push(Variant {
            name: name.into(),
            compress: Some(cc),
            lr_scale: 1.0,
        });
    }
    for scale in std::env::var("BENCH_LR_SCALES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse::<f64>().ok())
    {
        for (name, cc) in [
            ("1.56% 256/4 q8", c(256, 4, false, Some(8))),
            ("1.17% 1024/12 q4", c(1024, 12, false, Some(4))),
            ("0.78% 1024/8 q4", c(1024, 8, false, Some(4))),
            ("0.39% 1024/4 q4", c(1024, 4, false, Some(4))),
        ] {
            variants.push(Variant {
                name: format!("{name} lr x{scale}"),
                compress: Some(cc),
                lr_scale: scale,
            });
        }
        variants.push(Variant {
            name: format!("dense f32 lr x{scale}"),
            compress: None,
            lr_scale: scale,
        });
    }
    // Optional filter: only variants whose name contains one of these (dense f32 always runs).
    if let Ok(only) = std::env::var("BENCH_VARIANTS") {
        let keys: Vec<&str> = only.split(',').filter(|k| !k.is_empty()).collect();
        variants.retain(|v| v.name == "dense f32" || keys.iter().any(|k| v.name.contains(k)));
    }
    println!();
    println!(
        "{:<30} {:>12} {:>10} {:>12} {:>12} {:>8}",
        "variant", "bytes/update", "vs f32", "held-out", "vs dense", "time"
    );
    let mut dense_loss = None;
    for v in &variants {
        let o = run(&setup, v)?;
        let base = *dense_loss.get_or_insert(o.loss);
        println!(
            "{:<30} {:>12.0} {:>9.1}x {:>12.4} {:>+11.2}% {:>7.1}s",
            v.name,
            o.mean_bytes,
            o.dense_bytes as f64 / o.mean_bytes,
            o.loss,
            100.0 * (f64::from(o.loss) - f64::from(base)) / f64::from(base),
            o.secs
        );
    }
    println!();
    println!(
        "target: >= 150x fewer bytes than dense f32 with held-out loss within 3% of dense \
         (vs dense = (loss - dense loss) / dense loss; negative is better)"
    );
    Ok(())
}
