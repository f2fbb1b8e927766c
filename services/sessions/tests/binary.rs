//! The `ficus-sessions` binary as an operator runs it.

use ficus_proto::service_names::SESSIONS;

#[tokio::test]
async fn serves_health_and_reflection_and_exits_cleanly_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
    let store = data.path().display().to_string();
    ficus_testkit::check_binary_lifecycle(env!("CARGO_BIN_EXE_ficus-sessions"), SESSIONS, &[("FICUS_STORE", store)])
        .await;
}

#[tokio::test]
async fn refuses_contradicting_limits_at_start() {
    let data = tempfile::tempdir().expect("temp dir");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ficus-sessions"))
        .env("FICUS_STORE", data.path())
        .env("FICUS_LIMITS__MIN_TTL", "10m")
        .env("FICUS_LIMITS__DEFAULT_TTL", "1m")
        .output()
        .await
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2), "bad configuration exits 2");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits.default_ttl"), "{stderr}");
}
