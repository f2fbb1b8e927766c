//! Request statistics of the data plane: per route and backend, how many requests, how they
//! ended and how long they took, over a sliding window of recent seconds. Analysis judges a
//! canary against its baseline with these numbers, so counts are exact and the latency
//! histogram is kept at a known precision.
//!
//! # Model
//!
//! Each route and backend pair is a series, kept as two halves of its requests ([`Half`]) so
//! that the backend can be compared with itself. The proxy resolves a [`Recorder`] for it
//! once per route generation and backend ([`Stats::recorder`]) and calls
//! [`Recorder::record`] for every request: one short uncontended lock, a few counter
//! increments and one HDR histogram increment, no allocation, no lookup by name.
//!
//! Time is cut into whole seconds of a monotonic clock counted from [`Stats::new`]. A series
//! keeps the seconds of the last retention window (15 minutes by default); a snapshot merges
//! the seconds of the requested window ([`Stats::snapshot`]). Apart from the window, every
//! series keeps totals since start for `/metrics` ([`Stats::register`]), which never go
//! down when seconds expire.
//!
//! # What is counted
//!
//! - `requests`: every request, whatever its outcome.
//! - `responses_by_class`: responses by status class `1xx` to `5xx`. A status outside
//!   100..=599 counts as `5xx`: a backend that sends one is broken, and the judge should
//!   see it rather than lose it.
//! - `connection_errors`: requests that got no response (refused, reset, timed out).
//! - `errors`: `5xx` responses plus connection errors.
//! - Latency: recorded for every request, connection errors included, because a timeout is
//!   a slow failure and leaving it out would make a failing canary look fast. So the
//!   histogram's counts sum to `requests`.
//!
//! # What a latency covers
//!
//! The proxy measures a backend the same way whatever its share of the traffic, so that
//! two identical backends at 5% and 95% read alike. A response's latency runs from the
//! moment its request is handed to a ready upstream connection until the response head
//! arrives: the backend's own time plus the round trip to it. Left out are the proxy's own
//! work before that (reading the request, choosing the backend) and connection set-up,
//! since how often a backend needs a new connection depends on its share (a small side's
//! connections idle out, and its bursts outgrow its pool, more often) rather than on the
//! backend. The proxy keeps no queue in front of a backend, so there is no pool wait to
//! count. A request that gets no response is timed from when the backend was chosen,
//! connecting included, since there the failure to connect is the backend's. Each proxy
//! worker serves both sides from the same event loop, so placement weighs on them alike.
//!
//! # Precision
//!
//! Latencies are rounded up to whole microseconds and recorded in an HDR histogram of 1 µs
//! to 60 s with two significant digits: a bucket is at most 1/128 (under 0.8%) of its
//! values wide. Quantiles are the upper bound of the bucket holding them (capped at the
//! exact maximum), so they are never below the true value and at most 0.8% above it.
//! Latencies over 60 s land in the last bucket; the maximum and mean are exact. Every series
//! uses the same histogram configuration, so the buckets of two backends line up for a rank
//! test.
//!
//! # Memory
//!
//! Per half-series: the histogram of the second being written, 2560 counters of 4 bytes
//! (10 KiB), plus about 130 bytes for every retained second that had requests (seconds
//! without requests take nothing), plus 8 bytes per distinct latency bucket hit in that
//! second. A second that hits more than 1280 buckets keeps its 10 KiB dense histogram
//! instead, so a second never costs more than about 10 KiB. Over 15 minutes (900 seconds)
//! that is about 0.2 MiB per half at 10 requests per second, about 1 MiB at 100 per second
//! (~100 buckets a second), 2 to 4 MiB for busy backends with widely spread latencies (300
//! to 500 buckets), and at most about 9.5 MiB in the worst case. A backend is two halves,
//! which hit mostly the same buckets: up to twice that per backend. A snapshot allocates
//! three 20 KiB merge histograms per backend (each half, and their sum).

pub mod cluster;
mod export;
mod halves;
mod series;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ficus_proto::traffic::v1 as proto;
use parking_lot::RwLock;
use prometheus_client::registry::Registry;

use self::{
    cluster::Remote,
    export::{StatsCollector, Totals, seconds},
    halves::Halves,
    series::{CONNECTION_ERROR, HIGHEST_MICROS, Period, SERVER_ERROR, Summary, merge_periods, micros},
};

/// Retention when none is configured: long enough for a rollout stage's analysis window.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(15 * 60);

