//! Statistics over every traffic replica: three replicas on one Redis each serve a share
//! of the requests, and any of them reports the totals of all three, with the same
//! latency quantiles; analysis asking one replica fails a canary whose errors only went
//! through another.

use std::time::Duration;

use ficus_proto::{
    analysis::v1::{self as analysis, analysis_client::AnalysisClient},
    traffic::v1::{self as traffic, traffic_control_client::TrafficControlClient},
};
use ficus_testkit::{Backend, RedisServer, eventually, grpc, wait_until};
use tokio_util::sync::CancellationToken;

/// Requests sent through each replica.
const PER_REPLICA: u64 = 150;

fn stats_request() -> traffic::GetTrafficStatsRequest {
    traffic::GetTrafficStatsRequest {
        route: "checkout".into(),
        window: Some(Duration::from_secs(60).into()),
        ..Default::default()
    }
}

/// Requests of every backend, and each backend's p50 and p99, as one replica reports them.
fn summary(stats: &traffic::TrafficStats) -> (u64, Vec<(String, u64, u64, u64)>) {
    let backends = stats.backends.iter().map(|backend| {
        let latency = backend.latency.unwrap_or_default();
        let micros = |seconds: f64| (seconds * 1e6).round() as u64;
        (backend.backend.clone(), backend.requests, micros(latency.p50_seconds), micros(latency.p99_seconds))
    });
    let backends: Vec<_> = backends.collect();
    (backends.iter().map(|(_, requests, _, _)| requests).sum(), backends)
}

async fn send(proxy: std::net::SocketAddr, requests: u64) {
    for _ in 0..requests {
        let (status, _) = ficus_testkit::http::get(proxy, "/").await.expect("the proxy answers");
        assert!(status == 200 || status == 500, "a backend's answer: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_reports_the_requests_of_all_and_analysis_sees_errors_through_any() {
    let redis = RedisServer::new();
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let shutdown = CancellationToken::new();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let config = ficus_traffic::Config::ephemeral(redis.url());
        replicas.push(ficus_traffic::start(config, shutdown.clone()).await.expect("traffic starts"));
    }
    let api = |index: usize| TrafficControlClient::new(grpc::channel(replicas[index].grpc_addr));
    let route = ficus_testkit::route::two_backends(
        "checkout",
        ("stable", &stable.addr().to_string()),
        ("canary", &canary.addr().to_string()),
        5_000,
    );
    api(0).put_route(traffic::PutRouteRequest { route: Some(route), expected_generation: 0 }).await.expect("route");
    for index in 0..3 {
        eventually(Duration::from_secs(10), || async move {
            api(index).get_route(traffic::GetRouteRequest { name: "checkout".into() }).await.is_ok()
        })
        .await;
    }

    for replica in &replicas {
        send(replica.addr(ficus_traffic::DATA_PLANE).expect("proxy"), PER_REPLICA).await;
    }
    let mut seen = Vec::new();
    for index in 0..3 {
        let stats = wait_until(Duration::from_secs(15), || async move {
            let stats = api(index).get_traffic_stats(stats_request()).await.ok()?.into_inner();
            (summary(&stats).0 == 3 * PER_REPLICA).then_some(stats)
        })
        .await;
        assert_eq!(stats.replicas, 3, "replica {index} counts all three");
        seen.push(summary(&stats));
    }
    assert!(seen.windows(2).all(|pair| pair[0] == pair[1]), "every replica reports the same numbers: {seen:?}");

    // The canary fails, and only replica 2 sends it requests, at a steady pace over ten
    // seconds, as a failing release's errors arrive.
    canary.set_status(500);
    let mut pace = tokio::time::interval(Duration::from_secs(1));
    for _ in 0..10 {
        pace.tick().await;
        send(replicas[2].addr(ficus_traffic::DATA_PLANE).expect("proxy"), 30).await;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let analysis = ficus_analysis::start(
        ficus_analysis::Config::ephemeral(data.path().display().to_string(), replicas[0].grpc_addr.to_string()),
        shutdown.clone(),
    )
    .await
    .expect("analysis starts");
    let mut template = ficus_analysis::judge::default_template();
    template.checks.retain(|check| check.name.starts_with("error-rate"));
    let request = analysis::AnalyzeRequest {
        target: Some(analysis::Target { route: "checkout".into(), baseline: "stable".into(), canary: "canary".into() }),
        template: Some(template),
        window: Some(Duration::from_secs(20).into()),
    };
    let client = AnalysisClient::new(grpc::channel(analysis.grpc_addr));
    let verdict = wait_until(Duration::from_secs(15), || {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            let verdict = client.analyze(request).await.ok()?.into_inner();
            (verdict.outcome() == analysis::Outcome::Fail).then_some(verdict)
        }
    })
    .await;
    let error_rate = verdict.checks.iter().find(|check| check.name == "error-rate").expect("error-rate check");
    assert!(error_rate.canary_value > 0.0, "{error_rate:?}");
    shutdown.cancel();
}
