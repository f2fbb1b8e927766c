//! One series: the statistics of one route and backend, as the second being written plus a
//! ring of closed seconds.
//!
//! The second being written is a dense HDR histogram, so recording is an index computation
//! and an increment. When a request arrives in a later second, the finished second is
//! closed: compacted to its non-empty buckets (most seconds hit a few dozen to a few hundred
//! of the 2560 buckets) and pushed onto the ring; the dense histogram is reset and reused.
//! Seconds without requests take no space at all. Closed seconds are immutable and shared
//! through `Arc`, so a snapshot copies pointers under the lock and merges them without it:
//! the hot path waits at most for the merge of the live second (microseconds), never for
//! the merge of a whole window.

use std::{
    collections::{BTreeMap, VecDeque},
    mem,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use super::export::Totals;

/// Lowest latency the histograms tell apart, in microseconds.
const LOWEST_MICROS: u64 = 1;
/// Highest latency the histograms hold, in microseconds; longer ones land in the last bucket.
pub(super) const HIGHEST_MICROS: u64 = 60_000_000;
/// Two significant digits: every bucket is at most 1/128 of its values wide (under 0.8%),
/// enough for a p99 comparison; three would cost eight times the memory.
const SIGNIFICANT_DIGITS: u8 = 2;

/// Outcome slots of [`Counts::by_outcome`]: `1xx` to `5xx`, then connection errors.
pub(super) const OUTCOMES: usize = 6;
/// Slot of 5xx responses.
pub(super) const SERVER_ERROR: usize = 4;
/// Slot of connection errors.
pub(super) const CONNECTION_ERROR: usize = 5;

/// An empty latency histogram; every series uses this one configuration, so bucket bounds
/// line up between backends and a rank test can compare their histograms bucket by bucket.
pub(super) fn latency_histogram<T: hdrhistogram::Counter>() -> Histogram<T> {
    Histogram::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Request counts of a stretch of time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    /// Requests by outcome slot (see [`OUTCOMES`]).
    pub(super) by_outcome: [u64; OUTCOMES],
    /// Sum of latencies in microseconds, kept exactly so the mean is exact.
    pub(super) latency_sum_micros: u64,
    /// Largest latency in microseconds, exact and not clamped to the histogram range.
    pub(super) latency_max_micros: u64,
}

impl Counts {
    /// Counts one request.
    pub(super) fn add(&mut self, outcome: usize, micros: u64) {
        self.by_outcome[outcome] += 1;
        self.latency_sum_micros = self.latency_sum_micros.saturating_add(micros);
        self.latency_max_micros = self.latency_max_micros.max(micros);
    }

    /// Adds the counts of another stretch of time.
    pub(super) fn merge(&mut self, other: &Counts) {
        for (mine, theirs) in self.by_outcome.iter_mut().zip(other.by_outcome) {
            *mine += theirs;
        }
        self.latency_sum_micros = self.latency_sum_micros.saturating_add(other.latency_sum_micros);
        self.latency_max_micros = self.latency_max_micros.max(other.latency_max_micros);
    }

    /// Every request, whatever its outcome.
    pub(super) fn requests(&self) -> u64 {
        self.by_outcome.iter().sum()
    }

    /// Failed requests: `5xx` responses plus connection errors.
    pub(super) fn errors(&self) -> u64 {
        self.by_outcome[SERVER_ERROR] + self.by_outcome[CONNECTION_ERROR]
    }
}

/// Counts and latency distribution of a window.
#[derive(Debug)]
pub(super) struct Summary {
    /// Request counts.
    pub(super) counts: Counts,
    /// Latencies in microseconds; its length equals `counts.requests()`.
    pub(super) latencies: Histogram<u64>,
}

impl Summary {
    /// No requests.
    pub(super) fn empty() -> Self {
        Self { counts: Counts::default(), latencies: latency_histogram() }
    }

    /// Adds the counts and latencies of another summary.
    pub(super) fn merge(&mut self, other: &Summary) {
        self.counts.merge(&other.counts);
        self.merge_dense(&other.latencies);
    }

    /// Adds the non-empty buckets of a dense histogram.
    fn merge_dense<T: hdrhistogram::Counter + Into<u64>>(&mut self, dense: &Histogram<T>) {
        for bucket in dense.iter_recorded() {
            self.latencies.saturating_record_n(bucket.value_iterated_to(), bucket.count_at_value().into());
        }
    }

    /// Adds a period's counts and buckets, e.g. a second another replica recorded.
    pub(super) fn merge_period(&mut self, period: &Period) {
        self.counts.merge(&period.counts);
        for &(micros, count) in &period.buckets {
            self.latencies.saturating_record_n(u64::from(micros), count);
        }
    }

    /// Adds a closed second.
    fn merge_second(&mut self, second: &Second) {
        self.counts.merge(&second.counts);
        match &second.dense {
            Some(dense) => self.merge_dense(dense),
            None => {
                for &(micros, count) in &second.sparse {
                    // `micros` is the top of an equivalent range, so it lands in the same bucket.
                    self.latencies.saturating_record_n(u64::from(micros), u64::from(count));
                }
            }
        }
    }
}

/// Counts and latency buckets of one period of a window (see [`Series::periods_at`]); a
/// second is a period of one second, indexed by the second.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Period {
    /// Position on the grid of periods: the period starts at second `index * period_secs`.
    pub(super) index: u64,
    /// Request counts.
    pub(super) counts: Counts,
    /// Non-empty latency buckets as (highest equivalent microseconds, count), ascending.
    pub(super) buckets: Vec<(u32, u64)>,
}

