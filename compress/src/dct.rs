//! Exact-deterministic orthonormal DCT-II (forward, via a radix-2 FFT) and sparse DCT-III
//! synthesis (inverse from a few coefficients) for power-of-two chunk sizes.
//!
//! Every cosine comes from [`cos_pi_frac`], a fixed Taylor evaluation using only correctly
//! rounded IEEE-754 operations (no libm `cos`, whose last bit differs between platforms), and all
//! sums run in a fixed order in f64, so every node computes bit-identical results.

/// `cos(pi * m / (2 n))` for any `m`, with `n >= 1`, exact-deterministic.
pub(crate) fn cos_pi_frac(m: usize, n: usize) -> f64 {
    let four_n = 4 * n;
    let mut m = m % four_n;
    if m > 2 * n {
        m = four_n - m; // cos(2pi - t) = cos(t)
    }
    let mut sign = 1.0;
    if m > n {
        m = 2 * n - m; // cos(pi - t) = -cos(t)
        sign = -1.0;
    }
    // Now t = pi m / 2n is in [0, pi/2]; keep the Taylor argument within [0, pi/4].
    let angle = |m: usize| std::f64::consts::PI * m as f64 / (2 * n) as f64;
    if 2 * m <= n {
        sign * taylor_cos(angle(m))
    } else {
        sign * taylor_sin(angle(n - m))
    }
}

/// cos(x) for |x| <= pi/4 by its Taylor series (terms past x^28 are below 1e-30).
fn taylor_cos(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..=14u32 {
        term *= -x2 / f64::from((2 * k - 1) * (2 * k));
        sum += term;
    }
    sum
}

/// sin(x) for |x| <= pi/4 by its Taylor series.
fn taylor_sin(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    for k in 1..=14u32 {
        term *= -x2 / f64::from((2 * k) * (2 * k + 1));
        sum += term;
    }
    sum
}

/// Precomputed tables for one power-of-two size `n`.
pub(crate) struct Dct {
    n: usize,
    /// `cos(pi m / 2n)` for `m` in `0..4n`.
    cos: Vec<f64>,
    /// FFT twiddles `exp(-2 pi i j / n)` for `j` in `0..n/2`.
    tw_re: Vec<f64>,
    tw_im: Vec<f64>,
    /// Bit-reversal permutation of `0..n`.
    bitrev: Vec<usize>,
    /// Orthonormal scales: `sqrt(1/n)` for coefficient 0, `sqrt(2/n)` for the others.
    scale0: f64,
    scale: f64,
    re: Vec<f64>,
    im: Vec<f64>,
}

impl Dct {
    /// Tables for size `n` (a power of two, at least 2; checked by `CompressConfig::validate`).
    pub(crate) fn new(n: usize) -> Dct {
        let n = n.max(2);
        let four_n = 4 * n;
        let cos: Vec<f64> = (0..four_n).map(|m| cos_pi_frac(m, n)).collect();
        // exp(-i theta) with theta = 2 pi j / n = pi (4j) / 2n; sin(theta) = cos(pi/2 - theta).
        let tw_re = (0..n / 2).map(|j| cos[4 * j]).collect();
        let tw_im = (0..n / 2).map(|j| -cos[(5 * n - 4 * j) % four_n]).collect();
        let bits = n.trailing_zeros();
        let bitrev = (0..n)
            .map(|i| i.reverse_bits() >> (usize::BITS - bits))
            .collect();
        Dct {
            n,
            cos,
            tw_re,
            tw_im,
            bitrev,
            scale0: (1.0 / n as f64).sqrt(),
            scale: (2.0 / n as f64).sqrt(),
            re: vec![0.0; n],
            im: vec![0.0; n],
        }
    }

    /// Orthonormal DCT-II of `x` (length `n`) into `out` (length `n`), via Makhoul's
    /// reordering and one complex FFT of size `n`.
    pub(crate) fn forward(&mut self, x: &[f32], out: &mut [f32]) {
        let n = self.n;
        for i in 0..n / 2 {
            self.re[i] = f64::from(x[2 * i]);
            self.re[n - 1 - i] = f64::from(x[2 * i + 1]);
        }
        self.im.iter_mut().for_each(|v| *v = 0.0);
        self.fft();
        for (k, o) in out.iter_mut().enumerate().take(n) {
            // X_k = Re(exp(-i pi k / 2n) V_k) = Re(V_k) cos + Im(V_k) sin.
            let x = self.re[k] * self.cos[k] + self.im[k] * self.cos[n - k];
            let s = if k == 0 { self.scale0 } else { self.scale };
            *o = (x * s) as f32;
        }
    }

    /// In-place iterative radix-2 FFT of `(re, im)`.
    fn fft(&mut self) {
        let n = self.n;
        for i in 0..n {
            let j = self.bitrev[i];
            if i < j {
                self.re.swap(i, j);
                self.im.swap(i, j);
            }
        }
        let mut len = 2;
        while len <= n {
            let half = len / 2;
            let step = n / len;
            for start in (0..n).step_by(len) {
                for j in 0..half {
                    let (wr, wi) = (self.tw_re[j * step], self.tw_im[j * step]);
                    let (a, b) = (start + j, start + j + half);
                    let (xr, xi) = (self.re[b], self.im[b]);
                    let vr = xr * wr - xi * wi;
                    let vi = xr * wi + xi * wr;
                    let (ur, ui) = (self.re[a], self.im[a]);
                    self.re[a] = ur + vr;
                    self.im[a] = ui + vi;
                    self.re[b] = ur - vr;
                    self.im[b] = ui - vi;
                }
            }
            len <<= 1;
        }
    }

    /// Orthonormal DCT-III (inverse DCT-II) of the sparse coefficients `(idx, vals)` into
    /// `out` (length `n`): `out[i] = sum_j s_j vals[j] cos(pi (2i + 1) idx[j] / 2n)`, summed
    /// in f64 in the order of `idx`, then rounded to f32.
    pub(crate) fn inverse_sparse(
        &self,
        idx: &[u32],
        vals: &[f32],
        scratch: &mut [f64],
        out: &mut [f32],
    ) {
        let four_n = 4 * self.n;
        scratch.iter_mut().for_each(|v| *v = 0.0);
        for (&k, &v) in idx.iter().zip(vals) {
            let k = k as usize;
            let s = if k == 0 { self.scale0 } else { self.scale };
            let a = f64::from(v) * s;
            let step = (2 * k) % four_n;
            let mut m = k % four_n;
            for slot in scratch.iter_mut() {
                *slot += a * self.cos[m];
                m += step;
                if m >= four_n {
                    m -= four_n;
                }
            }
        }
        for (o, &s) in out.iter_mut().zip(scratch.iter()) {
            *o = s as f32;
        }
    }
}
