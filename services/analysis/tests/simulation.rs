//! The judge on simulated traffic: 1000 requests per second, 5% to the canary, 0.5% errors,
//! lognormal latencies bucketed as traffic buckets them, judged with the default template
//! every 5 seconds over everything since the stage started, for a 5-minute stage.
//!
//! - A healthy canary (A/A) fails a run no more often than alpha, while testing every look
//!   at alpha would fail it several times as often;
//! - a canary with twice the baseline's error rate fails in at least 90% of runs.
//!
//! Seeds are fixed, so the numbers are the same on every machine. `benches/judgement.rs`
//! runs the same simulation over a grid of rates, weights and regressions, against a
//! Flagger-style fixed threshold.

mod support;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use ficus_analysis::judge::{Judge, Template, default_template};
use ficus_proto::analysis::v1::Outcome;
use hdrhistogram::Histogram;
use rand::{SeedableRng, rngs::SmallRng};
use statrs::distribution::{Binomial, DiscreteCDF};
use support::traffic::{LatencyTable, SideModel, Traffic, bucket_bounds, quantile_of, split};

const RATE: u64 = 1000;
const WEIGHT: f64 = 0.05;
const BASELINE_ERRORS: f64 = 0.005;
const STAGE: Duration = Duration::from_secs(300);
const INTERVAL: u64 = 5;
const MEDIAN_LATENCY: f64 = 0.05;
const LATENCY_SIGMA: f64 = 0.5;

/// What happened in one run.
struct Run {
    /// Seconds into the stage of the sequential judge's first FAIL.
    sequential_fail: Option<u64>,
    /// Seconds into the stage of the first FAIL when every look is a one-shot test.
    naive_fail: Option<u64>,
}

fn template() -> Template {
    Template::from_proto(&default_template(), "template").unwrap()
}

/// One stage of traffic judged every 5 s; stops early once both judges failed.
fn run(seed: u64, canary_errors: f64, table: &Arc<LatencyTable>, bounds: &Arc<Vec<f64>>) -> Run {
    // Xoshiro256++: seeded, so reproducible, and fast enough unoptimized to simulate
    // 300 000 requests per run (ChaCha would take most of the test's time).
    let mut rng = SmallRng::seed_from_u64(seed);
    let (baseline_rate, canary_rate) = split(RATE, WEIGHT);
    let side = |rate, error_rate| SideModel { rate, error_rate, latency: table.clone() };
    let mut traffic =
        Traffic::new(bounds.clone(), side(baseline_rate, BASELINE_ERRORS), side(canary_rate, canary_errors));
    let looks = (STAGE.as_secs() / INTERVAL) as u32;
    let mut sequential = Judge::new(template(), Some(looks));
    let mut naive = Judge::new(template(), Some(1));
    let mut result = Run { sequential_fail: None, naive_fail: None };
    let start = SystemTime::UNIX_EPOCH;
    while traffic.seconds < STAGE.as_secs() && (result.sequential_fail.is_none() || result.naive_fail.is_none()) {
        traffic.second(&mut rng);
        if !traffic.seconds.is_multiple_of(INTERVAL) {
            continue;
        }
        let observed = traffic.default_observations();
        let now = start + Duration::from_secs(traffic.seconds);
        if result.sequential_fail.is_none() && sequential.judge(&observed, now).outcome() == Outcome::Fail {
            result.sequential_fail = Some(traffic.seconds);
        }
        if result.naive_fail.is_none() && naive.judge(&observed, now).outcome() == Outcome::Fail {
            result.naive_fail = Some(traffic.seconds);
        }
    }
    result
}

fn latency_table(bounds: &[f64]) -> Arc<LatencyTable> {
    Arc::new(LatencyTable::lognormal(bounds, MEDIAN_LATENCY, LATENCY_SIGMA))
}

