//! Unit tests of the compressor, the byte format, the DCT and slices.

use super::*;
use crate::dct::{cos_pi_frac, Dct};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Tensor lengths covering full chunks, short last chunks, tiny and empty tensors.
const LENGTHS: &[usize] = &[1000, 256, 64, 3, 0, 4113];

fn cfg(chunk: usize, topk: usize, dct: bool, quant_bits: Option<u8>) -> CompressConfig {
    CompressConfig {
        chunk,
        topk,
        dct,
        quant_bits,
    }
}

/// A spread of valid configurations.
fn configs() -> Vec<CompressConfig> {
    vec![
        cfg(64, 4, false, None),
        cfg(64, 4, false, Some(8)),
        cfg(64, 4, true, None),
        cfg(64, 8, true, Some(4)),
        cfg(256, 4, false, Some(2)),
        cfg(256, 4, true, Some(2)),
        cfg(16, 16, false, None),
        cfg(2, 1, false, Some(3)),
        CompressConfig::density_1_56(),
        CompressConfig::density_0_4(),
        CompressConfig::density_1_17(),
    ]
}

fn rand_tensors(rng: &mut ChaCha20Rng, lengths: &[usize], scale: f32) -> Vec<Vec<f32>> {
    lengths
        .iter()
        .map(|&l| (0..l).map(|_| rng.gen_range(-scale..scale)).collect())
        .collect()
}

/// Reference top-k: indices of the k largest |x| (ties: lower index), ascending.
fn reference_topk(x: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
    let mut keep: Vec<usize> = order.into_iter().take(k).collect();
    keep.sort_unstable();
    keep
}

#[test]
fn config_validate_rejects_bad_values() {
    for bad in [
        cfg(0, 1, false, None),
        cfg(1, 1, false, None),
        cfg(MAX_CHUNK + 1, 4, false, None),
        cfg(64, 0, false, None),
        cfg(64, 65, false, None),
        cfg(100, 4, true, None),
        cfg(64, 4, false, Some(1)),
        cfg(64, 4, false, Some(9)),
        cfg(64, 4, false, Some(0)),
    ] {
        let e = bad.validate().unwrap_err();
        assert!(matches!(e, CompressError::InvalidConfig(_)), "{bad:?}: {e}");
        assert!(Compressor::new(bad, &[10]).is_err());
    }
    for good in configs() {
        good.validate().unwrap();
    }
    assert_eq!(CompressConfig::density_1_56().density(), 0.015625);
    assert_eq!(CompressConfig::density_0_4().density(), 4.0 / 1024.0);
    for (chunk, bits) in [
        (2, 1),
        (3, 2),
        (4, 2),
        (256, 8),
        (257, 9),
        (1024, 10),
        (4096, 12),
        (65536, 16),
    ] {
        assert_eq!(
            cfg(chunk, 1, false, None).index_bits(),
            bits,
            "chunk {chunk}"
        );
    }
}

#[test]
fn error_feedback_conserves_the_sum_over_many_rounds() {
    for c in configs() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut comp = Compressor::new(c, LENGTHS).unwrap();
        let mut sum_x: Vec<Vec<f64>> = LENGTHS.iter().map(|&l| vec![0.0; l]).collect();
        let mut sum_d = sum_x.clone();
        for _ in 0..60 {
            let x = rand_tensors(&mut rng, LENGTHS, 1.0);
            let u = comp.compress(&x).unwrap();
            let d = decompress(&u, LENGTHS).unwrap();
            for t in 0..LENGTHS.len() {
                for i in 0..LENGTHS[t] {
                    sum_x[t][i] += f64::from(x[t][i]);
                    sum_d[t][i] += f64::from(d[t][i]);
                }
            }
        }
        let mut max_err = 0.0f64;
        let mut residual_norm = 0.0f64;
        for t in 0..LENGTHS.len() {
            for i in 0..LENGTHS[t] {
                let r = f64::from(comp.residual()[t][i]);
                residual_norm += r * r;
                max_err = max_err.max((sum_x[t][i] - sum_d[t][i] - r).abs());
            }
        }
        assert!(max_err < 1e-3, "{c:?}: sum mismatch {max_err}");
        let lossless = c.topk == c.chunk && c.quant_bits.is_none();
        assert_eq!(
            residual_norm == 0.0,
            lossless,
            "{c:?}: residual {residual_norm}"
        );
    }
}

