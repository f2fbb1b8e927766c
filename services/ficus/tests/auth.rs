//! Every rpc of the four services against every kind of caller, with bearer tokens from a
//! token file: who gets through, who is refused with which code, and that a refused call
//! changes nothing. The planner reaches traffic and analysis with its own token.

use std::{collections::HashMap, future::Future, path::Path, pin::Pin, time::Duration};

use ficus::up::{Configs, ControlPlane};
use ficus_kit::client::{self, BearerToken, TracedChannel};
use ficus_proto::{
    analysis::v1::{self as analysis, analysis_client::AnalysisClient},
    planner::v1::{self as planner, planner_client::PlannerClient},
    sessions::v1::{self as sessions, session_store_client::SessionStoreClient},
    traffic::v1::{self as traffic, traffic_control_client::TrafficControlClient},
};
use ficus_testkit::route::two_backends;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The token file: one caller per role, and the planner's and analysis' own identity.
const TOKENS: &str = "\
t-viewer,vera,1001,viewer
t-operator,otto,1002,operator
t-app,shop,1003,app
t-admin,ada,1004,admin
t-peer,ficus-peer,1005,operator
t-none,nobody,1006,
";

/// The callers of the matrix, by the token they present.
const CALLERS: [(&str, Option<&str>); 6] = [
    ("no credential", None),
    ("unknown token", Some("t-guess")),
    ("viewer", Some("t-viewer")),
    ("operator", Some("t-operator")),
    ("app", Some("t-app")),
    ("admin", Some("t-admin")),
];

/// What each rpc needs, as the API's documentation promises it.
const VIEWER: &[&str] = &[
    "PreviewPlan",
    "GetRollout",
    "ListRollouts",
    "WatchRollout",
    "GetRoute",
    "ListRoutes",
    "WatchRoutes",
    "GetTrafficStats",
    "GetRun",
    "WatchRun",
];
const OPERATOR: &[&str] = &[
    "CreateRollout",
    "Promote",
    "Pause",
    "Resume",
    "Abort",
    "PutRoute",
    "DeleteRoute",
    "SetWeights",
    "Analyze",
    "StartRun",
    "StopRun",
];
const APP: &[&str] = &["CreateSession", "GetSession", "UpdateSession", "TouchSession", "DeleteSession", "Pipeline"];

/// The code `caller` must get from `rpc`, or `None` when it must get through (any other
/// answer: the call was let in and judged on its content).
fn expected(caller: &str, rpc: &str) -> Option<Code> {
    let allowed = match caller {
        "no credential" | "unknown token" => return Some(Code::Unauthenticated),
        "viewer" => VIEWER.contains(&rpc),
        "operator" => VIEWER.contains(&rpc) || OPERATOR.contains(&rpc),
        "app" => APP.contains(&rpc),
        "admin" => true,
        other => panic!("unknown caller {other}"),
    };
    (!allowed).then_some(Code::PermissionDenied)
}

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// Clients of the four services presenting one token.
#[derive(Clone)]
struct Clients {
    planner: PlannerClient<TracedChannel>,
    traffic: TrafficControlClient<TracedChannel>,
    analysis: AnalysisClient<TracedChannel>,
    sessions: SessionStoreClient<TracedChannel>,
}

impl Clients {
    fn new(plane: &ControlPlane, token: Option<&str>) -> Self {
        let credentials = client::Credentials {
            token: token.map(|token| BearerToken::new(token).expect("a valid token")),
            tls: None,
        };
        let channel = |running: &ficus_kit::server::Running| {
            client::connect_with(&running.grpc_addr.to_string(), Duration::from_secs(10), &credentials).expect("addr")
        };
        Self {
            planner: PlannerClient::new(channel(&plane.planner)),
            traffic: TrafficControlClient::new(channel(&plane.traffic)),
            analysis: AnalysisClient::new(channel(&plane.analysis)),
            sessions: SessionStoreClient::new(channel(&plane.sessions)),
        }
    }

