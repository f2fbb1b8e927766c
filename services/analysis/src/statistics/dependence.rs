//! How much requests close in time move together, measured on the run's own traffic.
//!
//! The tests in [`proportion`](super::proportion) and [`rank`](super::rank) treat every
//! request as an independent draw. Real requests are not: a scheduler hiccup, a garbage
//! collection or a burst delays a run of consecutive requests, and errors come in bursts
//! too. Counting 10^4 such requests as independent makes a test's variance far too small
//! and its p-values many orders of magnitude too small, so identical releases fail.
//!
//! # Periods as clusters
//!
//! Traffic cuts a window into periods of whole seconds. Requests in different periods are
//! close to independent, requests in one period are not, so the periods are the clusters of
//! a cluster-robust (sandwich) variance. Every statistic here is linearised as a sum of one
//! term per request; the cluster-robust variance adds those terms up within each period
//! first, and squares per period:
//!
//! ```text
//! V_cluster = G / (G - 1) * Σ_periods (Σ_requests in the period term)²
//! ```
//!
//! Both sides of a comparison are added up in the same period, so a hiccup that slows both
//! sides alike cancels (the sides share each period in proportion to their weights), while
//! one that hits a side more than its share adds to the variance. The **design effect** is
//! `V_cluster` over the variance the same linearisation gives under independence (the same
//! terms squared one by one); a test's variance at its null boundary is multiplied by it.
//! It is never taken below 1: a test never gets more confident than with independent
//! requests.
//!
//! # Few periods
//!
//! With `G` periods the cluster-robust variance has about `G - 1` degrees of freedom, so it
//! is itself uncertain early in a run. The factor also carries the ratio of Student's t to
//! the normal quantile at the check's alpha, squared: a z-test with the inflated variance
//! then rejects no more often than a t-test with `G - 1` degrees of freedom would, about 3%
//! more variance at 60 periods, four times as much at 3. With a single period there is no
//! measurement at all; the test is then held as wide as with two periods and independent
//! requests (about 250 times the variance at the default template's alphas), so only
//! overwhelming evidence, such as half of a few hundred requests failing against a 1%
//! bound, fails it.
//!
//! # Rank test
//!
//! Mann-Whitney's `θ = U / (n_c n_b)` is linearised by its Hájek projection (DeLong's
//! placement values): a canary request at `x` contributes `(F_b(x) - θ) / n_c`, with `F_b`
//! the baseline's mid-rank distribution function (scaled by the margin), and a baseline
//! request at `y` contributes `(S_c(y) - θ) / n_b`, with `S_c` the canary's share above `y`
//! (mid-rank). A common hiccup raises the first and lowers the second, and they cancel
//! (Obuchowski, "Nonparametric analysis of clustered ROC curve data", 1997).

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

use super::{proportion::Counts, rank};

/// One period's (canary, baseline) histograms as (upper bound, count) buckets.
pub type PeriodHistograms<'a> = (&'a [(f64, u64)], &'a [(f64, u64)]);

/// How much more a statistic varies than independent requests would make it vary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DesignEffect {
    /// The cluster-robust variance over the independent one, as measured (may be below 1).
    pub measured: f64,
    /// Periods with requests it was measured on.
    pub periods: usize,
}

impl DesignEffect {
    /// What a test's variance is multiplied by when it is held to `alpha`: the measured
    /// effect, at least 1, times the small-sample factor (see the module docs); with one
    /// period, the factor of two.
    pub fn factor(&self, alpha: f64) -> f64 {
        self.measured.max(1.0) * small_sample_factor(self.periods.max(2), alpha)
    }
}

