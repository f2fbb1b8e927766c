//! A planner whose peer is down stays ready (it still answers reads and keeps its
//! rollouts), and says so: `/readyz?verbose`, `ficus_dependency_up` and recovery by itself.

use std::{net::SocketAddr, time::Duration};

use ficus_kit::server::Running;
use ficus_proto::service_names::{PLANNER, TRAFFIC};
use ficus_testkit::{ServiceProcess, free_port, grpc, http, wait_until};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;

async fn start_traffic(addr: SocketAddr, store: &std::path::Path) -> (Running, CancellationToken) {
    let mut config = ficus_traffic::Config::ephemeral(store.display().to_string());
    config.server.grpc_addr = addr;
    let shutdown = CancellationToken::new();
    let running = ficus_traffic::start(config, shutdown.clone()).await.expect("traffic starts");
    (running, shutdown)
}

#[tokio::test]
async fn the_planner_reports_a_down_peer_without_leaving_rotation() {
    let data = tempfile::tempdir().expect("temp dir");
    let traffic_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (traffic, stop_traffic) = start_traffic(traffic_addr, &data.path().join("traffic")).await;

    let shutdown = CancellationToken::new();
    let analysis = ficus_analysis::start(
        ficus_analysis::Config::ephemeral(data.path().join("analysis").display().to_string(), traffic_addr.to_string()),
        shutdown.clone(),
    )
    .await
    .expect("analysis starts");
    let planner = ficus_planner::start(
        ficus_planner::Config::ephemeral(
            data.path().join("planner").display().to_string(),
            traffic_addr.to_string(),
            analysis.grpc_addr.to_string(),
        ),
        shutdown.clone(),
    )
    .await
    .expect("planner starts");
    ServiceProcess::wait_serving_at(planner.grpc_addr, PLANNER, Duration::from_secs(10)).await;

    stop_traffic.cancel();
    traffic.wait().await.expect("traffic stops cleanly");
    let admin = planner.admin_addr;
    let down = format!("ficus_dependency_up{{dependency=\"{TRAFFIC}\"}} 0");
    wait_until(Duration::from_secs(10), || {
        let down = down.clone();
        async move { http::get(admin, "/metrics").await.ok().filter(|(_, body)| body.contains(&down)).map(|_| ()) }
    })
    .await;
    let (code, body) = http::get(admin, "/readyz?verbose").await.expect("readyz answers");
    assert_eq!(code, 200, "a down peer is reported, not fatal: {body}");
    assert!(body.contains(&format!("{TRAFFIC} (reported): down")), "the down peer is named: {body}");
    assert!(body.contains("store (required): up"), "{body}");
    let health = grpc::health(planner.grpc_addr, PLANNER).await;
    assert!(matches!(health, Ok(ServingStatus::Serving)), "gRPC health follows readiness: {health:?}");

    // A fresh store: the point is the address coming back, not the data.
    let (traffic, stop_traffic) = start_traffic(traffic_addr, &data.path().join("traffic-again")).await;
    let up = format!("ficus_dependency_up{{dependency=\"{TRAFFIC}\"}} 1");
    wait_until(Duration::from_secs(10), || {
        let up = up.clone();
        async move { http::get(admin, "/metrics").await.ok().filter(|(_, body)| body.contains(&up)).map(|_| ()) }
    })
    .await;

    stop_traffic.cancel();
    shutdown.cancel();
    traffic.wait().await.expect("traffic stops cleanly");
    analysis.wait().await.expect("analysis stops cleanly");
    planner.wait().await.expect("planner stops cleanly");
}