impl Period {
    /// The period at `index` of `periods`, created empty when missing.
    pub(super) fn of(periods: &mut BTreeMap<u64, Period>, index: u64) -> &mut Period {
        periods.entry(index).or_insert_with(|| Period { index, counts: Counts::default(), buckets: Vec::new() })
    }

    fn add_dense(&mut self, dense: &Histogram<u32>) {
        self.buckets.extend(dense.iter_recorded().map(|bucket| {
            // At most the highest trackable value, about 60 million: fits.
            (u32::try_from(bucket.value_iterated_to()).unwrap_or(u32::MAX), u64::from(bucket.count_at_value()))
        }));
    }

    /// Sorts the buckets and adds up the counts of equal ones, which come from different
    /// seconds of the period.
    pub(super) fn compact(&mut self) {
        self.buckets.sort_unstable_by_key(|&(micros, _)| micros);
        self.buckets.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.saturating_add(later.1);
            }
            same
        });
    }
}

/// Periods of two series cut on the same grid, added up period by period: the periods
/// of both, oldest first.
pub(super) fn merge_periods(first: Vec<Period>, second: Vec<Period>) -> Vec<Period> {
    let mut periods: BTreeMap<u64, Period> = BTreeMap::new();
    for period in first.into_iter().chain(second) {
        let merged = Period::of(&mut periods, period.index);
        merged.counts.merge(&period.counts);
        merged.buckets.extend(period.buckets);
    }
    let mut periods: Vec<Period> = periods.into_values().collect();
    for period in &mut periods {
        period.compact();
    }
    periods
}

/// The second being written, and the totals since start.
struct Live {
    /// Index of the second, counted from the series' origin.
    second: u64,
    counts: Counts,
    /// Dense, allocated once per series and reset on every rotation.
    latencies: Histogram<u32>,
    /// Monotonic totals for `/metrics`; never expire.
    totals: Totals,
}

/// A closed second with at least one request.
#[derive(Debug, Default)]
struct Second {
    second: u64,
    counts: Counts,
    /// Non-empty buckets as (highest equivalent microseconds, count), ascending; empty when
    /// `dense` is set.
    sparse: Vec<(u32, u32)>,
    /// The dense histogram itself, for a second with so many distinct buckets that the
    /// sparse form would be larger.
    dense: Option<Box<Histogram<u32>>>,
}