#[test]
fn decompress_keeps_exactly_the_topk_entries_per_chunk() {
    for (chunk, topk) in [(64, 4), (16, 16), (2, 1), (256, 3), (1000, 7)] {
        let c = cfg(chunk, topk, false, None);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let x = rand_tensors(&mut rng, LENGTHS, 3.0);
        let mut comp = Compressor::new(c, LENGTHS).unwrap();
        let u = comp.compress(&x).unwrap();
        let d = decompress(&u, LENGTHS).unwrap();
        let mut entries = 0;
        for (t, xt) in x.iter().enumerate() {
            let mut expected = vec![0.0f32; xt.len()];
            let mut residual = xt.clone();
            for start in (0..xt.len()).step_by(chunk) {
                let end = (start + chunk).min(xt.len());
                for i in reference_topk(&xt[start..end], topk) {
                    expected[start + i] = xt[start + i];
                    residual[start + i] = 0.0;
                    entries += 1;
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d[t]), bits(&expected), "chunk {chunk} tensor {t}");
            assert_eq!(bits(&comp.residual()[t]), bits(&residual));
        }
        assert_eq!(u.num_entries(), entries);
    }
}

#[test]
fn ties_are_broken_by_lower_index() {
    let x = vec![vec![1.0, -2.0, 2.0, 0.0, 2.0, -2.0, 1.0, 0.0]];
    let mut comp = Compressor::new(cfg(8, 3, false, None), &[8]).unwrap();
    let d = decompress(&comp.compress(&x).unwrap(), &[8]).unwrap();
    assert_eq!(d[0], vec![0.0, -2.0, 2.0, 0.0, 2.0, 0.0, 0.0, 0.0]);
    // All zeros: the first k positions are kept.
    let mut comp = Compressor::new(cfg(4, 2, false, Some(4)), &[4]).unwrap();
    let u = comp.compress(&[vec![0.0; 4]]).unwrap();
    assert_eq!(u.indices, vec![0, 1]);
}

#[test]
fn quantization_error_is_within_the_bound_for_every_width() {
    let lengths = [64 * 50 + 9];
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let x = rand_tensors(&mut rng, &lengths, 5.0);
    let plain = decompress(
        &Compressor::new(cfg(64, 8, false, None), &lengths)
            .unwrap()
            .compress(&x)
            .unwrap(),
        &lengths,
    )
    .unwrap();
    let mut prev_max = f32::INFINITY;
    for bits in 2..=8u8 {
        let c = cfg(64, 8, false, Some(bits));
        let d = decompress(
            &Compressor::new(c, &lengths).unwrap().compress(&x).unwrap(),
            &lengths,
        )
        .unwrap();
        let mut max_rel = 0.0f32;
        for start in (0..lengths[0]).step_by(64) {
            let end = (start + 64).min(lengths[0]);
            let s = plain[0][start..end]
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()));
            // Plus a few ulps of s: the bin of a value right at a boundary is decided in f32.
            let bound = s / (1u32 << bits) as f32 + s * 1e-6;
            for i in start..end {
                // Same positions as without quantization; values within s / 2^bits.
                assert_eq!(
                    plain[0][i] == 0.0,
                    d[0][i] == 0.0,
                    "bits {bits} position {i}"
                );
                let err = (plain[0][i] - d[0][i]).abs();
                assert!(err <= bound, "bits {bits}: error {err} > bound {bound}");
                assert!(plain[0][i] == 0.0 || plain[0][i].signum() == d[0][i].signum());
                max_rel = max_rel.max(err / s);
            }
        }
        assert!(max_rel > 0.0, "bits {bits}: quantization changed nothing?");
        assert!(max_rel <= prev_max, "more bits must not be worse");
        prev_max = max_rel;
    }
}

