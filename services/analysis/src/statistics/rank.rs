//! Mann-Whitney U on two latency histograms: is the canary slower than the baseline by
//! more than a relative margin?
//!
//! # Margin
//!
//! The margin is a relative shift (0.1 = 10%): the null hypothesis is that the canary's
//! latency is stochastically no larger than the baseline's multiplied by `1 + margin`, so
//! the test ranks the canary's values against the baseline's scaled by `1 + margin`. A
//! canary that is uniformly 5% slower does not fail a 10% margin however much traffic there
//! is; one that is 20% slower does. Scaling keeps the margin's meaning independent of the
//! spread of the latencies, which an effect size on ranks would not.
//!
//! # Effect size
//!
//! [`RankTest::superiority`] is the common-language effect size U / (n_c n_b): the chance
//! that a random canary request is slower than a random (scaled) baseline request, ties
//! counting half; 0.5 when they are alike. The sequential test works on it.
//!
//! # Ties and the normal approximation
//!
//! Every value in a bucket is its upper bound, so a histogram is a sample with massive
//! ties. Ranks are mid-ranks, and the variance uses the tie correction
//! `n_c n_b / 12 * ((N + 1) - sum(t^3 - t) / (N (N - 1)))` over groups of `t` equal
//! values; the p-value is the normal tail with a continuity correction of 1/2 on U, as in
//! `scipy.stats.mannwhitneyu(canary, baseline * (1 + margin), alternative='greater',
//! method='asymptotic', use_continuity=True)`. Histograms from traffic hold hundreds to
//! millions of requests, where the normal approximation is sound; the judge's minimum
//! sample size keeps it away from tiny samples. Cost: O(b log b) in the number of buckets,
//! independent of the number of requests.

use super::{Evidence, normal_sf, probability};

/// The result of [`mann_whitney_greater`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankTest {
    /// U of the canary: pairs (canary, scaled baseline) where the canary is slower, ties
    /// counting half.
    pub u: f64,
    /// U / (n_c n_b): the chance that a canary request is slower than a scaled baseline
    /// request.
    pub superiority: f64,
    /// Standardized U with the continuity correction.
    pub z: f64,
    /// One-sided p-value that the canary is slower beyond the margin.
    pub p_value: f64,
    /// Variance of U under the null, tie corrected.
    pub variance_u: f64,
    /// Canary requests.
    pub canary_samples: u64,
    /// Baseline requests.
    pub baseline_samples: u64,
}

impl RankTest {
    /// The evidence on the scale of [`RankTest::superiority`]: its excess over 1/2 and its
    /// variance under the null.
    pub fn evidence(&self) -> Evidence {
        let pairs = self.canary_samples as f64 * self.baseline_samples as f64;
        Evidence {
            excess: self.superiority - 0.5,
            variance: self.variance_u / (pairs * pairs),
            p_value: self.p_value,
            correction: 0.5 / pairs,
        }
    }
}

/// Mann-Whitney U that the canary's latencies exceed the baseline's scaled by
/// `1 + margin` (see the module docs). Buckets are (upper bound, count) in any order; equal
/// bounds on one side are merged, empty buckets ignored. `None` when a side has no
/// requests, a bound is NaN or negative, the margin is not finite or is -1 or less, or all
/// values are tied (nothing to rank).
pub fn mann_whitney_greater(canary: &[(f64, u64)], baseline: &[(f64, u64)], margin: f64) -> Option<RankTest> {
    if !(margin.is_finite() && margin > -1.0) {
        return None;
    }
    let values = merged(canary.iter(), baseline.iter(), 1.0 + margin)?;
    let n_c: f64 = values.iter().map(|v| v.1).sum();
    let n_b: f64 = values.iter().map(|v| v.2).sum();
    if n_c == 0.0 || n_b == 0.0 {
        return None;
    }
    let total = n_c + n_b;

    // One pass over the distinct values: U counts, for each canary value, the baseline
    // values below it plus half of those tied with it.
    let mut u = 0.0;
    let mut baseline_below = 0.0;
    let mut tie_term = 0.0;
    for &(_, c, b) in &values {
        u += c * (baseline_below + b / 2.0);
        baseline_below += b;
        let tied = c + b;
        tie_term += tied * tied * tied - tied;
    }

    let pairs = n_c * n_b;
    let variance_u = pairs / 12.0 * ((total + 1.0) - tie_term / (total * (total - 1.0)));
    // Also catches NaN.
    if variance_u.is_nan() || variance_u <= 0.0 {
        return None;
    }
    let z = (u - pairs / 2.0 - 0.5) / variance_u.sqrt();
    Some(RankTest {
        u,
        superiority: u / pairs,
        z,
        p_value: probability(normal_sf(z)),
        variance_u,
        canary_samples: n_c as u64,
        baseline_samples: n_b as u64,
    })
}