impl Second {
    /// Takes over the data of `live`'s second, leaving `live`'s histogram empty. Reuses this
    /// second's buffers, so in the steady state closing a second allocates only its `Arc`.
    fn close(&mut self, live: &mut Live) {
        self.second = live.second;
        self.counts = live.counts;
        let buckets = live.latencies.iter_recorded().count();
        // A sparse entry takes 8 bytes and a dense counter 4, so sparse wins below half.
        if buckets <= live.latencies.distinct_values() / 2 {
            self.dense = None;
            self.sparse.clear();
            // Exact, so a reused buffer never grows past the dense size.
            self.sparse.reserve_exact(buckets);
            self.sparse.extend(live.latencies.iter_recorded().map(|bucket| {
                // At most the highest trackable value, about 60 million: fits.
                (u32::try_from(bucket.value_iterated_to()).unwrap_or(u32::MAX), bucket.count_at_value())
            }));
            live.latencies.reset();
        } else {
            self.sparse = Vec::new();
            let mut dense = self.dense.take().unwrap_or_else(|| Box::new(latency_histogram()));
            dense.reset();
            mem::swap(&mut *dense, &mut live.latencies);
            self.dense = Some(dense);
        }
    }
}

/// Statistics of one route and backend.
pub(super) struct Series {
    origin: Instant,
    retention_secs: u64,
    /// Locked for every request; held for a few counter updates.
    live: Mutex<Live>,
    /// Closed seconds with requests, oldest first, all older than `live.second`. Lock order:
    /// `live`, then `closed`; `closed` may also be taken alone.
    closed: Mutex<VecDeque<Arc<Second>>>,
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Series").field("retention_secs", &self.retention_secs).finish_non_exhaustive()
    }
}

impl Series {
    /// An empty series whose seconds count from `origin`, keeping `retention_secs` seconds.
    pub(super) fn new(origin: Instant, retention_secs: u64) -> Self {
        let live =
            Live { second: 0, counts: Counts::default(), latencies: latency_histogram(), totals: Totals::default() };
        Self { origin, retention_secs, live: Mutex::new(live), closed: Mutex::new(VecDeque::new()) }
    }

    /// Index of the second holding `now`.
    pub(super) fn second_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// Counts one request of `outcome` (an outcome slot) that took `micros`.
    pub(super) fn record_at(&self, now: Instant, outcome: usize, micros: u64) {
        let second = self.second_of(now);
        let mut live = self.live.lock();
        // A thread that read the clock just before another one rotated lands in the newer
        // second: off by microseconds, but never lost.
        if second > live.second {
            self.rotate(&mut live, second);
        }
        live.counts.add(outcome, micros);
        live.totals.add(outcome, micros);
        live.latencies.saturating_record(micros);
    }

    /// Closes the live second and starts `second`.
    fn rotate(&self, live: &mut Live, second: u64) {
        let retained = live.second + self.retention_secs > second;
        if live.counts.requests() > 0 && retained {
            let mut closed = self.closed.lock();
            let mut expired = None;
            while closed.front().is_some_and(|oldest| oldest.second + self.retention_secs <= second) {
                expired = closed.pop_front();
            }
            // A snapshot may still hold the expired second; then it is dropped after the
            // snapshot and a new one allocated.
            let mut slot = expired.and_then(|expired| Arc::try_unwrap(expired).ok()).unwrap_or_default();
            slot.close(live);
            closed.push_back(Arc::new(slot));
        } else {
            live.latencies.reset();
        }
        live.second = second;
        live.counts = Counts::default();
    }

    /// Counts and latencies of the `window_secs` most recent seconds up to the one holding
    /// `now` (including it).
    pub(super) fn summary_at(&self, now: Instant, window_secs: u64) -> Summary {
        let mut summary = Summary::empty();
        let closed = self.window_at(now, window_secs, |live| {
            summary.counts.merge(&live.counts);
            summary.merge_dense(&live.latencies);
        });
        for second in &closed {
            summary.merge_second(second);
        }
        summary
    }

