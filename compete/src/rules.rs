//! The ranking math, all pure: ε decay, SN9 pairwise win rates with the earlier-commit
//! advantage, softmax, EMA, the king-of-the-hill paired bootstrap and the copy fingerprint
//! distance.

use apiary_config::CompetitionConfig;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// ε of a commitment `age_blocks` old: linear from `epsilon_start` at age 0 to `epsilon_end`
/// at `epsilon_decay_blocks`, constant after (`epsilon_end` at once when the decay is 0).
pub fn epsilon(cfg: &CompetitionConfig, age_blocks: u64) -> f64 {
    if age_blocks >= cfg.epsilon_decay_blocks {
        return cfg.epsilon_end;
    }
    let t = age_blocks as f64 / cfg.epsilon_decay_blocks as f64;
    cfg.epsilon_start + (cfg.epsilon_end - cfg.epsilon_start) * t
}

/// Score of `a` against `b` on one page: 1 win, 0.5 tie, 0 loss. `a_first` / `b_first`: which
/// committed strictly earlier; the earlier one's loss counts as `loss × (1 − ε)`. A
/// non-finite loss always loses (two non-finite losses both lose).
fn duel(a: f64, b: f64, a_adv: Option<f64>, b_adv: Option<f64>) -> f64 {
    match (a.is_finite(), b.is_finite()) {
        (false, _) => return 0.0,
        (true, false) => return 1.0,
        (true, true) => {}
    }
    let a = a * (1.0 - a_adv.unwrap_or(0.0));
    let b = b * (1.0 - b_adv.unwrap_or(0.0));
    if a < b {
        1.0
    } else if a == b {
        0.5
    } else {
        0.0
    }
}

/// SN9 win rates. `losses[m][p]`: mean loss of model `m` on page `p`; `commit_blocks[m]`: its
/// commit block; `eps[m]`: its own ε ([`epsilon`] of its age). On every page, every model is
/// compared with every other: the one that committed strictly earlier has its loss taken as
/// `loss × (1 − ε)` (equal blocks: no advantage); lower wins, equal is half a win, a
/// non-finite loss always loses. Returns wins / comparisons per model, in [0, 1]; a single
/// model gets 1.0, several models without pages 0.0 each.
///
/// A page missing from a model's row counts as a non-finite loss; a missing commit block as the
/// latest (no advantage) and a missing ε as 0, so ragged input never panics.
pub fn win_rates(losses: &[Vec<f64>], commit_blocks: &[u64], eps: &[f64]) -> Vec<f64> {
    let n = losses.len();
    if n <= 1 {
        return vec![1.0; n];
    }
    let pages = losses.iter().map(Vec::len).max().unwrap_or(0);
    let loss = |m: usize, p: usize| losses[m].get(p).copied().unwrap_or(f64::NAN);
    let block = |m: usize| commit_blocks.get(m).copied().unwrap_or(u64::MAX);
    let eps_of = |m: usize| eps.get(m).copied().unwrap_or(0.0);
    let comparisons = (pages * (n - 1)) as f64;
    (0..n)
        .map(|i| {
            if comparisons == 0.0 {
                return 0.0;
            }
            let mut wins = 0.0;
            for j in (0..n).filter(|&j| j != i) {
                let (i_adv, j_adv) = match block(i).cmp(&block(j)) {
                    std::cmp::Ordering::Less => (Some(eps_of(i)), None),
                    std::cmp::Ordering::Greater => (None, Some(eps_of(j))),
                    std::cmp::Ordering::Equal => (None, None),
                };
                for p in 0..pages {
                    wins += duel(loss(i, p), loss(j, p), i_adv, j_adv);
                }
            }
            wins / comparisons
        })
        .collect()
}