/// Longest latency the histogram tells apart; longer ones share its last bucket.
pub const MAX_TRACKED_LATENCY: Duration = Duration::from_micros(HIGHEST_MICROS);

/// How a proxied request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered with this HTTP status.
    Status(u16),
    /// No response: the connection was refused or reset, or the request timed out. Counts
    /// as an error.
    ConnectionError,
}

impl Outcome {
    /// Slot of the outcome in the series' counters.
    fn slot(self) -> usize {
        match self {
            Self::Status(status @ 100..=599) => usize::from(status / 100 - 1),
            Self::Status(_) => SERVER_ERROR,
            Self::ConnectionError => CONNECTION_ERROR,
        }
    }
}

impl From<http::StatusCode> for Outcome {
    fn from(status: http::StatusCode) -> Self {
        Self::Status(status.as_u16())
    }
}

/// Which half of its backend's requests a request counts in. The halves are two samples of
/// the same traffic, so how far apart they read is the backend's noise: the judge calls a
/// canary worse only by more than its baseline differs from itself.
///
/// A request is placed the way a side is chosen for it: one with a sticky user key by the
/// key's bucket, so that a user's requests stay in one half as they stay on one side; one
/// without at random, as weighted round-robin spreads requests without regard to who sent
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Half {
    /// Requests of even sticky buckets, or drawn heads.
    First,
    /// Requests of odd sticky buckets, or drawn tails.
    Second,
}

impl Half {
    /// The half of a request whose sticky key fell in `bucket`. Cohorts are contiguous
    /// ranges of buckets, so parity splits every cohort evenly.
    pub fn of_bucket(bucket: u32) -> Self {
        if bucket.is_multiple_of(2) { Self::First } else { Self::Second }
    }

    /// A half drawn at random, for a request without a user key.
    pub fn random() -> Self {
        if rand::random::<bool>() { Self::First } else { Self::Second }
    }
}

/// What a snapshot reports: the window, and optionally its periods and halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// How far back to look (see [`Stats::snapshot`]).
    pub window: Duration,
    /// Cut each backend's window into periods of this length.
    pub period: Option<Duration>,
    /// Also report each backend's two [`Half`]s.
    pub halves: bool,
}

impl Query {
    /// Just the window: no periods, no halves.
    pub fn window(window: Duration) -> Self {
        Self { window, period: None, halves: false }
    }
}

/// Request statistics of every route and backend. Clones share the same statistics, so the
/// proxy, the gRPC service and `/metrics` each hold one; it is `Send` and `Sync`.
#[derive(Clone, Debug)]
pub struct Stats {
    inner: Arc<Inner>,
}

/// What every clone of [`Stats`] shares.
#[derive(Debug)]
struct Inner {
    /// Second 0 of every series: the start of a Unix second, a retention before the
    /// statistics were made, so that replicas' seconds line up and any window fits after it.
    origin: Instant,
    /// The Unix time of `origin`, in seconds.
    origin_unix: u64,
    /// Whole seconds kept, at least 1.
    retention_secs: u64,
    /// Series by route, then backend; ordered so `/metrics` output is stable.
    routes: RwLock<BTreeMap<String, BTreeMap<String, Arc<Halves>>>>,
}

impl Inner {
    /// Totals of every series, copied so no lock is held while encoding. Scrapes double as
    /// housekeeping: they drop expired seconds of series that no longer get requests.
    fn totals(&self) -> Vec<(String, String, Totals)> {
        let now = Instant::now();
        let routes = self.routes.read();
        let mut rows = Vec::new();
        for (route, backends) in routes.iter() {
            for (backend, series) in backends {
                series.expire_at(now);
                rows.push((route.clone(), backend.clone(), series.totals()));
            }
        }
        rows
    }
}

impl Default for Stats {
    /// Statistics kept for [`DEFAULT_RETENTION`].
    fn default() -> Self {
        Self::new(DEFAULT_RETENTION)
    }
}

impl Stats {
    /// Statistics that keep the last `retention`, rounded up to whole seconds (at least one).
    pub fn new(retention: Duration) -> Self {
        let retention_secs = whole_seconds(retention).max(1);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let since_epoch = wall.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let into_second = Duration::from_nanos(u64::from(since_epoch.subsec_nanos()));
        // On a machine up for less than the retention the monotonic clock cannot go back
        // that far; the origin is then this second's start, and older windows start there.
        let back = Duration::from_secs(retention_secs) + into_second;
        let (origin, made_second) = match now.checked_sub(back) {
            Some(origin) => (origin, retention_secs),
            None => (now.checked_sub(into_second).unwrap_or(now), 0),
        };
        let origin_unix = since_epoch.as_secs().saturating_sub(made_second);
        let inner = Inner { origin, origin_unix, retention_secs, routes: RwLock::new(BTreeMap::new()) };
        Self { inner: Arc::new(inner) }
    }