#[test]
fn cosine_table_matches_std_cos() {
    for n in [1usize, 2, 3, 8, 256, 4096] {
        for m in 0..(4 * n).min(5000) {
            let exact = (std::f64::consts::PI * m as f64 / (2 * n) as f64).cos();
            assert!((cos_pi_frac(m, n) - exact).abs() < 1e-15, "n {n} m {m}");
        }
    }
}

#[test]
fn dct_round_trip_is_identity_and_orthonormal() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    for n in [2usize, 4, 8, 16, 64, 256, 1024] {
        let mut dct = Dct::new(n);
        let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut c = vec![0.0f32; n];
        dct.forward(&x, &mut c);
        // Against the textbook definition.
        for (k, &ck) in c.iter().enumerate() {
            let s = if k == 0 {
                (1.0 / n as f64).sqrt()
            } else {
                (2.0 / n as f64).sqrt()
            };
            let naive: f64 = x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    f64::from(v)
                        * (std::f64::consts::PI * ((2 * i + 1) * k) as f64 / (2 * n) as f64).cos()
                })
                .sum::<f64>()
                * s;
            assert!((f64::from(ck) - naive).abs() < 1e-5, "n {n} k {k}");
        }
        let ex: f64 = x.iter().map(|v| f64::from(*v).powi(2)).sum();
        let ec: f64 = c.iter().map(|v| f64::from(*v).powi(2)).sum();
        assert!((ex - ec).abs() < 1e-5 * ex, "n {n}: energy {ex} vs {ec}");
        let all: Vec<u32> = (0..n as u32).collect();
        let (mut scratch, mut back) = (vec![0.0f64; n], vec![0.0f32; n]);
        dct.inverse_sparse(&all, &c, &mut scratch, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() < 1e-5, "n {n}: {a} vs {b}");
        }
    }
}

#[test]
fn dct_compresses_a_single_cosine_losslessly() {
    let n = 64;
    let k = 5;
    let basis: Vec<f32> = (0..n)
        .map(|i| {
            (3.0 * (2.0 / n as f64).sqrt()
                * (std::f64::consts::PI * ((2 * i + 1) * k) as f64 / (2 * n) as f64).cos())
                as f32
        })
        .collect();
    let mut comp = Compressor::new(cfg(n, 1, true, None), &[n]).unwrap();
    let u = comp.compress(std::slice::from_ref(&basis)).unwrap();
    assert_eq!(u.indices, vec![k as u32]);
    let d = decompress(&u, &[n]).unwrap();
    for (a, b) in basis.iter().zip(&d[0]) {
        assert!((a - b).abs() < 1e-5);
    }
    assert!(comp.residual()[0].iter().all(|r| r.abs() < 1e-5));
    // Without DCT one entry of 64 captures little of the same signal.
    let mut plain = Compressor::new(cfg(n, 1, false, None), &[n]).unwrap();
    plain.compress(&[basis]).unwrap();
    assert!(plain.residual()[0].iter().map(|r| r * r).sum::<f32>() > 1.0);
}

#[test]
fn bytes_round_trip_is_canonical_and_deterministic() {
    for c in configs() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let xs: Vec<_> = (0..2)
            .map(|_| rand_tensors(&mut rng, LENGTHS, 1.0))
            .collect();
        let mut a = Compressor::new(c, LENGTHS).unwrap();
        let mut b = Compressor::new(c, LENGTHS).unwrap();
        for x in &xs {
            let u = a.compress(x).unwrap();
            let bytes = u.to_bytes();
            assert_eq!(
                bytes,
                b.compress(x).unwrap().to_bytes(),
                "{c:?}: not deterministic"
            );
            assert_eq!(u.len(), bytes.len());
            assert!(!u.is_empty());
            let back = CompressedUpdate::from_bytes(&bytes).unwrap();
            assert_eq!(back, u);
            assert_eq!(back.to_bytes(), bytes);
            assert_eq!(u.dense_bytes(), 4 * LENGTHS.iter().sum::<usize>());
            assert_eq!(
                decompress(&back, LENGTHS).unwrap(),
                decompress(&u, LENGTHS).unwrap()
            );
        }
    }
    // Exact sizes of the presets: 12 and 13 bytes per chunk plus header and lengths.
    let lengths = [256 * 1024];
    let x = vec![vec![1.0f32; lengths[0]]];
    for (c, per_chunk, chunks) in [
        (CompressConfig::density_1_56(), 12, 1024),
        (CompressConfig::density_0_4(), 13, 256),
        (CompressConfig::density_1_17(), 25, 256),
    ] {
        let u = Compressor::new(c, &lengths).unwrap().compress(&x).unwrap();
        assert_eq!(u.len(), 15 + 8 + per_chunk * chunks);
        assert_eq!(u.to_bytes().len(), u.len());
    }
}

