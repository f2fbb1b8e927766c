//! `/metrics`: totals since start of every series, as Prometheus counters and a histogram.
//!
//! Totals are kept apart from the ring of seconds: a Prometheus counter must never go down,
//! and the ring forgets. The histogram uses a fixed, coarse set of `le` bounds counted
//! exactly on every request: dashboards and alerts need stable series, not HDR precision,
//! which the stats rpc serves.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};

use super::{
    Inner,
    series::{CONNECTION_ERROR, Counts},
};

/// Upper bounds of the exported histogram buckets, in microseconds: 250 µs to 60 s.
const LE_MICROS: [u64; 17] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000, 60_000_000,
];

/// Value of the `class` label for each outcome slot.
const CLASS_LABELS: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "connection_error"];

/// Totals of a series since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Totals {
    /// Requests by outcome and latency sum.
    pub(super) counts: Counts,
    /// Requests by exported bucket, non-cumulative; the last one is `+Inf`.
    le: [u64; LE_MICROS.len() + 1],
}

impl Totals {
    /// Counts one request.
    pub(super) fn add(&mut self, outcome: usize, micros: u64) {
        self.counts.add(outcome, micros);
        self.le[LE_MICROS.partition_point(|&bound| bound < micros)] += 1;
    }

    /// Adds the totals of another series.
    pub(super) fn merge(&mut self, other: &Totals) {
        self.counts.merge(&other.counts);
        for (mine, theirs) in self.le.iter_mut().zip(other.le) {
            *mine += theirs;
        }
    }
}

/// Encodes every series' totals on each scrape.
#[derive(Debug)]
pub(super) struct StatsCollector {
    pub(super) inner: Arc<Inner>,
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // Copied first, so no lock is held while writing text.
        let rows = self.inner.totals();

        let mut requests = encoder.encode_descriptor(
            "traffic_requests",
            "Requests proxied per route and backend, by status class; class connection_error \
             counts requests that got no response",
            None,
            MetricType::Counter,
        )?;
        for (route, backend, totals) in &rows {
            for (class, count) in CLASS_LABELS.into_iter().zip(totals.counts.by_outcome) {
                let labels = [("route", route.as_str()), ("backend", backend.as_str()), ("class", class)];
                requests.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }

        let mut connection_errors = encoder.encode_descriptor(
            "traffic_connection_errors",
            "Requests per route and backend that got no response: refused, reset or timed out",
            None,
            MetricType::Counter,
        )?;
        for (route, backend, totals) in &rows {
            let count = totals.counts.by_outcome[CONNECTION_ERROR];
            let labels = [("route", route.as_str()), ("backend", backend.as_str())];
            connection_errors.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }

        let mut duration = encoder.encode_descriptor(
            "traffic_request_duration_seconds",
            "Time from sending a request to the backend to its response headers or failure",
            None,
            MetricType::Histogram,
        )?;
        for (route, backend, totals) in &rows {
            let buckets: Vec<(f64, u64)> = LE_MICROS
                .iter()
                .map(|&bound| seconds(bound))
                // The text encoder writes `f64::MAX` as `+Inf`.
                .chain([f64::MAX])
                .zip(totals.le)
                .collect();
            let sum = seconds(totals.counts.latency_sum_micros);
            let labels = [("route", route.as_str()), ("backend", backend.as_str())];
            duration.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                sum,
                totals.counts.requests(),
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

/// Microseconds as seconds.
pub(super) fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}
