//! Tests on failure rates: one sample against a fixed bound, and the canary against the
//! baseline with a ratio and an absolute margin.
//!
//! # One sample
//!
//! "The canary's rate is above `bound`" is tested exactly with the binomial tail
//! P(X >= failures | trials, bound) (statrs, through the regularized incomplete beta
//! function, which is accurate for any number of trials, so no approximation is needed).
//!
//! # Canary against baseline
//!
//! The null hypothesis is `p_canary <= ratio * p_baseline + margin`: `ratio = 1` with a
//! margin is the statistical rule (the margin is an absolute difference in proportion, so
//! 0.001 lets the canary be 0.1 percentage points worse before it may fail); `margin = 0`
//! with a ratio is the relative rule on a rate.
//!
//! The statistic is the score (Farrington-Manning) statistic: the excess
//! `p̂_c - ratio * p̂_b - margin` over its standard error at the maximum-likelihood rates
//! restricted to the null boundary. Using the restricted rates rather than the observed
//! ones keeps the variance away from 0 when one side has no failures yet, which is exactly
//! when a canary's first few errors arrive. For `ratio = 1, margin = 0` the restricted rate
//! is the pooled rate and this is the classic pooled two-proportion z-test.
//!
//! The p-value switches on the size of the counts:
//!
//! - while the smallest expected cell of the 2x2 table under the pooled null is below
//!   [`EXACT_BELOW_EXPECTED_CELL`] (50), it uses Fisher's exact test (the hypergeometric
//!   tail, conditional on the total failures). With a margin or a ratio above 1, Fisher's
//!   test answers a stricter null, so the p-value is the larger of the two: the canary fails
//!   only if it also fails the exact zero-margin test, which keeps a handful of errors from
//!   failing it on a normal approximation that does not hold yet;
//! - from there on, the normal approximation with continuity correction
//!   `(1/n_c + ratio/n_b) / 2` on the excess, which tracks Fisher's test closely once every
//!   cell expects 50 or more (see the reference tests) and costs O(1) instead of a sum over
//!   the hypergeometric support (up to about sqrt(50 N) terms below the switch).

use statrs::distribution::{Binomial, DiscreteCDF, Hypergeometric};

use super::{Evidence, normal_sf, probability};

/// Below this smallest expected cell count, two-sample p-values are exact (Fisher).
pub const EXACT_BELOW_EXPECTED_CELL: f64 = 50.0;

/// Failures out of trials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Trials that failed.
    pub failures: u64,
    /// All trials.
    pub trials: u64,
}

impl Counts {
    /// `failures` out of `trials`; `None` when there are more failures than trials.
    pub fn new(failures: u64, trials: u64) -> Option<Self> {
        (failures <= trials).then_some(Self { failures, trials })
    }

    /// Both counts added up, saturating.
    pub fn plus(&self, other: &Counts) -> Counts {
        Counts {
            failures: self.failures.saturating_add(other.failures),
            trials: self.trials.saturating_add(other.trials),
        }
    }

    /// The observed failure rate; NaN without trials.
    pub fn rate(&self) -> f64 {
        if self.trials == 0 { f64::NAN } else { self.failures as f64 / self.trials as f64 }
    }

    fn successes(&self) -> u64 {
        self.trials - self.failures
    }
}

/// Evidence that the rate of `observed` is above `bound`, a proportion in [0, 1]. The
/// variance is the binomial one at the bound; the p-value is the exact binomial tail.
/// `None` without trials, with impossible counts or with a bound outside [0, 1].
pub fn above_bound(observed: Counts, bound: f64) -> Option<Evidence> {
    if observed.trials == 0 || observed.failures > observed.trials || !(0.0..=1.0).contains(&bound) {
        return None;
    }
    let n = observed.trials as f64;
    let p_value = if observed.failures == 0 {
        1.0
    } else {
        // P(X >= failures) = P(X > failures - 1).
        Binomial::new(bound, observed.trials).ok()?.sf(observed.failures - 1)
    };
    Some(Evidence {
        excess: observed.rate() - bound,
        variance: bound * (1.0 - bound) / n,
        p_value: probability(p_value),
        correction: 0.5 / n,
    })
}

/// Evidence that the rate of `observed` is below `bound` (e.g. a success rate under its
/// floor); the mirror of [`above_bound`], with the exact tail P(X <= failures).
pub fn below_bound(observed: Counts, bound: f64) -> Option<Evidence> {
    if observed.trials == 0 || observed.failures > observed.trials || !(0.0..=1.0).contains(&bound) {
        return None;
    }
    let n = observed.trials as f64;
    let p_value = Binomial::new(bound, observed.trials).ok()?.cdf(observed.failures);
    Some(Evidence {
        excess: bound - observed.rate(),
        variance: bound * (1.0 - bound) / n,
        p_value: probability(p_value),
        correction: 0.5 / n,
    })
}

