//! Judging the same run again and again without inflating false failures.
//!
//! A run judges every few seconds over everything seen since it started. Testing each look
//! at `alpha` would fail a healthy canary far more often than `alpha` over the run (with
//! 60 looks, several times more). Two tools keep the run-wide rate at `alpha`:
//!
//! # The mixture SPRT (cumulative windows)
//!
//! Each test hands an estimate `d` (its excess over the null boundary) with variance `V`
//! at the boundary. For cumulative data, `d / V` behaves like a Brownian motion in
//! information time `1 / V`, and for a true excess `δ` the likelihood ratio against the
//! boundary is `exp(δ d / V - δ² / (2 V))`. Mixing it over `δ >= 0` with a half-normal
//! weight of scale `τ` gives, in closed form,
//!
//! ```text
//! Λ = 2 sqrt(V / (V + τ²)) exp(d² τ² / (2 V (V + τ²))) Φ(d τ / sqrt(V (V + τ²)))
//! ```
//!
//! Every component is a nonnegative martingale under the boundary (and a supermartingale
//! anywhere inside the null, where the true excess is negative), so the mixture is one too,
//! and by Ville's inequality `P(Λ ever reaches 1/alpha) <= alpha`, however many looks and
//! whenever they are taken (Johari, Pekelis, Walsh, "Always valid inference", 2017, with
//! the one-sided mixture). The always-valid p-value is the running minimum of `1/Λ`;
//! failing when it drops to `alpha` keeps the false-failure rate of the whole run at or
//! below `alpha` without knowing the number of looks. `τ` is the size of effect the test is
//! tuned to detect fastest; any fixed `τ` is valid. The excess enters less its
//! continuity correction (half a count), which keeps small discrete counts from looking
//! more extreme than they are and vanishes as counts grow. The guarantee holds as far as the
//! normal approximation does, which is why the judge also requires the look's own
//! (exact, for small counts) p-value to be below `alpha`: that can only remove failures.
//!
//! # Alpha spending (sliding windows)
//!
//! A sliding window drops old data, so the statistic is no longer a martingale. Then each
//! look `k` may spend a share of `alpha` on a fixed-sample test, and by the union bound the
//! shares' sum, at most 1, caps the run-wide rate: `1 / (k (k + 1))` without a plan, and
//! `1 / (K + 1)` for each of `K` planned looks followed by the same decreasing series on
//! the last share for looks beyond the plan. It is conservative (windows overlap, so
//! their tests are correlated); cumulative windows detect faster.

use std::f64::consts::{LN_2, PI};

use super::{Evidence, normal_cdf};

/// Natural log of the one-sided normal-mixture likelihood ratio `Λ` of `evidence` with
/// mixing scale `tau` (see the module docs), on the excess less its continuity correction. 0 (a ratio of 1, no evidence) when the
/// variance or `tau` is 0 and the excess is not positive, or when anything is NaN; +∞ when
/// the variance is 0 and the excess positive.
pub fn ln_mixture_likelihood_ratio(evidence: &Evidence, tau: f64) -> f64 {
    let correction = if evidence.correction.is_finite() { evidence.correction.max(0.0) } else { 0.0 };
    let (d, v) = (evidence.excess - correction, evidence.variance);
    if d.is_nan() || v.is_nan() || tau.is_nan() || v < 0.0 {
        return 0.0;
    }
    if v == 0.0 {
        return if d > 0.0 && tau > 0.0 { f64::INFINITY } else { 0.0 };
    }
    if tau <= 0.0 || !tau.is_finite() {
        return 0.0;
    }
    let tau2 = tau * tau;
    let spread = v + tau2;
    let x = d * tau / (v * spread).sqrt();
    LN_2 + 0.5 * (v / spread).ln() + x * x / 2.0 + ln_normal_cdf(x)
}

/// The always-valid p-value of a sequence of looks: the running minimum of `1 / Λ`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlwaysValidP {
    p: f64,
}

impl Default for AlwaysValidP {
    /// No look yet: p = 1.
    fn default() -> Self {
        Self { p: 1.0 }
    }
}

impl AlwaysValidP {
    /// The p-value of a sequence already under way, e.g. one resumed after a restart;
    /// anything outside (0, 1] is treated as no evidence yet.
    pub fn resumed(p: f64) -> Self {
        Self { p: if p > 0.0 && p <= 1.0 { p } else { 1.0 } }
    }

    /// Takes in one look and returns the updated p-value.
    pub fn update(&mut self, evidence: &Evidence, tau: f64) -> f64 {
        let p = (-ln_mixture_likelihood_ratio(evidence, tau)).exp();
        if p < self.p {
            self.p = p;
        }
        self.p
    }

