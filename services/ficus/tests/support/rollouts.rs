//! The machinery of whole rollouts against podinfo under wrk and a CPU hog, shared by
//! `tests/podinfo_rollouts.rs` and `benches/rollouts.rs` (through `#[path]`): the control
//! plane of `ficus up` in this process, the load, the disturber, and a record of how each
//! rollout went.

#![allow(dead_code)]

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
pub const ONE_MS: [&str; 4] =
    ["--random-delay", "--random-delay-unit=ms", "--random-delay-min=1", "--random-delay-max=2"];

/// The same service 2 ms slower: three times the latency.
pub const THREE_MS: [&str; 4] =
    ["--random-delay", "--random-delay-unit=ms", "--random-delay-min=3", "--random-delay-max=4"];

/// The same service 20 ms slower.
pub const TWENTY_ONE_MS: [&str; 4] =
    ["--random-delay", "--random-delay-unit=ms", "--random-delay-min=21", "--random-delay-max=22"];

/// The stable side's name on every route; `v1` is always started first.
pub const STABLE: &str = "v1";

/// The canary's name on every route.
pub const CANARY: &str = "v2";

/// The name of an equal-footing baseline: a second instance of the stable release.
pub const BASELINE: &str = "v1-copy";

/// Four stages rather than the default five, to keep five A/A rollouts within minutes;
/// 5% is kept because a small canary next to a large baseline is where noise is worst.
pub const STAGES: [f64; 4] = [5.0, 20.0, 50.0, 100.0];

/// Each stage's observation window: four or five verdicts at [`ANALYSIS_INTERVAL`].
pub const STAGE_WINDOW: Duration = Duration::from_secs(8);

/// Time between verdicts: frequent looks are what a sequential test must withstand.
pub const ANALYSIS_INTERVAL: Duration = Duration::from_secs(2);

/// wrk's threads.
pub const WRK_THREADS: u32 = 2;

/// How hard and how long a rollout is driven.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// wrk's connections.
    pub connections: u32,
    /// Each stage's observation window.
    pub window: Duration,
}

/// More connections than the two cores can serve, so the proxy is saturated and every
/// queueing delay the machine has shows up in the latencies; short windows, so five
/// rollouts take minutes.
pub const FULL_RATE: Pace = Pace { connections: 32, window: STAGE_WINDOW };

/// A few connections and 20 s windows: the proxy keeps up, so latencies are the
/// services' own rather than the queue's, and a stage gathers enough periods to tell a
/// 2 ms shift from noise. At the full rate a 1 ms service's p99 is tens of milliseconds of
/// queueing on this machine, and 2 ms more is within the p99 rule's 1.5 x.
pub const MODERATE: Pace = Pace { connections: 4, window: Duration::from_secs(20) };

/// One wrk run covers warm-up and rollout and is stopped when the rollout ends; this is
/// only its upper bound (wrk's longest), reached only by a rollout that overruns.
pub const WRK_DURATION: Duration = Duration::from_secs(120);

/// Requests the stable side serves before the rollout starts, so its connections, the
/// proxy's upstream pool and podinfo's runtime are warm and the baseline has history.
pub const WARM_REQUESTS: u64 = 5_000;

/// How long the warm-up may take; a saturated proxy reaches [`WARM_REQUESTS`] in a second
/// or two.
pub const WARM_WITHIN: Duration = Duration::from_secs(20);

/// The longest a rollout may run: four windows take 32 s, and a stage whose window ends
/// without a passing verdict waits for one. A rollout still running then is reported with
/// its history rather than waited for.
pub const ROLLOUT_LIMIT: Duration = Duration::from_secs(150);

/// How long the busy thread may spin at most, whatever happens to the test.
pub const DISTURB_LIMIT: Duration = Duration::from_secs(200);

/// How far back the closing traffic summary looks: longer than any rollout, so it covers
/// the route's whole life.
pub const STATS_WINDOW: Duration = Duration::from_secs(600);
/// The four services of `ficus up`, in this process on loopback ports, with clients of
/// the APIs the test drives; stopped when dropped.
pub struct Plane {
    pub planner: PlannerClient<Channel>,
    pub traffic: TrafficControlClient<Channel>,
    pub proxy: SocketAddr,
    pub shutdown: CancellationToken,
    pub _running: ControlPlane,
    pub _data: tempfile::TempDir,
}

