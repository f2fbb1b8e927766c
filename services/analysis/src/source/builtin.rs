//! Traffic's own request statistics as a metric source.

use std::{collections::BTreeMap, time::Duration};

use ficus_kit::client::TracedChannel;
use ficus_proto::{
    analysis::v1::{self as proto, builtin_metric::Kind},
    traffic::v1::{
        BackendStats, GetTrafficStatsRequest, Histogram, PeriodStats, traffic_control_client::TrafficControlClient,
    },
};

use crate::observation::{Observation, Observed, PeriodPair};

/// Quantile of LATENCY checks that name none.
const DEFAULT_QUANTILE: f64 = 0.99;

/// How many periods a window is cut into, at most, for measuring how much requests close
/// in time move together (whole seconds each, at least one): enough for the cluster-robust
/// variance to settle, few enough that a period spans a whole hiccup and the answer stays
/// small.
const TARGET_PERIODS: u64 = 30;

/// Reads `GetTrafficStats` from the traffic service.
#[derive(Clone, Debug)]
pub struct TrafficSource {
    client: TrafficControlClient<TracedChannel>,
}

/// One read of both sides' statistics.
#[derive(Clone, Debug)]
pub struct TrafficStats {
    baseline: BackendStats,
    canary: BackendStats,
    window: Duration,
}

impl TrafficSource {
    /// Reads from the traffic service behind `channel`.
    pub fn new(channel: TracedChannel) -> Self {
        Self { client: TrafficControlClient::new(channel) }
    }

    /// Both sides' statistics over `window`; the error says why they could not be read.
    pub async fn read(&self, target: &proto::Target, window: Duration) -> Result<TrafficStats, String> {
        let request = GetTrafficStatsRequest {
            route: target.route.clone(),
            backends: vec![target.baseline.clone(), target.canary.clone()],
            window: Some(window.into()),
            period: Some(period_of(window).into()),
            halves: true,
        };
        let stats = self
            .client
            .clone()
            .get_traffic_stats(request)
            .await
            .map_err(|status| format!("traffic statistics unavailable: {}", status.message()))?
            .into_inner();
        let side = |name: &str| {
            stats
                .backends
                .iter()
                .find(|backend| backend.backend == name)
                .cloned()
                .ok_or_else(|| format!("traffic reported no statistics for backend `{name}`"))
        };
        Ok(TrafficStats { baseline: side(&target.baseline)?, canary: side(&target.canary)?, window })
    }
}

impl TrafficStats {
    /// The observation `metric` asks for.
    pub fn observe(&self, metric: &proto::BuiltinMetric) -> Result<Observed, String> {
        let kind = Kind::try_from(metric.kind).map_err(|_| format!("unknown builtin metric kind {}", metric.kind))?;
        let quantile = metric.quantile.unwrap_or(DEFAULT_QUANTILE);
        let one = |stats: &BackendStats| -> Result<Observation, String> {
            match kind {
                Kind::ErrorRate => Ok(Observation::Proportion { failures: stats.errors, trials: stats.requests }),
                Kind::Latency => {
                    let buckets = stats.histogram.as_ref().map(buckets).unwrap_or_default();
                    let value = quantile_of(&buckets, quantile).unwrap_or(f64::NAN);
                    Ok(Observation::Latency { buckets, quantile, value })
                }
                Kind::RequestRate => Ok(Observation::Value {
                    value: stats.requests as f64 / self.window.as_secs_f64().max(1.0),
                    samples: stats.requests,
                }),
                Kind::Unspecified => Err("builtin metric kind is unspecified".to_owned()),
            }
        };
        let (periods, baseline_halves) = match kind {
            Kind::ErrorRate | Kind::Latency => {
                let halves = match self.baseline.halves.as_slice() {
                    [first, second] => Some([one(first)?, one(second)?]),
                    _ => None,
                };
                (self.periods(kind, quantile), halves)
            }
            Kind::RequestRate | Kind::Unspecified => (Vec::new(), None),
        };
        Ok(Observed {
            baseline: one(&self.baseline)?,
            canary: one(&self.canary)?,
            note: None,
            periods,
            baseline_halves,
        })
    }

    /// Both sides' periods matched by their start, oldest first; a side without requests in
    /// a period the other has gets an empty one.
    fn periods(&self, kind: Kind, quantile: f64) -> Vec<PeriodPair> {
        // (seconds, nanos) of each period's start -> (baseline, canary).
        type Sides<'a> = (Option<&'a PeriodStats>, Option<&'a PeriodStats>);
        let mut by_start: BTreeMap<(i64, i32), Sides<'_>> = BTreeMap::new();
        let start = |period: &PeriodStats| period.start.as_ref().map_or((0, 0), |start| (start.seconds, start.nanos));
        for period in &self.baseline.periods {
            by_start.entry(start(period)).or_default().0 = Some(period);
        }
        for period in &self.canary.periods {
            by_start.entry(start(period)).or_default().1 = Some(period);
        }
        let observe = |period: Option<&PeriodStats>| match kind {
            Kind::ErrorRate => Observation::Proportion {
                failures: period.map_or(0, |period| period.errors),
                trials: period.map_or(0, |period| period.requests),
            },
            _ => {
                let buckets = period.and_then(|period| period.histogram.as_ref()).map(buckets).unwrap_or_default();
                let value = quantile_of(&buckets, quantile).unwrap_or(f64::NAN);
                Observation::Latency { buckets, quantile, value }
            }
        };
        by_start
            .into_values()
            .map(|(baseline, canary)| PeriodPair { baseline: observe(baseline), canary: observe(canary) })
            .collect()
    }
}

/// A histogram's buckets as (upper bound in seconds, count).
fn buckets(histogram: &Histogram) -> Vec<(f64, u64)> {
    histogram.buckets.iter().map(|bucket| (bucket.upper_bound_seconds, bucket.count)).collect()
}

/// The period a window of `window` is cut into: whole seconds, at least one, so that there
/// are at most [`TARGET_PERIODS`].
fn period_of(window: Duration) -> Duration {
    let seconds = window.as_secs() + u64::from(window.subsec_nanos() > 0);
    Duration::from_secs(seconds.div_ceil(TARGET_PERIODS).max(1))
}

/// The upper bound of the bucket holding quantile `q` of non-cumulative `buckets`.
fn quantile_of(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|(_, count)| count).sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    buckets.iter().find_map(|(bound, count)| {
        seen += count;
        (seen >= rank).then_some(*bound)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_bucket_that_holds_the_rank() {
        let buckets = [(0.001, 50), (0.01, 45), (0.1, 4), (1.0, 1)];
        assert_eq!(quantile_of(&buckets, 0.5), Some(0.001));
        assert_eq!(quantile_of(&buckets, 0.95), Some(0.01));
        assert_eq!(quantile_of(&buckets, 0.99), Some(0.1));
        assert_eq!(quantile_of(&buckets, 1.0), Some(1.0));
        assert_eq!(quantile_of(&[], 0.5), None);
    }

    #[test]
    fn windows_are_cut_into_at_most_thirty_whole_second_periods() {
        assert_eq!(period_of(Duration::from_millis(1500)), Duration::from_secs(1));
        assert_eq!(period_of(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(period_of(Duration::from_secs(31)), Duration::from_secs(2));
        assert_eq!(period_of(Duration::from_secs(15 * 60)), Duration::from_secs(30));
    }
}
