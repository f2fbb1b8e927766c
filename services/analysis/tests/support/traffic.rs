//! Synthetic traffic for the simulation tests and the judgement benchmark: second by
//! second, a baseline and a canary get their share of requests, errors at their rates, and
//! lognormal latencies bucketed exactly as traffic buckets them (an HDR histogram of 1 µs
//! to 60 s with two significant digits, reported as bucket upper bounds in seconds).
//!
//! Requests are independent unless a [`Disturbance`] says otherwise: real traffic has
//! pauses that delay a run of consecutive requests on both sides (a scheduler hiccup, a
//! garbage collection) and errors that come in bursts (a dependency that blips). Each side's
//! share of a disturbance is drawn request by request, so it differs from look to look as
//! it does behind a real proxy. The observations carry the window cut into periods the way
//! the builtin source asks traffic for them.
//!
//! Shared by `tests/simulation.rs` and `benches/judgement.rs` (through `#[path]`), so both
//! judge the same kind of traffic.

#![allow(dead_code)]

use std::{collections::BTreeMap, sync::Arc};

use ficus_analysis::observation::{Observation, Observed, PeriodPair};
use hdrhistogram::Histogram;
use rand::{Rng, RngCore};
use statrs::distribution::{ContinuousCDF, Normal};

/// Traffic's histogram range and precision (see `services/traffic/src/stats/series.rs`).
const LOWEST_MICROS: u64 = 1;
const HIGHEST_MICROS: u64 = 60_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

/// Resolution of the inverse-CDF tables: 2^20 cells, so probabilities are drawn to
/// about one in a million.
const TABLE_BITS: u32 = 20;

/// Upper bounds in seconds of every bucket traffic's histograms have, ascending.
pub fn bucket_bounds() -> Vec<f64> {
    let histogram = Histogram::<u64>::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
        .expect("traffic's histogram bounds are valid");
    let mut bounds: Vec<f64> = histogram.iter_all().map(|bucket| bucket.value_iterated_to() as f64 / 1e6).collect();
    bounds.dedup();
    bounds
}

/// A lognormal latency distribution turned into a table that draws a bucket index from a
/// uniform number, so a request costs one table lookup.
#[derive(Debug)]
pub struct LatencyTable {
    /// Bucket index for each of the 2^TABLE_BITS cells.
    cells: Vec<u16>,
}

impl LatencyTable {
    /// Latencies with median `median` seconds and log-standard deviation `sigma`, over
    /// `bounds` (from [`bucket_bounds`]).
    pub fn lognormal(bounds: &[f64], median: f64, sigma: f64) -> Self {
        let normal = Normal::standard();
        let cdf: Vec<f64> = bounds.iter().map(|bound| normal.cdf((bound.ln() - median.ln()) / sigma)).collect();
        let size = 1_usize << TABLE_BITS;
        let mut cells = Vec::with_capacity(size);
        let mut bucket = 0;
        for cell in 0..size {
            let u = (cell as f64 + 0.5) / size as f64;
            while bucket + 1 < cdf.len() && cdf[bucket] < u {
                bucket += 1;
            }
            cells.push(u16::try_from(bucket).expect("fewer than 65536 buckets"));
        }
        Self { cells }
    }

    fn draw(&self, bits: u64) -> usize {
        usize::from(self.cells[(bits & ((1 << TABLE_BITS) - 1)) as usize])
    }
}

/// Periods a window is cut into at most, as the builtin source asks traffic for them.
const TARGET_PERIODS: u64 = 30;

/// What disturbs both sides alike, now and then.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Disturbance {
    /// Independent requests.
    None,
    /// In `share` of the seconds, a pause of `min` to `max` seconds (uniform) delays every
    /// request that arrives during it by the rest of the pause.
    Hiccups {
        /// Share of seconds with a pause.
        share: f64,
        /// Shortest pause, seconds.
        min: f64,
        /// Longest pause, seconds.
        max: f64,
    },
    /// In `share` of the seconds, every request fails with probability `error_rate`.
    ErrorBursts {
        /// Share of seconds with a burst.
        share: f64,
        /// Error rate during a burst.
        error_rate: f64,
    },
}

/// What the disturbance does in one second, drawn once for both sides.
#[derive(Clone, Copy, Debug)]
enum Moment {
    Calm,
    Pause(f64),
    Burst(f64),
}

