//! Benchmark 1: training throughput of apiary's training step (forward + backward + AdamW)
//! against PyTorch running the same model on the same machine (the same thread count on the CPU,
//! the same GPU with `APIARY_BENCH_DEVICE=cuda`).
//!
//! Model: LLaMA, 8 layers, d_model 512, 8 heads, d_ff 1376, seq 256, byte vocabulary; batch 8
//! pages (2048 tokens per step). Prints tokens/s, model FLOPs (`6 N tokens` for the weight
//! matmuls plus attention `12 L B T^2 D`) and achieved GFLOP/s for
//! - apiary ([`apiary_model::Trainer`]: on the CPU the hand-written forward/backward of
//!   `apiary_model::cpu_step`; on a GPU the candle-autograd path),
//! - PyTorch (`bench/reference/train_step.py`, `--device cuda` on a GPU) when
//!   `python3 -c "import torch"` works (on a GPU: and `torch.cuda.is_available()`), in
//!   `APIARY_BENCH_ROUNDS` (default 3) rounds alternating with apiary's,
//! - CPU only: apiary's candle-autograd path (composed candle ops + candle-nn AdamW, what GPUs
//!   run; skip with `APIARY_BENCH_SKIP_REFERENCE=1`),
//! - CPU only: apiary with the caching allocator switched off (every large block goes back to
//!   glibc, as without `apiary-alloc`; skip with `APIARY_BENCH_SKIP_SYSTEM_ALLOC=1`),
//!
//! Knobs (environment): `APIARY_BENCH_STEPS` (timed steps, default 5), `APIARY_BENCH_BATCH`
//! (default 8), `APIARY_BENCH_LAYERS` (default 8), `APIARY_BENCH_D_MODEL` (default 512; heads
//! `d_model / 64`, d_ff `8/3 d_model` rounded up to a multiple of 32), `APIARY_BENCH_SEQ`
//! (default 256), `APIARY_BENCH_DEVICE` (`cpu` default, `cuda`, `auto`; on a GPU it reports
//! model FLOPs utilization against `APIARY_BENCH_PEAK_TFLOPS`, default 67 = H100 SXM FP32
//! non-tensor-core peak, since training runs in f32), `APIARY_BENCH_TF32=1` (GPU: let f32
//! matmuls use TF32 tensor cores, in apiary and PyTorch alike; set the peak to match, e.g. 495
//! for H100 SXM dense TF32), `RAYON_NUM_THREADS` (threads, for both apiary and PyTorch). Plain
//! `Instant` timing (on a GPU up to a device synchronize after each step), 1 warm-up step,
//! median.

use apiary_alloc::CachingAlloc;
use apiary_config::{ModelConfig, TrainConfig};
use apiary_model::{select_device, Params, Trainer};
use std::process::Command;
use std::time::Instant;

/// The allocator the `apiary` binary uses (see apiary-alloc).
#[global_allocator]
static ALLOC: CachingAlloc = CachingAlloc::new();
/// The cache limit the bench measures with (the node's default, `node.alloc_cache_mb`, is
/// smaller): large enough for a whole step's working set.
const BENCH_CACHE_LIMIT: usize = 4 << 30;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Deterministic pseudo-random byte pages (`batch` pages of `seq + 1` tokens).
fn pages(batch: usize, seq: usize) -> Vec<Vec<u32>> {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..batch)
        .map(|_| {
            (0..=seq)
                .map(|_| {
                    s = s
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((s >> 33) % 256) as u32
                })
                .collect()
        })
        .collect()
}

/// Model FLOPs of one training step: `6 * N_matmul * tokens + 12 * L * B * T^2 * D`.
fn step_flops(cfg: &ModelConfig, batch: usize) -> f64 {
    let (d, f, v, l) = (
        cfg.d_model as f64,
        cfg.d_ff as f64,
        cfg.vocab_size as f64,
        cfg.n_layers as f64,
    );
    let t = cfg.seq_len as f64;
    let n_matmul = l * (4.0 * d * d + 3.0 * d * f) + v * d;
    let tokens = batch as f64 * t;
    6.0 * n_matmul * tokens + 12.0 * l * batch as f64 * t * t * d
}

/// Times `steps` training steps after one warm-up; returns the median seconds per step. Each
/// step is timed up to a device synchronize, so that a GPU's queued backward pass and optimizer
/// step count in the step that launched them.
fn time_steps(trainer: &mut Trainer, batch: &[Vec<u32>], steps: usize) -> anyhow::Result<f64> {
    let warm = trainer.step(batch)?;
    trainer.device().synchronize()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        trainer.step(batch)?;
        trainer.device().synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    eprintln!("    (loss before {warm:.3}, steps {times:.2?} s)");
    Ok(median(times))
}