    /// The p-value so far.
    pub fn value(&self) -> f64 {
        self.p
    }
}

/// The share of `alpha` that look `look` (from 1) may spend when windows slide, given the
/// planned number of looks if known (see the module docs). The shares over all looks sum
/// to at most 1.
pub fn spending_share(look: u32, planned: Option<u32>) -> f64 {
    let look = f64::from(look.max(1));
    let series = |k: f64| 1.0 / (k * (k + 1.0));
    match planned {
        Some(planned) if planned > 0 => {
            let planned = f64::from(planned);
            let share = 1.0 / (planned + 1.0);
            if look <= planned { share } else { share * series(look - planned) }
        }
        _ => series(look),
    }
}

/// ln Φ(x), also far in the lower tail where Φ underflows (Mills ratio asymptotics).
fn ln_normal_cdf(x: f64) -> f64 {
    if x > -30.0 {
        return normal_cdf(x).ln();
    }
    // Φ(x) ≈ φ(x) / |x| * (1 - 1/x² + 3/x⁴) for x far below 0.
    let x2 = x * x;
    -x2 / 2.0 - (-x).ln() - 0.5 * (2.0 * PI).ln() + (1.0 - 1.0 / x2 + 3.0 / (x2 * x2)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(excess: f64, variance: f64) -> Evidence {
        Evidence { excess, variance, p_value: 1.0, correction: 0.0 }
    }

    #[test]
    fn no_excess_gives_little_evidence() {
        // At d = 0: Λ = 2 sqrt(V/(V+τ²)) Φ(0) = sqrt(V/(V+τ²)) <= 1.
        let ln = ln_mixture_likelihood_ratio(&evidence(0.0, 1.0), 1.0);
        assert!((ln - 0.5_f64.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn the_closed_form_matches_numerical_integration() {
        let (d, v, tau) = (0.3_f64, 0.01_f64, 0.2_f64);
        // ∫_0^∞ 2/τ φ(δ/τ) exp(δ d / v - δ² / (2 v)) dδ by the midpoint rule.
        let steps = 200_000;
        let top = 3.0;
        let h = top / f64::from(steps);
        let integral: f64 = (0..steps)
            .map(|i| {
                let delta = (f64::from(i) + 0.5) * h;
                let prior = 2.0 / tau * (-(delta / tau).powi(2) / 2.0).exp() / (2.0 * PI).sqrt();
                prior * (delta * d / v - delta * delta / (2.0 * v)).exp() * h
            })
            .sum();
        let closed = ln_mixture_likelihood_ratio(&evidence(d, v), tau).exp();
        assert!((closed / integral - 1.0).abs() < 1e-6, "{closed} vs {integral}");
    }

    #[test]
    fn the_far_lower_tail_does_not_underflow() {
        let ln = ln_mixture_likelihood_ratio(&evidence(-10.0, 1e-4), 1.0);
        assert!(ln.is_finite() && ln < 0.0, "{ln}");
        let continuity = ln_normal_cdf(-29.999) - ln_normal_cdf(-30.001);
        assert!(continuity.abs() < 0.1, "{continuity}");
    }

    #[test]
    fn degenerate_evidence_is_no_evidence() {
        assert_eq!(ln_mixture_likelihood_ratio(&evidence(f64::NAN, 1.0), 1.0), 0.0);
        assert_eq!(ln_mixture_likelihood_ratio(&evidence(0.0, 0.0), 1.0), 0.0);
        assert_eq!(ln_mixture_likelihood_ratio(&evidence(1.0, 1.0), 0.0), 0.0);
        assert_eq!(ln_mixture_likelihood_ratio(&evidence(1.0, 0.0), 1.0), f64::INFINITY);
    }

    #[test]
    fn the_always_valid_p_value_never_rises() {
        let mut p = AlwaysValidP::default();
        let first = p.update(&evidence(3.0, 1.0), 1.0);
        let second = p.update(&evidence(0.0, 1.0), 1.0);
        assert!(first < 1.0);
        assert_eq!(first, second);
    }

    #[test]
    fn spending_shares_sum_to_at_most_one() {
        let unplanned: f64 = (1..100_000).map(|k| spending_share(k, None)).sum();
        assert!(unplanned <= 1.0 && unplanned > 0.999);
        let planned: f64 = (1..100_000).map(|k| spending_share(k, Some(60))).sum();
        assert!(planned <= 1.0 && planned > 0.999);
        assert_eq!(spending_share(1, Some(60)), 1.0 / 61.0);
    }
}
