//! `ficus demo`: a whole migration, end to end, in one process.
//!
//! The control plane starts embedded, with two small applications behind the traffic
//! proxy: the legacy `v1` and the new `v2`, both keeping sessions in the session store. A
//! population of users with stable ids browses through the proxy while a strangler
//! migration moves them 5, 20, 50, 80, 100% to `v2`, judged at every stage. Then a second
//! migration starts, `v2` turns faulty after its 20% stage, and the planner rolls it back
//! on the analysis verdicts, a stage at a time: from 50% to 20%, judged again there and
//! still faulty, on down to 0. The summary checks the promises: no user lost a session, no
//! user moved back while the weight only rose, the migration finished, the bad release
//! was rolled back.

mod app;
mod population;

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    time::{Duration, Instant},
};

use ficus_kit::{
    client::{BearerToken, Credentials, TracedChannel},
    tls::ClientTls,
};
use ficus_proto::{
    analysis::v1 as analysis,
    planner::v1::{self as planner, Phase, planner_client::PlannerClient},
    traffic::v1::{self as traffic, traffic_control_client::TrafficControlClient},
};
use ficus_sessions_client::{ConnectOptions, SessionClient};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

pub use self::population::{Observed, SideCounts};
use self::{app::App, population::Population};
use crate::up::{Configs, ControlPlane};

/// The pace of the demo and its fault; every one can be changed.
#[derive(Clone, Debug, clap::Args)]
pub struct Pace {
    /// Synthetic users browsing through the proxy.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Requests per second of each user.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Observation window of every stage.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "8s")]
    pub stage_window: Duration,
    /// Share of `v2`'s answers that fail once it turns faulty, in percent.
    #[arg(long, default_value_t = 8.0)]
    pub fault_percent: f64,
}

impl Default for Pace {
    fn default() -> Self {
        Self { users: 200, rate: 4.0, stage_window: Duration::from_secs(8), fault_percent: 8.0 }
    }
}

/// How the embedded demo runs.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DemoOptions {
    /// Pace and fault.
    #[command(flatten)]
    pub pace: Pace,
    /// Where the control plane keeps its state; a temporary directory by default.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// How `ficus demo drive` reaches the pieces that already run elsewhere, e.g. in Compose.
#[derive(Clone, Debug, clap::Args)]
pub struct DriveOptions {
    /// Pace and fault.
    #[command(flatten)]
    pub pace: Pace,
    /// The traffic proxy the users browse through.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub proxy: String,
    /// The legacy application (`ficus demo app --version v1`), as the proxy reaches it.
    #[arg(long, value_name = "HOST:PORT")]
    pub legacy: String,
    /// The new application (`ficus demo app --version v2`), as the proxy and this command reach it.
    #[arg(long, value_name = "HOST:PORT")]
    pub new: String,
    /// The rollouts are `<prefix>-migration` and `<prefix>-faulty-release`, so others can
    /// follow them with `ficus rollout watch`.
    #[arg(long, default_value = "demo")]
    pub prefix: String,
}

/// One of the demo's two applications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    /// The legacy application.
    V1,
    /// The new application, which the demo turns faulty in its second migration.
    V2,
}

/// How `ficus demo app` runs one application on its own, e.g. as a container.
#[derive(Clone, Debug, clap::Args)]
pub struct AppOptions {
    /// Which application.
    #[arg(long, value_enum)]
    pub version: Version,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "HOST:PORT")]
    pub listen: std::net::SocketAddr,
}

/// Serves one demo application, keeping sessions in the session store at `sessions`
/// (reached with `credentials`), until `shutdown`.
pub async fn serve_app(
    options: AppOptions,
    sessions: &str,
    credentials: &Credentials,
    shutdown: CancellationToken,
) -> Result<(), DemoError> {
    let url = sessions.to_owned();
    let connect = ConnectOptions {
        token: credentials.token.as_ref().map(BearerToken::secret),
        tls: credentials.tls.as_ref().map(ClientTls::config),
    };
    let sessions =
        SessionClient::connect_lazy_with(&url, &connect).map_err(|error| DemoError::Call(error.to_string()))?;
    let version = match options.version {
        Version::V1 => "v1",
        Version::V2 => "v2",
    };
    let addr = App::start(version, sessions, options.listen, shutdown.clone()).await?;
    println!("demo application {version} on {addr}, sessions at {url}");
    shutdown.cancelled().await;
    Ok(())
}

