//! What a metric source hands the judge: one [`Observation`] per side of a check.
//!
//! The shape decides how a check can be judged. Counts of failures out of trials and
//! latency histograms carry their own sampling distribution, so rules on them are tested
//! statistically; a plain [`Observation::Value`] is only a number with a sample count, so
//! rules on it compare numbers.

/// One side's measurement of a metric.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// Failures out of trials, exact counts (error rate).
    Proportion {
        /// Trials that failed.
        failures: u64,
        /// All trials.
        trials: u64,
    },
    /// A latency distribution: non-cumulative buckets (upper bound in seconds, count), same
    /// bounds on both sides; `quantile` is which quantile `value` is.
    Latency {
        /// Non-empty buckets as (upper bound in seconds, count), any order.
        buckets: Vec<(f64, u64)>,
        /// Which quantile `value` is, in (0, 1).
        quantile: f64,
        /// The quantile in seconds: the upper bound of the bucket holding it.
        value: f64,
    },
    /// A plain value with its sample count (Prometheus values, request rate, fixed metrics).
    Value {
        /// The value.
        value: f64,
        /// How many samples it summarizes; 0 when unknown.
        samples: u64,
    },
}

impl Observation {
    /// The metric's value: the failure rate (NaN without trials), the latency quantile, or
    /// the plain value.
    pub fn value(&self) -> f64 {
        match self {
            Self::Proportion { failures, trials } => {
                if *trials == 0 {
                    f64::NAN
                } else {
                    *failures as f64 / *trials as f64
                }
            }
            Self::Latency { value, .. } | Self::Value { value, .. } => *value,
        }
    }

    /// How many samples the value summarizes: trials, requests in the histogram, or the
    /// count the source reported.
    pub fn samples(&self) -> u64 {
        match self {
            Self::Proportion { trials, .. } => *trials,
            Self::Latency { buckets, .. } => buckets.iter().fold(0_u64, |sum, (_, count)| sum.saturating_add(*count)),
            Self::Value { samples, .. } => *samples,
        }
    }

    /// Which shape this is.
    pub fn kind(&self) -> ObservationKind {
        match self {
            Self::Proportion { .. } => ObservationKind::Proportion,
            Self::Latency { .. } => ObservationKind::Latency,
            Self::Value { .. } => ObservationKind::Value,
        }
    }

    /// Why the observation cannot be judged, if it cannot: a NaN or infinite value, more
    /// failures than trials, or a bucket with a NaN or negative bound. Zero samples are not
    /// malformed; the minimum sample size deals with them.
    pub fn malformed(&self) -> Option<String> {
        match self {
            Self::Proportion { failures, trials } if failures > trials => {
                Some(format!("{failures} failures out of {trials} trials"))
            }
            Self::Proportion { .. } => None,
            Self::Latency { buckets, quantile, value } => {
                if let Some((bound, _)) = buckets.iter().find(|(bound, _)| !(bound.is_finite() && *bound >= 0.0)) {
                    Some(format!("latency bucket bound {bound}"))
                } else if !(*quantile > 0.0 && *quantile < 1.0) {
                    Some(format!("latency quantile {quantile} is outside (0, 1)"))
                } else if self.samples() > 0 && !value.is_finite() {
                    Some(format!("latency value {value}"))
                } else {
                    None
                }
            }
            Self::Value { value, .. } => (!value.is_finite()).then(|| format!("value {value}")),
        }
    }
}

/// The shape of an [`Observation`], as a template predicts it from the metric source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservationKind {
    /// [`Observation::Proportion`].
    Proportion,
    /// [`Observation::Latency`].
    Latency,
    /// [`Observation::Value`].
    Value,
}

/// Both sides of one check.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The known-good side.
    pub baseline: Observation,
    /// The side under test.
    pub canary: Observation,
    /// What the source adds to the check's reason, e.g. which pod restarted.
    pub note: Option<String>,
    /// The same window cut into periods of time, oldest first, when the source can: the
    /// judge measures on them how much requests close in time move together (see
    /// `statistics::dependence`). Empty when the source cannot; the tests then treat
    /// requests as independent.
    pub periods: Vec<PeriodPair>,
    /// The baseline's requests split in two halves and observed like the sides, when the
    /// source can: how far apart two samples of the same backend read is the noise a canary
    /// must be worse than before the judge calls it worse.
    pub baseline_halves: Option<[Observation; 2]>,
}

impl Observed {
    /// Both sides, with no note, no periods and no halves.
    pub fn new(baseline: Observation, canary: Observation) -> Self {
        Self { baseline, canary, note: None, periods: Vec::new(), baseline_halves: None }
    }
}

/// Both sides of one period of a window: counts or histograms of the same shape as the
/// window's, with zero samples for a side that had no requests in the period.
#[derive(Clone, Debug, PartialEq)]
pub struct PeriodPair {
    /// The known-good side.
    pub baseline: Observation,
    /// The side under test.
    pub canary: Observation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_without_trials_have_no_value() {
        let none = Observation::Proportion { failures: 0, trials: 0 };
        assert!(none.value().is_nan());
        assert_eq!(none.samples(), 0);
        assert_eq!(none.malformed(), None);
        assert_eq!(Observation::Proportion { failures: 1, trials: 4 }.value(), 0.25);
    }

    #[test]
    fn latency_samples_are_the_histogram_total() {
        let latency = Observation::Latency { buckets: vec![(0.1, 3), (0.2, 4)], quantile: 0.99, value: 0.2 };
        assert_eq!(latency.samples(), 7);
        assert_eq!(latency.value(), 0.2);
        assert_eq!(latency.kind(), ObservationKind::Latency);
    }

    #[test]
    fn nan_and_impossible_counts_are_malformed() {
        assert!(Observation::Value { value: f64::NAN, samples: 10 }.malformed().is_some());
        assert!(Observation::Proportion { failures: 5, trials: 4 }.malformed().is_some());
        let bad_bound = Observation::Latency { buckets: vec![(f64::NAN, 1)], quantile: 0.5, value: 0.1 };
        assert!(bad_bound.malformed().is_some());
        // An empty histogram has no quantile; that is too few samples, not malformed.
        let empty = Observation::Latency { buckets: vec![], quantile: 0.99, value: f64::NAN };
        assert_eq!(empty.malformed(), None);
    }
}
