//! Traffic and analysis started in-process, with a route to roll out on, and specs whose
//! analysis verdicts are forced through fixed metric values.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use ficus_kit::server::Running;
use ficus_proto::{
    analysis::v1 as analysis,
    planner::v1::{self as proto, planner_client::PlannerClient},
    traffic::v1::{self as traffic, traffic_control_client::TrafficControlClient},
};
use ficus_testkit::wait_until;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Traffic and analysis, the services a planner drives.
pub struct Peers {
    pub shutdown: CancellationToken,
    /// Stops analysis alone, to play an outage.
    pub analysis_shutdown: CancellationToken,
    /// Stops traffic alone, to play an outage ([`Peers::stop_traffic`]).
    pub traffic_shutdown: CancellationToken,
    pub traffic: Running,
    pub analysis: Running,
    pub traffic_api: TrafficControlClient<Channel>,
    pub data: tempfile::TempDir,
}

impl Peers {
    pub async fn start() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let shutdown = CancellationToken::new();
        let traffic_shutdown = shutdown.child_token();
        let traffic =
            ficus_traffic::start(traffic_config(&data, None), traffic_shutdown.clone()).await.expect("traffic starts");
        let analysis_shutdown = shutdown.child_token();
        let analysis = ficus_analysis::start(
            ficus_analysis::Config::ephemeral(
                data.path().join("analysis").display().to_string(),
                traffic.grpc_addr.to_string(),
            ),
            analysis_shutdown.clone(),
        )
        .await
        .expect("analysis starts");
        let mut traffic_api = TrafficControlClient::new(ficus_testkit::grpc::channel(traffic.grpc_addr));
        let route =
            ficus_testkit::route::two_backends("checkout", ("legacy", "127.0.0.1:1"), ("k8s", "127.0.0.1:2"), 0);
        traffic_api
            .put_route(traffic::PutRouteRequest { route: Some(route), expected_generation: 0 })
            .await
            .expect("route");
        Self { shutdown, analysis_shutdown, traffic_shutdown, traffic, analysis, traffic_api, data }
    }

    /// Stops traffic, returning once its gRPC port refuses connections.
    pub async fn stop_traffic(&self) {
        self.traffic_shutdown.cancel();
        let addr = self.traffic.grpc_addr;
        ficus_testkit::eventually(Duration::from_secs(20), || async move {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await;
    }

    /// Starts traffic again on the same address and store, after [`Peers::stop_traffic`].
    pub async fn restart_traffic(&mut self) {
        self.traffic_shutdown = self.shutdown.child_token();
        let config = traffic_config(&self.data, Some(self.traffic.grpc_addr));
        let restarted = wait_until(Duration::from_secs(20), || {
            let (config, shutdown) = (config.clone(), self.traffic_shutdown.clone());
            async move { ficus_traffic::start(config, shutdown).await.ok() }
        })
        .await;
        let stopped = std::mem::replace(&mut self.traffic, restarted);
        stopped.wait().await.expect("the first traffic stopped cleanly");
    }

    /// A planner in this process on `store`.
    pub async fn planner(&self, store: &str) -> (Running, PlannerClient<Channel>, CancellationToken) {
        self.planner_with(store, |_| {}).await
    }

    /// A planner in this process on `store`, its configuration changed by `configure`.
    pub async fn planner_with(
        &self,
        store: &str,
        configure: impl FnOnce(&mut ficus_planner::Config),
    ) -> (Running, PlannerClient<Channel>, CancellationToken) {
        let shutdown = CancellationToken::new();
        let mut config = ficus_planner::Config::ephemeral(
            store,
            self.traffic.grpc_addr.to_string(),
            self.analysis.grpc_addr.to_string(),
        );
        configure(&mut config);
        let running = ficus_planner::start(config, shutdown.clone()).await.expect("planner starts");
        let api = PlannerClient::new(ficus_testkit::grpc::channel(running.grpc_addr));
        (running, api, shutdown)
    }

    /// The canary's weight on traffic now, in basis points.
    pub async fn canary_weight(&self) -> u32 {
        let route = self
            .traffic_api
            .clone()
            .get_route(traffic::GetRouteRequest { name: "checkout".into() })
            .await
            .expect("route");
        route.into_inner().weights.get("k8s").copied().unwrap_or(0)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.analysis.wait().await.expect("analysis stops");
        self.traffic.wait().await.expect("traffic stops");
    }
}

/// Traffic on an embedded store in `data`, its gRPC server on `grpc` or any free port.
fn traffic_config(data: &tempfile::TempDir, grpc: Option<SocketAddr>) -> ficus_traffic::Config {
    let mut config = ficus_traffic::Config::ephemeral(data.path().join("traffic").display().to_string());
    if let Some(grpc) = grpc {
        config.server.grpc_addr = grpc;
    }
    config
}

/// A template whose only check reads `canary` as the canary's value, failing above 0.5;
/// `samples` below 100 makes it inconclusive.
pub fn forced(canary: f64, samples: u64) -> analysis::AnalysisTemplate {
    analysis::AnalysisTemplate {
        checks: vec![analysis::Check {
            name: "forced".into(),
            metric: Some(analysis::Metric {
                source: Some(analysis::metric::Source::Fixed(analysis::FixedMetric { baseline: 0.0, canary, samples })),
            }),
            rule: Some(analysis::check::Rule::Threshold(analysis::Threshold { max: Some(0.5), min: None })),
            critical: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub const PASS: (f64, u64) = (0.0, 1_000);
pub const FAIL: (f64, u64) = (1.0, 1_000);
pub const INCONCLUSIVE: (f64, u64) = (0.0, 10);

/// A strangler spec over `stages` (percent, window), judged by `templates` per stage
/// (`(up_to_weight, verdict)`), with `policy` on failure.
pub fn strangler(
    stages: &[(f64, Duration)],
    templates: &[(f64, (f64, u64))],
    policy: proto::FailurePolicy,
    manual_gate: bool,
) -> proto::RolloutSpec {
    proto::RolloutSpec {
        route: "checkout".into(),
        stable_backend: "legacy".into(),
        canary_backend: "k8s".into(),
        strategy: Some(proto::rollout_spec::Strategy::Strangler(proto::StranglerStrategy {
            stages: stages
                .iter()
                .map(|(weight, window)| proto::Stage {
                    weight: *weight,
                    window: Some((*window).into()),
                    progress_deadline: None,
                })
                .collect(),
            window: None,
        })),
        analysis: Some(proto::AnalysisSpec {
            template: None,
            interval: Some(Duration::from_secs(1).into()),
            stage_templates: templates
                .iter()
                .map(|(up_to, (canary, samples))| proto::StageTemplate {
                    up_to_weight: *up_to,
                    template: Some(forced(*canary, *samples)),
                })
                .collect(),
            initial_delay: None,
        }),
        failure_policy: policy.into(),
        manual_gate,
        scaling: None,
        baseline_backend: String::new(),
        ..Default::default()
    }
}

pub async fn create(api: &mut PlannerClient<Channel>, spec: proto::RolloutSpec) -> proto::Rollout {
    api.create_rollout(proto::CreateRolloutRequest { spec: Some(spec), id: String::new() })
        .await
        .expect("rollout created")
        .into_inner()
}

/// Waits until the rollout satisfies `done`, returning it.
pub async fn until(
    api: &PlannerClient<Channel>,
    id: &str,
    within: Duration,
    done: impl Fn(&proto::Rollout) -> bool,
) -> proto::Rollout {
    let done = &done;
    wait_until(within, || {
        let mut api = api.clone();
        let id = id.to_owned();
        async move {
            let rollout = api.get_rollout(proto::GetRolloutRequest { id }).await.ok()?.into_inner();
            done(&rollout).then_some(rollout)
        }
    })
    .await
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn addr(running: &Running) -> SocketAddr {
    running.grpc_addr
}