/// What happened, and whether the promises held.
#[derive(Clone, Debug)]
pub struct Summary {
    /// How the first migration ended.
    pub migration: Phase,
    /// How long the first migration took.
    pub migration_time: Duration,
    /// How the faulty release's migration ended.
    pub faulty: Phase,
    /// The faulty release's canary weights from its first failed stage down, one per step
    /// back, in basis points (e.g. 50%, 20%, 5%, 0%).
    pub stepped_back: Vec<u32>,
    /// From turning `v2` faulty to the first step back.
    pub fault_to_rollback: Option<Duration>,
    /// What the users saw.
    pub observed: Observed,
}

impl Summary {
    /// Whether every promise of the demo held.
    pub fn promises_kept(&self) -> bool {
        self.migration == Phase::Succeeded
            && self.faulty == Phase::RolledBack
            && self.stepped_back.last() == Some(&0)
            && self.observed.lost_sessions == 0
            && self.observed.flips == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.observed;
        writeln!(f, "\nficus demo summary")?;
        writeln!(f, "  migration legacy -> new:      {} in {:.0?}", self.migration.as_str_name(), self.migration_time)?;
        let path: Vec<String> = self.stepped_back.iter().map(|weight| format!("{}%", weight / 100)).collect();
        writeln!(
            f,
            "  faulty release:               {}, {}{}",
            self.faulty.as_str_name(),
            path.join(" -> "),
            self.fault_to_rollback
                .map(|d| format!(", {d:.1?} from the fault to the first step back"))
                .unwrap_or_default()
        )?;
        writeln!(f, "  requests on legacy (v1):      {} ({} errors)", o.legacy.requests, o.legacy.errors)?;
        writeln!(f, "  requests on new (v2):         {} ({} errors)", o.new.requests, o.new.errors)?;
        writeln!(f, "  users who lost their session: {}", o.lost_sessions)?;
        writeln!(f, "  users who flipped sides while the weight only rose: {}", o.flips)?;
        write!(f, "  promises {}", if self.promises_kept() { "kept" } else { "BROKEN" })
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The control plane did not start.
    #[error(transparent)]
    Up(#[from] crate::up::UpError),
    /// A demo application did not start.
    #[error("demo application: {0}")]
    App(#[from] std::io::Error),
    /// A call to the control plane failed.
    #[error("{0}")]
    Call(String),
    /// The data directory could not be made.
    #[error("data directory: {0}")]
    DataDir(String),
}

fn call(what: &str) -> impl Fn(tonic::Status) -> DemoError + '_ {
    move |status| DemoError::Call(format!("{what}: {}", status.message()))
}

/// Runs the demo embedded, printing progress to stdout, and returns its summary.
pub async fn run(options: DemoOptions) -> Result<Summary, DemoError> {
    let temp = tempfile::tempdir().map_err(|error| DemoError::DataDir(error.to_string()))?;
    let data = options.data_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let shutdown = CancellationToken::new();
    let result = run_in(&options.pace, &data, shutdown.clone()).await;
    shutdown.cancel();
    result
}

/// Runs the demo against a control plane and applications that already run, printing
/// progress to stdout, and returns its summary.
pub async fn drive(
    options: DriveOptions,
    planner: &str,
    traffic: &str,
    credentials: &Credentials,
) -> Result<Summary, DemoError> {
    let proxy = tokio::net::lookup_host(&options.proxy)
        .await
        .map_err(|error| DemoError::Call(format!("proxy {}: {error}", options.proxy)))?
        .next()
        .ok_or_else(|| DemoError::Call(format!("proxy {} has no address", options.proxy)))?;
    let scene = Scene {
        traffic: TrafficControlClient::new(connect(traffic, credentials)?),
        planner: PlannerClient::new(connect(planner, credentials)?),
        proxy,
        legacy: options.legacy,
        new: options.new,
        prefix: options.prefix,
    };
    println!("driving the control plane at planner {planner}, traffic {traffic}; proxy on {proxy}");
    play(&options.pace, scene).await
}

async fn run_in(pace: &Pace, data: &std::path::Path, shutdown: CancellationToken) -> Result<Summary, DemoError> {
    let mut configs = Configs::ephemeral(data);
    configs.traffic.stats_retention = Duration::from_secs(600);
    let plane = ControlPlane::start(configs, shutdown.clone()).await?;
    let proxy = plane.traffic.addr(ficus_traffic::DATA_PLANE).ok_or_else(|| DemoError::Call("no data plane".into()))?;
    let sessions = SessionClient::connect_lazy(&format!("http://{}", plane.sessions.grpc_addr))
        .map_err(|error| DemoError::Call(error.to_string()))?;
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let v1 = App::start("v1", sessions.clone(), loopback, shutdown.clone()).await?;
    let v2 = App::start("v2", sessions, loopback, shutdown.clone()).await?;
    println!("control plane up; legacy v1 on {v1}, new v2 on {v2}, proxy on {proxy}");
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let scene = Scene {
        traffic: TrafficControlClient::new(connect(&plane.traffic.grpc_addr.to_string(), &Credentials::default())?),
        planner: PlannerClient::new(connect(&plane.planner.grpc_addr.to_string(), &Credentials::default())?),
        proxy,
        legacy: v1.to_string(),
        new: v2.to_string(),
        prefix: format!("demo-{run}"),
    };
    play(pace, scene).await
}

/// What the demo plays on: the control plane's APIs, the proxy, and the two applications.
struct Scene {
    traffic: TrafficControlClient<TracedChannel>,
    planner: PlannerClient<TracedChannel>,
    proxy: std::net::SocketAddr,
    /// Where the proxy reaches `v1`.
    legacy: String,
    /// Where the proxy reaches `v2`, and where the fault is set.
    new: String,
    /// The rollout ids' prefix.
    prefix: String,
}

fn connect(address: &str, credentials: &Credentials) -> Result<TracedChannel, DemoError> {
    ficus_kit::client::connect_with(address, Duration::from_secs(10), credentials)
        .map_err(|error| DemoError::Call(error.to_string()))
}

/// The demo itself: the route, the users, a migration, then a faulty release rolled back.
async fn play(pace: &Pace, scene: Scene) -> Result<Summary, DemoError> {
    let Scene { traffic: mut traffic_api, planner: mut planner_api, proxy, legacy, new, prefix } = scene;
    let route = traffic::Route {
        name: "shop".into(),
        backends: vec![
            traffic::Backend { name: "legacy".into(), endpoints: vec![legacy] },
            traffic::Backend { name: "new".into(), endpoints: vec![new.clone()] },
        ],
        weights: HashMap::from([("legacy".to_owned(), 10_000), ("new".to_owned(), 0)]),
        sticky: Some(traffic::StickyKey {
            source: Some(traffic::sticky_key::Source::Header(population::USER_HEADER.into())),
        }),
        ..Default::default()
    };
    traffic_api
        .put_route(traffic::PutRouteRequest { route: Some(route), expected_generation: 0 })
        .await
        .map_err(call("route"))?;
    // A fresh start: the new application answers without faults.
    app::request_fault(&new, 0).await?;

    let stages = 5 * 2 + 4;
    let limit = pace.stage_window * stages + Duration::from_secs(120);
    let users = Population::start(proxy, pace.users, pace.rate, limit);
    println!("{} users browsing at {}/s each\n", pace.users, pace.rate);

    println!("migration 1: legacy -> new, stages 5/20/50/80/100%, {:?} each", pace.stage_window);
    let started = Instant::now();
    let id = create(&mut planner_api, pace.stage_window, &format!("{prefix}-migration")).await?;
    let migration = follow(&mut planner_api, &id).await?;
    let migration_time = started.elapsed();

    // A new release of v2 goes out: traffic back on legacy, then a fresh migration.
    // Answers to requests in flight across the reset say nothing about sides: an epoch
    // before and after it discards them.
    users.set_rising(false);
    users.forget_sides();
    let weights = HashMap::from([("legacy".to_owned(), 10_000), ("new".to_owned(), 0)]);
    traffic_api
        .set_weights(traffic::SetWeightsRequest {
            route: "shop".into(),
            weights,
            expected_generation: 0,
            fencing_token: 0,
        })
        .await
        .map_err(call("reset weights"))?;
    users.forget_sides();
    users.set_rising(true);
    println!(
        "\nmigration 2: a new release of v2 that turns faulty ({}% errors) after its 20% stage",
        pace.fault_percent
    );
    let id = create(&mut planner_api, pace.stage_window, &format!("{prefix}-faulty-release")).await?;
    let mut fault_at = None;
    let fault = (pace.fault_percent * 10.0).round().clamp(0.0, 1000.0) as u32;
    let mut events = watch(&mut planner_api, &id).await?;
    let mut faulty = Phase::Unspecified;
    let mut first_step_back = None;
    let mut highest = 0;
    while let Some(rollout) = next(&mut events).await? {
        let weight = rollout.weights.get("new").copied().unwrap_or(0);
        if fault_at.is_none() && weight > 2_000 {
            app::request_fault(&new, fault).await?;
            users.set_rising(false);
            fault_at = Some(Instant::now());
            println!("  v2 is now faulty");
        }
        if first_step_back.is_none() && weight < highest {
            first_step_back = Some(Instant::now());
        }
        highest = highest.max(weight);
        faulty = rollout.phase();
    }
    let ended = planner_api
        .get_rollout(planner::GetRolloutRequest { id: id.clone() })
        .await
        .map_err(call("get rollout"))?
        .into_inner();
    let observed = users.stop().await;
    Ok(Summary {
        migration,
        migration_time,
        faulty,
        stepped_back: steps_back(&ended),
        fault_to_rollback: fault_at.zip(first_step_back).map(|(fault, back)| back.saturating_duration_since(fault)),
        observed,
    })
}

/// The canary weights of `rollout` from the stage that first failed down through each step
/// back, read from its history.
fn steps_back(rollout: &planner::Rollout) -> Vec<u32> {
    let weight = |entry: &planner::RolloutTransition| entry.weights.get("new").copied().unwrap_or(0);
    let failed = |entry: &planner::RolloutTransition| {
        entry.verdict.as_ref().is_some_and(|verdict| verdict.outcome() == analysis::Outcome::Fail)
    };
    let Some(first) = rollout.history.iter().position(failed) else { return Vec::new() };
    let before = first.checked_sub(1).and_then(|index| rollout.history.get(index)).map(weight);
    before.into_iter().chain(rollout.history[first..].iter().filter(|entry| failed(entry)).map(weight)).collect()
}

/// Starts a strangler migration of route `shop` with the demo's checks, as rollout `id`.
async fn create(api: &mut PlannerClient<TracedChannel>, window: Duration, id: &str) -> Result<String, DemoError> {
    let spec = planner::RolloutSpec {
        route: "shop".into(),
        stable_backend: "legacy".into(),
        canary_backend: "new".into(),
        strategy: Some(planner::rollout_spec::Strategy::Strangler(planner::StranglerStrategy {
            stages: vec![],
            window: Some(window.into()),
        })),
        analysis: Some(planner::AnalysisSpec {
            template: Some(checks()),
            interval: Some(Duration::from_secs(1).into()),
            stage_templates: vec![],
            initial_delay: None,
        }),
        failure_policy: planner::FailurePolicy::RollbackToPreviousStage.into(),
        manual_gate: false,
        scaling: None,
        baseline_backend: String::new(),
        ..Default::default()
    };
    let request = planner::CreateRolloutRequest { spec: Some(spec), id: id.to_owned() };
    Ok(api.create_rollout(request).await.map_err(call("create rollout"))?.into_inner().id)
}

/// The seed's error-rate rules: above 1% fails, and significantly above the baseline fails.
fn checks() -> analysis::AnalysisTemplate {
    let error_rate = || analysis::Metric {
        source: Some(analysis::metric::Source::Builtin(analysis::BuiltinMetric {
            kind: analysis::builtin_metric::Kind::ErrorRate.into(),
            quantile: None,
        })),
    };
    analysis::AnalysisTemplate {
        checks: vec![
            analysis::Check {
                name: "error-rate".into(),
                metric: Some(error_rate()),
                rule: Some(analysis::check::Rule::Threshold(analysis::Threshold { max: Some(0.01), min: None })),
                critical: true,
                ..Default::default()
            },
            analysis::Check {
                name: "error-rate-vs-baseline".into(),
                metric: Some(error_rate()),
                rule: Some(analysis::check::Rule::Statistical(analysis::Statistical { margin: 0.005 })),
                critical: true,
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// Prints every transition of rollout `id` until it ends, and returns how it ended.
async fn follow(api: &mut PlannerClient<TracedChannel>, id: &str) -> Result<Phase, DemoError> {
    let mut events = watch(api, id).await?;
    let mut last = Phase::Unspecified;
    while let Some(rollout) = next(&mut events).await? {
        last = rollout.phase();
    }
    Ok(last)
}

/// The transitions of rollout `id`.
type Events = tonic::Streaming<planner::RolloutEvent>;

async fn watch(api: &mut PlannerClient<TracedChannel>, id: &str) -> Result<Events, DemoError> {
    let request = planner::WatchRolloutRequest { id: id.to_owned() };
    Ok(api.watch_rollout(request).await.map_err(call("watch rollout"))?.into_inner())
}

/// The next state of the rollout, printed as one line; `None` once it ended.
async fn next(events: &mut Events) -> Result<Option<planner::Rollout>, DemoError> {
    while let Some(event) = events.next().await {
        let event = event.map_err(call("watch rollout"))?;
        let Some(rollout) = event.rollout else { continue };
        let new = rollout.weights.get("new").copied().unwrap_or(0);
        let verdict = rollout
            .last_verdict
            .as_ref()
            .map(|v| format!(" | verdict {} ({:.0})", v.outcome().as_str_name(), v.score))
            .unwrap_or_default();
        println!("  [{:>10}] new {:>3}% | {}{verdict}", rollout.phase().as_str_name(), new / 100, event.reason);
        return Ok(Some(rollout));
    }
    Ok(None)
}