    /// Calls `rpc` with a request that would change the fixtures (route `checkout`, rollout
    /// `checkout-rollout`, run `run-1`, session `session`) if it were let in.
    fn call(&self, rpc: &str, session: &str) -> Call {
        let Clients { mut planner, mut traffic, mut analysis, mut sessions } = self.clone();
        let session = session.to_owned();
        let rollout = || "checkout-rollout".to_owned();
        match rpc {
            "PreviewPlan" => {
                Box::pin(
                    async move { done(planner.preview_plan(planner::PreviewPlanRequest { spec: Some(spec()) }).await) },
                )
            }
            "CreateRollout" => Box::pin(async move {
                let request = planner::CreateRolloutRequest { spec: Some(spec()), id: rollout() };
                done(planner.create_rollout(request).await)
            }),
            "GetRollout" => {
                Box::pin(async move { done(planner.get_rollout(planner::GetRolloutRequest { id: rollout() }).await) })
            }
            "ListRollouts" => {
                Box::pin(async move { done(planner.list_rollouts(planner::ListRolloutsRequest::default()).await) })
            }
            "WatchRollout" => {
                Box::pin(
                    async move { done(planner.watch_rollout(planner::WatchRolloutRequest { id: rollout() }).await) },
                )
            }
            "Promote" => Box::pin(async move {
                done(planner.promote(planner::PromoteRequest { id: rollout(), ..Default::default() }).await)
            }),
            "Pause" => Box::pin(async move {
                done(planner.pause(planner::PauseRequest { id: rollout(), ..Default::default() }).await)
            }),
            "Resume" => Box::pin(async move {
                done(planner.resume(planner::ResumeRequest { id: rollout(), ..Default::default() }).await)
            }),
            "Abort" => Box::pin(async move {
                done(planner.abort(planner::AbortRequest { id: rollout(), ..Default::default() }).await)
            }),
            "PutRoute" => Box::pin(async move {
                let request = traffic::PutRouteRequest { route: Some(route(5_000)), expected_generation: 0 };
                done(traffic.put_route(request).await)
            }),
            "GetRoute" => {
                Box::pin(
                    async move { done(traffic.get_route(traffic::GetRouteRequest { name: "checkout".into() }).await) },
                )
            }
            "ListRoutes" => {
                Box::pin(async move { done(traffic.list_routes(traffic::ListRoutesRequest::default()).await) })
            }
            "DeleteRoute" => Box::pin(async move {
                let request = traffic::DeleteRouteRequest { name: "checkout".into(), expected_generation: 0 };
                done(traffic.delete_route(request).await)
            }),
            "SetWeights" => Box::pin(async move {
                let weights = HashMap::from([("stable".to_owned(), 0), ("canary".to_owned(), 10_000)]);
                done(
                    traffic
                        .set_weights(traffic::SetWeightsRequest {
                            route: "checkout".into(),
                            weights,
                            ..Default::default()
                        })
                        .await,
                )
            }),
            "WatchRoutes" => {
                Box::pin(async move { done(traffic.watch_routes(traffic::WatchRoutesRequest::default()).await) })
            }
            "GetTrafficStats" => Box::pin(async move {
                let request = traffic::GetTrafficStatsRequest { route: "checkout".into(), ..Default::default() };
                done(traffic.get_traffic_stats(request).await)
            }),
            "Analyze" => Box::pin(async move {
                let request = analysis::AnalyzeRequest { target: Some(target()), ..Default::default() };
                done(analysis.analyze(request).await)
            }),
            "StartRun" => Box::pin(async move {
                let request =
                    analysis::StartRunRequest { target: Some(target()), run_id: "run-2".into(), ..Default::default() };
                done(analysis.start_run(request).await)
            }),
            "GetRun" => {
                Box::pin(async move { done(analysis.get_run(analysis::GetRunRequest { id: "run-1".into() }).await) })
            }
            "WatchRun" => {
                Box::pin(
                    async move { done(analysis.watch_run(analysis::WatchRunRequest { id: "run-1".into() }).await) },
                )
            }
            "StopRun" => {
                Box::pin(async move { done(analysis.stop_run(analysis::StopRunRequest { id: "run-1".into() }).await) })
            }
            "CreateSession" => {
                Box::pin(async move { done(sessions.create_session(sessions::CreateSessionRequest::default()).await) })
            }
            "GetSession" => Box::pin(async move {
                done(sessions.get_session(sessions::GetSessionRequest { id: session, touch: false }).await)
            }),
            "UpdateSession" => Box::pin(async move {
                let request = sessions::UpdateSessionRequest {
                    id: session,
                    set: HashMap::from([("cart".to_owned(), b"emptied".to_vec())]),
                    ..Default::default()
                };
                done(sessions.update_session(request).await)
            }),
            "TouchSession" => Box::pin(async move {
                done(sessions.touch_session(sessions::TouchSessionRequest { id: session, ttl: None }).await)
            }),
            "DeleteSession" => {
                Box::pin(
                    async move { done(sessions.delete_session(sessions::DeleteSessionRequest { id: session }).await) },
                )
            }
            "Pipeline" => Box::pin(async move {
                done(sessions.pipeline(tokio_stream::iter(Vec::<sessions::SessionCalls>::new())).await)
            }),
            other => panic!("no call for {other}"),
        }
    }
}

