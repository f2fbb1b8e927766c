//! Whole rollouts against real HTTP servers under real load: the control plane of
//! `ficus up`, in this process, moves a route between two podinfo instances while wrk
//! drives the embedded proxy as hard as it can and a busy thread competes for the CPU.
//!
//! What it proves:
//!
//! - A/A: two identical 1 ms services are told apart by nothing but noise, so a strangler
//!   rollout between them must succeed, every time. A judge that treats the requests of a
//!   loaded machine as independent samples sees the shared stalls (a descheduled proxy
//!   worker, a busy core, a garbage collection in podinfo) as evidence and rolls back a
//!   release that changed nothing; five rollouts in a row make that visible even when
//!   each false failure is rare.
//! - A/B: the same setup with a canary that is really worse is rolled back, and the time
//!   that took is printed: a judge made quiet enough for the A/A case must still be quick
//!   on a real regression. A canary answering a third of its requests with 400, 409 or
//!   500, and one 20 ms slower, at the full rate; one 2 ms slower than a 1 ms service at a
//!   rate the proxy keeps up with (see [`MODERATE`]).
//!
//! podinfo rather than a server written here, so that nobody chose the backend's
//! behaviour to suit the judge; wrk rather than a client written here, so the load is
//! what the benchmarks use. The CPU disturber stands for the neighbours a production
//! proxy has. The tests in this file take turns (see [`ONE_AT_A_TIME`]): run side by
//! side on a small machine they would disturb each other far more than intended.

#[path = "support/rollouts.rs"]
mod rollouts;

use ficus_proto::planner::v1::Phase;
use ficus_testkit::Podinfo;
use rollouts::{BASELINE, CANARY, Ended, FULL_RATE, MODERATE, ONE_MS, Pace, Plane, Sides, THREE_MS, TWENTY_ONE_MS};

/// How many A/A rollouts must all succeed.
const A_A_ROLLOUTS: usize = 5;

/// Makes the tests of this file take turns: each saturates both cores on purpose, and two
/// at once would measure each other rather than the judge. A tokio mutex, because the
/// tests run on separate runtimes and the guard is held across awaits.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_versions_are_promoted_every_time() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let plane = Plane::start().await;
    let v1 = Podinfo::start_with(&ONE_MS).await;
    let v2 = Podinfo::start_with(&ONE_MS).await;
    let mut ended = Vec::new();
    // A fresh route each time: its statistics start empty, so no rollout is judged on
    // the traffic of the one before.
    for run in 1..=A_A_ROLLOUTS {
        let ended_run = plane.roll_out(&format!("aa-{run}"), Sides::two(&v1, &v2), FULL_RATE).await;
        println!("A/A rollout {run} of {A_A_ROLLOUTS}: {ended_run}");
        ended.push(ended_run);
    }
    let failed: Vec<String> =
        ended.iter().filter(|ended| ended.rollout.phase() != Phase::Succeeded).map(ToString::to_string).collect();
    assert!(
        failed.is_empty(),
        "{} of {A_A_ROLLOUTS} A/A rollouts between identical podinfo instances did not succeed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    for ended in &ended {
        assert_baseline_against_itself(ended);
    }
}