/// One side's requests of one second.
#[derive(Clone, Debug, Default)]
struct SecondCounts {
    requests: u64,
    errors: u64,
    /// (bucket index, count), any order.
    buckets: Vec<(usize, u64)>,
}

/// What one side of a scenario looks like.
#[derive(Clone, Debug)]
pub struct SideModel {
    /// Requests per second.
    pub rate: u64,
    /// Probability that a request fails.
    pub error_rate: f64,
    /// Its latency distribution.
    pub latency: Arc<LatencyTable>,
}

/// Counts of one side since the start.
#[derive(Clone, Debug)]
pub struct SideCounts {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Requests per bucket index.
    pub buckets: Vec<u64>,
    /// Lowest and highest bucket index with requests.
    range: Option<(usize, usize)>,
}

impl SideCounts {
    fn new(buckets: usize) -> Self {
        Self { requests: 0, errors: 0, buckets: vec![0; buckets], range: None }
    }

    /// Counts one request's latency in `bucket`.
    fn add(&mut self, bucket: usize) {
        self.buckets[bucket] += 1;
        self.range = Some(match self.range {
            None => (bucket, bucket),
            Some((low, high)) => (low.min(bucket), high.max(bucket)),
        });
    }

    /// Counts added since `earlier`.
    pub fn since(&self, earlier: &SideCounts) -> SideCounts {
        let buckets: Vec<u64> = self.buckets.iter().zip(&earlier.buckets).map(|(now, then)| now - then).collect();
        SideCounts {
            requests: self.requests - earlier.requests,
            errors: self.errors - earlier.errors,
            range: self.range,
            buckets,
        }
    }

    /// Non-empty buckets as (upper bound in seconds, count), ascending.
    pub fn histogram(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        let Some((low, high)) = self.range else { return Vec::new() };
        (low..=high).filter(|&i| self.buckets[i] > 0).map(|i| (bounds[i], self.buckets[i])).collect()
    }

    /// The upper bound of the bucket holding quantile `q`, as traffic reports it.
    pub fn quantile(&self, bounds: &[f64], q: f64) -> f64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return f64::NAN;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bounds[i];
            }
        }
        f64::NAN
    }

    /// The error-rate observation.
    pub fn errors(&self) -> Observation {
        Observation::Proportion { failures: self.errors, trials: self.requests }
    }

    /// The latency observation at quantile `q`.
    pub fn latency(&self, bounds: &[f64], q: f64) -> Observation {
        Observation::Latency { buckets: self.histogram(bounds), quantile: q, value: self.quantile(bounds, q) }
    }
}

/// A baseline and a canary served side by side, second after second.
#[derive(Debug)]
pub struct Traffic {
    bounds: Arc<Vec<f64>>,
    baseline_model: SideModel,
    canary_model: SideModel,
    disturbance: Disturbance,
    /// Every second so far, (baseline, canary).
    history: Vec<(SecondCounts, SecondCounts)>,
    /// The periods of `history` already complete.
    completed: Completed,
    /// Counts since the start.
    pub baseline: SideCounts,
    /// Counts since the start.
    pub canary: SideCounts,
    /// The baseline's requests split at random in two halves, as traffic splits them.
    pub baseline_halves: [SideCounts; 2],
    /// Seconds simulated.
    pub seconds: u64,
}

impl Traffic {
    /// A fresh run.
    pub fn new(bounds: Arc<Vec<f64>>, baseline: SideModel, canary: SideModel) -> Self {
        let buckets = bounds.len();
        Self {
            bounds,
            baseline_model: baseline,
            canary_model: canary,
            disturbance: Disturbance::None,
            history: Vec::new(),
            completed: Completed::default(),
            baseline: SideCounts::new(buckets),
            canary: SideCounts::new(buckets),
            baseline_halves: [SideCounts::new(buckets), SideCounts::new(buckets)],
            seconds: 0,
        }
    }

    /// The same traffic, disturbed now and then.
    pub fn disturbed(mut self, disturbance: Disturbance) -> Self {
        self.disturbance = disturbance;
        self
    }

