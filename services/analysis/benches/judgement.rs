//! How fast the judge catches a regression, and how often it fails a healthy canary,
//! against a Flagger-style fixed-threshold policy on the same simulated traffic.
//!
//! Run with `cargo bench -p ficus-analysis --bench judgement` (several minutes in release;
//! `FICUS_BENCH_RUNS=30 FICUS_BENCH_HORIZON_S=900` for about five).
//! Not a timing benchmark: it prints a markdown table over a grid of traffic rate (100,
//! 1000 req/s), canary weight (5%, 20%) and regression (none; canary error rate x1.5, x2,
//! x4 from 0.5%; canary error rate on the statistical check's margin, +0.1 pp; canary
//! latency x2, so its p99 is +100%).
//!
//! - **judge**: the default template (error rate <= 1%, p99 <= max(1.5 x baseline,
//!   baseline + 1 ms), error rate not significantly above baseline + 0.1 pp, latency not
//!   significantly above baseline + 25%; alpha 0.05 over the run, four sevenths of it for
//!   the error-rate comparison), judged every 5 s over everything since the stage started,
//!   with the sequential test widened by the dependence measured per period;
//! - **fixed**: Flagger's defaults: every 1 min, over the last 1 min, the canary's success
//!   rate must be at least 99% and its p99 at most 500 ms; rollback after 5 failed checks.
//!
//! At 1000 req/s every row is also run on correlated traffic, the kind that fails
//! identical releases when a test counts requests as independent: **pauses** that delay
//! the requests arriving during them on both sides (1% of seconds, 20 to 100 ms), and
//! **error bursts** (1% of seconds, 20% of requests fail on both sides). A row's false
//! failures must stay at most alpha on every traffic model.
//!
//! Each cell simulates `FICUS_BENCH_RUNS` stages (default 200) of `FICUS_BENCH_HORIZON_S`
//! seconds (default 1800). "FAIL runs" is the share of runs failed within the horizon (for
//! rows without a regression, the false-failure rate); times are medians over the runs
//! that failed; "never" means no run failed.
//!
//! The 1000 req/s, 5% canary, error rate x2 row is close to what any test that keeps alpha
//! can do: the canary sees 50 requests and half an error a second, against 0.3 a second on
//! the statistical check's null boundary. On the same traffic (simulated outside this
//! benchmark), a sequential probability ratio test told the true effect in advance, which no
//! real test is, fails it after a median of 60 to 65 s at alpha / 3, the mixture after about
//! 75 s at alpha / 3 and 55 to 60 s at two thirds of alpha with requests taken as
//! independent. Measuring their dependence, and the fourth check's share of alpha, cost
//! about 10 s more (70 s here).

#[path = "../tests/support/traffic.rs"]
mod traffic;