/// Whether a call got through, whatever it answered.
fn done<T>(result: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    result.map(drop)
}

fn route(canary_weight: u32) -> traffic::Route {
    two_backends("checkout", ("stable", "127.0.0.1:9"), ("canary", "127.0.0.1:10"), canary_weight)
}

fn target() -> analysis::Target {
    analysis::Target { route: "checkout".into(), baseline: "stable".into(), canary: "canary".into() }
}

fn spec() -> planner::RolloutSpec {
    planner::RolloutSpec {
        route: "checkout".into(),
        stable_backend: "stable".into(),
        canary_backend: "canary".into(),
        strategy: Some(planner::rollout_spec::Strategy::Canary(planner::CanaryStrategy {
            steps: vec![planner::CanaryStep { step: Some(planner::canary_step::Step::Pause(Default::default())) }],
        })),
        ..Default::default()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

async fn start(dir: &Path) -> (ControlPlane, CancellationToken) {
    let tokens = write(dir, "tokens.csv", TOKENS);
    let peer = write(dir, "peer-token", "t-peer\n");
    let mut configs = Configs::ephemeral(&dir.join("data"));
    for server in [
        &mut configs.planner.server,
        &mut configs.traffic.server,
        &mut configs.analysis.server,
        &mut configs.sessions.server,
    ] {
        server.auth.token_file = Some(tokens.clone());
        server.auth.peer_token_file = Some(peer.clone());
    }
    let shutdown = CancellationToken::new();
    let plane = ControlPlane::start(configs, shutdown.clone()).await.expect("the control plane starts");
    (plane, shutdown)
}

#[tokio::test]
async fn every_rpc_lets_in_exactly_the_roles_it_needs_and_a_refusal_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (plane, shutdown) = start(dir.path()).await;
    let admin = Clients::new(&plane, Some("t-admin"));
    // The fixtures every mutation would change.
    admin
        .traffic
        .clone()
        .put_route(traffic::PutRouteRequest { route: Some(route(0)), expected_generation: 0 })
        .await
        .expect("route");
    let session = admin
        .sessions
        .clone()
        .create_session(sessions::CreateSessionRequest::default())
        .await
        .expect("session")
        .into_inner();
    let run = analysis::StartRunRequest { target: Some(target()), run_id: "run-1".into(), ..Default::default() };
    admin.analysis.clone().start_run(run).await.expect("run");

    let rpcs: Vec<&str> = VIEWER.iter().chain(OPERATOR).chain(APP).copied().collect();
    // Refusals first, so that what they must not change is still there to compare.
    let mut allowed = Vec::new();
    for (caller, token) in CALLERS {
        let clients = Clients::new(&plane, token);
        for rpc in &rpcs {
            match expected(caller, rpc) {
                Some(code) => {
                    let status = clients.call(rpc, &session.id).await.expect_err(&format!("{caller} let into {rpc}"));
                    assert_eq!(status.code(), code, "{caller} calling {rpc}: {status:?}");
                    if code == Code::PermissionDenied {
                        assert!(status.message().contains("lacks the role"), "{caller} {rpc}: {}", status.message());
                    }
                }
                None => allowed.push((caller, token, *rpc)),
            }
        }
    }
    let route_now = admin.traffic.clone().get_route(traffic::GetRouteRequest { name: "checkout".into() }).await;
    assert_eq!(route_now.expect("the route is still there").into_inner().weights["canary"], 0, "weights unchanged");
    let session_now = admin
        .sessions
        .clone()
        .get_session(sessions::GetSessionRequest { id: session.id.clone(), touch: false })
        .await
        .expect("the session is still there")
        .into_inner();
    assert_eq!(session_now.version, session.version, "the session is unchanged");
    let rollouts =
        admin.planner.clone().list_rollouts(planner::ListRolloutsRequest::default()).await.expect("list").into_inner();
    assert!(rollouts.rollouts.is_empty(), "no rollout was created by a refused call");

    for (caller, token, rpc) in allowed {
        let result = Clients::new(&plane, token).call(rpc, &session.id).await;
        if let Err(status) = &result {
            assert!(
                !matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied),
                "{caller} refused {rpc}: {status:?}"
            );
        }
        if rpc == "CreateRollout" && caller == "operator" {
            // The planner checked the route with traffic, presenting its own token.
            result.unwrap_or_else(|status| panic!("an operator's rollout was not created: {status:?}"));
        }
    }
    shutdown.cancel();
}

