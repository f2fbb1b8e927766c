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

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ficus::up::{Configs, ControlPlane};
use ficus_proto::{
    analysis::v1::Verdict,
    planner::v1::{self as planner, Phase, planner_client::PlannerClient},
    traffic::v1::{self as traffic, traffic_control_client::TrafficControlClient},
};
use ficus_testkit::{Podinfo, Wrk, grpc, route::two_backends, wait_until};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A 1 ms service: podinfo draws its delay from [min, max), so this is exactly 1 ms.
const ONE_MS: [&str; 4] = ["--random-delay", "--random-delay-unit=ms", "--random-delay-min=1", "--random-delay-max=2"];

/// The same service 2 ms slower: three times the latency.
const THREE_MS: [&str; 4] =
    ["--random-delay", "--random-delay-unit=ms", "--random-delay-min=3", "--random-delay-max=4"];

/// The same service 20 ms slower.
const TWENTY_ONE_MS: [&str; 4] =
    ["--random-delay", "--random-delay-unit=ms", "--random-delay-min=21", "--random-delay-max=22"];

/// The stable side's name on every route; `v1` is always started first.
const STABLE: &str = "v1";

/// The canary's name on every route.
const CANARY: &str = "v2";

/// The name of an equal-footing baseline: a second instance of the stable release.
const BASELINE: &str = "v1-copy";

/// Four stages rather than the default five, to keep five A/A rollouts within minutes;
/// 5% is kept because a small canary next to a large baseline is where noise is worst.
const STAGES: [f64; 4] = [5.0, 20.0, 50.0, 100.0];

/// Each stage's observation window: four or five verdicts at [`ANALYSIS_INTERVAL`].
const STAGE_WINDOW: Duration = Duration::from_secs(8);

/// Time between verdicts: frequent looks are what a sequential test must withstand.
const ANALYSIS_INTERVAL: Duration = Duration::from_secs(2);

/// How many A/A rollouts must all succeed.
const A_A_ROLLOUTS: usize = 5;

/// wrk's threads.
const WRK_THREADS: u32 = 2;

/// How hard and how long a rollout is driven.
#[derive(Clone, Copy, Debug)]
struct Pace {
    /// wrk's connections.
    connections: u32,
    /// Each stage's observation window.
    window: Duration,
}

/// More connections than the two cores can serve, so the proxy is saturated and every
/// queueing delay the machine has shows up in the latencies; short windows, so five
/// rollouts take minutes.
const FULL_RATE: Pace = Pace { connections: 32, window: STAGE_WINDOW };

/// A few connections and 20 s windows: the proxy keeps up, so latencies are the
/// services' own rather than the queue's, and a stage gathers enough periods to tell a
/// 2 ms shift from noise. At the full rate a 1 ms service's p99 is tens of milliseconds of
/// queueing on this machine, and 2 ms more is within the p99 rule's 1.5 x.
const MODERATE: Pace = Pace { connections: 4, window: Duration::from_secs(20) };

/// One wrk run covers warm-up and rollout and is stopped when the rollout ends; this is
/// only its upper bound (wrk's longest), reached only by a rollout that overruns.
const WRK_DURATION: Duration = Duration::from_secs(120);

/// Requests the stable side serves before the rollout starts, so its connections, the
/// proxy's upstream pool and podinfo's runtime are warm and the baseline has history.
const WARM_REQUESTS: u64 = 5_000;

/// How long the warm-up may take; a saturated proxy reaches [`WARM_REQUESTS`] in a second
/// or two.
const WARM_WITHIN: Duration = Duration::from_secs(20);

/// The longest a rollout may run: four windows take 32 s, and a stage whose window ends
/// without a passing verdict waits for one. A rollout still running then is reported with
/// its history rather than waited for.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(150);

/// How long the busy thread may spin at most, whatever happens to the test.
const DISTURB_LIMIT: Duration = Duration::from_secs(200);

/// How far back the closing traffic summary looks: longer than any rollout, so it covers
/// the route's whole life.
const STATS_WINDOW: Duration = Duration::from_secs(600);

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

/// The four services of `ficus up`, in this process on loopback ports, with clients of
/// the APIs the test drives; stopped when dropped.
struct Plane {
    planner: PlannerClient<Channel>,
    traffic: TrafficControlClient<Channel>,
    proxy: SocketAddr,
    shutdown: CancellationToken,
    _running: ControlPlane,
    _data: tempfile::TempDir,
}