/// `(t_{G-1}(1 - alpha) / z(1 - alpha))²`: how much wider a t-test with `G - 1` degrees of
/// freedom is than a z-test, as a variance factor. Infinite below two periods; 1 when
/// alpha is not a usable level.
pub fn small_sample_factor(periods: usize, alpha: f64) -> f64 {
    if periods < 2 {
        return f64::INFINITY;
    }
    if !(alpha > 0.0 && alpha < 0.5) {
        return 1.0;
    }
    let degrees = (periods - 1) as f64;
    let (Ok(t), Ok(z)) = (StudentsT::new(0.0, 1.0, degrees), Normal::new(0.0, 1.0)) else {
        return 1.0;
    };
    let ratio = t.inverse_cdf(1.0 - alpha) / z.inverse_cdf(1.0 - alpha);
    if ratio.is_finite() && ratio > 1.0 { ratio * ratio } else { 1.0 }
}

/// The design effect of `p̂_c - ratio p̂_b`, the excess of the two-sample rate tests, from
/// each period's `(canary, baseline)` counts. `None` when a side has no trials, the ratio is
/// not finite, or neither side varies (no failures or only failures on both sides).
pub fn rate_difference(periods: &[(Counts, Counts)], ratio: f64) -> Option<DesignEffect> {
    if !ratio.is_finite() {
        return None;
    }
    let (canary, baseline) =
        periods.iter().fold((Counts::default(), Counts::default()), |(c, b), (pc, pb)| (c.plus(pc), b.plus(pb)));
    if canary.trials == 0 || baseline.trials == 0 {
        return None;
    }
    let (n_c, n_b) = (canary.trials as f64, baseline.trials as f64);
    let (p_c, p_b) = (canary.rate(), baseline.rate());
    let independent = p_c * (1.0 - p_c) / n_c + ratio * ratio * p_b * (1.0 - p_b) / n_b;
    let clustered: f64 = periods
        .iter()
        .map(|(c, b)| {
            let canary_term = (c.failures as f64 - p_c * c.trials as f64) / n_c;
            let baseline_term = (b.failures as f64 - p_b * b.trials as f64) / n_b;
            let term = canary_term - ratio * baseline_term;
            term * term
        })
        .sum();
    effect(clustered, independent, used_periods(periods.iter().map(|(c, b)| c.trials + b.trials)))
}

/// The design effect of one side's rate `p̂`, for the tests against a fixed bound. `None`
/// without trials or when the side does not vary.
pub fn rate(periods: &[Counts]) -> Option<DesignEffect> {
    let total = periods.iter().fold(Counts::default(), |sum, period| sum.plus(period));
    if total.trials == 0 {
        return None;
    }
    let (n, p) = (total.trials as f64, total.rate());
    let independent = p * (1.0 - p) / n;
    let clustered: f64 = periods
        .iter()
        .map(|period| {
            let term = (period.failures as f64 - p * period.trials as f64) / n;
            term * term
        })
        .sum();
    effect(clustered, independent, used_periods(periods.iter().map(|period| period.trials)))
}