    /// How far back a snapshot can look.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.inner.retention_secs)
    }

    /// The recorder of `route` and `backend`, created on first use. Resolve it once per route
    /// generation and backend and keep it: this takes a lock and looks names up, recording
    /// does neither. Recorders of the same pair share one series, so a new route generation
    /// continues the series of the last one.
    pub fn recorder(&self, route: &str, backend: &str) -> Recorder {
        if let Some(series) = self.inner.routes.read().get(route).and_then(|backends| backends.get(backend)) {
            return Recorder { series: series.clone() };
        }
        let mut routes = self.inner.routes.write();
        let backends = routes.entry(route.to_owned()).or_default();
        let series = backends
            .entry(backend.to_owned())
            .or_insert_with(|| Arc::new(Halves::new(self.inner.origin, self.inner.retention_secs)));
        Recorder { series: series.clone() }
    }

    /// Counts, quantiles and histogram of `route` per backend over the last `query.window`,
    /// ending now.
    ///
    /// The window is counted in whole seconds including the current, partial one: it is
    /// rounded up to a whole second, at least one, and capped at the retention; the returned
    /// `start` and `end` say exactly which stretch was covered. `backends` lists the backends
    /// to report, in that order, with zeros for one without requests; empty reports every
    /// backend that has a series, by name.
    ///
    /// With a `query.period`, each backend's window is also cut into periods of that many
    /// whole seconds (rounded up, at least one) on one grid shared by every backend, so that
    /// a caller can compare the sides stretch by stretch and measure how much requests close
    /// in time move together. With `query.halves`, each backend also reports its two
    /// [`Half`]s, without periods.
    pub fn snapshot(&self, route: &str, backends: &[String], query: Query) -> proto::TrafficStats {
        self.snapshot_at(route, backends, query, Instant::now(), SystemTime::now(), &Remote::default())
    }

    /// The moment a cluster-wide snapshot with `window` looks at: `lag` ago, so that every
    /// replica has published each second of it, with the Unix seconds it covers, first and
    /// last, to fetch the other replicas' seconds for.
    pub fn cluster_window(&self, window: Duration, lag: Duration) -> ClusterWindow {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let now = now.checked_sub(lag).unwrap_or(now);
        let wall = wall.checked_sub(lag).unwrap_or(wall);
        let seconds = self.window_at(window, now);
        let unix_seconds = (self.inner.origin_unix + seconds.first, self.inner.origin_unix + seconds.last);
        ClusterWindow { now, wall, unix_seconds }
    }

    /// The seconds, counted from the origin, of a window of `window` ending at `now`: as
    /// many whole seconds as it spans (at least one, at most the retention), up to and
    /// including the one holding `now`.
    fn window_at(&self, window: Duration, now: Instant) -> WindowSeconds {
        let length = whole_seconds(window).clamp(1, self.inner.retention_secs);
        let last = now.saturating_duration_since(self.inner.origin).as_secs();
        WindowSeconds { length, first: (last + 1).saturating_sub(length), last }
    }

    /// [`Stats::snapshot`] over every replica at `at`: this one's seconds and `remote`,
    /// the seconds the others published (see [`cluster`]) for `at`'s Unix seconds, so that
    /// any replica asked gives the same numbers.
    pub fn cluster_snapshot(
        &self,
        route: &str,
        backends: &[String],
        query: Query,
        at: &ClusterWindow,
        remote: &Remote,
    ) -> proto::TrafficStats {
        self.snapshot_at(route, backends, query, at.now, at.wall, remote)
    }

    /// [`Stats::snapshot`] as seen at `now`, which is `wall` on the wall clock, with the
    /// seconds of other replicas in `remote`.
    pub(crate) fn snapshot_at(
        &self,
        route: &str,
        backends: &[String],
        query: Query,
        now: Instant,
        wall: SystemTime,
        remote: &Remote,
    ) -> proto::TrafficStats {
        let WindowSeconds { length: window_secs, first: first_second, last: now_second } =
            self.window_at(query.window, now);
        let period_secs = query.period.map(|period| whole_seconds(period).max(1));
        // The wall-clock time of a moment of the monotonic clock, as of `now` = `wall`.
        let wall_of = |instant: Instant| {
            wall.checked_sub(now.saturating_duration_since(instant)).unwrap_or(SystemTime::UNIX_EPOCH)
        };
        let series: Vec<(String, Option<Arc<Halves>>)> = {
            let routes = self.inner.routes.read();
            let known = routes.get(route);
            if backends.is_empty() {
                let all = known.into_iter().flatten();
                all.map(|(backend, series)| (backend.clone(), Some(series.clone()))).collect()
            } else {
                let find = |backend: &String| known.and_then(|known| known.get(backend)).cloned();
                backends.iter().map(|backend| (backend.clone(), find(backend))).collect()
            }
        };
        // The seconds of other replicas in the window, by backend, as this replica's seconds.
        let remote_seconds = |backend: &str| -> Vec<(Half, u64, &Period)> {
            let seconds = remote.seconds_of(backend).into_iter().filter_map(|(half, unix_second, period)| {
                let second = unix_second.checked_sub(self.inner.origin_unix)?;
                (second <= now_second && second + window_secs > now_second).then_some((half, second, period))
            });
            seconds.collect()
        };
        let backends = series
            .into_iter()
            .map(|(backend, series)| {
                let others = remote_seconds(&backend);
                let [mut first, mut second] = [Half::First, Half::Second].map(|half| {
                    series.as_ref().map_or_else(Summary::empty, |series| series.half_summary_at(half, now, window_secs))
                });
                for &(half, _, period) in &others {
                    match half {
                        Half::First => first.merge_period(period),
                        Half::Second => second.merge_period(period),
                    }
                }
                let halves = if query.halves {
                    vec![backend_stats(backend.clone(), &first), backend_stats(backend.clone(), &second)]
                } else {
                    Vec::new()
                };
                let mut summary = first;
                summary.merge(&second);
                let mut stats = backend_stats(backend, &summary);
                stats.halves = halves;
                if let Some(period_secs) = period_secs {
                    let local = series.as_ref().map(|series| series.periods_at(now, window_secs, period_secs));
                    let others = others
                        .iter()
                        .map(|&(_, second, period)| Period { index: second / period_secs, ..period.clone() })
                        .collect();
                    stats.periods = merge_periods(local.unwrap_or_default(), others)
                        .iter()
                        .map(|period| {
                            let start =
                                self.inner.origin + Duration::from_secs(period.index.saturating_mul(period_secs));
                            period_stats(period, wall_of(start))
                        })
                        .collect();
                }
                stats
            })
            .collect();

        let start = self.inner.origin + Duration::from_secs(first_second);
        proto::TrafficStats {
            route: route.to_owned(),
            start: Some(timestamp(wall_of(start))),
            end: Some(timestamp(wall)),
            backends,
            replicas: remote.replicas(),
        }
    }

    /// Exports the totals since start of every series on `/metrics`, labelled by `route` and
    /// `backend`: `traffic_requests_total{class}` (`1xx` to `5xx` and `connection_error`, so
    /// the classes sum to all requests), `traffic_connection_errors_total` and the histogram
    /// `traffic_request_duration_seconds`. Names are relative to the registry's prefix: the
    /// service registry of `ficus-kit` adds `ficus_`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(StatsCollector { inner: self.inner.clone() }));
    }

    /// The seconds every series closed since the last call, for publishing to the other
    /// replicas: `(route, backend, half, unix second, counts and buckets)`. Series are
    /// sealed at `now` first, so a series whose requests stopped hands over its last second
    /// too. `published` remembers, per series, the last second handed over.
    pub(crate) fn closed_seconds(&self, now: Instant, published: &mut Published) -> Vec<ClosedSecond> {
        let series: Vec<(String, String, Arc<Halves>)> = {
            let routes = self.inner.routes.read();
            let pairs = routes.iter().flat_map(|(route, backends)| {
                backends.iter().map(move |(backend, series)| (route.clone(), backend.clone(), series.clone()))
            });
            pairs.collect()
        };
        let mut seen = HashMap::new();
        let mut closed = Vec::new();
        for (route, backend, halves) in series {
            for half in [Half::First, Half::Second] {
                let key = (route.clone(), backend.clone(), half);
                let series = halves.series(half);
                series.seal_at(now);
                let after = published.get(&key).copied();
                let seconds = series.closed_after(after);
                let last = seconds.last().map(|period| period.index).or(after);
                for period in seconds {
                    let unix_second = self.inner.origin_unix + period.index;
                    closed.push(ClosedSecond {
                        route: route.clone(),
                        backend: backend.clone(),
                        half,
                        unix_second,
                        period,
                    });
                }
                if let Some(last) = last {
                    seen.insert(key, last);
                }
            }
        }
        // Series that were forgotten are forgotten here too.
        *published = seen;
        closed
    }

    /// Drops every series of `route`, e.g. when it is deleted. Recorders still held for it
    /// keep working but are no longer reported.
    pub fn forget_route(&self, route: &str) {
        self.inner.routes.write().remove(route);
    }
}