/// The result of [`above_baseline`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// Excess of `p̂_c - ratio * p̂_b - margin`, its variance on the null boundary and the
    /// p-value of this look.
    pub evidence: Evidence,
    /// The canary's rate on the null boundary at the restricted estimate,
    /// `ratio * p̃_b + margin`: the scale of a "doubling" of what the null allows.
    pub boundary_rate: f64,
    /// Whether the p-value involved Fisher's exact test (small counts).
    pub exact: bool,
}

/// Evidence that the canary's failure rate is above `ratio` times the baseline's plus
/// `margin` (see the module docs for the statistic and the exact/normal switch). `None`
/// without trials on a side, with impossible counts, with a non-positive or non-finite
/// ratio, or with a margin outside (-1, 1).
pub fn above_baseline(canary: Counts, baseline: Counts, ratio: f64, margin: f64) -> Option<Comparison> {
    if canary.trials == 0 || baseline.trials == 0 {
        return None;
    }
    let p_b = restricted_baseline_rate(canary, baseline, ratio, margin)?;
    let (n_c, n_b) = (canary.trials as f64, baseline.trials as f64);
    let q = (ratio * p_b + margin).clamp(0.0, 1.0);
    let variance = q * (1.0 - q) / n_c + ratio * ratio * p_b * (1.0 - p_b) / n_b;
    let excess = canary.rate() - ratio * baseline.rate() - margin;
    let correction = 0.5 * (1.0 / n_c + ratio / n_b);
    let normal = if variance > 0.0 {
        normal_sf((excess - correction) / variance.sqrt())
    } else if excess > 0.0 {
        0.0
    } else {
        1.0
    };
    // Fisher's test answers `p_c <= p_b`, which lies inside the null only when the null
    // allows at least that much; a ratio below 1 or a negative margin gets no guard.
    let guarded = ratio >= 1.0 && margin >= 0.0 && smallest_expected_cell(canary, baseline) < EXACT_BELOW_EXPECTED_CELL;
    let p_value = if guarded {
        let fisher = fisher_greater(canary, baseline)?;
        if ratio == 1.0 && margin == 0.0 { fisher } else { fisher.max(normal) }
    } else {
        normal
    };
    Some(Comparison {
        evidence: Evidence { excess, variance, p_value: probability(p_value), correction },
        boundary_rate: q,
        exact: guarded,
    })
}

/// Fisher's exact one-sided p-value that the canary's rate exceeds the baseline's:
/// P(X >= canary failures) for X hypergeometric given both sides' trials and the total
/// failures (what `scipy.stats.fisher_exact(alternative='greater')` computes). `None` with
/// impossible counts.
pub fn fisher_greater(canary: Counts, baseline: Counts) -> Option<f64> {
    if canary.failures > canary.trials || baseline.failures > baseline.trials {
        return None;
    }
    if canary.failures == 0 {
        return Some(1.0);
    }
    let population = canary.trials.checked_add(baseline.trials)?;
    let failures = canary.failures + baseline.failures;
    let tail = Hypergeometric::new(population, failures, canary.trials).ok()?.sf(canary.failures - 1);
    Some(probability(tail))
}

/// The baseline's failure rate that maximizes the likelihood of both sides' counts subject
/// to `p_c = ratio * p_b + margin` (the Farrington-Manning restricted estimate). The
/// log-likelihood is concave in `p_b`, so its derivative is decreasing and bisection finds
/// the root, or the end of the feasible interval when there is none. `None` when no rate
/// satisfies the constraint or the parameters are not finite.
pub fn restricted_baseline_rate(canary: Counts, baseline: Counts, ratio: f64, margin: f64) -> Option<f64> {
    if !(ratio.is_finite() && ratio > 0.0 && margin.is_finite() && margin > -1.0 && margin < 1.0) {
        return None;
    }
    if canary.failures > canary.trials || baseline.failures > baseline.trials {
        return None;
    }
    let mut low = (-margin / ratio).max(0.0);
    let mut high = ((1.0 - margin) / ratio).min(1.0);
    if low >= high {
        return (low == high).then_some(low);
    }
    let (x_c, f_c) = (canary.failures as f64, canary.successes() as f64);
    let (x_b, f_b) = (baseline.failures as f64, baseline.successes() as f64);
    // Terms with a zero count are left out: they contribute nothing, and at the ends of
    // the interval they would be 0 * infinity.
    let slope = |p: f64| {
        let q = ratio * p + margin;
        let mut slope = 0.0;
        if x_c > 0.0 {
            slope += ratio * x_c / q;
        }
        if f_c > 0.0 {
            slope -= ratio * f_c / (1.0 - q);
        }
        if x_b > 0.0 {
            slope += x_b / p;
        }
        if f_b > 0.0 {
            slope -= f_b / (1.0 - p);
        }
        slope
    };
    for _ in 0..200 {
        let middle = 0.5 * (low + high);
        if middle <= low || middle >= high {
            break;
        }
        if slope(middle) > 0.0 {
            low = middle;
        } else {
            high = middle;
        }
    }
    Some(0.5 * (low + high))
}