/// The default template's checks that compare the sides showed the baseline against
/// itself in the rollout's verdicts.
fn assert_baseline_against_itself(ended: &Ended) {
    for name in ["error-rate-vs-baseline", "p99-latency", "latency-vs-baseline"] {
        let shown = format!(" {name}: ");
        assert!(
            ended.history.iter().any(|line| line.contains(&shown) && line.contains("baseline against itself")),
            "{name} never showed the baseline against itself: {ended}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_twenty_milliseconds_slower_is_rolled_back_at_full_rate() {
    rolled_back("A/B latency (+20 ms)", "ab-latency-20", &TWENTY_ONE_MS, FULL_RATE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_two_milliseconds_slower_is_rolled_back() {
    rolled_back("A/B latency (+2 ms on 1 ms)", "ab-latency-2", &THREE_MS, MODERATE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_at_random_is_rolled_back() {
    let flags: Vec<&str> = ONE_MS.iter().copied().chain(["--random-error"]).collect();
    rolled_back("A/B errors (--random-error)", "ab-errors", &flags, FULL_RATE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equal_footing_copy_of_the_stable_release_is_the_baseline() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let plane = Plane::start().await;
    let v1 = Podinfo::start_with(&ONE_MS).await;
    let copy = Podinfo::start_with(&ONE_MS).await;
    let v2 = Podinfo::start_with(&ONE_MS).await;
    let sides = Sides { stable: &v1, canary: &v2, baseline: Some(&copy) };
    let ended = plane.roll_out("equal-footing", sides, FULL_RATE).await;
    println!("A/A against an equal-footing baseline: {ended}");
    assert_eq!(ended.rollout.phase(), Phase::Succeeded, "{ended}");
    // The copy takes the canary's share from the stable side while the canary has less
    // than all the traffic, and gives it back at 100%.
    for stage in [500, 2_000, 5_000] {
        assert!(ended.shares.contains(&(stage, stage)), "stage {stage}: {:?}\n{ended}", ended.shares);
    }
    assert!(
        ended.shares.iter().all(|&(canary, baseline)| baseline == canary.min(10_000 - canary)),
        "{:?}",
        ended.shares
    );
    assert_eq!(ended.shares.last(), Some(&(10_000, 0)), "{ended}");
    // Analysis compared the canary with the copy: equal shares, so about as many requests
    // on each side, where the stable side would have had 19 times the canary's at 5%.
    let judged: Vec<(u64, u64)> =
        ended.samples.iter().copied().filter(|&(baseline, canary)| baseline.min(canary) >= 1_000).collect();
    assert!(!judged.is_empty(), "no verdict with samples on both sides: {ended}");
    for (baseline, canary) in judged {
        let ratio = baseline as f64 / canary as f64;
        assert!((0.8..1.25).contains(&ratio), "baseline {baseline} vs canary {canary} requests: {ended}");
    }
    assert_baseline_against_itself(&ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_twenty_milliseconds_slower_than_an_equal_footing_baseline_is_rolled_back() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let plane = Plane::start().await;
    let v1 = Podinfo::start_with(&ONE_MS).await;
    let copy = Podinfo::start_with(&ONE_MS).await;
    let v2 = Podinfo::start_with(&TWENTY_ONE_MS).await;
    let sides = Sides { stable: &v1, canary: &v2, baseline: Some(&copy) };
    let ended = plane.roll_out("equal-footing-ab", sides, FULL_RATE).await;
    println!("A/B latency (+20 ms) against an equal-footing baseline: {ended}");
    assert!(ended.rolled_back(), "the canary was not rolled back: {ended}");
    // Rolled back to the previous stage, where the copy has that stage's share again.
    let weight = |name: &str| ended.rollout.weights.get(name).copied().unwrap_or(0);
    assert_eq!(weight(BASELINE), weight(CANARY).min(10_000 - weight(CANARY)), "{ended}");
    println!("rolled back {} after the rollout started", ended.took_text());
}

/// Rolls `route` out from the 1 ms service to one started with `canary_flags`, asserts that
/// the rollout was rolled back, and prints how long that took.
async fn rolled_back(what: &str, route: &str, canary_flags: &[&str], pace: Pace) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let plane = Plane::start().await;
    let v1 = Podinfo::start_with(&ONE_MS).await;
    let v2 = Podinfo::start_with(canary_flags).await;
    let ended = plane.roll_out(route, Sides::two(&v1, &v2), pace).await;
    println!("{what}: {ended}");
    assert!(ended.rolled_back(), "{what}: the canary was not rolled back: {ended}");
    assert_baseline_against_itself(&ended);
    println!("{what}: rolled back {} after the rollout started", ended.took_text());
}
