//! `ficus up` as a user runs it: one process, four services, a clean exit on SIGTERM.

use std::time::Duration;

use ficus_proto::service_names::{ANALYSIS, PLANNER, SESSIONS, TRAFFIC};
use ficus_testkit::{ServiceProcess, free_port, grpc, http};

#[tokio::test]
async fn runs_every_service_in_one_process_and_stops_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut env = Vec::new();
    let mut addrs = Vec::new();
    for (section, service) in
        [("PLANNER", PLANNER), ("ANALYSIS", ANALYSIS), ("TRAFFIC", TRAFFIC), ("SESSIONS", SESSIONS)]
    {
        let grpc = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        env.push((format!("FICUS_{section}__SERVER__GRPC_ADDR"), grpc.clone()));
        env.push((format!("FICUS_{section}__SERVER__ADMIN_ADDR"), admin.clone()));
        addrs.push((service, grpc.parse().expect("addr"), admin.parse().expect("addr")));
    }
    env.push(("FICUS_TRAFFIC__PROXY__LISTEN".into(), format!("127.0.0.1:{}", free_port())));
    let env: Vec<(&str, String)> = env.iter().map(|(key, value)| (key.as_str(), value.clone())).collect();
    let data_dir = data.path().display().to_string();
    let mut process =
        ServiceProcess::spawn_with_args(env!("CARGO_BIN_EXE_ficus"), &["up", "--data-dir", &data_dir], &env);

    for (service, grpc_addr, admin_addr) in &addrs {
        ServiceProcess::wait_serving_at(*grpc_addr, service, Duration::from_secs(30)).await;
        let listed = grpc::reflected_services(*grpc_addr).await.expect("reflection answers");
        assert!(listed.iter().any(|name| name == service), "{service} not listed: {listed:?}");
        let (code, body) = http::get(*admin_addr, "/readyz").await.expect("readyz answers");
        assert_eq!(code, 200, "{service} not ready: {body}");
        let (code, metrics) = http::get(*admin_addr, "/metrics").await.expect("metrics answer");
        assert_eq!(code, 200);
        assert!(metrics.contains("ficus_grpc_server_calls_total"), "{service} metrics: {metrics}");
    }
    for service in ["planner", "analysis", "traffic", "sessions"] {
        assert!(data.path().join(service).is_dir(), "{service} keeps its state under the data directory");
    }

    process.terminate();
    let status = process.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "ficus up exited with {status}");
}

#[tokio::test]
async fn a_bad_setting_stops_it_at_start_with_the_key() {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = data.path().display().to_string();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(["up", "--data-dir", &data_dir])
        .env("FICUS_TRAFFIC__PROXY__REQUEST_TIMEOUT", "soon")
        .output()
        .await
        .expect("ficus runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(stderr.contains("proxy.request_timeout"), "{stderr}");
}