/// Runs `runs` stages with the canary's error rate at `canary_errors`, prints how often each
/// judge failed them, and returns (sequential, naive) failure counts.
fn false_failures(what: &str, canary_errors: f64, first_seed: u64, runs: u64) -> (u64, u64) {
    let bounds = Arc::new(bucket_bounds());
    let table = latency_table(&bounds);
    let results: Vec<Run> = (0..runs).map(|seed| run(first_seed + seed, canary_errors, &table, &bounds)).collect();
    let sequential = results.iter().filter(|run| run.sequential_fail.is_some()).count() as u64;
    let naive = results.iter().filter(|run| run.naive_fail.is_some()).count() as u64;
    println!(
        "{what}, {runs} runs of {} s: sequential judge failed {sequential} ({:.1}%), a one-shot test at every look {naive} ({:.1}%); alpha {}",
        STAGE.as_secs(),
        100.0 * sequential as f64 / runs as f64,
        100.0 * naive as f64 / runs as f64,
        template().alpha,
    );
    (sequential, naive)
}

/// Asserts that `failures` in `runs` is not significantly above `alpha`: if the true rate
/// were alpha, this many failures or more would happen at least 1% of the time.
fn assert_not_above(failures: u64, runs: u64, alpha: f64) {
    let at_alpha = Binomial::new(alpha, runs).unwrap();
    let chance = if failures == 0 { 1.0 } else { at_alpha.sf(failures - 1) };
    assert!(chance >= 0.01, "{failures} false failures in {runs} runs: P = {chance} under alpha = {alpha}");
}

#[test]
fn a_healthy_canary_fails_no_more_often_than_alpha() {
    let runs = 200;
    let (sequential, _) = false_failures("A/A", BASELINE_ERRORS, 1_000, runs);
    assert_not_above(sequential, runs, template().alpha);
}

#[test]
fn a_canary_just_inside_the_margin_fails_no_more_often_than_alpha() {
    // The hardest healthy canary: its error rate is exactly baseline + margin (0.6% vs
    // 0.5%), on the null boundary of the statistical check, where a one-shot test fails at
    // its level at every look and repeated looks add up.
    let runs = 200;
    let (sequential, naive) = false_failures("Canary on the margin", BASELINE_ERRORS + 0.001, 10_000, runs);
    assert_not_above(sequential, runs, template().alpha);
    assert!(naive > 2 * sequential.max(1), "testing every look on its own: {naive} vs sequential {sequential}");
}

#[test]
fn a_doubled_error_rate_is_caught_in_most_runs() {
    let bounds = Arc::new(bucket_bounds());
    let table = latency_table(&bounds);
    let runs = 100;
    let results: Vec<Run> = (0..runs).map(|seed| run(50_000 + seed, 2.0 * BASELINE_ERRORS, &table, &bounds)).collect();
    let mut times: Vec<f64> =
        results.iter().filter_map(|run| run.sequential_fail).map(|seconds| seconds as f64).collect();
    let detected = times.len();
    let median = quantile_of(&mut times, 0.5);
    println!(
        "A/B, canary errors 1% vs 0.5% at {}% of {RATE} req/s: detected in {detected} of {runs} runs within {} s, median time to detect {median} s",
        WEIGHT * 100.0,
        STAGE.as_secs()
    );
    assert!(detected * 10 >= runs as usize * 9, "detected in only {detected} of {runs} runs");
}

#[test]
fn simulated_buckets_are_the_ones_traffic_reports() {
    let bounds = bucket_bounds();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
    for micros in [1, 7, 99, 100, 101, 1_234, 49_999, 50_000, 123_456, 7_654_321, 60_000_000] {
        histogram.record(micros).unwrap();
    }
    for bucket in histogram.iter_recorded() {
        let bound = bucket.value_iterated_to() as f64 / 1e6;
        assert!(bounds.binary_search_by(|probe| probe.total_cmp(&bound)).is_ok(), "{bound} is not a simulated bound");
    }
    assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
}