    /// The bucket bounds.
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Simulates one more second.
    pub fn second(&mut self, rng: &mut impl RngCore) {
        let moment = match self.disturbance {
            Disturbance::None => Moment::Calm,
            Disturbance::Hiccups { share, min, max } if rng.random::<f64>() < share => {
                Moment::Pause(min + (max - min) * rng.random::<f64>())
            }
            Disturbance::ErrorBursts { share, error_rate } if rng.random::<f64>() < share => Moment::Burst(error_rate),
            Disturbance::Hiccups { .. } | Disturbance::ErrorBursts { .. } => Moment::Calm,
        };
        let baseline =
            serve(&self.baseline_model, &mut self.baseline, Some(&mut self.baseline_halves), moment, &self.bounds, rng);
        let canary = serve(&self.canary_model, &mut self.canary, None, moment, &self.bounds, rng);
        self.history.push((baseline, canary));
        self.seconds += 1;
    }

    /// Observations for the default template's checks (error rate, p99 latency, error rate
    /// and latency again) over everything since the start, with the periods the builtin source asks
    /// traffic for.
    pub fn default_observations(&mut self) -> Vec<Result<Observed, String>> {
        let (error_periods, latency_periods) = self.periods();
        let [first, second] = &self.baseline_halves;
        let errors = Observed {
            baseline: self.baseline.errors(),
            canary: self.canary.errors(),
            note: None,
            periods: error_periods,
            baseline_halves: Some([first.errors(), second.errors()]),
        };
        let latency = Observed {
            baseline: self.baseline.latency(&self.bounds, 0.99),
            canary: self.canary.latency(&self.bounds, 0.99),
            note: None,
            periods: latency_periods,
            baseline_halves: Some([first.latency(&self.bounds, 0.99), second.latency(&self.bounds, 0.99)]),
        };
        vec![Ok(errors.clone()), Ok(latency.clone()), Ok(errors), Ok(latency)]
    }

    /// The seconds so far cut into periods of whole seconds, as error-rate and as latency
    /// observations. Periods are a power of two seconds long, so that there are at most
    /// [`TARGET_PERIODS`] and at least half as many, as the builtin source asks traffic for
    /// them within a factor of two; the length then changes only when the history doubles,
    /// and the completed periods are kept until it does, so a look costs the open period
    /// rather than the whole history.
    fn periods(&mut self) -> (Vec<PeriodPair>, Vec<PeriodPair>) {
        let needed = (self.history.len() as u64).div_ceil(TARGET_PERIODS).max(1);
        let length = needed.next_power_of_two() as usize;
        if self.completed.length != length {
            self.completed = Completed { length, errors: Vec::new(), latencies: Vec::new() };
        }
        let done = self.history.len() / length;
        while self.completed.errors.len() < done {
            let start = self.completed.errors.len() * length;
            let (errors, latencies) = period(&self.history[start..start + length], &self.bounds);
            self.completed.errors.push(errors);
            self.completed.latencies.push(latencies);
        }
        let mut errors = self.completed.errors.clone();
        let mut latencies = self.completed.latencies.clone();
        if done * length < self.history.len() {
            let (open_errors, open_latencies) = period(&self.history[done * length..], &self.bounds);
            errors.push(open_errors);
            latencies.push(open_latencies);
        }
        (errors, latencies)
    }
}

/// Periods already complete, for one period length.
#[derive(Debug, Default)]
struct Completed {
    length: usize,
    errors: Vec<PeriodPair>,
    latencies: Vec<PeriodPair>,
}

/// One period of `seconds` as (error-rate, latency) observations of both sides.
fn period(seconds: &[(SecondCounts, SecondCounts)], bounds: &[f64]) -> (PeriodPair, PeriodPair) {
    let side = |pick: fn(&(SecondCounts, SecondCounts)) -> &SecondCounts| {
        let mut buckets: BTreeMap<usize, u64> = BTreeMap::new();
        let (mut requests, mut failed) = (0, 0);
        for second in seconds {
            let second = pick(second);
            requests += second.requests;
            failed += second.errors;
            for &(bucket, count) in &second.buckets {
                *buckets.entry(bucket).or_default() += count;
            }
        }
        let histogram: Vec<(f64, u64)> = buckets.into_iter().map(|(bucket, count)| (bounds[bucket], count)).collect();
        (Observation::Proportion { failures: failed, trials: requests }, histogram)
    };
    let (baseline_errors, baseline_buckets) = side(|second| &second.0);
    let (canary_errors, canary_buckets) = side(|second| &second.1);
    let latency = |buckets| Observation::Latency { buckets, quantile: 0.99, value: f64::NAN };
    (
        PeriodPair { baseline: baseline_errors, canary: canary_errors },
        PeriodPair { baseline: latency(baseline_buckets), canary: latency(canary_buckets) },
    )
}