/// The smallest of the four expected cells of the 2x2 table under the pooled null.
fn smallest_expected_cell(canary: Counts, baseline: Counts) -> f64 {
    let trials = canary.trials as f64 + baseline.trials as f64;
    let pooled = (canary.failures as f64 + baseline.failures as f64) / trials;
    let smaller_side = canary.trials.min(baseline.trials) as f64;
    smaller_side * pooled.min(1.0 - pooled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(failures: u64, trials: u64) -> Counts {
        Counts::new(failures, trials).unwrap()
    }

    #[test]
    fn the_restricted_rate_without_margin_is_the_pooled_rate() {
        let p = restricted_baseline_rate(counts(30, 1000), counts(50, 4000), 1.0, 0.0).unwrap();
        assert!((p - 80.0 / 5000.0).abs() < 1e-12, "{p}");
    }

    #[test]
    fn the_restricted_rate_sits_on_the_margin_when_nothing_failed() {
        // No failures anywhere: the likelihood is largest at p_b = 0, so p_c = margin.
        let comparison = above_baseline(counts(0, 1000), counts(0, 1000), 1.0, 0.01).unwrap();
        assert!(comparison.boundary_rate > 0.0099 && comparison.boundary_rate < 0.0101);
        assert!(comparison.evidence.excess < 0.0);
        assert_eq!(comparison.evidence.p_value, 1.0);
    }

    #[test]
    fn equal_rates_give_no_evidence() {
        let comparison = above_baseline(counts(50, 10_000), counts(500, 100_000), 1.0, 0.0).unwrap();
        assert!(comparison.evidence.excess.abs() < 1e-12);
        assert!(comparison.evidence.p_value > 0.4);
    }

    #[test]
    fn a_doubled_rate_is_significant_with_enough_trials() {
        let comparison = above_baseline(counts(150, 15_000), counts(1425, 285_000), 1.0, 0.0).unwrap();
        assert!(!comparison.exact);
        assert!(comparison.evidence.p_value < 1e-6, "{comparison:?}");
    }

    #[test]
    fn small_counts_are_exact() {
        let comparison = above_baseline(counts(3, 100), counts(1, 100), 1.0, 0.0).unwrap();
        assert!(comparison.exact);
        assert_eq!(comparison.evidence.p_value, fisher_greater(counts(3, 100), counts(1, 100)).unwrap());
    }

    #[test]
    fn degenerate_inputs_have_no_answer() {
        assert_eq!(above_baseline(counts(0, 0), counts(1, 10), 1.0, 0.0), None);
        assert_eq!(above_baseline(counts(1, 10), counts(1, 10), f64::NAN, 0.0), None);
        assert_eq!(above_baseline(counts(1, 10), counts(1, 10), 1.0, 1.0), None);
        assert_eq!(above_bound(counts(0, 0), 0.01), None);
        assert_eq!(above_bound(counts(1, 10), f64::NAN), None);
        assert_eq!(Counts::new(2, 1), None);
    }

    #[test]
    fn one_sample_tails_are_exact() {
        // P(X >= 1 | 100, 0.01) = 1 - 0.99^100.
        let evidence = above_bound(counts(1, 100), 0.01).unwrap();
        assert!((evidence.p_value - (1.0 - 0.99_f64.powi(100))).abs() < 1e-12);
        // P(X <= 0 | 100, 0.01) = 0.99^100.
        let evidence = below_bound(counts(0, 100), 0.01).unwrap();
        assert!((evidence.p_value - 0.99_f64.powi(100)).abs() < 1e-12);
        // Nothing can exceed a bound of 0 by chance.
        assert_eq!(above_bound(counts(1, 100), 0.0).unwrap().p_value, 0.0);
    }
}