/// The design effect of Mann-Whitney's `θ` of `canary` against `baseline` scaled by
/// `1 + margin` (see the module docs), from each period's `(canary, baseline)` histograms
/// as (upper bound, count) buckets. `None` when a side is empty, a bound or the margin is
/// unusable, or nothing varies.
pub fn rank(periods: &[PeriodHistograms<'_>], margin: f64) -> Option<DesignEffect> {
    if !(margin.is_finite() && margin > -1.0) {
        return None;
    }
    let scale = 1.0 + margin;
    let placements = Placements::new(periods, scale)?;
    let theta = placements.theta;
    let (n_c, n_b) = (placements.canary_total, placements.baseline_total);
    let mut clustered = 0.0;
    let mut independent = 0.0;
    for (canary, baseline) in periods {
        let mut sum = 0.0;
        for &(bound, count) in canary.iter() {
            let deviation = placements.below_for_canary(bound)? - theta;
            sum += count as f64 * deviation / n_c;
            independent += count as f64 * (deviation / n_c).powi(2);
        }
        for &(bound, count) in baseline.iter() {
            let deviation = placements.above_for_baseline(bound * scale)? - theta;
            sum += count as f64 * deviation / n_b;
            independent += count as f64 * (deviation / n_b).powi(2);
        }
        clustered += sum * sum;
    }
    let used = used_periods(periods.iter().map(|(c, b)| total(c).saturating_add(total(b))));
    effect(clustered, independent, used)
}

/// For every distinct latency of a window: the baseline's share below it and the canary's
/// share above it, ties counting half.
struct Placements {
    /// (value, canary count, baseline count), ascending, each value once.
    values: Vec<(f64, f64, f64)>,
    /// Baseline requests below each value, by index into `values`.
    baseline_below: Vec<f64>,
    /// Canary requests above each value.
    canary_above: Vec<f64>,
    canary_total: f64,
    baseline_total: f64,
    theta: f64,
}

impl Placements {
    fn new(periods: &[PeriodHistograms<'_>], scale: f64) -> Option<Self> {
        let canary = periods.iter().flat_map(|(canary, _)| canary.iter());
        let baseline = periods.iter().flat_map(|(_, baseline)| baseline.iter());
        let values = rank::merged(canary, baseline, scale)?;
        let canary_total: f64 = values.iter().map(|v| v.1).sum();
        let baseline_total: f64 = values.iter().map(|v| v.2).sum();
        if canary_total == 0.0 || baseline_total == 0.0 {
            return None;
        }
        let mut baseline_below = Vec::with_capacity(values.len());
        let mut below = 0.0;
        for value in &values {
            baseline_below.push(below);
            below += value.2;
        }
        let mut canary_above = vec![0.0; values.len()];
        let mut above = 0.0;
        for (index, value) in values.iter().enumerate().rev() {
            canary_above[index] = above;
            above += value.1;
        }
        let u: f64 = values.iter().zip(&baseline_below).map(|(value, below)| value.1 * (below + value.2 / 2.0)).sum();
        let theta = u / (canary_total * baseline_total);
        Some(Self { values, baseline_below, canary_above, canary_total, baseline_total, theta })
    }

    fn index(&self, value: f64) -> Option<usize> {
        self.values.binary_search_by(|probe| probe.0.total_cmp(&value)).ok()
    }

    /// The baseline's mid-rank share below a canary latency.
    fn below_for_canary(&self, value: f64) -> Option<f64> {
        let index = self.index(value)?;
        Some((self.baseline_below[index] + self.values[index].2 / 2.0) / self.baseline_total)
    }

    /// The canary's mid-rank share above a (scaled) baseline latency.
    fn above_for_baseline(&self, value: f64) -> Option<f64> {
        let index = self.index(value)?;
        Some((self.canary_above[index] + self.values[index].1 / 2.0) / self.canary_total)
    }
}

fn total(buckets: &[(f64, u64)]) -> u64 {
    buckets.iter().fold(0_u64, |sum, (_, count)| sum.saturating_add(*count))
}

/// Periods with at least one request.
fn used_periods(requests: impl Iterator<Item = u64>) -> usize {
    requests.filter(|requests| *requests > 0).count()
}

/// The design effect from the summed squares, with the G / (G - 1) small-sample correction
/// of the cluster-robust variance.
fn effect(clustered: f64, independent: f64, periods: usize) -> Option<DesignEffect> {
    if !(independent > 0.0 && independent.is_finite() && clustered.is_finite()) {
        return None;
    }
    let correction = if periods > 1 { periods as f64 / (periods as f64 - 1.0) } else { 1.0 };
    Some(DesignEffect { measured: clustered * correction / independent, periods })
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn counts(failures: u64, trials: u64) -> Counts {
        Counts { failures, trials }
    }

    #[test]
    fn independent_errors_have_a_design_effect_near_one() {
        let mut rng = StdRng::seed_from_u64(7);
        let periods: Vec<(Counts, Counts)> = (0..200)
            .map(|_| {
                let draw = |rng: &mut StdRng, n: u64| (0..n).filter(|_| rng.random::<f64>() < 0.02).count() as u64;
                (counts(draw(&mut rng, 50), 50), counts(draw(&mut rng, 950), 950))
            })
            .collect();
        let effect = rate_difference(&periods, 1.0).unwrap();
        assert!((effect.measured - 1.0).abs() < 0.25, "{effect:?}");
        assert_eq!(effect.periods, 200);
    }

    #[test]
    fn errors_in_bursts_have_a_large_design_effect() {
        // Every tenth period, a burst fails half of the canary's requests and none otherwise.
        let periods: Vec<Counts> = (0..100).map(|i| counts(if i % 10 == 0 { 25 } else { 0 }, 50)).collect();
        let effect = rate(&periods).unwrap();
        assert!(effect.measured > 10.0, "{effect:?}");
    }

    #[test]
    fn a_hiccup_that_hits_both_sides_alike_cancels_in_the_comparison() {
        // In a slow period both sides fail (time out) in proportion to their share.
        let periods: Vec<(Counts, Counts)> = (0..60)
            .map(|i| if i % 6 == 0 { (counts(10, 50), counts(190, 950)) } else { (counts(0, 50), counts(0, 950)) })
            .collect();
        let compared = rate_difference(&periods, 1.0).unwrap();
        let canary_alone = rate(&periods.iter().map(|(c, _)| *c).collect::<Vec<_>>()).unwrap();
        assert!(compared.measured < 1e-9, "{compared:?}");
        assert!(canary_alone.measured > 5.0, "{canary_alone:?}");
    }

    #[test]
    fn shared_latency_hiccups_cancel_in_the_rank_comparison_and_one_sided_ones_do_not() {
        let fast: Vec<(f64, u64)> = vec![(0.001, 40), (0.002, 10)];
        let slow: Vec<(f64, u64)> = vec![(0.050, 40), (0.060, 10)];
        let big = |buckets: &[(f64, u64)]| buckets.iter().map(|&(b, c)| (b, c * 19)).collect::<Vec<_>>();
        let (fast_b, slow_b) = (big(&fast), big(&slow));
        let shared: Vec<PeriodHistograms<'_>> =
            (0..40).map(|i| if i % 8 == 0 { (&slow[..], &slow_b[..]) } else { (&fast[..], &fast_b[..]) }).collect();
        let effect = rank(&shared, 0.0).unwrap();
        assert!(effect.measured < 1.0, "{effect:?}");
        // The same hiccups on the canary alone: each is a whole period of slow requests.
        let one_sided: Vec<PeriodHistograms<'_>> =
            (0..40).map(|i| if i % 8 == 0 { (&slow[..], &fast_b[..]) } else { (&fast[..], &fast_b[..]) }).collect();
        let effect = rank(&one_sided, 0.0).unwrap();
        assert!(effect.measured > 10.0, "{effect:?}");
    }

    #[test]
    fn few_periods_widen_the_test_and_none_forbid_it() {
        assert_eq!(small_sample_factor(1, 0.05), f64::INFINITY);
        let three = small_sample_factor(3, 0.0167);
        let sixty = small_sample_factor(60, 0.0167);
        assert!(three > 4.0, "{three}");
        assert!(sixty > 1.0 && sixty < 1.1, "{sixty}");
        let effect = DesignEffect { measured: 0.5, periods: 60 };
        assert_eq!(effect.factor(0.0167), sixty, "never below independence");
        let alone = DesignEffect { measured: 0.0, periods: 1 };
        assert_eq!(alone.factor(0.0167), small_sample_factor(2, 0.0167), "one period is held as wide as two");
    }

    #[test]
    fn nothing_to_measure_has_no_answer() {
        assert_eq!(rate(&[]), None);
        assert_eq!(rate(&[counts(0, 10), counts(0, 10)]), None, "no variation at all");
        assert_eq!(rate_difference(&[(counts(0, 0), counts(1, 10))], 1.0), None);
        assert_eq!(rank(&[(&[], &[(0.1, 3)])], 0.0), None);
        assert_eq!(rank(&[(&[(f64::NAN, 1)], &[(0.1, 3)])], 0.0), None);
    }
}
