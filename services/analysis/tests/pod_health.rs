//! Pod health judged from a real API server: pods and their status written through the
//! API as a kubelet would, judged as the rollback table says (3 or more restarts in 5
//! minutes, or any OOMKilled container, is a critical failure).

use std::time::{Duration, SystemTime};

use ficus_kit::status::invalid_field;
use ficus_proto::analysis::v1::{self as proto, analysis_client::AnalysisClient, pod_health_metric::Signal};
use ficus_testkit::KubeApiServer;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

const NAMESPACE: &str = "shop";

struct Cluster {
    server: KubeApiServer,
    api: AnalysisClient<Channel>,
    _shutdown: tokio_util::sync::DropGuard,
    _data: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let server = KubeApiServer::start().await;
        server.create_namespace(NAMESPACE).await;
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = ficus_analysis::Config::ephemeral(data.path().display().to_string(), "127.0.0.1:1");
        config.kubernetes =
            Some(ficus_kit::kubernetes::ClusterConfig { kubeconfig: Some(server.kubeconfig().to_path_buf()) });
        let shutdown = CancellationToken::new();
        let analysis = ficus_analysis::start(config, shutdown.clone()).await.expect("analysis starts");
        let api = AnalysisClient::new(ficus_testkit::grpc::channel(analysis.grpc_addr));
        Self { server, api, _shutdown: shutdown.drop_guard(), _data: data }
    }

    /// A pod `name` labelled `app=<app>`, started `age` ago, with one container restarted
    /// `restarts` times whose last termination (`reason`) ended `last_ended` ago.
    async fn pod(
        &self,
        name: &str,
        app: &str,
        age: Duration,
        restarts: i32,
        last: Option<(&str, Duration)>,
        ready: bool,
    ) {
        let pods: Api<Pod> = Api::namespaced(self.server.client().await, NAMESPACE);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "web", "image": "shop:2"}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod).await.expect("create pod");
        self.status(name, age, restarts, last, ready).await;
    }

    async fn status(&self, name: &str, age: Duration, restarts: i32, last: Option<(&str, Duration)>, ready: bool) {
        let pods: Api<Pod> = Api::namespaced(self.server.client().await, NAMESPACE);
        let at =
            |ago: Duration| k8s_openapi::jiff::Timestamp::try_from(SystemTime::now() - ago).expect("time").to_string();
        let last_state = match last {
            Some((reason, ago)) => json!({"terminated": {"exitCode": 137, "reason": reason, "finishedAt": at(ago)}}),
            None => json!({}),
        };
        let status = json!({"status": {
            "startTime": at(age),
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [{"name": "web", "image": "shop:2", "imageID": "", "ready": ready,
                "restartCount": restarts, "lastState": last_state, "state": {"running": {}}}]
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("write status");
    }

    async fn judge(&mut self, app: &str) -> proto::Verdict {
        self.api.analyze(request(app)).await.expect("analyze").into_inner()
    }
}

fn check(name: &str, app: &str, signal: Signal, max: f64) -> proto::Check {
    proto::Check {
        name: name.into(),
        metric: Some(proto::Metric {
            source: Some(proto::metric::Source::PodHealth(proto::PodHealthMetric {
                namespace: NAMESPACE.into(),
                label_selector: format!("app={app}"),
                signal: signal.into(),
                window: None,
            })),
        }),
        rule: Some(proto::check::Rule::Threshold(proto::Threshold { max: Some(max), min: None })),
        critical: true,
        ..Default::default()
    }
}

/// The seed's pod rules for the pods labelled `app`.
fn request(app: &str) -> proto::AnalyzeRequest {
    proto::AnalyzeRequest {
        target: Some(proto::Target { route: "shop".into(), baseline: "stable".into(), canary: "canary".into() }),
        template: Some(proto::AnalysisTemplate {
            checks: vec![
                check("restarts", app, Signal::Restarts, 2.0),
                check("oom-killed", app, Signal::OomKilled, 0.0),
                check("not-ready", app, Signal::NotReady, 0.0),
            ],
            ..Default::default()
        }),
        window: None,
    }
}

fn outcome(verdict: &proto::Verdict, check: &str) -> (proto::Outcome, String) {
    let result = verdict.checks.iter().find(|result| result.name == check).expect("check result");
    (result.outcome(), result.reason.clone())
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_judged_as_the_rollback_table_says() {
    let mut cluster = Cluster::start().await;
    cluster.pod("healthy-1", "healthy", MINUTE, 0, None, true).await;
    cluster.pod("healthy-2", "healthy", MINUTE, 0, None, true).await;
    let verdict = cluster.judge("healthy").await;
    assert_eq!(verdict.outcome(), proto::Outcome::Pass, "{verdict:#?}");

    cluster.pod("crash-1", "crash", 2 * MINUTE, 3, Some(("Error", Duration::from_secs(20))), true).await;
    cluster.pod("crash-2", "crash", 2 * MINUTE, 0, None, true).await;
    let verdict = cluster.judge("crash").await;
    assert_eq!(verdict.outcome(), proto::Outcome::Fail);
    let (restarts, reason) = outcome(&verdict, "restarts");
    assert_eq!(restarts, proto::Outcome::Fail);
    assert!(reason.contains("crash-1") && reason.contains('3'), "{reason}");

    cluster.pod("flaky", "flaky", 2 * MINUTE, 2, Some(("Error", Duration::from_secs(20))), true).await;
    assert_eq!(outcome(&cluster.judge("flaky").await, "restarts").0, proto::Outcome::Pass, "2 restarts are tolerated");

    // Restarts before the window do not count.
    cluster.pod("old", "old", 60 * MINUTE, 6, Some(("Error", 30 * MINUTE)), true).await;
    assert_eq!(cluster.judge("old").await.outcome(), proto::Outcome::Pass);

    cluster.pod("oom", "oom", 60 * MINUTE, 1, Some(("OOMKilled", Duration::from_secs(10))), true).await;
    let verdict = cluster.judge("oom").await;
    assert_eq!(verdict.outcome(), proto::Outcome::Fail);
    let (oom, reason) = outcome(&verdict, "oom-killed");
    assert_eq!(oom, proto::Outcome::Fail);
    assert!(reason.contains("oom/web"), "{reason}");

    cluster.pod("starting", "starting", MINUTE, 0, None, false).await;
    let (ready, reason) = outcome(&cluster.judge("starting").await, "not-ready");
    assert_eq!(ready, proto::Outcome::Fail);
    assert!(reason.contains("starting"), "{reason}");

    // No pods: nothing to judge is never a PASS.
    let verdict = cluster.judge("nobody").await;
    assert_eq!(verdict.outcome(), proto::Outcome::Inconclusive);
    assert!(outcome(&verdict, "restarts").1.contains("no pod matches app=nobody"), "{verdict:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_an_old_pod_are_counted_from_one_look_to_the_next() {
    let mut cluster = Cluster::start().await;
    cluster.pod("steady", "steady", 60 * MINUTE, 4, Some(("Error", 50 * MINUTE)), true).await;
    assert_eq!(outcome(&cluster.judge("steady").await, "restarts").0, proto::Outcome::Pass);
    cluster.status("steady", 60 * MINUTE, 7, Some(("Error", Duration::from_secs(5))), true).await;
    let (restarts, reason) = outcome(&cluster.judge("steady").await, "restarts");
    assert_eq!(restarts, proto::Outcome::Fail, "three restarts since the last look");
    assert!(reason.contains("restarted 3 times"), "{reason}");
}

#[tokio::test]
async fn bad_selectors_are_refused_and_a_service_without_a_cluster_refuses_pod_checks() {
    let mut cluster = Cluster::start().await;
    let mut bad = request("shop");
    if let Some(proto::metric::Source::PodHealth(pods)) =
        bad.template.as_mut().and_then(|t| t.checks[1].metric.as_mut()).and_then(|m| m.source.as_mut())
    {
        pods.label_selector = "app in (shop".into();
    }
    let refused = cluster.api.analyze(bad).await.expect_err("a bad selector accepted");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(invalid_field(&refused).as_deref(), Some("template.checks[1].metric.pod_health.label_selector"));

    let data = tempfile::tempdir().expect("temp dir");
    let shutdown = CancellationToken::new();
    let config = ficus_analysis::Config::ephemeral(data.path().display().to_string(), "127.0.0.1:1");
    let plain = ficus_analysis::start(config, shutdown.clone()).await.expect("analysis starts");
    let mut api = AnalysisClient::new(ficus_testkit::grpc::channel(plain.grpc_addr));
    let refused = api.analyze(request("shop")).await.expect_err("pod checks without a cluster");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("template.checks[0].metric.pod_health"), "{}", refused.message());
    shutdown.cancel();
}