/// A fixed input from integer arithmetic only (independent of `rand`'s algorithms).
fn fixed_input(lengths: &[usize]) -> Vec<Vec<f32>> {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    lengths
        .iter()
        .map(|&l| {
            (0..l)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as i32 - (1 << 23)) as f32 / (1 << 23) as f32
                })
                .collect()
        })
        .collect()
}

#[test]
fn encoding_is_pinned() {
    // Any change of these hashes is a wire-format or arithmetic change: bump FORMAT_VERSION.
    let x = fixed_input(LENGTHS);
    let mut hashes = Vec::new();
    for c in [
        cfg(64, 4, false, None),
        cfg(64, 8, true, Some(4)),
        cfg(256, 4, true, Some(2)),
    ] {
        let mut comp = Compressor::new(c, LENGTHS).unwrap();
        comp.compress(&x).unwrap();
        let u = comp.compress(&x).unwrap();
        let mut d = u.to_bytes();
        for t in decompress(&u, LENGTHS).unwrap() {
            d.extend(t.iter().flat_map(|v| v.to_le_bytes()));
        }
        hashes.push(blake3::hash(&d).to_hex()[..16].to_string());
    }
    assert_eq!(
        hashes,
        vec!["85e7b7b02d8bf83a", "6b4cde68b80e7046", "cbf2d642d37eca69"]
    );
}

/// Every byte string is either rejected or re-encodes to itself.
fn check_canonical_or_error(bytes: &[u8]) -> bool {
    match CompressedUpdate::from_bytes(bytes) {
        Ok(u) => {
            assert_eq!(u.to_bytes(), bytes, "accepted a non-canonical encoding");
            true
        }
        Err(e) => {
            assert!(matches!(e, CompressError::Decode(_)));
            false
        }
    }
}