/// Where and how the PyTorch reference runs: `--device` and whether f32 matmuls may use TF32.
struct TorchTarget<'a> {
    device: &'a str,
    tf32: bool,
}

/// Runs the PyTorch reference script once; returns its median seconds per step, version and
/// thread count (on a GPU: the device name).
fn torch_round(
    cfg: &ModelConfig,
    batch_n: usize,
    steps: usize,
    threads: usize,
    target: &TorchTarget<'_>,
) -> anyhow::Result<(f64, String, serde_json::Value)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/reference/train_step.py");
    let s = |v: usize| v.to_string();
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--vocab", &s(cfg.vocab_size), "--d-model", &s(cfg.d_model)])
        .args(["--layers", &s(cfg.n_layers), "--heads", &s(cfg.n_heads)])
        .args(["--d-ff", &s(cfg.d_ff), "--seq", &s(cfg.seq_len)])
        .args(["--batch", &s(batch_n), "--steps", &s(steps)])
        .args(["--threads", &s(threads), "--lr", "3e-3"])
        .args(["--device", target.device]);
    if target.tf32 {
        cmd.arg("--tf32");
    }
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "reference script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)?;
    let secs = v["median_step_s"].as_f64().unwrap_or(f64::NAN);
    let version = v["torch"].as_str().unwrap_or("?").to_string();
    let place = if target.device == "cpu" {
        v["threads"].clone()
    } else {
        v["device"].clone()
    };
    Ok((secs, version, place))
}

fn report(name: &str, secs: f64, tokens: usize, flops: f64) -> f64 {
    let tps = tokens as f64 / secs;
    println!(
        "{name:<28} {tps:>9.0} tokens/s   {:>7.3} s/step   {:>7.1} GFLOP/s",
        secs,
        flops / secs / 1e9
    );
    tps
}

/// The benchmarked model: LLaMA with a byte vocabulary, `APIARY_BENCH_LAYERS` x
/// `APIARY_BENCH_D_MODEL` (heads of 64, SwiGLU inner size 8/3 d rounded up to 32) at
/// `APIARY_BENCH_SEQ`; 8 x 512 (8 heads, d_ff 1376) at 256 by default.
fn bench_model() -> anyhow::Result<ModelConfig> {
    let d_model = env_usize("APIARY_BENCH_D_MODEL", 512);
    let cfg = ModelConfig {
        vocab_size: 256,
        d_model,
        n_layers: env_usize("APIARY_BENCH_LAYERS", 8),
        n_heads: (d_model / 64).max(1),
        d_ff: (8 * d_model).div_ceil(3 * 32) * 32,
        seq_len: env_usize("APIARY_BENCH_SEQ", 256),
        ..ModelConfig::default()
    };
    cfg.validate()?;
    Ok(cfg)
}

/// `APIARY_BENCH_TF32=1`: f32 matmuls on the GPU may use TF32 tensor cores.
fn set_tf32(tf32: bool) {
    #[cfg(feature = "cuda")]
    candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
    #[cfg(not(feature = "cuda"))]
    if tf32 {
        eprintln!("APIARY_BENCH_TF32: no effect in a build without the `cuda` feature");
    }
}