/// One second of `model`'s requests, added to `counts` and, when given, to `halves`: each
/// request to one of them at random.
fn serve(
    model: &SideModel,
    counts: &mut SideCounts,
    mut halves: Option<&mut [SideCounts; 2]>,
    moment: Moment,
    bounds: &[f64],
    rng: &mut impl RngCore,
) -> SecondCounts {
    let error_rate = match moment {
        Moment::Burst(rate) => rate,
        Moment::Calm | Moment::Pause(_) => model.error_rate,
    };
    let errors = binomial(rng, model.rate, error_rate);
    counts.requests += model.rate;
    counts.errors += errors;
    let mut first_half_requests = 0;
    let mut second = BTreeMap::new();
    let mut left = model.rate;
    while left > 0 {
        // Three 20-bit draws from each 64-bit number.
        let mut bits = rng.next_u64();
        // The top four bits, which the draws leave, place each request in a half.
        let mut half_bits = bits >> (3 * TABLE_BITS);
        for _ in 0..left.min(3) {
            let mut bucket = model.latency.draw(bits);
            bits >>= TABLE_BITS;
            let half = (half_bits & 1) as usize;
            half_bits >>= 1;
            if let Moment::Pause(pause) = moment {
                // The request arrived during the pause with probability `pause` (of the
                // second) and waits for the rest of it.
                let arrived: f64 = rng.random();
                if arrived < pause {
                    let delayed = bounds[bucket] + (pause - arrived);
                    bucket = bounds.partition_point(|bound| *bound < delayed).min(bounds.len() - 1);
                }
            }
            counts.add(bucket);
            *second.entry(bucket).or_insert(0_u64) += 1;
            if let Some(halves) = halves.as_deref_mut() {
                halves[half].add(bucket);
                first_half_requests += u64::from(half == 0);
            }
        }
        left -= left.min(3);
    }
    if let Some([first, second]) = halves {
        // Which requests failed is independent of which half they fell in.
        let first_errors = hypergeometric(rng, model.rate, first_half_requests, errors);
        first.requests += first_half_requests;
        first.errors += first_errors;
        second.requests += model.rate - first_half_requests;
        second.errors += errors - first_errors;
    }
    SecondCounts { requests: model.rate, errors, buckets: second.into_iter().collect() }
}

/// A binomial draw by inversion: cheap when `n p` is small, as it is per second here.
pub fn binomial(rng: &mut impl RngCore, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    let mut pmf = (1.0 - p).powf(n as f64);
    if pmf < 1e-300 {
        return (0..n).filter(|_| rng.random::<f64>() < p).count() as u64;
    }
    let u: f64 = rng.random();
    let odds = p / (1.0 - p);
    let (mut k, mut cdf) = (0, pmf);
    while u > cdf && k < n {
        pmf *= (n - k) as f64 / (k + 1) as f64 * odds;
        k += 1;
        cdf += pmf;
    }
    k
}

/// How many of `marked` items out of `total` land in a draw of `drawn` without replacement:
/// item by item, cheap for the few errors of a second.
fn hypergeometric(rng: &mut impl RngCore, total: u64, drawn: u64, marked: u64) -> u64 {
    let (mut left, mut room, mut hits) = (total, drawn, 0);
    for _ in 0..marked {
        if left == 0 {
            break;
        }
        if rng.random_range(0..left) < room {
            hits += 1;
            room -= 1;
        }
        left -= 1;
    }
    hits
}

/// Requests per second of each side for a total `rate` and a canary `weight`.
pub fn split(rate: u64, weight: f64) -> (u64, u64) {
    let canary = (rate as f64 * weight).round() as u64;
    (rate - canary, canary)
}

/// The `q` quantile of `values` (nearest rank), NaN when empty.
pub fn quantile_of(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}