    /// The same window as [`Series::summary_at`], cut into periods of `period_secs` seconds
    /// on the grid of seconds every series of one origin shares (period `i` holds seconds
    /// `i * period_secs` to `(i + 1) * period_secs - 1`), oldest first, only periods with
    /// requests.
    pub(super) fn periods_at(&self, now: Instant, window_secs: u64, period_secs: u64) -> Vec<Period> {
        let period_secs = period_secs.max(1);
        let mut periods: BTreeMap<u64, Period> = BTreeMap::new();
        let closed = self.window_at(now, window_secs, |live| {
            let period = Period::of(&mut periods, live.second / period_secs);
            period.counts.merge(&live.counts);
            period.add_dense(&live.latencies);
        });
        for second in &closed {
            let period = Period::of(&mut periods, second.second / period_secs);
            period.counts.merge(&second.counts);
            match &second.dense {
                Some(dense) => period.add_dense(dense),
                None => period.buckets.extend(second.sparse.iter().map(|&(micros, count)| (micros, u64::from(count)))),
            }
        }
        let mut periods: Vec<Period> = periods.into_values().collect();
        for period in &mut periods {
            period.compact();
        }
        periods
    }

    /// Hands the live second to `live` under its lock when it lies in the window and has
    /// requests, and returns the closed seconds in the window. Both are taken under the live
    /// lock, so a rotation cannot move the live second into the ring in between and have it
    /// counted twice; the closed seconds are immutable and read after the lock is released.
    fn window_at(&self, now: Instant, window_secs: u64, live: impl FnOnce(&Live)) -> Vec<Arc<Second>> {
        let now_second = self.second_of(now);
        let in_window = |second: u64| second + window_secs > now_second;
        let current = self.live.lock();
        if in_window(current.second) && current.second <= now_second && current.counts.requests() > 0 {
            live(&current);
        }
        let closed = self.closed.lock();
        // Seconds after `now` exist when the window ends in the past (a cluster-wide
        // snapshot lags so that every replica has published its seconds).
        let ended = closed.iter().rev().skip_while(|second| second.second > now_second);
        ended.take_while(|second| in_window(second.second)).cloned().collect()
    }

    /// Drops closed seconds that fell out of retention by `now`. Rotation does this for a
    /// series that gets requests; this is for one that stopped getting them.
    pub(super) fn expire_at(&self, now: Instant) {
        let now_second = self.second_of(now);
        // Only `closed`: nothing holds it while waiting for `live`, so this cannot deadlock.
        let mut closed = self.closed.lock();
        while closed.front().is_some_and(|oldest| oldest.second + self.retention_secs <= now_second) {
            closed.pop_front();
        }
    }

    /// Totals since the series started.
    pub(super) fn totals(&self) -> Totals {
        self.live.lock().totals
    }

    /// Closes the live second if `now` is past it, so that a series whose requests stopped
    /// still hands its last second to [`Series::closed_after`].
    pub(super) fn seal_at(&self, now: Instant) {
        let second = self.second_of(now);
        let mut live = self.live.lock();
        if second > live.second {
            self.rotate(&mut live, second);
        }
    }

    /// The closed seconds after second `after` (all when `None`), oldest first, each as a
    /// period of one second indexed by the second.
    pub(super) fn closed_after(&self, after: Option<u64>) -> Vec<Period> {
        let newer: Vec<Arc<Second>> = {
            let closed = self.closed.lock();
            let is_new = |second: &Arc<Second>| after.is_none_or(|after| second.second > after);
            closed.iter().rev().take_while(|second| is_new(second)).cloned().collect()
        };
        newer
            .iter()
            .rev()
            .map(|second| {
                let mut period = Period { index: second.second, counts: second.counts, buckets: Vec::new() };
                match &second.dense {
                    Some(dense) => period.add_dense(dense),
                    None => {
                        period.buckets.extend(second.sparse.iter().map(|&(micros, count)| (micros, u64::from(count))))
                    }
                }
                period
            })
            .collect()
    }

