//! Whole rollouts between real podinfo processes, judged by ficus' default template, and
//! the same traffic watched by a Flagger-style fixed-threshold policy: how often identical
//! releases are rolled back, and how fast real regressions are.
//!
//! Run with `cargo bench -p ficus --bench rollouts` (about 25 minutes; wrk and podinfo come
//! from `scripts/install-test-tools.sh`). Not a timing benchmark: it prints a markdown
//! table. Every rollout is the test suite's (`tests/podinfo_rollouts.rs`): strangler stages
//! 5/20/50/100% of 8 s (20 s for the 2 ms row), a verdict every 2 s, wrk driving the
//! embedded proxy and a thread spinning on one of the two cores.
//!
//! - **A/A**: two instances of the same 1 ms service, `FICUS_BENCH_ROLLOUTS` times (default
//!   20), at the proxy's full rate; then `FICUS_BENCH_EQUAL_ROLLOUTS` (default 5) against
//!   an equal-footing baseline (a third instance of the stable release at the canary's
//!   share). Any rollback is a false failure; the default template's alpha is 0.05.
//! - **A/B**: a canary 20 ms slower, one 2 ms slower on the 1 ms service (at a rate the
//!   proxy keeps up with), and one failing a third of its requests (`--random-error`),
//!   `FICUS_BENCH_AB_ROLLOUTS` times each (default 3). ficus drives one set of rollouts;
//!   the fixed-threshold policy watches another set that runs to 100% unjudged, since once
//!   ficus rolls a canary back there is no traffic left for the peer to judge.
//! - **fixed**: Flagger's defaults scaled to these stages: every 2 s, over the last 2 s,
//!   success rate at least 99% and p99 at most 500 ms; the fifth failed check rolls back.
//!
//! Times run from the rollout's start to the decision to roll back; medians over the
//! rollouts that were rolled back; "never" when none was.

#[path = "../tests/support/rollouts.rs"]
mod rollouts;

use std::{env, time::Duration};

use ficus_testkit::Podinfo;
use rollouts::{
    Ended, FIXED_FAILED_CHECKS, FULL_RATE, Judged, MODERATE, ONE_MS, Pace, Plane, Sides, THREE_MS, TWENTY_ONE_MS,
};

/// The default template's alpha over a run.
const ALPHA: f64 = 0.05;

/// One scenario's rollouts.
struct Row {
    scenario: String,
    /// Rollouts ficus judged.
    judged: Vec<Ended>,
    /// When the fixed-threshold policy would have rolled back, per rollout it watched.
    fixed: Vec<Option<Duration>>,
}

