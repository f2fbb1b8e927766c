//! `/metrics` counts gRPC calls by method, and a caller cannot grow it by calling paths
//! the server does not have.

use std::{str::FromStr, time::Duration};

use ficus_kit::{
    client,
    server::{Server, ServerConfig},
};
use ficus_proto::sessions::v1::session_store_server::{SessionStore, SessionStoreServer};
use http::uri::PathAndQuery;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_prost::ProstCodec;

/// A service with no methods of its own: every call of its own answers UNIMPLEMENTED.
struct Empty;

impl SessionStore for Empty {}

/// Made-up paths a hostile caller sends; the issue that found this counted 21 series each.
const MADE_UP_PATHS: usize = 500;

#[tokio::test]
async fn made_up_methods_share_one_label_and_real_ones_keep_theirs() {
    let shutdown = CancellationToken::new();
    let routes = tonic::service::Routes::new(SessionStoreServer::new(Empty));
    let running = Server::new("ficus.test.Empty", ServerConfig::ephemeral(), routes)
        .start(shutdown.clone())
        .await
        .expect("server starts");
    let channel = client::connect(&running.grpc_addr.to_string(), Duration::from_secs(5)).expect("valid address");
    HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await.expect("health");

    let mut grpc = tonic::client::Grpc::new(channel);
    for i in 0..MADE_UP_PATHS {
        // Unknown services, and unknown methods of a known one.
        let path = if i % 2 == 0 {
            format!("/made.up.Service{i}/Method")
        } else {
            format!("/ficus.sessions.v1.SessionStore/MadeUp{i}")
        };
        grpc.ready().await.expect("channel ready");
        let path = PathAndQuery::from_str(&path).expect("a path");
        let status = grpc
            .unary(tonic::Request::new(()), path, ProstCodec::<(), ()>::default())
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    }

    let (code, metrics) = ficus_testkit::http::get(running.admin_addr, "/metrics").await.expect("metrics answer");
    assert_eq!(code, 200);
    let calls: Vec<&str> = metrics.lines().filter(|line| line.starts_with("ficus_grpc_server_calls_total{")).collect();
    assert!(
        calls.iter().any(|line| line.contains(r#"method="grpc.health.v1.Health/Check""#)),
        "a real method keeps its name: {calls:?}"
    );
    let unknown = format!(r#"ficus_grpc_server_calls_total{{method="unknown",code="UNIMPLEMENTED"}} {MADE_UP_PATHS}"#);
    assert!(calls.contains(&unknown.as_str()), "made-up paths share one series: {calls:?}");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(!metrics.contains("made.up.Service"), "no made-up path reaches /metrics");

    shutdown.cancel();
    running.wait().await.expect("server stops cleanly");
}
