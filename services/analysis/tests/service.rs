//! The `Analysis` service against real traffic statistics, a real Prometheus, and failing
//! sources.

use std::{net::SocketAddr, time::Duration};

use ficus_kit::{server::Running, status::invalid_field};
use ficus_proto::{
    analysis::v1::{self as proto, analysis_client::AnalysisClient},
    traffic::v1::{self as traffic_proto, traffic_control_client::TrafficControlClient},
};
use ficus_testkit::{Backend, PrometheusServer, free_port, wait_until};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

struct Plane {
    shutdown: CancellationToken,
    traffic: Running,
    analysis: Running,
    api: AnalysisClient<Channel>,
    proxy: SocketAddr,
    _data: tempfile::TempDir,
}

impl Plane {
    async fn start(prometheus: Option<String>) -> Self {
        Self::start_on(prometheus, None).await
    }

    /// A plane whose analysis reads a real Prometheus server (as its configured one) that
    /// scrapes traffic's `/metrics`.
    async fn start_scraped() -> (Self, PrometheusServer) {
        // Prometheus is told traffic's admin address before traffic binds it; it scrapes
        // every second and catches up once traffic is up.
        let traffic_admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let prometheus = PrometheusServer::start(&[traffic_admin]).await;
        let plane = Self::start_on(Some(prometheus.url()), Some(traffic_admin)).await;
        (plane, prometheus)
    }

    async fn start_on(prometheus: Option<String>, traffic_admin: Option<SocketAddr>) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let shutdown = CancellationToken::new();
        let mut traffic_config = ficus_traffic::Config::ephemeral(data.path().join("traffic").display().to_string());
        if let Some(admin) = traffic_admin {
            traffic_config.server.admin_addr = admin;
        }
        let traffic = ficus_traffic::start(traffic_config, shutdown.clone()).await.expect("traffic starts");
        let mut config = ficus_analysis::Config::ephemeral(
            data.path().join("analysis").display().to_string(),
            traffic.grpc_addr.to_string(),
        );
        if let Some(address) = prometheus {
            config.prometheus.address = address;
        }
        let analysis = ficus_analysis::start(config, shutdown.clone()).await.expect("analysis starts");
        let api = AnalysisClient::new(ficus_testkit::grpc::channel(analysis.grpc_addr));
        let proxy = traffic.addr(ficus_traffic::DATA_PLANE).expect("data plane");
        Self { shutdown, traffic, analysis, api, proxy, _data: data }
    }

    async fn route(&self, stable: &Backend, canary: &Backend) {
        let mut api = TrafficControlClient::new(ficus_testkit::grpc::channel(self.traffic.grpc_addr));
        let route = traffic_proto::Route {
            name: "checkout".into(),
            backends: vec![
                traffic_proto::Backend { name: "stable".into(), endpoints: vec![stable.addr().to_string()] },
                traffic_proto::Backend { name: "canary".into(), endpoints: vec![canary.addr().to_string()] },
            ],
            weights: [("stable".to_owned(), 5_000), ("canary".to_owned(), 5_000)].into(),
            ..Default::default()
        };
        api.put_route(traffic_proto::PutRouteRequest { route: Some(route), expected_generation: 0 })
            .await
            .expect("route");
    }

    async fn send(&self, requests: usize) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        for _ in 0..requests {
            let response =
                client.get(format!("http://{}/", self.proxy).parse().expect("uri")).await.expect("proxy answers");
            let _ = response.into_body().collect().await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.analysis.wait().await.expect("analysis stops cleanly");
        self.traffic.wait().await.expect("traffic stops cleanly");
    }
}

fn target() -> proto::Target {
    proto::Target { route: "checkout".into(), baseline: "stable".into(), canary: "canary".into() }
}

fn error_rate_checks() -> proto::AnalysisTemplate {
    let mut template = ficus_analysis::judge::default_template();
    template.checks.retain(|check| check.name.starts_with("error-rate"));
    template
}

fn analyze(template: Option<proto::AnalysisTemplate>) -> proto::AnalyzeRequest {
    proto::AnalyzeRequest { target: Some(target()), template, window: Some(Duration::from_secs(60).into()) }
}