fn count(name: &str, default: usize) -> usize {
    env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn main() {
    let aa = count("FICUS_BENCH_ROLLOUTS", 20);
    let equal = count("FICUS_BENCH_EQUAL_ROLLOUTS", 5);
    let ab = count("FICUS_BENCH_AB_ROLLOUTS", 3);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    let rows = runtime.block_on(async {
        let random_error: Vec<&str> = ONE_MS.iter().copied().chain(["--random-error"]).collect();
        vec![
            a_a("A/A, full rate", aa, false).await,
            a_a("A/A, equal-footing baseline", equal, true).await,
            a_b("+20 ms, full rate", &TWENTY_ONE_MS, FULL_RATE, ab).await,
            a_b("+2 ms on 1 ms, moderate rate", &THREE_MS, MODERATE, ab).await,
            a_b("1/3 errors (--random-error), full rate", &random_error, FULL_RATE, ab).await,
        ]
    });
    print_table(&rows);
}

/// `runs` rollouts between identical services, judged by ficus and watched by the peer.
async fn a_a(scenario: &str, runs: usize, equal_footing: bool) -> Row {
    let plane = Plane::start().await;
    let v1 = Podinfo::start_with(&ONE_MS).await;
    let copy = Podinfo::start_with(&ONE_MS).await;
    let v2 = Podinfo::start_with(&ONE_MS).await;
    let mut judged = Vec::new();
    for run in 1..=runs {
        let baseline = equal_footing.then_some(&copy);
        let sides = Sides { stable: &v1, canary: &v2, baseline };
        let ended = plane.roll_out(&format!("aa-{}-{run}", u8::from(equal_footing)), sides, FULL_RATE).await;
        report(scenario, run, runs, &ended);
        judged.push(ended);
    }
    let fixed = judged.iter().map(|ended| ended.fixed).collect();
    Row { scenario: scenario.to_owned(), judged, fixed }
}

/// `runs` rollouts to a canary started with `canary_flags` judged by ficus, and `runs`
/// unjudged ones watched by the peer.
async fn a_b(scenario: &str, canary_flags: &[&str], pace: Pace, runs: usize) -> Row {
    let plane = Plane::start().await;
    let v1 = Podinfo::start_with(&ONE_MS).await;
    let v2 = Podinfo::start_with(canary_flags).await;
    let (mut judged, mut fixed) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let name = format!("ab-{}-{run}", judged.len() + fixed.len());
        let ended = plane.roll_out(&name, Sides::two(&v1, &v2), pace).await;
        report(scenario, run, runs, &ended);
        judged.push(ended);
        let name = format!("ab-peer-{}-{run}", judged.len() + fixed.len());
        let watched = plane.roll_out_judged_by(&name, Sides::two(&v1, &v2), pace, Judged::Unjudged).await;
        eprintln!("{scenario}, unjudged {run}/{runs}: fixed thresholds {}", time_text(watched.fixed));
        fixed.push(watched.fixed);
    }
    Row { scenario: scenario.to_owned(), judged, fixed }
}

fn report(scenario: &str, run: usize, runs: usize, ended: &Ended) {
    eprintln!("{scenario}, judged {run}/{runs}: {} after {}", ended.rollout.phase().as_str_name(), ended.took_text());
    if ended.rolled_back() {
        eprintln!("{ended}");
    }
}

fn time_text(time: Option<Duration>) -> String {
    time.map_or_else(|| "never".to_owned(), |time| format!("{:.1} s", time.as_secs_f64()))
}

/// The median of `times`, `None` when empty.
fn median(mut times: Vec<Duration>) -> Option<Duration> {
    times.sort_unstable();
    (!times.is_empty()).then(|| times[(times.len() - 1) / 2])
}

fn print_table(rows: &[Row]) {
    println!(
        "\nrollouts: strangler 5/20/50/100%, verdicts every 2 s; A/A false failures must stay at most alpha = {ALPHA}"
    );
    println!(
        "fixed: success >= 99% and p99 <= 500 ms over the last 2 s, every 2 s, rollback at {FIXED_FAILED_CHECKS} failed checks\n"
    );
    println!(
        "| scenario | rollouts | ficus rolled back | fixed rolled back | ficus median time | fixed median time | ficus / fixed |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        let rolled_back: Vec<Duration> =
            row.judged.iter().filter(|ended| ended.rolled_back()).map(|ended| ended.took.unwrap_or_default()).collect();
        let fixed: Vec<Duration> = row.fixed.iter().copied().flatten().collect();
        let share = |n: usize, of: usize| format!("{n}/{of} ({:.0}%)", 100.0 * n as f64 / of.max(1) as f64);
        let ratio = match (median(rolled_back.clone()), median(fixed.clone())) {
            (Some(ficus), Some(fixed)) => format!("{:.2}", ficus.as_secs_f64() / fixed.as_secs_f64()),
            (Some(_), None) => "fixed never".to_owned(),
            (None, _) => "-".to_owned(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {ratio} |",
            row.scenario,
            row.judged.len(),
            share(rolled_back.len(), row.judged.len()),
            share(fixed.len(), row.fixed.len()),
            time_text(median(rolled_back.clone())),
            time_text(median(fixed.clone())),
        );
    }
}
