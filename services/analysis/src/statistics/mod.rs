//! The statistical tests behind the judge: pure functions of counts and histograms, no I/O.
//!
//! Every test asks one one-sided question, "is the canary worse than the null boundary
//! allows?", and answers with [`Evidence`]: how far the estimate lies beyond the boundary,
//! its variance at the boundary, and the fixed-sample p-value of this one look. The judge
//! uses the p-value for a one-shot judgement and feeds estimate and variance to the
//! [`sequential`] mixture test when it judges the same run again and again.
//!
//! - [`proportion`]: failure rates, one sample against a bound or canary against baseline
//!   (exact for small counts, normal with continuity correction for large ones);
//! - [`rank`]: Mann-Whitney U on two latency histograms, with a relative shift margin;
//! - [`dependence`]: how much requests close in time move together, measured per period
//!   on the run's own traffic, as a factor on a test's variance;
//! - [`sequential`]: the mixture sequential probability ratio test (mSPRT) and its
//!   always-valid p-value, plus alpha spending for windows that slide.
//!
//! Every function returns `None` rather than panicking when its input has no answer
//! (no trials, empty histograms, NaN): the judge turns that into INCONCLUSIVE.

pub mod dependence;
pub mod proportion;
pub mod rank;
pub mod sequential;

use statrs::distribution::{ContinuousCDF, Normal};

/// What one look of a one-sided test says about "the canary is worse".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evidence {
    /// Estimate minus its null boundary, in the test's own units (a difference of rates, a
    /// probability of being slower); positive means worse than the boundary allows.
    pub excess: f64,
    /// Variance of the estimate when the truth sits on the null boundary.
    pub variance: f64,
    /// One-sided p-value of this look alone, as if it were the only one.
    pub p_value: f64,
    /// Continuity correction in the excess's units (half a count): the sequential test
    /// subtracts it, so a count near the boundary is not read as more extreme than a
    /// discrete sample can show. Negligible once counts are large.
    pub correction: f64,
}

impl Evidence {
    /// The same evidence with its variance multiplied by `factor` (a design effect, at
    /// least 1), and this look's p-value at least the normal tail of the widened test, so
    /// that dependence between requests weakens the one-look test as well as the
    /// sequential one. A factor of 1 or less, or NaN, changes nothing; an infinite one
    /// leaves no evidence.
    pub fn widened(self, factor: f64) -> Evidence {
        // Also catches NaN.
        if factor.is_nan() || factor <= 1.0 {
            return self;
        }
        let variance = self.variance * factor;
        let z = if variance > 0.0 && variance.is_finite() {
            (self.excess - self.correction) / variance.sqrt()
        } else if factor.is_infinite() {
            f64::NEG_INFINITY
        } else {
            return self;
        };
        Evidence { variance, p_value: self.p_value.max(probability(normal_sf(z))), ..self }
    }

    /// The excess in standard errors; 0 when the variance is 0 and the excess is not
    /// positive, infinite when it is.
    pub fn z(&self) -> f64 {
        if self.variance > 0.0 {
            self.excess / self.variance.sqrt()
        } else if self.excess > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }
}

/// P(Z > z) for a standard normal Z, accurate far into the tail (erfc based).
pub fn normal_sf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    Normal::standard().sf(z)
}

/// P(Z <= z) for a standard normal Z.
pub fn normal_cdf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    Normal::standard().cdf(z)
}

/// Clamps a computed probability into [0, 1]; NaN becomes 1, the answer that never fails.
fn probability(p: f64) -> f64 {
    if p.is_nan() { 1.0 } else { p.clamp(0.0, 1.0) }
}