/// The seconds of a window, counted from the origin (see [`Stats::window_at`]).
struct WindowSeconds {
    length: u64,
    first: u64,
    last: u64,
}

/// When a cluster-wide snapshot looks (see [`Stats::cluster_window`]).
#[derive(Clone, Copy, Debug)]
pub struct ClusterWindow {
    now: Instant,
    wall: SystemTime,
    /// The Unix seconds of the window, first and last.
    pub unix_seconds: (u64, u64),
}

/// The last second handed over per route, backend and half (see [`Stats::closed_seconds`]).
pub(crate) type Published = HashMap<(String, String, Half), u64>;

/// A closed second of one half-series, to publish.
pub(crate) struct ClosedSecond {
    pub(crate) route: String,
    pub(crate) backend: String,
    pub(crate) half: Half,
    pub(crate) unix_second: u64,
    period: Period,
}

/// Records the requests of one route and backend; cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    series: Arc<Halves>,
}

impl Recorder {
    /// Counts one request of `half` that ended with `outcome` after `latency` (for a
    /// connection error, the time until it failed).
    pub fn record(&self, half: Half, outcome: Outcome, latency: Duration) {
        self.record_half_at(Instant::now(), half, outcome, latency);
    }

    /// [`Recorder::record`] at `now`.
    pub(crate) fn record_half_at(&self, now: Instant, half: Half, outcome: Outcome, latency: Duration) {
        self.series.record_at(now, half, outcome.slot(), micros(latency));
    }

