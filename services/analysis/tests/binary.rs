//! The `ficus-analysis` binary as an operator runs it.

use ficus_proto::service_names::ANALYSIS;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn serves_health_and_reflection_and_exits_cleanly_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
    let shutdown = CancellationToken::new();
    let traffic = ficus_traffic::start(
        ficus_traffic::Config::ephemeral(data.path().join("traffic").display().to_string()),
        shutdown.clone(),
    )
    .await
    .expect("traffic starts");
    let env = [
        ("FICUS_STORE", data.path().join("analysis").display().to_string()),
        ("FICUS_TRAFFIC", traffic.grpc_addr.to_string()),
    ];
    ficus_testkit::check_binary_lifecycle(env!("CARGO_BIN_EXE_ficus-analysis"), ANALYSIS, &env).await;
    shutdown.cancel();
    traffic.wait().await.expect("traffic stops cleanly");
}