impl Plane {
    async fn start() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let configs = Configs::ephemeral(data.path());
        let shutdown = CancellationToken::new();
        let running = ControlPlane::start(configs, shutdown.clone()).await.expect("the control plane starts");
        let proxy = running.traffic.addr(ficus_traffic::DATA_PLANE).expect("traffic serves its data plane");
        Self {
            planner: PlannerClient::new(grpc::channel(running.planner.grpc_addr)),
            traffic: TrafficControlClient::new(grpc::channel(running.traffic.grpc_addr)),
            proxy,
            shutdown,
            _running: running,
            _data: data,
        }
    }

    /// One strangler rollout from `v1` to `v2` on a new route `name`, under load and CPU
    /// contention from before it starts until it ends; returns how it ended.
    async fn roll_out(&self, name: &str, sides: Sides<'_>, pace: Pace) -> Ended {
        self.put_route(name, &sides).await;
        let load = Load::start(self.proxy, name, pace.connections);
        self.warm_up(name, &load).await;
        let disturber = Disturber::start();
        let started = Instant::now();
        let id = format!("{name}-rollout");
        let mut spec = strangler(name, pace.window);
        if sides.baseline.is_some() {
            spec.baseline_backend = BASELINE.to_owned();
        }
        let request = planner::CreateRolloutRequest { spec: Some(spec), id: id.clone() };
        let created = self.planner.clone().create_rollout(request).await.expect("the rollout is created").into_inner();
        let watch = Watch::start(self.planner.clone(), created.id.clone(), started);
        let rollout = self.wait_end(&created.id, &watch, started).await;
        let spins = disturber.stop().await;
        load.stop().await;
        let traffic = self.traffic_summary(name).await;
        let (history, shares, samples) = {
            let history = watch.history.lock();
            (history.lines.clone(), history.shares.clone(), history.samples.clone())
        };
        Ended { route: name.to_owned(), took: elapsed(&rollout), rollout, history, shares, samples, traffic, spins }
    }

    async fn put_route(&self, name: &str, sides: &Sides<'_>) {
        let (v1, v2) = (sides.stable.addr().to_string(), sides.canary.addr().to_string());
        let mut route = two_backends(name, (STABLE, &v1), (CANARY, &v2), 0);
        if let Some(baseline) = sides.baseline {
            route
                .backends
                .push(traffic::Backend { name: BASELINE.to_owned(), endpoints: vec![baseline.addr().to_string()] });
            route.weights.insert(BASELINE.to_owned(), 0);
        }
        // Only wrk's requests for this route's host reach it: routes of earlier rollouts
        // stay in the table, and each rollout is judged on its own traffic.
        route.r#match = Some(traffic::RouteMatch { hosts: vec![host(name)], path_prefix: String::new() });
        self.traffic
            .clone()
            .put_route(traffic::PutRouteRequest { route: Some(route), expected_generation: 0 })
            .await
            .expect("the route is stored");
    }

    /// Waits until the stable side has served [`WARM_REQUESTS`] through the proxy.
    async fn warm_up(&self, route: &str, load: &Load) {
        wait_until(WARM_WITHIN, || {
            let mut api = self.traffic.clone();
            let route = route.to_owned();
            let wrk_failed = load.wrk.is_finished();
            async move {
                assert!(!wrk_failed, "wrk stopped during the warm-up of route {route}");
                let request = traffic::GetTrafficStatsRequest { route, ..Default::default() };
                let stats = api.get_traffic_stats(request).await.ok()?.into_inner();
                let stable = stats.backends.iter().find(|backend| backend.backend == STABLE)?;
                (stable.requests >= WARM_REQUESTS).then_some(())
            }
        })
        .await;
    }

    /// The rollout once it has ended and its whole history has been recorded, or as it is
    /// after [`ROLLOUT_LIMIT`], so that an overrun is reported with what it went through.
    async fn wait_end(&self, id: &str, watch: &Watch, started: Instant) -> planner::Rollout {
        // The hard deadline only guards against a planner that stops answering.
        wait_until(ROLLOUT_LIMIT + Duration::from_secs(30), || {
            let mut api = self.planner.clone();
            let id = id.to_owned();
            let history = watch.history.clone();
            async move {
                let rollout = api.get_rollout(planner::GetRolloutRequest { id }).await.ok()?.into_inner();
                let recorded = {
                    let history = history.lock();
                    history.version >= rollout.version || history.ended
                };
                let over = is_terminal(rollout.phase()) && recorded;
                (over || started.elapsed() > ROLLOUT_LIMIT).then_some(rollout)
            }
        })
        .await
    }

    /// What each side of `route` served in its whole life, for the report.
    async fn traffic_summary(&self, route: &str) -> String {
        let request = traffic::GetTrafficStatsRequest {
            route: route.to_owned(),
            window: Some(STATS_WINDOW.into()),
            ..Default::default()
        };
        let stats = match self.traffic.clone().get_traffic_stats(request).await {
            Ok(stats) => stats.into_inner(),
            Err(status) => return format!("no traffic statistics: {status}"),
        };
        let mut sides: Vec<String> = stats
            .backends
            .iter()
            .map(|backend| {
                let latency = backend.latency.unwrap_or_default();
                format!(
                    "{} {} requests, {} errors, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
                    backend.backend,
                    backend.requests,
                    backend.errors,
                    latency.p50_seconds * 1e3,
                    latency.p99_seconds * 1e3,
                    latency.max_seconds * 1e3,
                )
            })
            .collect();
        sides.sort();
        sides.join("; ")
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The host name that selects route `name` in the proxy.
fn host(name: &str) -> String {
    format!("{name}.test")
}

/// A strangler rollout of `route` through [`STAGES`], judged with the default template.
fn strangler(route: &str, window: Duration) -> planner::RolloutSpec {
    planner::RolloutSpec {
        route: route.to_owned(),
        stable_backend: STABLE.to_owned(),
        canary_backend: CANARY.to_owned(),
        strategy: Some(planner::rollout_spec::Strategy::Strangler(planner::StranglerStrategy {
            stages: STAGES.iter().map(|&weight| planner::Stage { weight, window: None }).collect(),
            window: Some(window.into()),
        })),
        // No template: the default one (the rollback table) is what users get.
        analysis: Some(planner::AnalysisSpec {
            template: None,
            interval: Some(ANALYSIS_INTERVAL.into()),
            stage_templates: vec![],
            initial_delay: None,
        }),
        failure_policy: planner::FailurePolicy::RollbackToPreviousStage.into(),
        manual_gate: false,
        scaling: None,
        baseline_backend: String::new(),
    }
}

fn is_terminal(phase: Phase) -> bool {
    matches!(phase, Phase::Succeeded | Phase::RolledBack | Phase::Aborted | Phase::Failed)
}

/// From the rollout's creation to its last change, as the planner recorded them: for an
/// ended rollout, its whole run, up to the verdict that rolled it back.
fn elapsed(rollout: &planner::Rollout) -> Option<Duration> {
    let nanos = |at: &pbjson_types::Timestamp| i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    let took = nanos(rollout.updated_at.as_ref()?) - nanos(rollout.created_at.as_ref()?);
    u64::try_from(took).ok().map(Duration::from_nanos)
}

/// wrk at full rate through the proxy, for the route's host, until stopped.
struct Load {
    wrk: JoinHandle<()>,
}

impl Load {
    fn start(proxy: SocketAddr, route: &str, connections: u32) -> Self {
        // One run for warm-up and rollout alike: a new run would close and reopen every
        // connection, a gap and a burst that the judge would see and a user would not.
        let wrk = Wrk::new(format!("http://{proxy}/"))
            .threads(WRK_THREADS)
            .connections(connections)
            .duration(WRK_DURATION)
            .header(format!("Host: {}", host(route)));
        Self {
            wrk: tokio::spawn(async move {
                wrk.run().await;
            }),
        }
    }

    /// Stops wrk (dropping its run kills the process) and passes on a failure it had.
    async fn stop(self) {
        self.wrk.abort();
        if let Err(error) = self.wrk.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}

/// A thread that keeps one core busy with arithmetic, as a noisy neighbour would.
struct Disturber {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Disturber {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let until = Instant::now() + DISTURB_LIMIT;
        let thread = std::thread::spawn(move || {
            let mut state = 1_u64;
            let mut spins = 0_u64;
            while !stopped.load(Ordering::Relaxed) && Instant::now() < until {
                for _ in 0..10_000 {
                    state = std::hint::black_box(state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                }
                spins += 1;
            }
            spins
        });
        Self { stop, thread }
    }

    /// Stops the thread and returns how many rounds it spun.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().expect("the disturber does not panic")).await.expect("joined")
    }
}

/// The podinfo instances a rollout moves traffic between.
struct Sides<'a> {
    stable: &'a Podinfo,
    canary: &'a Podinfo,
    /// An equal-footing baseline: another instance of the stable release.
    baseline: Option<&'a Podinfo>,
}

impl<'a> Sides<'a> {
    /// Stable and canary, judged against each other.
    fn two(stable: &'a Podinfo, canary: &'a Podinfo) -> Self {
        Self { stable, canary, baseline: None }
    }
}

/// Every state a rollout went through, as `WatchRollout` reported it.
#[derive(Default)]
struct History {
    lines: Vec<String>,
    /// The canary's and the equal-footing baseline's weights, in basis points, at every
    /// state.
    shares: Vec<(u32, u32)>,
    /// Baseline and canary samples of `error-rate-vs-baseline` at every verdict.
    samples: Vec<(u64, u64)>,
    /// The version of the latest state recorded.
    version: u64,
    /// The watch is over: the rollout ended, or the stream did.
    ended: bool,
    /// The verdict whose checks were last written out, so each verdict's are written once.
    last_verdict: Option<(u64, i64, i32)>,
}

impl History {
    fn record(&mut self, event: &planner::RolloutEvent, at: Duration) {
        let Some(rollout) = &event.rollout else {
            self.lines.push(format!("{:>6.1}s (no rollout) {}", at.as_secs_f64(), event.reason));
            return;
        };
        self.version = self.version.max(rollout.version);
        let canary = rollout.weights.get(CANARY).copied().unwrap_or(0);
        self.shares.push((canary, rollout.weights.get(BASELINE).copied().unwrap_or(0)));
        self.lines.push(format!(
            "{:>6.1}s {:<11} step {:>2} {CANARY}={:>3}%  {}",
            at.as_secs_f64(),
            rollout.phase().as_str_name(),
            rollout.step,
            canary / 100,
            event.reason
        ));
        if let Some(verdict) = &rollout.last_verdict {
            let key = verdict_key(verdict);
            if self.last_verdict != Some(key) {
                self.last_verdict = Some(key);
                let compared = verdict.checks.iter().find(|check| check.name == "error-rate-vs-baseline");
                self.samples.extend(compared.map(|check| (check.baseline_samples, check.canary_samples)));
                // A transition that is not the verdict's own (one the watch caught up on,
                // or a step change) does not say what the verdict was.
                if !event.reason.contains(&verdict.reason) {
                    self.lines.push(format!(
                        "          verdict {} ({:.0}): {}",
                        verdict.outcome().as_str_name(),
                        verdict.score,
                        verdict.reason
                    ));
                }
                self.lines.extend(verdict.checks.iter().map(|check| {
                    format!("            {} {}: {}", check.outcome().as_str_name(), check.name, check.reason)
                }));
            }
        }
    }
}

fn verdict_key(verdict: &Verdict) -> (u64, i64, i32) {
    let judged = verdict.judged_at.unwrap_or_default();
    (verdict.sequence, judged.seconds, judged.nanos)
}

/// Follows a rollout's transitions into its [`History`] until it ends.
struct Watch {
    history: Arc<Mutex<History>>,
    task: JoinHandle<()>,
}

impl Watch {
    fn start(mut api: PlannerClient<Channel>, id: String, started: Instant) -> Self {
        let history = Arc::new(Mutex::new(History::default()));
        let recorder = history.clone();
        let task = tokio::spawn(async move {
            let outcome = match api.watch_rollout(planner::WatchRolloutRequest { id }).await {
                Ok(events) => {
                    let mut events = events.into_inner();
                    loop {
                        match events.next().await {
                            Some(Ok(event)) => {
                                let ended = event.rollout.as_ref().is_some_and(|rollout| is_terminal(rollout.phase()));
                                recorder.lock().record(&event, started.elapsed());
                                if ended {
                                    break None;
                                }
                            }
                            Some(Err(status)) => break Some(format!("the watch failed: {status}")),
                            None => break Some("the watch ended before the rollout".to_owned()),
                        }
                    }
                }
                Err(status) => Some(format!("cannot watch the rollout: {status}")),
            };
            let mut history = recorder.lock();
            history.lines.extend(outcome);
            history.ended = true;
        });
        Self { history, task }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one rollout ended, with everything that explains it.
struct Ended {
    route: String,
    rollout: planner::Rollout,
    took: Option<Duration>,
    history: Vec<String>,
    /// See [`History::shares`].
    shares: Vec<(u32, u32)>,
    /// See [`History::samples`].
    samples: Vec<(u64, u64)>,
    traffic: String,
    spins: u64,
}

impl Ended {
    /// Whether analysis sent the canary's traffic back, or the rollout could not go on.
    fn rolled_back(&self) -> bool {
        matches!(self.rollout.phase(), Phase::RolledBack | Phase::Failed)
    }

    fn took_text(&self) -> String {
        self.took.map_or_else(|| "an unknown time".to_owned(), |took| format!("{:.1} s", took.as_secs_f64()))
    }
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "route {}: {} after {} at step {}, {CANARY}={}%: {}",
            self.route,
            self.rollout.phase().as_str_name(),
            self.took_text(),
            self.rollout.step,
            self.rollout.weights.get(CANARY).copied().unwrap_or(0) / 100,
            self.rollout.message
        )?;
        if let Some(verdict) = &self.rollout.last_verdict {
            writeln!(
                f,
                "  last verdict {} ({:.0}): {}",
                verdict.outcome().as_str_name(),
                verdict.score,
                verdict.reason
            )?;
        }
        writeln!(f, "  traffic: {}", self.traffic)?;
        writeln!(f, "  disturber: {} rounds of 10,000 multiplications", self.spins)?;
        writeln!(f, "  history:")?;
        for line in &self.history {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}
