//! The `ficus-planner` binary as an operator runs it.

use std::time::Duration;

use ficus_proto::service_names::PLANNER;
use ficus_testkit::{ServiceProcess, free_port, grpc, http, wait_until};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn serves_health_and_reflection_and_exits_cleanly_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
    let shutdown = CancellationToken::new();
    let store = |name: &str| data.path().join(name).display().to_string();
    let traffic = ficus_traffic::start(ficus_traffic::Config::ephemeral(store("traffic")), shutdown.clone())
        .await
        .expect("traffic starts");
    let analysis = ficus_analysis::start(
        ficus_analysis::Config::ephemeral(store("analysis"), traffic.grpc_addr.to_string()),
        shutdown.clone(),
    )
    .await
    .expect("analysis starts");
    let env = [
        ("FICUS_STORE", store("planner")),
        ("FICUS_TRAFFIC", traffic.grpc_addr.to_string()),
        ("FICUS_ANALYSIS", analysis.grpc_addr.to_string()),
    ];
    ficus_testkit::check_binary_lifecycle(env!("CARGO_BIN_EXE_ficus-planner"), PLANNER, &env).await;
    shutdown.cancel();
    traffic.wait().await.expect("traffic stops cleanly");
    analysis.wait().await.expect("analysis stops cleanly");
}

#[tokio::test]
async fn is_alive_and_ready_while_its_peers_are_down_and_says_they_are() {
    let data = tempfile::tempdir().expect("temp dir");
    let nobody = format!("127.0.0.1:{}", free_port());
    let env = [
        ("FICUS_STORE", data.path().display().to_string()),
        ("FICUS_TRAFFIC", nobody.clone()),
        ("FICUS_ANALYSIS", nobody),
    ];
    let process = ServiceProcess::spawn(env!("CARGO_BIN_EXE_ficus-planner"), &env);
    let grpc_addr = process.grpc_addr;
    let status =
        wait_until(Duration::from_secs(30), || async move { grpc::health(grpc_addr, PLANNER).await.ok() }).await;
    assert_eq!(status, ServingStatus::Serving, "its own store answers; peers are reported, not required");
    let (code, body) = http::get(process.admin_addr, "/readyz?verbose").await.expect("readyz answers");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("ficus.traffic.v1.TrafficControl (reported): down"),
        "readiness names the missing peer: {body}"
    );
    let (code, _) = http::get(process.admin_addr, "/healthz").await.expect("healthz answers");
    assert_eq!(code, 200);
}
