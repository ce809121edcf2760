//! Throughput of `apiary-compress` on ~64M f32 parameters in LLaMA-like tensor sizes:
//! compress (with error feedback), encode/decode, decompress and accumulate, in GB/s of dense
//! f32 parameters, each against a `copy_from_slice` of the same bytes measured in the same run.
//!
//! Run: `cargo bench -p apiary-bench --bench compress_throughput`. Prints only; never asserts
//! timings.

use apiary_compress::{accumulate, decompress, CompressConfig, CompressedUpdate, Compressor};
use std::hint::black_box;
use std::time::Instant;

const WARMUP: usize = 1;
const RUNS: usize = 5;

/// Median wall time in seconds of `RUNS` runs of `f` after `WARMUP` runs.
fn median_secs(mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..WARMUP {
        f()?;
    }
    let mut t = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[RUNS / 2])
}

/// Tensor lengths of a LLaMA-style model: vocab 8192, d 1024, 4 layers, d_ff 2752 (~67M).
fn lengths() -> Vec<usize> {
    let (v, d, f, layers) = (8192, 1024, 2752, 4);
    let mut l = vec![v * d, d, v * d];
    for _ in 0..layers {
        l.extend([d * d, d * d, d * d, d * d, f * d, f * d, d * f, d, d]);
    }
    l
}

/// Pseudo-random values in (-1, 1) from an LCG (fast, deterministic).
fn tensors(lengths: &[usize], seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    lengths
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((s >> 40) as i32 - (1 << 23)) as f32 / (1 << 23) as f32 * 1e-3
                })
                .collect()
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let lengths = lengths();
    let params: usize = lengths.iter().sum();
    let bytes = 4.0 * params as f64;
    let gbs = |secs: f64| bytes / secs / 1e9;
    println!(
        "compress_throughput: {params} f32 parameters ({:.0} MB) in {} tensors; median of {RUNS} \
         runs after {WARMUP} warm-up; single thread",
        bytes / 1e6,
        lengths.len()
    );
    let x = tensors(&lengths, 1);
    let mut dst: Vec<Vec<f32>> = lengths.iter().map(|&n| vec![0.0; n]).collect();
    let memcpy = median_secs(|| {
        for (d, s) in dst.iter_mut().zip(&x) {
            d.copy_from_slice(s);
        }
        black_box(&dst);
        Ok(())
    })?;
    println!("memcpy (copy_from_slice): {:.2} GB/s", gbs(memcpy));
    println!();
    println!(
        "{:<26} {:>8} {:>9} | {:>15} | {:>15} | {:>15} | {:>15} | {:>15}",
        "config", "density", "bytes x", "compress", "encode", "decode", "decompress", "accumulate"
    );
    println!(
        "{:<26} {:>8} {:>9} | {:>15} | {:>15} | {:>15} | {:>15} | {:>15}",
        "",
        "",
        "vs f32",
        "GB/s (/memcpy)",
        "GB/s (/memcpy)",
        "GB/s (/memcpy)",
        "GB/s (/memcpy)",
        "GB/s (/memcpy)"
    );
    let configs = [
        (
            "256/4 f32",
            CompressConfig {
                chunk: 256,
                topk: 4,
                dct: false,
                quant_bits: None,
            },
        ),
        ("256/4 q8 (density_1_56)", CompressConfig::density_1_56()),
        ("1024/4 q8 (density_0_4)", CompressConfig::density_0_4()),
        (
            "4096/64 q2 (Templar)",
            CompressConfig {
                chunk: 4096,
                topk: 64,
                dct: false,
                quant_bits: Some(2),
            },
        ),
        (
            "256/4 DCT q8",
            CompressConfig {
                chunk: 256,
                topk: 4,
                dct: true,
                quant_bits: Some(8),
            },
        ),
        (
            "1024/4 DCT q4",
            CompressConfig {
                chunk: 1024,
                topk: 4,
                dct: true,
                quant_bits: Some(4),
            },
        ),
    ];
    let mut acc: Vec<Vec<f32>> = lengths.iter().map(|&n| vec![0.0; n]).collect();
    for (name, cfg) in configs {
        let mut comp = Compressor::new(cfg, &lengths)?;
        let mut last: Option<CompressedUpdate> = None;
        let t_compress = median_secs(|| {
            last = Some(black_box(comp.compress(&x)?));
            Ok(())
        })?;
        let u = last.ok_or_else(|| anyhow::anyhow!("no update"))?;
        let mut encoded = Vec::new();
        let t_encode = median_secs(|| {
            encoded = black_box(u.to_bytes());
            Ok(())
        })?;
        let t_decode = median_secs(|| {
            black_box(CompressedUpdate::from_bytes(&encoded)?);
            Ok(())
        })?;
        let t_decompress = median_secs(|| {
            black_box(decompress(&u, &lengths)?);
            Ok(())
        })?;
        let t_accumulate = median_secs(|| {
            accumulate(&mut acc, &u, 0.25)?;
            black_box(&acc);
            Ok(())
        })?;
        let cell = |t: f64| format!("{:>6.2} ({:>5.3}x)", gbs(t), memcpy / t);
        println!(
            "{:<26} {:>7.3}% {:>8.1}x | {} | {} | {} | {} | {}",
            name,
            100.0 * cfg.density(),
            u.dense_bytes() as f64 / encoded.len() as f64,
            cell(t_compress),
            cell(t_encode),
            cell(t_decode),
            cell(t_decompress),
            cell(t_accumulate),
        );
    }
    println!();
    println!(
        "GB/s are of dense f32 parameters processed (4 bytes x {params}); (/memcpy) is speed \
         relative to memcpy of the same bytes (1.0 = as fast as memcpy). decompress includes \
         allocating the zeroed output; accumulate adds into an existing dense accumulator."
    );
    Ok(())
}