impl Plane {
    pub async fn start() -> Self {
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
    pub async fn roll_out(&self, name: &str, sides: Sides<'_>, pace: Pace) -> Ended {
        self.roll_out_judged_by(name, sides, pace, Judged::Ficus).await
    }

    /// [`Plane::roll_out`], judged by `judged`.
    pub async fn roll_out_judged_by(&self, name: &str, sides: Sides<'_>, pace: Pace, judged: Judged) -> Ended {
        self.put_route(name, &sides).await;
        let load = Load::start(self.proxy, name, pace.connections);
        self.warm_up(name, &load).await;
        let disturber = Disturber::start();
        let started = Instant::now();
        let fixed = FixedThresholds::start(self.traffic.clone(), name, started);
        let id = format!("{name}-rollout");
        let mut spec = match judged {
            Judged::Ficus => strangler(name, pace.window),
            Judged::Unjudged => paused_stages(name, pace.window),
        };
        if sides.baseline.is_some() {
            spec.baseline_backend = BASELINE.to_owned();
        }
        let request = planner::CreateRolloutRequest { spec: Some(spec), id: id.clone() };
        let created = self.planner.clone().create_rollout(request).await.expect("the rollout is created").into_inner();
        let watch = Watch::start(self.planner.clone(), created.id.clone(), started);
        let rollout = self.wait_end(&created.id, &watch, started).await;
        let fixed = fixed.stop().await;
        let spins = disturber.stop().await;
        load.stop().await;
        let traffic = self.traffic_summary(name).await;
        let (history, shares, samples) = {
            let history = watch.history.lock();
            (history.lines.clone(), history.shares.clone(), history.samples.clone())
        };
        let took = elapsed(&rollout);
        Ended { route: name.to_owned(), took, rollout, history, shares, samples, fixed, traffic, spins }
    }

    pub async fn put_route(&self, name: &str, sides: &Sides<'_>) {
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
    pub async fn warm_up(&self, route: &str, load: &Load) {
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
    pub async fn wait_end(&self, id: &str, watch: &Watch, started: Instant) -> planner::Rollout {
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
                // The first step back is the rollback these rollouts measure; the rest of the
                // cascade (judging the lower stage again) is the planner's own business.
                let over = (is_terminal(rollout.phase()) || rollout.stepped_back_from > 0) && recorded;
                (over || started.elapsed() > ROLLOUT_LIMIT).then_some(rollout)
            }
        })
        .await
    }