    /// [`Recorder::record`] at `now`, in the first half.
    #[cfg(test)]
    pub(crate) fn record_at(&self, now: Instant, outcome: Outcome, latency: Duration) {
        self.record_half_at(now, Half::First, outcome, latency);
    }
}

/// The proto form of one period of a backend's window, which started at `start`.
fn period_stats(period: &Period, start: SystemTime) -> proto::PeriodStats {
    let counts = &period.counts;
    let buckets = period
        .buckets
        .iter()
        .map(|&(micros, count)| proto::HistogramBucket { upper_bound_seconds: seconds(u64::from(micros)), count })
        .collect();
    proto::PeriodStats {
        start: Some(timestamp(start)),
        requests: counts.requests(),
        errors: counts.errors(),
        histogram: Some(proto::Histogram { buckets }),
    }
}

/// The proto form of one backend's summary.
fn backend_stats(backend: String, summary: &Summary) -> proto::BackendStats {
    let counts = &summary.counts;
    let requests = counts.requests();
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let responses_by_class: HashMap<String, u64> =
        classes.iter().zip(counts.by_outcome).map(|(class, count)| ((*class).to_owned(), count)).collect();
    let max = counts.latency_max_micros;
    // The bucket's upper bound, but never above the exact maximum, which the true quantile
    // cannot exceed either.
    let quantile = |q: f64| if requests == 0 { 0.0 } else { seconds(summary.latencies.value_at_quantile(q).min(max)) };
    let latency = proto::LatencyQuantiles {
        p50_seconds: quantile(0.50),
        p90_seconds: quantile(0.90),
        p95_seconds: quantile(0.95),
        p99_seconds: quantile(0.99),
        max_seconds: seconds(max),
        mean_seconds: if requests == 0 { 0.0 } else { seconds(counts.latency_sum_micros) / requests as f64 },
    };
    let buckets = summary
        .latencies
        .iter_recorded()
        .map(|bucket| proto::HistogramBucket {
            upper_bound_seconds: seconds(bucket.value_iterated_to()),
            count: bucket.count_at_value(),
        })
        .collect();
    proto::BackendStats {
        backend,
        requests,
        errors: counts.errors(),
        responses_by_class,
        connection_errors: counts.by_outcome[CONNECTION_ERROR],
        latency: Some(latency),
        histogram: Some(proto::Histogram { buckets }),
        periods: Vec::new(),
        halves: Vec::new(),
    }
}

/// `duration` in whole seconds, rounded up.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// `time` as a protobuf timestamp; times before 1970 become 1970.
fn timestamp(time: SystemTime) -> pbjson_types::Timestamp {
    let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        // Below one billion, so it fits.
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
