//! Web metrics against a real HTTP server started here: values picked by JSONPath, a
//! secret header from a file, and every way an endpoint can fail (a path that misses, a
//! non-2xx answer, an answer that is not JSON, one that never comes) is INCONCLUSIVE,
//! never PASS. URLs outside the allow list are refused by field.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use ficus_kit::status::invalid_field;
use ficus_proto::analysis::v1::{self as proto, analysis_client::AnalysisClient, web_header, web_metric::Method};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

/// An endpoint in the style of a team's own health or KPI service.
async fn checks_server() -> SocketAddr {
    let app = Router::new()
        .route(
            "/rate/{backend}",
            get(|Path(backend): Path<String>| async move {
                let rate = if backend == "k8s" { 0.2 } else { 0.01 };
                format!(r#"{{"data": {{"rate": {rate}, "requests": 500}}}}"#)
            }),
        )
        .route(
            "/secure",
            get(|headers: HeaderMap| async move {
                match headers.get("authorization").and_then(|value| value.to_str().ok()) {
                    Some("Bearer s3cret") => (StatusCode::OK, r#"{"ok": true}"#),
                    _ => (StatusCode::UNAUTHORIZED, r#"{"ok": false}"#),
                }
            }),
        )
        .route(
            "/ready",
            post(|body: String| async move {
                format!(r#"{{"ready": {}}}"#, body.contains("legacy") || body.contains("k8s"))
            }),
        )
        .route("/down", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "{}") }))
        .route("/text", get(|| async { "all good" }))
        .route("/hang", get(std::future::pending::<String>));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct Analysis {
    api: AnalysisClient<Channel>,
    checks: SocketAddr,
    _shutdown: tokio_util::sync::DropGuard,
    _data: tempfile::TempDir,
}

impl Analysis {
    async fn start() -> Self {
        let checks = checks_server().await;
        let data = tempfile::tempdir().expect("temp dir");
        let secrets = data.path().join("secrets");
        std::fs::create_dir(&secrets).expect("secrets dir");
        std::fs::write(secrets.join("token"), "Bearer s3cret\n").expect("token file");
        let mut config =
            ficus_analysis::Config::ephemeral(data.path().join("store").display().to_string(), "127.0.0.1:1");
        config.web.allowed_urls = vec![format!("http://{checks}/")];
        config.web.secrets_dir = Some(secrets);
        let shutdown = CancellationToken::new();
        let running = ficus_analysis::start(config, shutdown.clone()).await.expect("analysis starts");
        let api = AnalysisClient::new(ficus_testkit::grpc::channel(running.grpc_addr));
        Self { api, checks, _shutdown: shutdown.drop_guard(), _data: data }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.checks)
    }

    async fn judge(&self, metric: proto::WebMetric, max: f64) -> Result<proto::Verdict, tonic::Status> {
        let check = proto::Check {
            name: "web".into(),
            metric: Some(proto::Metric { source: Some(proto::metric::Source::Web(metric)) }),
            rule: Some(proto::check::Rule::Threshold(proto::Threshold { max: Some(max), min: None })),
            critical: true,
            min_samples: Some(0),
            ..Default::default()
        };
        let request = proto::AnalyzeRequest {
            target: Some(proto::Target { route: "checkout".into(), baseline: "legacy".into(), canary: "k8s".into() }),
            template: Some(proto::AnalysisTemplate { checks: vec![check], ..Default::default() }),
            window: Some(Duration::from_secs(60).into()),
        };
        self.api.clone().analyze(request).await.map(tonic::Response::into_inner)
    }
}

fn web(url: String, json_path: &str) -> proto::WebMetric {
    proto::WebMetric { url, json_path: json_path.into(), ..Default::default() }
}

#[tokio::test]
async fn a_value_from_each_sides_answer_passes_or_fails_its_rule() {
    let analysis = Analysis::start().await;
    let mut rate = web(analysis.url("/rate/{{backend}}"), "$.data.rate");
    rate.samples_json_path = "$.data.requests".into();
    let failed = analysis.judge(rate.clone(), 0.1).await.expect("verdict");
    assert_eq!(failed.outcome(), proto::Outcome::Fail, "{failed:?}");
    let check = &failed.checks[0];
    assert_eq!((check.canary_value, check.baseline_value, check.canary_samples), (0.2, 0.01, 500));
    let passed = analysis.judge(rate, 0.5).await.expect("verdict");
    assert_eq!(passed.outcome(), proto::Outcome::Pass, "{passed:?}");

    // A POST with a body, and a boolean answer read as 1.
    let mut ready = web(analysis.url("/ready"), "$.ready");
    ready.method = Method::Post.into();
    ready.body = r#"{"backend": "{{backend}}"}"#.into();
    let verdict = analysis.judge(ready, 1.0).await.expect("verdict");
    assert_eq!((verdict.outcome(), verdict.checks[0].canary_value), (proto::Outcome::Pass, 1.0), "{verdict:?}");

    // The token comes from a file in the secrets directory; without it, a 401.
    let mut secure = web(analysis.url("/secure"), "$.ok");
    let unauthorized = analysis.judge(secure.clone(), 1.0).await.expect("verdict");
    assert_eq!(unauthorized.outcome(), proto::Outcome::Inconclusive, "{unauthorized:?}");
    assert!(unauthorized.checks[0].reason.contains("401"), "{}", unauthorized.checks[0].reason);
    secure.headers = vec![proto::WebHeader {
        name: "authorization".into(),
        value: Some(web_header::Value::FromFile("token".into())),
    }];
    let authorized = analysis.judge(secure, 1.0).await.expect("verdict");
    assert_eq!(authorized.outcome(), proto::Outcome::Pass, "{authorized:?}");
}

#[tokio::test]
async fn every_failure_of_the_endpoint_is_inconclusive_never_a_pass() {
    let analysis = Analysis::start().await;
    let mut hang = web(analysis.url("/hang"), "$.x");
    hang.timeout = Some(Duration::from_secs(1).into());
    let cases = [
        (web(analysis.url("/rate/k8s"), "$.data.missing"), "matched nothing"),
        (web(analysis.url("/down"), "$.x"), "500"),
        (web(analysis.url("/text"), "$.x"), "not JSON"),
        (hang, "did not answer within"),
        (web(analysis.url("/nothing-here"), "$.x"), "404"),
    ];
    for (metric, reason) in cases {
        let url = metric.url.clone();
        let verdict = analysis.judge(metric, 1e9).await.expect("verdict");
        assert_eq!(verdict.outcome(), proto::Outcome::Inconclusive, "{url}: {verdict:?}");
        assert!(verdict.checks[0].reason.contains(reason), "{url}: {}", verdict.checks[0].reason);
    }
}

#[tokio::test]
async fn urls_outside_the_allow_list_and_bad_fields_are_refused_by_name() {
    let analysis = Analysis::start().await;
    let cases = [
        (web("http://169.254.169.254/latest/meta-data".into(), "$.x"), "template.checks[0].metric.web.url"),
        (web(format!("http://{}.evil.example/", analysis.checks.ip()), "$.x"), "template.checks[0].metric.web.url"),
        (web(analysis.url("/rate/k8s"), "$.data["), "template.checks[0].metric.web.json_path"),
        (web("file:///etc/passwd".into(), "$.x"), "template.checks[0].metric.web.url"),
    ];
    for (metric, field) in cases {
        let status = analysis.judge(metric, 1.0).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(invalid_field(&status).as_deref(), Some(field), "{status:?}");
    }
    let mut escape = web(analysis.url("/secure"), "$.ok");
    escape.headers = vec![proto::WebHeader {
        name: "authorization".into(),
        value: Some(web_header::Value::FromFile("../store/secret".into())),
    }];
    let status = analysis.judge(escape, 1.0).await.expect_err("a path out of the secrets directory");
    assert_eq!(invalid_field(&status).as_deref(), Some("template.checks[0].metric.web.headers[0].from_file"));
}
