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