#[tokio::test]
async fn traffic_statistics_pass_a_healthy_canary_and_fail_a_faulty_one() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut plane = Plane::start(None).await;
    plane.route(&stable, &canary).await;
    plane.send(400).await;
    let verdict = plane.api.analyze(analyze(Some(error_rate_checks()))).await.expect("verdict").into_inner();
    assert_eq!(verdict.outcome(), proto::Outcome::Pass, "{verdict:#?}");
    assert_eq!(verdict.sequence, 0, "a one-shot judgement belongs to no run");
    let check = &verdict.checks[0];
    assert_eq!((check.baseline_samples, check.canary_samples), (200, 200));

    canary.set_status(500);
    plane.send(400).await;
    let verdict = plane.api.analyze(analyze(None)).await.expect("verdict").into_inner();
    assert_eq!(verdict.outcome(), proto::Outcome::Fail, "{verdict:#?}");
    let error_rate = verdict.checks.iter().find(|check| check.name == "error-rate").expect("error-rate check");
    assert_eq!(error_rate.outcome(), proto::Outcome::Fail);
    assert!((error_rate.canary_value - 0.5).abs() < 1e-9, "{error_rate:?}");
    assert!(!error_rate.reason.is_empty() && !error_rate.rule.is_empty());
    plane.stop().await;
}

#[tokio::test]
async fn too_few_samples_are_inconclusive_never_pass() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut plane = Plane::start(None).await;
    plane.route(&stable, &canary).await;
    plane.send(20).await;
    let verdict = plane.api.analyze(analyze(Some(error_rate_checks()))).await.expect("verdict").into_inner();
    assert_eq!(verdict.outcome(), proto::Outcome::Inconclusive, "{verdict:#?}");
    plane.stop().await;
}

#[tokio::test]
async fn a_failing_source_is_inconclusive_with_the_error() {
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let mut plane = Plane::start(Some(unreachable)).await;
    let template = proto::AnalysisTemplate {
        checks: vec![proto::Check {
            name: "errors".into(),
            metric: Some(proto::Metric {
                source: Some(proto::metric::Source::Prometheus(proto::PrometheusMetric {
                    query: "sum(rate(x_total{backend=\"{{backend}}\"}[{{window}}]))".into(),
                    ..Default::default()
                })),
            }),
            rule: Some(proto::check::Rule::Threshold(proto::Threshold { max: Some(1.0), min: None })),
            critical: true,
            min_samples: Some(0),
            alpha_weight: None,
            ..Default::default()
        }],
        ..Default::default()
    };
    let verdict = plane.api.analyze(analyze(Some(template))).await.expect("verdict").into_inner();
    assert_eq!(verdict.outcome(), proto::Outcome::Inconclusive, "{verdict:#?}");
    assert!(verdict.checks[0].reason.contains("unreachable"), "{verdict:#?}");

    // The builtin source with no route behind it fails the same way.
    let verdict = plane.api.analyze(analyze(None)).await.expect("verdict").into_inner();
    assert_eq!(verdict.outcome(), proto::Outcome::Inconclusive, "{verdict:#?}");
    plane.stop().await;
}