#[test]
fn malformed_bytes_give_errors_not_panics() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let lengths = [300, 7, 64];
    for c in [
        cfg(64, 4, false, None),
        cfg(64, 4, true, Some(3)),
        cfg(16, 3, false, Some(8)),
    ] {
        let x = rand_tensors(&mut rng, &lengths, 1.0);
        let good = Compressor::new(c, &lengths)
            .unwrap()
            .compress(&x)
            .unwrap()
            .to_bytes();
        for cut in 0..good.len() {
            assert!(
                !check_canonical_or_error(&good[..cut]),
                "accepted a {cut}-byte prefix"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(!check_canonical_or_error(&longer));
        for pos in 0..good.len() {
            for flip in [0x01u8, 0x10, 0x80, 0xff] {
                let mut b = good.clone();
                b[pos] ^= flip;
                check_canonical_or_error(&b);
            }
        }
        for _ in 0..300 {
            let mut b = good.clone();
            for _ in 0..rng.gen_range(1..5) {
                let p = rng.gen_range(0..b.len());
                b[p] = rng.gen();
            }
            check_canonical_or_error(&b);
        }
    }
    for _ in 0..3000 {
        let len = rng.gen_range(0..120);
        let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if len > 15 && rng.gen_bool(0.7) {
            // A plausible header so the fuzz reaches the body.
            b[0] = FORMAT_VERSION;
            b[1..5].copy_from_slice(&(1u32 << rng.gen_range(1..8)).to_le_bytes());
            b[5..9].copy_from_slice(&rng.gen_range(1u32..4).to_le_bytes());
            b[9] = rng.gen_range(0..2);
            b[10] = [0, 2, 5, 8][rng.gen_range(0..4)];
            b[11..15].copy_from_slice(&rng.gen_range(0u32..4).to_le_bytes());
            if len > 23 {
                b[15..23].copy_from_slice(&rng.gen_range(0u64..64).to_le_bytes());
            }
        }
        check_canonical_or_error(&b);
    }
}

/// Header for chunk 4, topk 2 (2-bit indices) with the given flags, quant bits and tensors.
fn header(flags: u8, qb: u8, lengths: &[u64]) -> Vec<u8> {
    let mut b = vec![FORMAT_VERSION];
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    b.push(flags);
    b.push(qb);
    b.extend_from_slice(&(lengths.len() as u32).to_le_bytes());
    for l in lengths {
        b.extend_from_slice(&l.to_le_bytes());
    }
    b
}

#[test]
fn lying_headers_and_non_canonical_bodies_are_rejected() {
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // Valid: one tensor of 4, indices 0 and 2 (2 bits each: 0b10_00), two f32 values.
    let mut ok = header(0, 0, &[4]);
    ok.push(0b1000);
    ok.extend(f32s(&[1.0, -2.0]));
    let u = CompressedUpdate::from_bytes(&ok).unwrap();
    assert_eq!(
        decompress(&u, &[4]).unwrap(),
        vec![vec![1.0, 0.0, -2.0, 0.0]]
    );
    let reject = |b: &[u8], why: &str| {
        assert!(CompressedUpdate::from_bytes(b).is_err(), "accepted: {why}");
    };
    let with = |idx: u8, vals: &[f32], flags: u8| {
        let mut b = header(flags, 0, &[4]);
        b.push(idx);
        b.extend(f32s(vals));
        b
    };
    reject(&with(0b0001, &[1.0, 2.0], 0), "unsorted indices");
    reject(&with(0b0101, &[1.0, 2.0], 0), "duplicate indices");
    reject(&with(0b1_1000, &[1.0, 2.0], 0), "padding bits");
    reject(&with(0b1000, &[1.0, f32::NAN], 0), "NaN");
    reject(&with(0b1000, &[f32::INFINITY, 1.0], 0), "infinity");
    reject(&with(0b1000, &[1.0, 2.0], 2), "unknown flag");
    let mut v = ok.clone();
    v[0] = 2;
    reject(&v, "version 2");
    // Tail chunk of 3: index 3 is out of range.
    let mut b = header(0, 0, &[3]);
    b.push(0b1100);
    b.extend(f32s(&[1.0, 2.0]));
    reject(&b, "index beyond a short chunk");
    // Quantized, 4 bits: scale then two codes in one byte.
    let quant = |scale: f32, codes: u8| {
        let mut b = header(0, 4, &[4]);
        b.push(0b1000);
        b.extend(f32s(&[scale]));
        b.push(codes);
        b
    };
    CompressedUpdate::from_bytes(&quant(1.5, 0x9f)).unwrap();
    CompressedUpdate::from_bytes(&quant(0.0, 0)).unwrap();
    reject(&quant(-1.0, 0x11), "negative scale");
    reject(&quant(-0.0, 0), "negative zero scale");
    reject(&quant(f32::NAN, 0x11), "NaN scale");
    reject(&quant(0.0, 0x10), "zero scale, non-zero code");
    // Lying headers: huge counts and lengths with a tiny body, rejected without allocating.
    let mut b = header(0, 0, &[]);
    b[11..15].copy_from_slice(&u32::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    reject(&b, "4 billion tensors");
    reject(&header(0, 0, &[u64::MAX]), "length u64::MAX");
    reject(&header(0, 0, &[1 << 40, 1 << 40]), "terabyte tensors");
    reject(
        &header(0, 8, &[u64::MAX / 2, u64::MAX / 2, 5]),
        "overflowing lengths",
    );
}

#[test]
fn bad_inputs_are_rejected_and_leave_the_residual_alone() {
    let c = cfg(64, 4, false, None);
    let mut comp = Compressor::new(c, LENGTHS).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    comp.compress(&rand_tensors(&mut rng, LENGTHS, 1.0))
        .unwrap();
    let before = comp.residual().to_vec();
    let mut x = rand_tensors(&mut rng, LENGTHS, 1.0);
    x[5][100] = f32::NAN;
    assert_eq!(
        comp.compress(&x).unwrap_err(),
        CompressError::NonFinite {
            index: 5,
            element: 100
        }
    );
    x[5][100] = f32::MAX;
    x[0][1] = f32::MAX; // residual + MAX may overflow; either way no change on error
    let _ = comp.compress(&x[..2]).unwrap_err();
    assert!(matches!(
        comp.compress(&x[..2]).unwrap_err(),
        CompressError::TensorCount {
            expected: 6,
            got: 2
        }
    ));
    let mut short = rand_tensors(&mut rng, LENGTHS, 1.0);
    short[2].pop();
    assert!(matches!(
        comp.compress(&short).unwrap_err(),
        CompressError::TensorLength {
            index: 2,
            expected: 64,
            got: 63
        }
    ));
    assert_eq!(comp.residual(), &before[..]);
    let u = comp
        .compress(&rand_tensors(&mut rng, LENGTHS, 1.0))
        .unwrap();
    assert!(decompress(&u, &LENGTHS[..5]).is_err());
    assert!(decompress(&u, &[1000, 256, 64, 3, 0, 4112]).is_err());
    let mut acc: Vec<Vec<f32>> = LENGTHS.iter().map(|&l| vec![0.0; l]).collect();
    assert!(accumulate(&mut acc, &u, f32::NAN).is_err());
    assert!(accumulate(&mut acc[..3], &u, 1.0).is_err());
}

#[test]
fn accumulate_equals_the_dense_sum_of_decompressed_updates() {
    let weights = [0.5f32, 1.0, -0.25, 2.0, 0.3];
    for c in configs() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let updates: Vec<CompressedUpdate> = weights
            .iter()
            .map(|_| {
                let mut comp = Compressor::new(c, LENGTHS).unwrap();
                comp.compress(&rand_tensors(&mut rng, LENGTHS, 1.0))
                    .unwrap();
                comp.compress(&rand_tensors(&mut rng, LENGTHS, 1.0))
                    .unwrap()
            })
            .collect();
        let mut sparse: Vec<Vec<f32>> = LENGTHS.iter().map(|&l| vec![0.25; l]).collect();
        let mut dense = sparse.clone();
        for (u, &w) in updates.iter().zip(&weights) {
            accumulate(&mut sparse, u, w).unwrap();
            for (a, d) in dense.iter_mut().zip(decompress(u, LENGTHS).unwrap()) {
                for (ai, di) in a.iter_mut().zip(d) {
                    *ai += w * di;
                }
            }
        }
        assert_eq!(sparse, dense, "{c:?}");
        assert!(sparse.iter().flatten().any(|&v| v != 0.25));
    }
}

#[test]
fn overlap_measures_shared_topk_positions() {
    let c = cfg(64, 4, false, None);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let x = rand_tensors(&mut rng, LENGTHS, 1.0);
    let a = Compressor::new(c, LENGTHS).unwrap().compress(&x).unwrap();
    assert_eq!(a.overlap(&a).unwrap(), 1.0);
    let mut y = x.clone();
    y.iter_mut().flatten().for_each(|v| *v *= -2.0);
    let b = Compressor::new(c, LENGTHS).unwrap().compress(&y).unwrap();
    assert_eq!(
        a.overlap(&b).unwrap(),
        1.0,
        "scaled copies keep the same positions"
    );
    let z = rand_tensors(&mut rng, LENGTHS, 1.0);
    let other = Compressor::new(c, LENGTHS).unwrap().compress(&z).unwrap();
    let o = a.overlap(&other).unwrap();
    assert!(o < 0.3, "independent updates overlap {o}");
    let d = Compressor::new(cfg(64, 8, false, None), LENGTHS)
        .unwrap()
        .compress(&x)
        .unwrap();
    assert!(a.overlap(&d).is_err());
}

const SEED: [u8; 32] = [7; 32];

#[test]
fn slice_indices_are_sorted_distinct_and_deterministic() {
    for len in [0usize, 1, 2, 10, 1000, 100_000] {
        for fraction in [0.001, 0.01, 0.1, 0.5, 0.99, 1.0] {
            let idx = slice_indices(&SEED, 3, len, fraction);
            let expected = ((len as f64 * fraction).ceil() as usize).min(len);
            assert_eq!(idx.len(), expected, "len {len} fraction {fraction}");
            assert!(idx.windows(2).all(|w| w[0] < w[1]), "not sorted/distinct");
            assert!(idx.iter().all(|&i| (i as usize) < len));
            assert_eq!(idx, slice_indices(&SEED, 3, len, fraction));
        }
    }
    for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert!(slice_indices(&SEED, 0, 100, bad).is_empty());
    }
    // Pinned: the indices are part of the protocol.
    assert_eq!(slice_indices(&SEED, 0, 100, 0.05), vec![2, 10, 33, 76, 96]);
}