use std::{
    env,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ficus_analysis::judge::{Judge, Template, default_template};
use ficus_proto::analysis::v1::Outcome;
use rand::{SeedableRng, rngs::SmallRng};
use traffic::{Disturbance, LatencyTable, SideCounts, SideModel, Traffic, bucket_bounds, quantile_of, split};

const BASELINE_ERRORS: f64 = 0.005;
const MEDIAN_LATENCY: f64 = 0.05;
const LATENCY_SIGMA: f64 = 0.5;
const JUDGE_INTERVAL: u64 = 5;
/// Flagger's defaults: `interval: 1m`, `threshold: 5`, `request-success-rate` min 99,
/// `request-duration` max 500 ms.
const FIXED_INTERVAL: u64 = 60;
const FIXED_FAILED_CHECKS: u32 = 5;
const FIXED_MIN_SUCCESS: f64 = 0.99;
const FIXED_MAX_P99: f64 = 0.5;

/// The traffic models of the table, by label.
const MODELS: [(&str, Disturbance); 3] = [
    ("independent", Disturbance::None),
    ("pauses 1% of s, 20-100 ms", Disturbance::Hiccups { share: 0.01, min: 0.02, max: 0.1 }),
    ("error bursts 1% of s, 20%", Disturbance::ErrorBursts { share: 0.01, error_rate: 0.2 }),
];

#[derive(Clone, Copy, Debug)]
enum Regression {
    None,
    Errors(f64),
    OnMargin,
    Latency(f64),
}

impl Regression {
    fn label(self) -> String {
        match self {
            Self::None => "none".to_owned(),
            Self::Errors(factor) => format!("error rate x{factor}"),
            Self::OnMargin => "error rate +0.1 pp (on the margin)".to_owned(),
            Self::Latency(factor) => format!("latency x{factor} (p99 +{:.0}%)", (factor - 1.0) * 100.0),
        }
    }

    fn canary_errors(self) -> f64 {
        match self {
            Self::Errors(factor) => BASELINE_ERRORS * factor,
            Self::OnMargin => BASELINE_ERRORS + 0.001,
            Self::None | Self::Latency(_) => BASELINE_ERRORS,
        }
    }

    fn is_healthy(self) -> bool {
        matches!(self, Self::None | Self::OnMargin)
    }
}

/// When each policy failed a run, in seconds into the stage.
struct RunResult {
    judge: Option<u64>,
    fixed: Option<u64>,
}

struct Tables {
    bounds: Arc<Vec<f64>>,
    baseline: Arc<LatencyTable>,
}

#[allow(clippy::too_many_arguments)]
fn run(
    tables: &Tables,
    template: &Template,
    rate: u64,
    weight: f64,
    regression: Regression,
    disturbance: Disturbance,
    seed: u64,
    horizon: u64,
) -> RunResult {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (baseline_rate, canary_rate) = split(rate, weight);
    let canary_latency = match regression {
        Regression::Latency(factor) => {
            Arc::new(LatencyTable::lognormal(&tables.bounds, MEDIAN_LATENCY * factor, LATENCY_SIGMA))
        }
        _ => tables.baseline.clone(),
    };
    let baseline = SideModel { rate: baseline_rate, error_rate: BASELINE_ERRORS, latency: tables.baseline.clone() };
    let canary = SideModel { rate: canary_rate, error_rate: regression.canary_errors(), latency: canary_latency };
    let mut traffic = Traffic::new(tables.bounds.clone(), baseline, canary).disturbed(disturbance);
    let looks = u32::try_from(horizon / JUDGE_INTERVAL).unwrap_or(u32::MAX);
    let mut judge = Judge::new(template.clone(), Some(looks));
    let mut last_fixed_check: Option<SideCounts> = None;
    let mut failed_checks = 0;
    let mut result = RunResult { judge: None, fixed: None };
    while traffic.seconds < horizon && (result.judge.is_none() || result.fixed.is_none()) {
        traffic.second(&mut rng);
        let now = traffic.seconds;
        if result.judge.is_none() && now.is_multiple_of(JUDGE_INTERVAL) {
            let verdict =
                judge.judge(&traffic.default_observations(), SystemTime::UNIX_EPOCH + Duration::from_secs(now));
            if verdict.outcome() == Outcome::Fail {
                result.judge = Some(now);
            }
        }
        if result.fixed.is_none() && now.is_multiple_of(FIXED_INTERVAL) {
            let window = match &last_fixed_check {
                Some(earlier) => traffic.canary.since(earlier),
                None => traffic.canary.clone(),
            };
            last_fixed_check = Some(traffic.canary.clone());
            let success = 1.0 - window.errors as f64 / window.requests.max(1) as f64;
            let p99 = window.quantile(traffic.bounds(), 0.99);
            if success < FIXED_MIN_SUCCESS || p99 > FIXED_MAX_P99 {
                failed_checks += 1;
                if failed_checks >= FIXED_FAILED_CHECKS {
                    result.fixed = Some(now);
                }
            }
        }
    }
    result
}

fn env_u64(name: &str, default: u64) -> u64 {
    env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn share(failed: usize, runs: u64) -> String {
    format!("{:.1}%", 100.0 * failed as f64 / runs as f64)
}

fn median_time(times: &mut [f64]) -> Option<f64> {
    let median = quantile_of(times, 0.5);
    median.is_finite().then_some(median)
}

fn show_time(time: Option<f64>) -> String {
    time.map_or_else(|| "never".to_owned(), |seconds| format!("{seconds:.0} s"))
}

fn main() {
    let runs = env_u64("FICUS_BENCH_RUNS", 200);
    let horizon = env_u64("FICUS_BENCH_HORIZON_S", 1800);
    let started = Instant::now();
    let bounds = Arc::new(bucket_bounds());
    let baseline = Arc::new(LatencyTable::lognormal(&bounds, MEDIAN_LATENCY, LATENCY_SIGMA));
    let tables = Tables { bounds, baseline };
    let template = Template::from_proto(&default_template(), "template").expect("the default template is valid");
    let regressions = [
        Regression::None,
        Regression::OnMargin,
        Regression::Errors(1.5),
        Regression::Errors(2.0),
        Regression::Errors(4.0),
        Regression::Latency(2.0),
    ];

    println!(
        "\n{runs} runs per row, stages of {horizon} s; baseline: 0.5% errors, lognormal latency (median 50 ms, p99 ~160 ms)\n"
    );
    println!(
        "| traffic | req/s | canary weight | regression | judge: FAIL runs | judge: median time to FAIL | fixed: FAIL runs | fixed: median time to FAIL | judge time / fixed time |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|");
    let mut cell = 0;
    let rows = MODELS.iter().flat_map(|&model| {
        let rates: &[u64] = if model.1 == Disturbance::None { &[100, 1000] } else { &[1000] };
        rates.iter().map(move |&rate| (model, rate))
    });
    for ((model, disturbance), rate) in rows {
        for weight in [0.05, 0.20] {
            for regression in regressions {
                cell += 1;
                let results: Vec<RunResult> = (0..runs)
                    .map(|run_index| {
                        let seed = cell * 1_000_000 + run_index;
                        run(&tables, &template, rate, weight, regression, disturbance, seed, horizon)
                    })
                    .collect();
                let mut judge_times: Vec<f64> = results.iter().filter_map(|r| r.judge).map(|s| s as f64).collect();
                let mut fixed_times: Vec<f64> = results.iter().filter_map(|r| r.fixed).map(|s| s as f64).collect();
                let (judge_failed, fixed_failed) = (judge_times.len(), fixed_times.len());
                let (judge_median, fixed_median) = (median_time(&mut judge_times), median_time(&mut fixed_times));
                let ratio = match (judge_median, fixed_median) {
                    _ if regression.is_healthy() => "-".to_owned(),
                    (Some(judge), Some(fixed)) => format!("{:.2}", judge / fixed),
                    (Some(_), None) => "0 (fixed never)".to_owned(),
                    _ => "n/a".to_owned(),
                };
                println!(
                    "| {model} | {rate} | {:.0}% | {} | {} | {} | {} | {} | {ratio} |",
                    weight * 100.0,
                    regression.label(),
                    share(judge_failed, runs),
                    show_time(judge_median),
                    share(fixed_failed, runs),
                    show_time(fixed_median),
                );
            }
        }
    }
    println!("\nsimulated in {:.1} s", started.elapsed().as_secs_f64());
}