/// The canary's latencies and the baseline's scaled by `scale`, as one ascending list of
/// distinct values, each with (value, canary count, baseline count): equal values are
/// ties, counted together. Buckets may come in any order and repeat a bound. `None` when a
/// bound is NaN or negative.
pub(super) fn merged<'a>(
    canary: impl Iterator<Item = &'a (f64, u64)>,
    baseline: impl Iterator<Item = &'a (f64, u64)>,
    scale: f64,
) -> Option<Vec<(f64, f64, f64)>> {
    let usable = |bound: f64| bound.is_finite() && bound >= 0.0;
    let mut raw: Vec<(f64, f64, f64)> = Vec::new();
    for &(bound, count) in canary {
        if !usable(bound) {
            return None;
        }
        raw.push((bound, count as f64, 0.0));
    }
    for &(bound, count) in baseline {
        if !usable(bound) {
            return None;
        }
        raw.push((bound * scale, 0.0, count as f64));
    }
    raw.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut values: Vec<(f64, f64, f64)> = Vec::with_capacity(raw.len());
    for (value, c, b) in raw {
        match values.last_mut() {
            Some(last) if last.0 == value => {
                last.1 += c;
                last.2 += b;
            }
            _ => values.push((value, c, b)),
        }
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_histograms_are_even() {
        let buckets = [(0.01, 100), (0.02, 300), (0.05, 50)];
        let test = mann_whitney_greater(&buckets, &buckets, 0.0).unwrap();
        assert_eq!(test.superiority, 0.5);
        assert!(test.p_value > 0.5);
    }

    #[test]
    fn a_slower_canary_is_significant_and_a_margin_absorbs_it() {
        let baseline = [(0.010, 500), (0.020, 400), (0.040, 100)];
        let canary = [(0.012, 500), (0.024, 400), (0.048, 100)];
        let plain = mann_whitney_greater(&canary, &baseline, 0.0).unwrap();
        assert!(plain.p_value < 1e-6, "{plain:?}");
        // 20% slower everywhere: a 25% margin scales the baseline above it.
        let tolerated = mann_whitney_greater(&canary, &baseline, 0.25).unwrap();
        assert!(tolerated.p_value > 0.99, "{tolerated:?}");
    }

    #[test]
    fn the_evidence_variance_matches_the_tie_free_formula_without_ties() {
        let canary = [(1.0, 1), (3.0, 1), (5.0, 1)];
        let baseline = [(2.0, 1), (4.0, 1)];
        let test = mann_whitney_greater(&canary, &baseline, 0.0).unwrap();
        // Canary 3 beats 2; 5 beats 2 and 4: U = 3 of 6 pairs.
        assert_eq!(test.u, 3.0);
        let evidence = test.evidence();
        let expected = 3.0 * 2.0 * 6.0 / 12.0 / 36.0;
        assert!((evidence.variance - expected).abs() < 1e-12);
    }

    #[test]
    fn empty_or_malformed_histograms_have_no_answer() {
        assert_eq!(mann_whitney_greater(&[], &[(0.1, 3)], 0.0), None);
        assert_eq!(mann_whitney_greater(&[(0.1, 0)], &[(0.1, 3)], 0.0), None);
        assert_eq!(mann_whitney_greater(&[(f64::NAN, 1)], &[(0.1, 3)], 0.0), None);
        assert_eq!(mann_whitney_greater(&[(0.1, 1)], &[(0.1, 3)], f64::INFINITY), None);
        // Every value tied: no ranking at all.
        assert_eq!(mann_whitney_greater(&[(0.1, 5)], &[(0.1, 3)], 0.0), None);
    }
}