#[tokio::test]
async fn health_needs_no_credential_and_a_caller_without_a_role_gets_nothing_else() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (plane, shutdown) = start(dir.path()).await;
    for running in [&plane.planner, &plane.traffic, &plane.analysis, &plane.sessions] {
        let channel = client::connect(&running.grpc_addr.to_string(), Duration::from_secs(5)).expect("addr");
        HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.expect("health answers");
    }
    let nobody = Clients::new(&plane, Some("t-none"));
    let status = nobody.call("GetRoute", "").await.expect_err("a caller without a role read a route");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("`nobody` lacks the role `viewer`"), "{}", status.message());
    shutdown.cancel();
}

/// Runs the `ficus` command against `plane` with `FICUS_TOKEN` set to `token`.
async fn ficus(plane: &ControlPlane, token: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(args)
        .env_remove("FICUS_CONFIG")
        .env("FICUS_PLANNER_ADDR", plane.planner.grpc_addr.to_string())
        .env("FICUS_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("ficus runs")
}

#[tokio::test]
async fn the_command_presents_its_token_and_says_which_role_is_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (plane, shutdown) = start(dir.path()).await;
    let listed = ficus(&plane, "t-viewer", &["rollout", "list"]).await;
    assert!(listed.status.success(), "a viewer cannot list: {}", String::from_utf8_lossy(&listed.stderr));
    let aborted = ficus(&plane, "t-viewer", &["rollout", "abort", "checkout-rollout"]).await;
    assert!(!aborted.status.success());
    let stderr = String::from_utf8_lossy(&aborted.stderr);
    assert!(stderr.contains("lacks the role `operator`"), "{stderr}");
    let anonymous = ficus(&plane, "t-guess", &["rollout", "list"]).await;
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(!anonymous.status.success() && stderr.contains("FICUS_TOKEN"), "{stderr}");
    shutdown.cancel();
}
