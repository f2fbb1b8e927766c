//! The judge on simulated traffic: 1000 requests per second, 5% to the canary, 0.5% errors,
//! lognormal latencies bucketed as traffic buckets them, judged with the default template
//! every 5 seconds over everything since the stage started, for a 5-minute stage.
//!
//! - A healthy canary (A/A) fails a run no more often than alpha, while testing every look
//!   at alpha would fail it several times as often;
//! - a canary with twice the baseline's error rate fails in at least 90% of runs;
//! - with pauses that delay runs of requests on both sides (1% of seconds, 20-100 ms) or
//!   bursts of errors (1% of seconds at 20%), a healthy canary still fails no more often
//!   than alpha, while the same judge told the requests were independent fails it far more
//!   often; on a 1 ms service a canary 2 ms slower is still caught.
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
use support::traffic::{Disturbance, LatencyTable, SideModel, Traffic, bucket_bounds, quantile_of, split};

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

/// Pauses in 1% of seconds, 20 to 100 ms each.
const HICCUPS: Disturbance = Disturbance::Hiccups { share: 0.01, min: 0.02, max: 0.1 };
/// Error bursts in 1% of seconds, failing 20% of requests.
const ERROR_BURSTS: Disturbance = Disturbance::ErrorBursts { share: 0.01, error_rate: 0.2 };

/// One stage of traffic judged every 5 s; stops early once both judges failed.
fn run(seed: u64, canary_errors: f64, table: &Arc<LatencyTable>, bounds: &Arc<Vec<f64>>) -> Run {
    let side = |error_rate| (error_rate, table.clone());
    disturbed_run(seed, side(BASELINE_ERRORS), side(canary_errors), Disturbance::None, bounds)
}

/// [`run`] with each side's (error rate, latency) and a disturbance; the second judge of
/// the result is the sequential one told that requests are independent (no periods).
fn disturbed_run(
    seed: u64,
    (baseline_errors, baseline_latency): (f64, Arc<LatencyTable>),
    (canary_errors, canary_latency): (f64, Arc<LatencyTable>),
    disturbance: Disturbance,
    bounds: &Arc<Vec<f64>>,
) -> Run {
    // Xoshiro256++: seeded, so reproducible, and fast enough unoptimized to simulate
    // 300 000 requests per run (ChaCha would take most of the test's time).
    let mut rng = SmallRng::seed_from_u64(seed);
    let (baseline_rate, canary_rate) = split(RATE, WEIGHT);
    let baseline = SideModel { rate: baseline_rate, error_rate: baseline_errors, latency: baseline_latency };
    let canary = SideModel { rate: canary_rate, error_rate: canary_errors, latency: canary_latency };
    let mut traffic = Traffic::new(bounds.clone(), baseline, canary).disturbed(disturbance);
    let looks = (STAGE.as_secs() / INTERVAL) as u32;
    let mut sequential = Judge::new(template(), Some(looks));
    let disturbed = disturbance != Disturbance::None;
    let mut naive = Judge::new(template(), Some(if disturbed { looks } else { 1 }));
    let mut result = Run { sequential_fail: None, naive_fail: None };
    let start = SystemTime::UNIX_EPOCH;
    while traffic.seconds < STAGE.as_secs() && (result.sequential_fail.is_none() || result.naive_fail.is_none()) {
        traffic.second(&mut rng);
        if !traffic.seconds.is_multiple_of(INTERVAL) {
            continue;
        }
        let mut observed = traffic.default_observations();
        let now = start + Duration::from_secs(traffic.seconds);
        if result.sequential_fail.is_none() && sequential.judge(&observed, now).outcome() == Outcome::Fail {
            result.sequential_fail = Some(traffic.seconds);
        }
        if disturbed {
            for observed in observed.iter_mut().flatten() {
                observed.periods.clear();
            }
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

/// Runs `runs` disturbed stages of a healthy canary and returns (failed by the judge,
/// failed by the judge told that requests are independent).
fn disturbed_false_failures(
    what: &str,
    disturbance: Disturbance,
    median: f64,
    first_seed: u64,
    runs: u64,
) -> (u64, u64) {
    let bounds = Arc::new(bucket_bounds());
    let table = Arc::new(LatencyTable::lognormal(&bounds, median, LATENCY_SIGMA));
    let side = || (BASELINE_ERRORS, table.clone());
    let results: Vec<Run> =
        (0..runs).map(|seed| disturbed_run(first_seed + seed, side(), side(), disturbance, &bounds)).collect();
    let judged = results.iter().filter(|run| run.sequential_fail.is_some()).count() as u64;
    let independent = results.iter().filter(|run| run.naive_fail.is_some()).count() as u64;
    println!(
        "{what}, {runs} runs of {} s: failed {judged} ({:.1}%), {independent} ({:.1}%) when requests are taken as independent; alpha {}",
        STAGE.as_secs(),
        100.0 * judged as f64 / runs as f64,
        100.0 * independent as f64 / runs as f64,
        template().alpha,
    );
    (judged, independent)
}

#[test]
fn latency_hiccups_on_both_sides_do_not_fail_a_healthy_canary() {
    // A 1 ms service, where a 20-100 ms pause is far out in the tail. Pauses that hit both
    // sides move their tails together, so the p99 comparison of tail shares holds here even
    // when requests are taken as independent; the test pins that the periods do not make it
    // worse.
    let runs = 50;
    let (judged, _) = disturbed_false_failures("A/A with pauses", HICCUPS, 0.001, 70_000, runs);
    assert_not_above(judged, runs, template().alpha);
}

#[test]
fn error_bursts_on_both_sides_do_not_fail_a_healthy_canary() {
    let runs = 100;
    let (judged, independent) =
        disturbed_false_failures("A/A with error bursts", ERROR_BURSTS, MEDIAN_LATENCY, 80_000, runs);
    assert_not_above(judged, runs, template().alpha);
    assert!(independent >= 4 * judged.max(2), "independent {independent} vs judged {judged}");
}

#[test]
fn two_milliseconds_more_on_a_one_millisecond_service_is_caught_despite_hiccups() {
    let bounds = Arc::new(bucket_bounds());
    let baseline = Arc::new(LatencyTable::lognormal(&bounds, 0.001, LATENCY_SIGMA));
    let canary = Arc::new(LatencyTable::lognormal(&bounds, 0.003, LATENCY_SIGMA));
    let runs = 10;
    let mut times: Vec<f64> = (0..runs)
        .filter_map(|seed| {
            let run = disturbed_run(
                90_000 + seed,
                (BASELINE_ERRORS, baseline.clone()),
                (BASELINE_ERRORS, canary.clone()),
                HICCUPS,
                &bounds,
            );
            run.sequential_fail.map(|seconds| seconds as f64)
        })
        .collect();
    let detected = times.len();
    println!(
        "A/B, +2 ms on a 1 ms service with pauses: detected in {detected} of {runs} runs, median {} s",
        quantile_of(&mut times, 0.5)
    );
    assert_eq!(detected, runs as usize);
}