    /// What each side of `route` served in its whole life, for the report.
    pub async fn traffic_summary(&self, route: &str) -> String {
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
pub fn host(name: &str) -> String {
    format!("{name}.test")
}

/// A strangler rollout of `route` through [`STAGES`], judged with the default template.
pub fn strangler(route: &str, window: Duration) -> planner::RolloutSpec {
    planner::RolloutSpec {
        route: route.to_owned(),
        stable_backend: STABLE.to_owned(),
        canary_backend: CANARY.to_owned(),
        strategy: Some(planner::rollout_spec::Strategy::Strangler(planner::StranglerStrategy {
            stages: STAGES
                .iter()
                .map(|&weight| planner::Stage { weight, window: None, progress_deadline: None })
                .collect(),
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
        ..Default::default()
    }
}

/// The same stages as [`strangler`] with no analysis: each a weight and a pause of
/// `window`, so the rollout runs to 100% whatever its canary does and a policy that only
/// watches sees every stage.
pub fn paused_stages(route: &str, window: Duration) -> planner::RolloutSpec {
    let steps = STAGES
        .iter()
        .flat_map(|&weight| {
            [
                planner::canary_step::Step::SetWeight(weight),
                planner::canary_step::Step::Pause(planner::PauseStep { duration: Some(window.into()) }),
            ]
        })
        .map(|step| planner::CanaryStep { step: Some(step) })
        .collect();
    planner::RolloutSpec {
        strategy: Some(planner::rollout_spec::Strategy::Canary(planner::CanaryStrategy { steps })),
        analysis: None,
        ..strangler(route, window)
    }
}

/// Who decides whether a rollout goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// ficus' analysis with the default template.
    Ficus,
    /// Nobody: the stages run to 100%, for a peer policy that only watches.
    Unjudged,
}

pub fn is_terminal(phase: Phase) -> bool {
    matches!(phase, Phase::Succeeded | Phase::RolledBack | Phase::Aborted | Phase::Failed)
}

/// From the rollout's creation to its last change, as the planner recorded them: for an
/// ended rollout, its whole run, up to the verdict that rolled it back.
pub fn elapsed(rollout: &planner::Rollout) -> Option<Duration> {
    let nanos = |at: &pbjson_types::Timestamp| i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    let took = nanos(rollout.updated_at.as_ref()?) - nanos(rollout.created_at.as_ref()?);
    u64::try_from(took).ok().map(Duration::from_nanos)
}

/// Flagger's default analysis as the peer to compare with, on the same traffic, scaled to
/// these short stages: every [`ANALYSIS_INTERVAL`], over the last interval, the canary's
/// success rate must be at least 99% and its p99 at most 500 ms, and the fifth failed check
/// rolls back. It only watches: the rollout is driven by ficus' judge.
pub struct FixedThresholds {
    stop: CancellationToken,
    task: JoinHandle<Option<Duration>>,
}

/// Failed checks at which Flagger rolls back (its `threshold`).
pub const FIXED_FAILED_CHECKS: u32 = 5;
/// Flagger's `request-success-rate` minimum, as a share.
pub const FIXED_MIN_SUCCESS: f64 = 0.99;
/// Flagger's `request-duration` maximum, in seconds.
pub const FIXED_MAX_P99: f64 = 0.5;

impl FixedThresholds {
    /// Starts checking route `route`'s canary; times count from `started`.
    pub fn start(traffic: TrafficControlClient<Channel>, route: &str, started: Instant) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let route = route.to_owned();
        let task = tokio::spawn(async move {
            let mut failed = 0;
            let mut ticks = tokio::time::interval(ANALYSIS_INTERVAL);
            ticks.tick().await;
            // Bounded like the rollout it watches.
            while started.elapsed() < ROLLOUT_LIMIT {
                tokio::select! {
                    () = stopped.cancelled() => return None,
                    _ = ticks.tick() => {}
                }
                let request = traffic::GetTrafficStatsRequest {
                    route: route.clone(),
                    backends: vec![CANARY.to_owned()],
                    window: Some(ANALYSIS_INTERVAL.into()),
                    ..Default::default()
                };
                let Ok(stats) = traffic.clone().get_traffic_stats(request).await else { continue };
                let Some(canary) = stats.into_inner().backends.into_iter().next() else { continue };
                if canary.requests == 0 {
                    continue;
                }
                let success = 1.0 - canary.errors as f64 / canary.requests as f64;
                let p99 = canary.latency.map_or(0.0, |latency| latency.p99_seconds);
                if success < FIXED_MIN_SUCCESS || p99 > FIXED_MAX_P99 {
                    failed += 1;
                    if failed >= FIXED_FAILED_CHECKS {
                        return Some(started.elapsed());
                    }
                }
            }
            None
        });
        Self { stop, task }
    }

    /// Stops checking; when the policy would have rolled back, if it would have.
    pub async fn stop(self) -> Option<Duration> {
        self.stop.cancel();
        self.task.await.ok().flatten()
    }
}

/// wrk at full rate through the proxy, for the route's host, until stopped.
pub struct Load {
    pub wrk: JoinHandle<()>,
}

impl Load {
    pub fn start(proxy: SocketAddr, route: &str, connections: u32) -> Self {
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
    pub async fn stop(self) {
        self.wrk.abort();
        if let Err(error) = self.wrk.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}

/// A thread that keeps one core busy with arithmetic, as a noisy neighbour would.
pub struct Disturber {
    pub stop: Arc<AtomicBool>,
    pub thread: std::thread::JoinHandle<u64>,
}

impl Disturber {
    pub fn start() -> Self {
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
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().expect("the disturber does not panic")).await.expect("joined")
    }
}

/// The podinfo instances a rollout moves traffic between.
pub struct Sides<'a> {
    pub stable: &'a Podinfo,
    pub canary: &'a Podinfo,
    /// An equal-footing baseline: another instance of the stable release.
    pub baseline: Option<&'a Podinfo>,
}

impl<'a> Sides<'a> {
    /// Stable and canary, judged against each other.
    pub fn two(stable: &'a Podinfo, canary: &'a Podinfo) -> Self {
        Self { stable, canary, baseline: None }
    }
}

/// Every state a rollout went through, as `WatchRollout` reported it.
#[derive(Default)]
pub struct History {
    pub lines: Vec<String>,
    /// The canary's and the equal-footing baseline's weights, in basis points, at every
    /// state.
    pub shares: Vec<(u32, u32)>,
    /// Baseline and canary samples of `error-rate-vs-baseline` at every verdict.
    pub samples: Vec<(u64, u64)>,
    /// The version of the latest state recorded.
    pub version: u64,
    /// The watch is over: the rollout ended, or the stream did.
    pub ended: bool,
    /// The verdict whose checks were last written out, so each verdict's are written once.
    pub last_verdict: Option<(u64, i64, i32)>,
}

impl History {
    pub fn record(&mut self, event: &planner::RolloutEvent, at: Duration) {
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

pub fn verdict_key(verdict: &Verdict) -> (u64, i64, i32) {
    let judged = verdict.judged_at.unwrap_or_default();
    (verdict.sequence, judged.seconds, judged.nanos)
}

/// Follows a rollout's transitions into its [`History`] until it ends.
pub struct Watch {
    pub history: Arc<Mutex<History>>,
    pub task: JoinHandle<()>,
}

impl Watch {
    pub fn start(mut api: PlannerClient<Channel>, id: String, started: Instant) -> Self {
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
pub struct Ended {
    pub route: String,
    pub rollout: planner::Rollout,
    pub took: Option<Duration>,
    pub history: Vec<String>,
    /// See [`History::shares`].
    pub shares: Vec<(u32, u32)>,
    /// See [`History::samples`].
    pub samples: Vec<(u64, u64)>,
    /// When the fixed-threshold policy would have rolled the rollout back, from its start;
    /// `None` if it would not have.
    pub fixed: Option<Duration>,
    pub traffic: String,
    pub spins: u64,
}

impl Ended {
    /// Whether analysis sent the canary's traffic back (to 0, or a stage back to be judged
    /// again), or the rollout could not go on.
    pub fn rolled_back(&self) -> bool {
        matches!(self.rollout.phase(), Phase::RolledBack | Phase::Failed) || self.rollout.stepped_back_from > 0
    }

    pub fn took_text(&self) -> String {
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
        match self.fixed {
            Some(fixed) => writeln!(f, "  fixed thresholds would have rolled back after {:.1} s", fixed.as_secs_f64())?,
            None => writeln!(f, "  fixed thresholds would not have rolled back")?,
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
