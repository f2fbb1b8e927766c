//! The operator commands as users run them: the real `ficus` binary against the four
//! services started in this process on ephemeral ports, with a `checkout` route whose
//! backends are `legacy` and `k8s`, the route every example spec names.
//!
//! `plan preview` of each spec in `examples/` is compared with `examples/expected/<name>.txt`.
//! After an intended change to the plan or its table, regenerate those files with
//!
//! ```sh
//! FICUS_BLESS=1 cargo test -p ficus --test cli
//! ```
//!
//! and review the diff.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use ficus::up::{Configs, ControlPlane};
use ficus_proto::{
    planner::v1::{self as planner, Phase, planner_client::PlannerClient},
    sessions::v1::{self as sessions, session_store_client::SessionStoreClient},
    traffic::v1::{self as traffic, traffic_control_client::TrafficControlClient},
};
use ficus_testkit::{free_port, grpc, wait_until};
use tokio_util::sync::CancellationToken;

const EXAMPLES: [&str; 3] = ["strangler", "canary", "blue-green"];

/// Every service in this process, with the `checkout` route in place.
struct Plane {
    plane: ControlPlane,
    shutdown: CancellationToken,
    data: tempfile::TempDir,
}

impl Plane {
    async fn start() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let configs = Configs::ephemeral(data.path());
        let shutdown = CancellationToken::new();
        let plane = ControlPlane::start(configs, shutdown.clone()).await.expect("the control plane starts");
        let route =
            ficus_testkit::route::two_backends("checkout", ("legacy", "127.0.0.1:1"), ("k8s", "127.0.0.1:2"), 0);
        TrafficControlClient::new(grpc::channel(plane.traffic.grpc_addr))
            .put_route(traffic::PutRouteRequest { route: Some(route), expected_generation: 0 })
            .await
            .expect("the checkout route is created");
        Self { plane, shutdown, data }
    }

    fn planner_api(&self) -> PlannerClient<tonic::transport::Channel> {
        PlannerClient::new(grpc::channel(self.plane.planner.grpc_addr))
    }

    /// `ficus` pointed at this plane through the environment, as an operator's shell would be.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ficus"));
        command
            .args(args)
            .env_remove("FICUS_CONFIG")
            .env("FICUS_PLANNER_ADDR", self.plane.planner.grpc_addr.to_string())
            .env("FICUS_TRAFFIC_ADDR", self.plane.traffic.grpc_addr.to_string())
            .env("FICUS_SESSIONS_ADDR", self.plane.sessions.grpc_addr.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn ficus(&self, args: &[&str]) -> Output {
        self.command(args).output().await.expect("ficus runs")
    }

    /// Runs `ficus` and returns its standard output, failing the test if it did not succeed.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.ficus(args).await;
        assert!(output.status.success(), "ficus {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// Writes `text` as a spec file in the plane's temp dir.
    fn spec(&self, name: &str, text: &str) -> String {
        let path = self.data.path().join(name);
        std::fs::write(&path, text).expect("spec written");
        path.display().to_string()
    }

    /// Waits until rollout `id` is in `phase`.
    async fn until_phase(&self, id: &str, phase: Phase) -> planner::Rollout {
        let api = self.planner_api();
        wait_until(Duration::from_secs(30), || {
            let mut api = api.clone();
            let id = id.to_owned();
            async move {
                let rollout = api.get_rollout(planner::GetRolloutRequest { id }).await.ok()?.into_inner();
                (rollout.phase() == phase).then_some(rollout)
            }
        })
        .await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.plane.wait().await.expect("the control plane stops cleanly");
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A short strangler on `checkout` without analysis: 50% for `window`, then 100% behind a gate.
fn gated_spec(window: &str) -> String {
    format!(
        "route: checkout\nstableBackend: legacy\ncanaryBackend: k8s\nstrangler:\n  stages: [{{weight: 50}}, {{weight: 100}}]\n  window: {window}\nmanualGate: true\n"
    )
}

#[tokio::test]
async fn plan_preview_of_every_example_matches_its_expected_output() {
    let plane = Plane::start().await;
    let bless = std::env::var_os("FICUS_BLESS").is_some();
    for name in EXAMPLES {
        let spec = examples_dir().join(format!("{name}.yaml"));
        let shown = plane.ok(&["plan", "preview", "-f", &spec.display().to_string()]).await;
        let expected_path = examples_dir().join("expected").join(format!("{name}.txt"));
        if bless {
            std::fs::write(&expected_path, &shown).expect("expected output written");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|error| panic!("{}: {error}; run with FICUS_BLESS=1", expected_path.display()));
        assert_eq!(shown, expected, "plan preview of examples/{name}.yaml changed; FICUS_BLESS=1 regenerates it");

        // The machine form is the API's own response.
        let json = plane.ok(&["plan", "preview", "-f", &spec.display().to_string(), "-o", "json"]).await;
        let response: planner::PreviewPlanResponse = serde_json::from_str(&json).expect("proto3 JSON");
        assert!(response.plan.is_some_and(|plan| !plan.steps.is_empty()), "{name}: {json}");
    }
    plane.stop().await;
}

#[tokio::test]
async fn apply_get_list_watch_promote_and_abort_round_trip() {
    let plane = Plane::start().await;
    let gated = plane.spec("gated.yaml", &gated_spec("1s"));

    let applied = plane.ok(&["rollout", "apply", "-f", &gated, "--id", "cli-gated"]).await;
    assert!(applied.starts_with("rollout `cli-gated` applied: "), "{applied}");
    let json = plane.ok(&["rollout", "get", "cli-gated", "-o", "json"]).await;
    let rollout: planner::Rollout = serde_json::from_str(&json).expect("a Rollout in proto3 JSON");
    assert_eq!((rollout.id.as_str(), rollout.spec.map(|spec| spec.route)), ("cli-gated", Some("checkout".into())));
    let yaml = plane.ok(&["rollout", "get", "cli-gated", "-o", "yaml"]).await;
    let same: planner::Rollout = serde_yaml_ng::from_str(&yaml).expect("a Rollout in YAML");
    assert_eq!(same.id, "cli-gated", "{yaml}");
    let listed = plane.ok(&["rollout", "list", "--route", "checkout", "--active"]).await;
    assert!(listed.lines().any(|line| line.starts_with("cli-gated ")), "{listed}");

    // At the gate, a watcher follows the promotion through to the end and exits 0.
    plane.until_phase("cli-gated", Phase::Paused).await;
    let shown = plane.ok(&["rollout", "get", "cli-gated"]).await;
    assert!(shown.contains("phase:          PAUSED"), "{shown}");
    assert!(shown.contains(">  2     wait for promotion"), "the current step is marked: {shown}");
    assert!(shown.contains("applied:        yes, route generation "), "traffic confirmed the weights: {shown}");
    let history = shown.split("History:").nth(1).expect("a history");
    assert!(history.contains("PENDING -> PROGRESSING") && history.contains("PROGRESSING -> PAUSED"), "{history}");
    let watcher = plane.command(&["rollout", "watch", "cli-gated"]).stdout(Stdio::piped()).spawn().expect("watch");
    let promoted = plane.ok(&["rollout", "promote", "cli-gated", "--reason", "looks good"]).await;
    assert!(promoted.starts_with("rollout `cli-gated`: "), "{promoted}");
    let watched = tokio::time::timeout(Duration::from_secs(30), watcher.wait_with_output())
        .await
        .expect("the watch ends with the rollout")
        .expect("watch output");
    let lines = String::from_utf8_lossy(&watched.stdout).into_owned();
    assert!(watched.status.success(), "watch of a succeeded rollout: {lines} {}", stderr_of(&watched));
    assert!(lines.lines().all(|line| line.starts_with("cli-gated ")), "one line per transition: {lines}");
    assert!(lines.lines().last().is_some_and(|line| line.contains(" SUCCEEDED ")), "{lines}");
    plane.until_phase("cli-gated", Phase::Succeeded).await;

    // Abort sends everyone back to stable; watching it afterwards reports how it ended.
    let slow = plane.spec("slow.yaml", &gated_spec("1h"));
    plane.ok(&["rollout", "apply", "-f", &slow, "--id", "cli-aborted"]).await;
    let aborted = plane.ok(&["rollout", "abort", "cli-aborted", "--reason", "drill"]).await;
    assert!(aborted.contains("ABORTED"), "{aborted}");
    let watch = plane.ficus(&["rollout", "watch", "cli-aborted"]).await;
    assert_eq!(watch.status.code(), Some(1), "watch of an aborted rollout: {}", stderr_of(&watch));
    assert!(stderr_of(&watch).starts_with("ficus: rollout `cli-aborted` ended ABORTED"), "{}", stderr_of(&watch));

    let all = plane.ok(&["rollout", "list"]).await;
    assert!(all.contains("cli-gated") && all.contains("cli-aborted"), "{all}");
    let active = plane.ok(&["rollout", "list", "--active", "-o", "json"]).await;
    let active: planner::ListRolloutsResponse = serde_json::from_str(&active).expect("proto3 JSON");
    assert!(active.rollouts.is_empty(), "both ended: {active:?}");
    plane.stop().await;
}

#[tokio::test]
async fn set_weights_then_get_the_route_as_json() {
    let plane = Plane::start().await;
    let shown = plane.ok(&["route", "set-weights", "checkout", "legacy=9500", "k8s=5%"]).await;
    assert!(shown.contains("legacy=95% k8s=5%"), "{shown}");
    let json = plane.ok(&["route", "get", "checkout", "-o", "json"]).await;
    let route: traffic::Route = serde_json::from_str(&json).expect("a Route in proto3 JSON");
    assert_eq!(route.weights, HashMap::from([("legacy".to_owned(), 9_500), ("k8s".to_owned(), 500)]));

    let stale =
        plane.ficus(&["route", "set-weights", "checkout", "legacy=0", "k8s=10000", "--expected-generation", "1"]).await;
    assert_eq!(stale.status.code(), Some(1), "{}", stderr_of(&stale));
    let uneven = plane.ficus(&["route", "set-weights", "checkout", "legacy=10", "k8s=10"]).await;
    assert_eq!(uneven.status.code(), Some(2), "weights that do not add up: {}", stderr_of(&uneven));
    let listed = plane.ok(&["route", "list"]).await;
    assert!(listed.lines().nth(1).is_some_and(|line| line.starts_with("checkout ")), "{listed}");

    // Without flag or variable, the address comes from the configuration file.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ficus.toml");
    std::fs::write(&file, format!("[client]\ntraffic = \"{}\"\n", plane.plane.traffic.grpc_addr))
        .expect("write config");
    let from_file = plane
        .command(&["--config", &file.display().to_string(), "route", "list"])
        .env_remove("FICUS_TRAFFIC_ADDR")
        .output()
        .await
        .expect("ficus runs");
    assert!(from_file.status.success(), "{}", stderr_of(&from_file));
    assert!(String::from_utf8_lossy(&from_file.stdout).contains("checkout"));
    plane.stop().await;
}

#[tokio::test]
async fn session_get_shows_a_session_without_touching_it() {
    let plane = Plane::start().await;
    let session = SessionStoreClient::new(grpc::channel(plane.plane.sessions.grpc_addr))
        .create_session(sessions::CreateSessionRequest {
            attributes: HashMap::from([("cart".to_owned(), b"3 items".to_vec())]),
            ..Default::default()
        })
        .await
        .expect("session created")
        .into_inner();
    let shown = plane.ok(&["session", "get", &session.id]).await;
    assert!(shown.contains("\"3 items\""), "{shown}");
    let json = plane.ok(&["session", "get", &session.id, "-o", "json"]).await;
    let read: sessions::Session = serde_json::from_str(&json).expect("a Session in proto3 JSON");
    assert_eq!((&read.id, read.version, &read.attributes), (&session.id, session.version, &session.attributes));
    // Reading does not slide the expiry (the store keeps milliseconds, hence the slack).
    let expires = |session: &sessions::Session| session.expires_at.map_or(0, |at| at.seconds);
    assert!(expires(&read).abs_diff(expires(&session)) <= 1, "{read:?} vs {session:?}");
    plane.stop().await;
}

#[tokio::test]
async fn errors_are_one_line_with_the_exit_code_of_their_kind() {
    let plane = Plane::start().await;

    // Unknown rollout: the planner's NOT_FOUND, exit 1.
    let unknown = plane.ficus(&["rollout", "get", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(stderr_of(&unknown), "ficus: rollout `nope` not found\n");

    // A spec the planner refuses names the field, exit 2.
    let elsewhere = plane.spec("elsewhere.yaml", &gated_spec("1s").replace("route: checkout", "route: nowhere"));
    let refused = plane.ficus(&["plan", "preview", "-f", &elsewhere]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr_of(&refused));
    assert_eq!(stderr_of(&refused), "ficus: spec.route: traffic has no route `nowhere`\n");

    // Bad YAML: file, line and column, exit 2, before any server is called.
    let broken = plane.spec("broken.yaml", "route: checkout\nstrangler:\n  stages: [{weight: 5}\n  window: 1h\n");
    let bad = plane.ficus(&["rollout", "apply", "-f", &broken]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr_of(&bad));
    let message = stderr_of(&bad);
    assert!(message.starts_with(&format!("ficus: {broken}:4:")), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    let wrong_type = plane.spec("wrong.yaml", "route: checkout\nmanualGate: maybe\n");
    let bad = plane.ficus(&["plan", "preview", "-f", &wrong_type]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr_of(&bad).starts_with(&format!("ficus: {wrong_type}:2:")), "{}", stderr_of(&bad));

    // Unreachable planner: one line naming the address, exit 1.
    let nobody = format!("127.0.0.1:{}", free_port());
    let unreachable = plane.ficus(&["--planner", &nobody, "rollout", "list"]).await;
    assert_eq!(unreachable.status.code(), Some(1));
    let message = stderr_of(&unreachable);
    assert!(message.starts_with(&format!("ficus: cannot reach the planner at {nobody}: ")), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    let unreachable = plane.ficus(&["rollout", "watch", "x", "--planner", &nobody]).await;
    assert_eq!(unreachable.status.code(), Some(1), "{}", stderr_of(&unreachable));

    // Usage errors are clap's, exit 2.
    let usage = plane.ficus(&["route", "set-weights", "checkout", "legacy"]).await;
    assert_eq!(usage.status.code(), Some(2));
    plane.stop().await;
}