#[test]
fn slice_indices_depend_on_seed_and_tensor_and_are_uniform() {
    let a = slice_indices(&SEED, 0, 10_000, 0.01);
    let mut other = SEED;
    other[31] ^= 1;
    assert_ne!(a, slice_indices(&other, 0, 10_000, 0.01));
    assert_ne!(a, slice_indices(&SEED, 1, 10_000, 0.01));
    // Uniformity: 400 seeds x 100 of 1000 indices; each tenth of the range gets ~4000 hits.
    let mut buckets = [0usize; 10];
    for s in 0..400u32 {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&s.to_le_bytes());
        for i in slice_indices(&seed, 0, 1000, 0.1) {
            buckets[i as usize / 100] += 1;
        }
    }
    for b in buckets {
        assert!((3700..=4300).contains(&b), "buckets {buckets:?}");
    }
}

#[test]
fn slices_extract_apply_average_and_round_trip() {
    let lengths = [1000, 3, 0, 257];
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let a = rand_tensors(&mut rng, &lengths, 1.0);
    let b = rand_tensors(&mut rng, &lengths, 1.0);
    let s = extract_slice(&a, &SEED, 0.1).unwrap();
    assert_eq!(s.values()[0].len(), 100);
    assert_eq!(s.values()[1].len(), 1);
    let mut target = b.clone();
    apply_slice(&mut target, &s).unwrap();
    for t in 0..lengths.len() {
        let idx = slice_indices(&SEED, t, lengths[t], 0.1);
        for i in 0..lengths[t] {
            let want = if idx.contains(&(i as u32)) {
                a[t][i]
            } else {
                b[t][i]
            };
            assert_eq!(target[t][i], want);
        }
    }
    let bytes = s.to_bytes();
    assert_eq!(Slice::from_bytes(&bytes).unwrap(), s);
    assert_eq!(Slice::from_bytes(&bytes).unwrap().to_bytes(), bytes);
    for cut in 0..bytes.len() {
        assert!(Slice::from_bytes(&bytes[..cut]).is_err());
    }
    for pos in 0..bytes.len() {
        let mut m = bytes.clone();
        m[pos] ^= 0xff;
        if let Ok(x) = Slice::from_bytes(&m) {
            assert_eq!(x.to_bytes(), m);
        }
    }
    let mut nan = bytes.clone();
    let n = nan.len();
    nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(Slice::from_bytes(&nan).is_err());
    let mut lying = bytes[..45].to_vec();
    lying[41..45].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Slice::from_bytes(&lying).is_err());
    assert!(extract_slice(&a, &SEED, 0.0).is_err());
    assert!(extract_slice(&a, &SEED, 1.5).is_err());
    assert!(apply_slice(&mut target[..2], &s).is_err());
    let s2 = extract_slice(&b, &SEED, 0.1).unwrap();
    let avg = average_slices(&[s.clone(), s2.clone()]).unwrap();
    for t in 0..lengths.len() {
        for i in 0..s.values()[t].len() {
            let want = ((f64::from(s.values()[t][i]) + f64::from(s2.values()[t][i])) / 2.0) as f32;
            assert_eq!(avg.values()[t][i], want);
        }
    }
    let other = extract_slice(&b, &[1; 32], 0.1).unwrap();
    assert!(average_slices(&[s, other]).is_err());
    assert!(average_slices(&[]).is_err());
}