#[tokio::test]
async fn prometheus_series_are_read_per_backend_and_judged() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let (plane, prometheus) = Plane::start_scraped().await;
    let api = AnalysisClient::new(ficus_testkit::grpc::channel(plane.analysis.grpc_addr));
    plane.route(&stable, &canary).await;
    canary.set_status(503);
    plane.send(300).await;

    let errors = "sum(ficus_traffic_requests_total{route=\"{{route}}\",backend=\"{{backend}}\",class=\"5xx\"}) \
                  / sum(ficus_traffic_requests_total{route=\"{{route}}\",backend=\"{{backend}}\"})";
    let total = "sum(ficus_traffic_requests_total{route=\"{{route}}\",backend=\"{{backend}}\"})";
    let template = proto::AnalysisTemplate {
        checks: vec![proto::Check {
            name: "error-rate".into(),
            metric: Some(proto::Metric {
                source: Some(proto::metric::Source::Prometheus(proto::PrometheusMetric {
                    query: errors.into(),
                    // The configured server.
                    address: String::new(),
                    value_kind: proto::prometheus_metric::ValueKind::Rate.into(),
                    samples_query: total.into(),
                    step: None,
                })),
            }),
            rule: Some(proto::check::Rule::Threshold(proto::Threshold { max: Some(0.01), min: None })),
            critical: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    // Prometheus scrapes every second; wait until it has seen all 300 requests.
    let verdict = wait_until(Duration::from_secs(30), || {
        let mut api = api.clone();
        let request = analyze(Some(template.clone()));
        async move {
            let verdict = api.analyze(request).await.ok()?.into_inner();
            let check = verdict.checks.first()?;
            (check.baseline_samples == 150 && check.canary_samples == 150).then_some(verdict)
        }
    })
    .await;
    assert_eq!(verdict.outcome(), proto::Outcome::Fail, "{verdict:#?}");
    let check = &verdict.checks[0];
    assert_eq!(check.baseline_value, 0.0);
    assert_eq!(check.canary_value, 1.0);

    // Another server, e.g. a cloud metadata address, is refused by field before anything
    // is sent to it: the template is the caller's, the reach is analysis'.
    let mut elsewhere = template.clone();
    if let Some(proto::metric::Source::Prometheus(metric)) =
        elsewhere.checks[0].metric.as_mut().and_then(|metric| metric.source.as_mut())
    {
        metric.address = "http://169.254.169.254".into();
    }
    let status = api.clone().analyze(analyze(Some(elsewhere))).await.expect_err("another server accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(invalid_field(&status).as_deref(), Some("template.checks[0].metric.prometheus.address"), "{status:?}");
    drop(prometheus);
    plane.stop().await;
}

fn fixed(canary: f64) -> proto::AnalysisTemplate {
    proto::AnalysisTemplate {
        checks: vec![proto::Check {
            name: "fixed".into(),
            metric: Some(proto::Metric {
                source: Some(proto::metric::Source::Fixed(proto::FixedMetric {
                    baseline: 0.0,
                    canary,
                    samples: 1_000,
                })),
            }),
            rule: Some(proto::check::Rule::Threshold(proto::Threshold { max: Some(0.5), min: None })),
            critical: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_run_streams_a_verdict_every_interval_until_it_ends() {
    let mut plane = Plane::start(None).await;
    let request = proto::StartRunRequest {
        target: Some(target()),
        template: Some(fixed(1.0)),
        interval: Some(Duration::from_secs(1).into()),
        window: None,
        duration: Some(Duration::from_secs(3).into()),
        run_id: "stage-1".into(),
        initial_delay: None,
    };
    let run = plane.api.start_run(request.clone()).await.expect("run starts").into_inner();
    assert_eq!(run.state(), proto::RunState::Running);
    let again = plane.api.start_run(request).await.expect("idempotent").into_inner();
    assert_eq!(again.id, run.id);
    let verdicts: Vec<proto::Verdict> = tokio::time::timeout(
        Duration::from_secs(15),
        plane
            .api
            .watch_run(proto::WatchRunRequest { id: run.id.clone() })
            .await
            .expect("watch")
            .into_inner()
            .map(|v| v.expect("verdict"))
            .collect(),
    )
    .await
    .expect("the stream ends with the run");
    assert!(verdicts.len() >= 3, "{} verdicts", verdicts.len());
    assert!(verdicts.iter().all(|verdict| verdict.outcome() == proto::Outcome::Fail));
    let sequences: Vec<u64> = verdicts.iter().map(|verdict| verdict.sequence).collect();
    assert!(sequences.windows(2).all(|pair| pair[1] == pair[0] + 1), "{sequences:?}");
    let finished = plane.api.get_run(proto::GetRunRequest { id: run.id.clone() }).await.expect("run").into_inner();
    assert_eq!(finished.state(), proto::RunState::Finished);
    assert_eq!(finished.last_verdict.map(|v| v.sequence), sequences.last().copied());
    plane.stop().await;
}

#[tokio::test]
async fn a_run_ignores_its_warm_up() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut plane = Plane::start(None).await;
    plane.route(&stable, &canary).await;
    let warm_up = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let run = plane
        .api
        .start_run(proto::StartRunRequest {
            target: Some(target()),
            template: Some(error_rate_checks()),
            interval: Some(Duration::from_secs(1).into()),
            initial_delay: Some(warm_up.into()),
            ..Default::default()
        })
        .await
        .expect("run starts")
        .into_inner();
    assert_eq!(run.initial_delay, Some(warm_up.into()), "the run records its warm-up");
    // Requests during the warm-up: cold connections the run must not judge.
    plane.send(200).await;
    let sent_within = started.elapsed();
    let mut verdicts =
        plane.api.watch_run(proto::WatchRunRequest { id: run.id.clone() }).await.expect("watch").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), verdicts.next())
        .await
        .expect("a verdict after the warm-up")
        .expect("stream open")
        .expect("verdict");
    assert!(started.elapsed() >= warm_up, "judged {:?} after the start, within the warm-up", started.elapsed());
    // A window that reached back into the warm-up would hold the 200 requests.
    assert!(
        sent_within + Duration::from_secs(1) < warm_up,
        "sending took {sent_within:?}, too close to the warm-up's end"
    );
    for check in &first.checks {
        assert_eq!(check.baseline_samples + check.canary_samples, 0, "{check:#?}");
    }
    plane.api.stop_run(proto::StopRunRequest { id: run.id }).await.expect("stop");
    plane.stop().await;
}

#[tokio::test]
async fn a_run_can_be_stopped_early() {
    let mut plane = Plane::start(None).await;
    let run = plane
        .api
        .start_run(proto::StartRunRequest {
            target: Some(target()),
            template: Some(fixed(0.0)),
            interval: Some(Duration::from_secs(1).into()),
            ..Default::default()
        })
        .await
        .expect("run starts")
        .into_inner();
    let stopped = plane.api.stop_run(proto::StopRunRequest { id: run.id.clone() }).await.expect("stop").into_inner();
    assert_eq!(stopped.state(), proto::RunState::Finished);
    let status = plane.api.get_run(proto::GetRunRequest { id: "nope".into() }).await.expect_err("unknown run");
    assert_eq!(status.code(), Code::NotFound);
    plane.stop().await;
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let mut plane = Plane::start(None).await;
    let mut bad_alpha = fixed(0.0);
    bad_alpha.alpha = Some(1.5);
    let mut negative = fixed(0.0);
    negative.checks[0].rule = Some(proto::check::Rule::Threshold(proto::Threshold { max: Some(-1.0), min: None }));
    let mut no_source = fixed(0.0);
    no_source.checks[0].metric = Some(proto::Metric { source: None });
    let mut bad_query = fixed(0.0);
    bad_query.checks[0].metric = Some(proto::Metric {
        source: Some(proto::metric::Source::Prometheus(proto::PrometheusMetric {
            query: "up{job=\"{{nope}}\"}".into(),
            ..Default::default()
        })),
    });
    for (template, field) in [
        (bad_alpha, "template.alpha"),
        (negative, "template.checks[0].threshold.max"),
        (no_source, "template.checks[0].metric"),
        (bad_query, "template.checks[0].metric.prometheus.query"),
    ] {
        let status = plane.api.analyze(analyze(Some(template))).await.expect_err("bad template accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(invalid_field(&status).as_deref(), Some(field), "{status:?}");
    }
    for (delay, why) in [(-1, "negative"), (3_601, "over an hour"), (i64::MAX, "overflowing")] {
        let request = proto::StartRunRequest {
            target: Some(target()),
            initial_delay: Some(pbjson_types::Duration { seconds: delay, nanos: 0 }),
            ..Default::default()
        };
        let status = plane.api.start_run(request).await.expect_err(why);
        assert_eq!(invalid_field(&status).as_deref(), Some("initial_delay"), "{why}: {status:?}");
    }
    let mut request = analyze(None);
    request.target = Some(proto::Target { canary: "stable".into(), ..target() });
    let status = plane.api.analyze(request).await.expect_err("same backends accepted");
    assert_eq!(invalid_field(&status).as_deref(), Some("target.canary"));
    plane.stop().await;
}

#[tokio::test]
async fn durations_too_long_to_add_to_a_clock_are_refused_and_the_service_keeps_serving() {
    let mut plane = Plane::start(None).await;
    let far = Some(pbjson_types::Duration { seconds: i64::MAX, nanos: 0 });
    let year_and_a_day = Some(pbjson_types::Duration { seconds: 367 * 24 * 3600, nanos: 0 });
    let requests = [
        (proto::StartRunRequest { target: Some(target()), duration: far, ..Default::default() }, "duration"),
        (proto::StartRunRequest { target: Some(target()), interval: far, ..Default::default() }, "interval"),
        (proto::StartRunRequest { target: Some(target()), window: year_and_a_day, ..Default::default() }, "window"),
    ];
    for (request, field) in requests {
        let status = plane.api.start_run(request).await.expect_err("an overflowing duration accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(invalid_field(&status).as_deref(), Some(field), "{status:?}");
        assert!(status.message().contains("at most 366 days"), "{status:?}");
    }
    let mut request = analyze(None);
    request.window = far;
    let status = plane.api.analyze(request).await.expect_err("an overflowing window accepted");
    assert_eq!(invalid_field(&status).as_deref(), Some("window"), "{status:?}");
    // Nothing was started, and the service still answers.
    let verdict = plane.api.analyze(analyze(Some(fixed(0.0)))).await.expect("a good request still answers");
    assert_eq!(verdict.into_inner().checks.len(), 1);
    plane.stop().await;
}