/// `softmax(xs / temperature)`, computed stably (shifted by the maximum); sums to 1, empty in,
/// empty out. Non-finite entries get weight 0 (all non-finite: uniform). A temperature that is
/// not > 0 means the limit: the maxima share everything equally.
pub fn softmax(xs: &[f64], temperature: f64) -> Vec<f64> {
    let finite = |x: f64| x.is_finite();
    let Some(max) = xs.iter().copied().filter(|&x| finite(x)).reduce(f64::max) else {
        return vec![1.0 / xs.len() as f64; xs.len()];
    };
    let w: Vec<f64> = xs
        .iter()
        .map(|&x| {
            if !finite(x) {
                0.0
            } else if temperature > 0.0 && temperature.is_finite() {
                ((x - max) / temperature).exp()
            } else if x == max {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    // The maximum contributes exp(0) = 1, so the sum is ≥ 1.
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

/// Exponential moving average: `alpha × new + (1 − alpha) × prev`, or `new` when there is no
/// previous value.
pub fn ema(prev: Option<f64>, new: f64, alpha: f64) -> f64 {
    match prev {
        Some(p) => alpha * new + (1.0 - alpha) * p,
        None => new,
    }
}

/// Lower bound at level `alpha` of the mean of `diffs` (per-page paired differences), by a
/// bootstrap: `samples` resamples with replacement (ChaCha20 seeded with `seed`, so every
/// validator gets the same number), the α-quantile of their means (the smallest mean at or
/// above a fraction α of them). No data, or any non-finite difference: −∞ (no evidence).
/// `samples = 0` is taken as 1.
pub fn paired_bootstrap_lower_bound(diffs: &[f64], samples: usize, alpha: f64, seed: u64) -> f64 {
    if diffs.is_empty() || diffs.iter().any(|d| !d.is_finite()) {
        return f64::NEG_INFINITY;
    }
    let n = diffs.len();
    let samples = samples.max(1);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..samples)
        .map(|_| {
            // `% n` has a bias below n / 2^64: irrelevant here, and it is fixed arithmetic,
            // unlike `gen_range`, whose algorithm a rand upgrade may change.
            let sum: f64 = (0..n)
                .map(|_| diffs[(rng.next_u64() % n as u64) as usize])
                .sum();
            sum / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let k = (alpha.clamp(0.0, 1.0) * samples as f64).ceil() as usize;
    means[k.saturating_sub(1).min(samples - 1)]
}

/// King of the hill: whether `challenger` replaces `leader`, given both models' per-page losses
/// on the same pages. True when the bootstrap lower bound of the per-page improvement
/// `leader − challenger` exceeds `margin`. Different page counts: false.
pub fn koth_dethrones(
    leader: &[f64],
    challenger: &[f64],
    margin: f64,
    alpha: f64,
    samples: usize,
    seed: u64,
) -> bool {
    if leader.len() != challenger.len() {
        return false;
    }
    let diffs: Vec<f64> = leader.iter().zip(challenger).map(|(l, c)| l - c).collect();
    paired_bootstrap_lower_bound(&diffs, samples, alpha, seed) > margin
}

/// Relative L2 distance of two logit vectors: `‖a − b‖ / max(‖a‖, ‖b‖, tiny)`, in f64.
/// Different lengths or non-finite values: +∞ (never a copy).
pub fn logit_distance(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut d2, mut a2, mut b2) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        d2 += (x - y) * (x - y);
        a2 += x * x;
        b2 += y * y;
    }
    let r = d2.sqrt() / a2.sqrt().max(b2.sqrt()).max(1e-30);
    if r.is_finite() {
        r
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn epsilon_decays_linearly_then_stays() {
        let cfg = CompetitionConfig {
            epsilon_start: 0.01,
            epsilon_end: 0.002,
            epsilon_decay_blocks: 100,
            ..CompetitionConfig::default()
        };
        assert!(close(epsilon(&cfg, 0), 0.01));
        assert!(close(epsilon(&cfg, 25), 0.008));
        assert!(close(epsilon(&cfg, 50), 0.006));
        assert!(close(epsilon(&cfg, 100), 0.002));
        assert!(close(epsilon(&cfg, 10_000), 0.002));
        let instant = CompetitionConfig {
            epsilon_decay_blocks: 0,
            ..cfg
        };
        assert!(close(epsilon(&instant, 0), 0.002));
    }

    #[test]
    fn win_rates_by_hand() {
        // Two pages, three models, all committed at different blocks, no ε:
        // page 0: losses 1, 2, 3 → model 0 wins 2, model 1 wins 1, model 2 wins 0.
        // page 1: losses 3, 2, 2 → model 0: 0; models 1 and 2: 1 win + a tie = 1.5.
        let losses = vec![vec![1.0, 3.0], vec![2.0, 2.0], vec![3.0, 2.0]];
        let r = win_rates(&losses, &[1, 2, 3], &[0.0; 3]);
        assert!(close(r[0], 2.0 / 4.0));
        assert!(close(r[1], 2.5 / 4.0));
        assert!(close(r[2], 1.5 / 4.0));
    }

    #[test]
    fn win_rates_earlier_commit_advantage() {
        // Model 0 committed first with ε = 0.1: its 1.05 counts as 0.945 < 1.0, so it wins.
        let losses = vec![vec![1.05], vec![1.0]];
        assert_eq!(win_rates(&losses, &[10, 20], &[0.1, 0.1]), vec![1.0, 0.0]);
        // Same commit block: no advantage, the lower loss wins.
        assert_eq!(win_rates(&losses, &[10, 10], &[0.1, 0.1]), vec![0.0, 1.0]);
        // Later commit: model 1 (earlier) gets the advantage, 1.0 × 0.9 < 1.05.
        assert_eq!(win_rates(&losses, &[30, 20], &[0.1, 0.1]), vec![0.0, 1.0]);
        // ε too small to close the gap: 1.05 × 0.99 = 1.0395 > 1.0.
        assert_eq!(win_rates(&losses, &[10, 20], &[0.01, 0.0]), vec![0.0, 1.0]);
        // Equal adjusted losses tie.
        assert_eq!(
            win_rates(&[vec![2.0], vec![1.0]], &[1, 2], &[0.5, 0.0]),
            vec![0.5, 0.5]
        );
    }

    #[test]
    fn win_rates_edge_cases() {
        assert_eq!(win_rates(&[vec![5.0]], &[1], &[0.0]), vec![1.0]);
        assert!(win_rates(&[], &[], &[]).is_empty());
        // Non-finite losses lose, even with the earlier-commit advantage; two of them both lose.
        let losses = vec![vec![f64::NAN], vec![9.0], vec![f64::INFINITY]];
        let r = win_rates(&losses, &[1, 2, 3], &[0.5, 0.0, 0.0]);
        assert_eq!(r, vec![0.0, 1.0, 0.0]);
        // A missing page counts as a loss for that model.
        let r = win_rates(&[vec![1.0, 1.0], vec![2.0]], &[1, 2], &[0.0, 0.0]);
        assert_eq!(r, vec![1.0, 0.0]);
    }

    #[test]
    fn softmax_is_stable_and_normalized() {
        assert!(softmax(&[], 1.0).is_empty());
        let s = softmax(&[0.0, (2.0f64).ln()], 1.0);
        assert!(close(s[0], 1.0 / 3.0) && close(s[1], 2.0 / 3.0));
        // Huge inputs do not overflow.
        let s = softmax(&[1000.0, 1000.0], 0.01);
        assert!(close(s[0], 0.5) && close(s[1], 0.5));
        // Low temperature concentrates on the best: e^(-0.1/0.01) = e^-10.
        let s = softmax(&[0.9, 1.0], 0.01);
        assert!(close(s[0], (-10.0f64).exp() / (1.0 + (-10.0f64).exp())));
        assert!(close(s.iter().sum::<f64>(), 1.0));
        assert_eq!(softmax(&[1.0, f64::NAN], 1.0), vec![1.0, 0.0]);
        assert_eq!(softmax(&[f64::NAN, f64::NAN], 1.0), vec![0.5, 0.5]);
        assert_eq!(softmax(&[1.0, 2.0, 2.0], 0.0), vec![0.0, 0.5, 0.5]);
    }

    #[test]
    fn ema_by_hand() {
        assert_eq!(ema(None, 0.7, 0.5), 0.7);
        assert!(close(ema(Some(0.2), 0.6, 0.5), 0.4));
        assert!(close(ema(Some(1.0), 0.0, 0.25), 0.75));
    }

    #[test]
    fn bootstrap_bounds() {
        // Constant differences: every resample has the same mean.
        assert!(close(
            paired_bootstrap_lower_bound(&[0.3; 10], 50, 0.05, 1),
            0.3
        ));
        // Deterministic for a seed; below the mean for a small α; at most the max.
        let d: Vec<f64> = (0..40).map(|i| (i % 7) as f64 / 10.0 - 0.2).collect();
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let lb = paired_bootstrap_lower_bound(&d, 500, 0.05, 7);
        assert_eq!(lb, paired_bootstrap_lower_bound(&d, 500, 0.05, 7));
        assert!(lb < mean && lb > -0.2, "{lb} vs mean {mean}");
        assert!(paired_bootstrap_lower_bound(&d, 500, 1.0, 7) > mean);
        assert_eq!(
            paired_bootstrap_lower_bound(&[], 10, 0.05, 1),
            f64::NEG_INFINITY
        );
        assert_eq!(
            paired_bootstrap_lower_bound(&[1.0, f64::NAN], 10, 0.05, 1),
            f64::NEG_INFINITY
        );
        // One resample of one value.
        assert_eq!(paired_bootstrap_lower_bound(&[2.0], 0, 0.5, 1), 2.0);
    }

    #[test]
    fn koth() {
        let leader = vec![2.0; 32];
        let better: Vec<f64> = (0..32).map(|i| 1.9 + (i % 3) as f64 * 0.01).collect();
        assert!(koth_dethrones(&leader, &better, 0.05, 0.01, 200, 3));
        // The improvement (≈ 0.09) does not clear a 0.2 margin.
        assert!(!koth_dethrones(&leader, &better, 0.2, 0.01, 200, 3));
        // Noisy: better on half the pages by 0.5, worse on the other half by 0.45.
        let noisy: Vec<f64> = (0..32)
            .map(|i| if i % 2 == 0 { 1.5 } else { 2.45 })
            .collect();
        assert!(!koth_dethrones(&leader, &noisy, 0.0, 0.01, 500, 3));
        assert!(!koth_dethrones(&leader, &better[..10], 0.0, 0.01, 200, 3));
        assert!(!koth_dethrones(&leader, &leader, 0.0, 0.01, 200, 3));
    }

    #[test]
    fn logit_distance_by_hand() {
        assert_eq!(logit_distance(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        // ‖(0, 1)‖ / max(5, √(9 + 25)) = 1 / √34.
        assert!(close(
            logit_distance(&[3.0, 4.0], &[3.0, 5.0]),
            1.0 / 34f64.sqrt()
        ));
        assert!(close(logit_distance(&[1.0, 0.0], &[-1.0, 0.0]), 2.0));
        assert_eq!(logit_distance(&[0.0], &[0.0]), 0.0);
        assert_eq!(logit_distance(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(logit_distance(&[f32::NAN], &[1.0]), f64::INFINITY);
    }
}