fn main() -> anyhow::Result<()> {
    ALLOC.set_limit(BENCH_CACHE_LIMIT);
    let cfg = bench_model()?;
    let batch_n = env_usize("APIARY_BENCH_BATCH", 8);
    let steps = env_usize("APIARY_BENCH_STEPS", 5);
    let device_name = std::env::var("APIARY_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = select_device(&device_name)?;
    let tf32 = std::env::var("APIARY_BENCH_TF32").is_ok_and(|v| v == "1");
    set_tf32(tf32);
    let threads = candle_core::utils::get_num_threads();
    let train = TrainConfig {
        learning_rate: 3e-3,
        ..TrainConfig::default()
    };
    let base = Params::init(&cfg)?;
    let batch = pages(batch_n, cfg.seq_len);
    let tokens = batch_n * cfg.seq_len;
    let flops = step_flops(&cfg, batch_n);
    println!(
        "train_throughput: LLaMA {} layers, d_model {}, {} heads, d_ff {}, seq {}, vocab {}, \
         {} params; batch {batch_n} x {} = {tokens} tokens/step; device {device_name}{}, \
         {threads} threads; {:.1} GFLOP/step (6*N*tokens + attention); median of {steps} steps",
        cfg.n_layers,
        cfg.d_model,
        cfg.n_heads,
        cfg.d_ff,
        cfg.seq_len,
        cfg.vocab_size,
        base.num_params(),
        cfg.seq_len,
        if tf32 { " (TF32 matmuls)" } else { "" },
        flops / 1e9
    );

    let torch_target = TorchTarget {
        device: if device.is_cpu() { "cpu" } else { "cuda" },
        tf32,
    };
    let torch_check = if device.is_cpu() {
        "import torch"
    } else {
        "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    };
    let has_torch = (device.is_cpu() || device.is_cuda())
        && Command::new("python3")
            .args(["-c", torch_check])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    // Rounds alternate apiary and PyTorch so that drifting machine load hits both alike; the
    // ratio reported is that of the medians over all rounds.
    let rounds = if has_torch {
        env_usize("APIARY_BENCH_ROUNDS", 3)
    } else {
        1
    };
    let mut trainer = Trainer::new(&cfg, &train, &base, &device)?;
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut torch_info = None;
    for round in 1..=rounds {
        let a = time_steps(&mut trainer, &batch, steps)?;
        ours.push(a);
        if has_torch {
            let (t, version, threads) = torch_round(&cfg, batch_n, steps, threads, &torch_target)?;
            println!(
                "round {round}/{rounds}: apiary {a:.3} s/step, pytorch {t:.3} s/step, \
                 apiary/pytorch {:.2}x",
                t / a
            );
            theirs.push(t);
            ratios.push(t / a);
            torch_info = Some((version, threads));
        }
    }
    let fused = median(ours);
    let apiary = report("apiary", fused, tokens, flops);
    let cache = ALLOC.stats();
    println!(
        "    allocator cache: {} hits, {} misses, {:.0} MiB kept",
        cache.hits,
        cache.misses,
        cache.cached_bytes as f64 / (1 << 20) as f64
    );
    let peak: f64 = std::env::var("APIARY_BENCH_PEAK_TFLOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(67.0);
    let mfu = |secs: f64| 100.0 * flops / secs / (peak * 1e12);
    if !device.is_cpu() {
        println!(
            "model FLOPs utilization: {:.1}% of {peak} TFLOP/s (set APIARY_BENCH_PEAK_TFLOPS)",
            mfu(fused)
        );
    }
    if let Some((version, torch_place)) = torch_info {
        let torch_secs = median(theirs);
        let torch = report(&format!("pytorch {version}"), torch_secs, tokens, flops);
        let place = if device.is_cpu() {
            format!("torch threads {torch_place}")
        } else {
            println!(
                "pytorch model FLOPs utilization: {:.1}% of {peak} TFLOP/s",
                mfu(torch_secs)
            );
            format!("torch device {torch_place}")
        };
        println!(
            "apiary / pytorch: {:.2}x (tokens/s, medians over {rounds} alternating rounds; per-round \
             ratios {ratios:.2?}; target >= 1.0x on CPU; {place})",
            apiary / torch
        );
    } else if !device.is_cpu() {
        println!(
            "pytorch: skipped (needs python3 with torch and, for {device_name}, \
             torch.cuda.is_available())"
        );
    } else {
        println!(
            "pytorch: not available. Install it to compare: `pip install torch --index-url \
             https://download.pytorch.org/whl/cpu` (or plain `pip install torch`), then rerun."
        );
    }
    drop(trainer);
    if !device.is_cpu() {
        // On a GPU the trainer already runs the candle-autograd path, and the caching allocator
        // only sees host memory: neither extra row would measure anything new.
        return Ok(());
    }

    if std::env::var("APIARY_BENCH_SKIP_SYSTEM_ALLOC").is_err() {
        ALLOC.set_limit(0);
        ALLOC.trim();
        let system = time_steps(
            &mut Trainer::new(&cfg, &train, &base, &device)?,
            &batch,
            steps.min(3),
        )?;
        ALLOC.set_limit(BENCH_CACHE_LIMIT);
        report("apiary, glibc malloc", system, tokens, flops);
        println!(
            "caching allocator / glibc malloc: {:.2}x faster per step",
            system / fused
        );
    }
    if std::env::var("APIARY_BENCH_SKIP_REFERENCE").is_err() {
        let reference = time_steps(
            &mut Trainer::new_reference(&cfg, &train, &base, &device)?,
            &batch,
            steps.min(3),
        )?;
        report("apiary candle-autograd path", reference, tokens, flops);
        println!(
            "hand-written CPU step / candle autograd path: {:.2}x faster per step",
            reference / fused
        );
    }
    Ok(())
}