    /// How many closed seconds the ring holds.
    #[cfg(test)]
    fn closed_len(&self) -> usize {
        self.closed.lock().len()
    }
}

/// Whole microseconds of `latency`, rounded up so a histogram bucket's upper bound is an
/// upper bound of the real latencies in it.
pub(super) fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    fn at(series: &Series, second: u64) -> Instant {
        series.origin + Duration::from_secs(second)
    }

    #[test]
    fn the_dense_histogram_has_2560_counters_of_4_bytes() {
        // The memory estimate in the module docs rests on this.
        assert_eq!(latency_histogram::<u32>().distinct_values(), 2560);
    }

    #[test]
    fn latencies_round_up_to_whole_microseconds() {
        assert_eq!(micros(Duration::from_nanos(1)), 1);
        assert_eq!(micros(Duration::from_nanos(1000)), 1);
        assert_eq!(micros(Duration::from_nanos(1001)), 2);
        assert_eq!(micros(Duration::ZERO), 0);
    }

    #[test]
    fn a_record_from_before_a_rotation_lands_in_the_newer_second() {
        let series = Series::new(Instant::now(), 60);
        series.record_at(at(&series, 5), 1, MS);
        series.record_at(at(&series, 4), 1, MS);
        assert_eq!(series.summary_at(at(&series, 5), 1).counts.requests(), 2);
    }

    #[test]
    fn a_second_with_many_distinct_latencies_is_kept_dense_and_reads_back_the_same() {
        let series = Series::new(Instant::now(), 60);
        let mut expected = latency_histogram::<u64>();
        // One value per bucket over the whole range: more buckets than the sparse form pays for.
        let mut value = 1;
        while value <= HIGHEST_MICROS {
            series.record_at(at(&series, 1), 1, value);
            expected.record(value).unwrap();
            value = expected.next_non_equivalent(value);
        }
        series.record_at(at(&series, 2), 1, MS);
        let closed = series.closed.lock().front().cloned().unwrap();
        assert!(closed.dense.is_some() && closed.sparse.is_empty());

        let summary = series.summary_at(at(&series, 2), 2);
        expected.record(MS).unwrap();
        assert_eq!(summary.counts.requests(), expected.len());
        let buckets = |h: &Histogram<u64>| {
            h.iter_recorded().map(|b| (b.value_iterated_to(), b.count_at_value())).collect::<Vec<_>>()
        };
        assert_eq!(buckets(&summary.latencies), buckets(&expected));
    }

    #[test]
    fn the_ring_keeps_at_most_the_retained_seconds_and_reuses_them() {
        let series = Series::new(Instant::now(), 10);
        for second in 0..100 {
            series.record_at(at(&series, second), 1, second * MS + 1);
            assert!(series.closed_len() < 10, "second {second}: {} closed", series.closed_len());
        }
        let summary = series.summary_at(at(&series, 99), 1000);
        assert_eq!(summary.counts.requests(), 10);
        assert_eq!(series.totals().counts.requests(), 100);
    }

    #[test]
    fn a_series_without_requests_drops_expired_seconds_when_asked() {
        let series = Series::new(Instant::now(), 10);
        for second in 0..5 {
            series.record_at(at(&series, second), 1, MS);
        }
        series.expire_at(at(&series, 12));
        assert_eq!(series.closed_len(), 1, "seconds 0 to 2 expired, 3 kept, 4 live");
        series.expire_at(at(&series, 100));
        assert_eq!(series.closed_len(), 0);
        assert_eq!(series.totals().counts.requests(), 5);
    }

    #[test]
    fn a_second_older_than_retention_is_not_kept_after_a_long_pause() {
        let series = Series::new(Instant::now(), 10);
        series.record_at(at(&series, 0), 1, MS);
        series.record_at(at(&series, 30), 1, MS);
        assert_eq!(series.closed_len(), 0);
        assert_eq!(series.summary_at(at(&series, 30), 10).counts.requests(), 1);
    }
}
