//! The `ficus-traffic` binary as an operator runs it.

use ficus_proto::service_names::TRAFFIC;

#[tokio::test]
async fn serves_health_and_reflection_and_exits_cleanly_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
    let store = data.path().display().to_string();
    ficus_testkit::check_binary_lifecycle(
        env!("CARGO_BIN_EXE_ficus-traffic"),
        TRAFFIC,
        &[("FICUS_STORE", store), ("FICUS_PROXY__LISTEN", format!("127.0.0.1:{}", ficus_testkit::free_port()))],
    )
    .await;
}

#[tokio::test]
async fn refuses_a_proxy_worker_count_out_of_range_at_start() {
    for workers in ["0", "5000"] {
        let data = tempfile::tempdir().expect("temp dir");
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ficus-traffic"))
            .env("FICUS_STORE", data.path())
            .env("FICUS_PROXY__LISTEN", format!("127.0.0.1:{}", ficus_testkit::free_port()))
            .env("FICUS_PROXY__WORKERS", workers)
            .output()
            .await
            .expect("the binary runs");
        assert_eq!(output.status.code(), Some(2), "workers = {workers}: bad configuration exits 2");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.to_lowercase().contains("proxy.workers"), "workers = {workers}: {stderr}");
    }
}
