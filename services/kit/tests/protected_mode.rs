//! Secure by default: a service with no authentication configured refuses to serve an
//! address beyond loopback, naming the keys that would let it; on loopback, or with the
//! explicit opt-out, it starts.

use std::net::SocketAddr;

use ficus_kit::server::{ServeError, Server, ServerConfig};
use ficus_proto::sessions::v1::session_store_server::{SessionStore, SessionStoreServer};
use tokio_util::sync::CancellationToken;

struct Empty;

impl SessionStore for Empty {}

async fn start(config: ServerConfig) -> Result<ficus_kit::server::Running, ServeError> {
    let routes = tonic::service::Routes::new(SessionStoreServer::new(Empty));
    Server::new("ficus.test.Empty", config, routes).start(CancellationToken::new()).await
}

#[tokio::test]
async fn without_authentication_only_loopback_is_served() {
    let mut everywhere = ServerConfig::ephemeral();
    everywhere.grpc_addr = SocketAddr::from(([0, 0, 0, 0], 0));
    let refused = start(everywhere.clone()).await.err().expect("0.0.0.0 without authentication is refused");
    assert!(matches!(refused, ServeError::Unprotected(_)), "{refused}");
    let message = refused.to_string();
    for key in ["server.auth.token_file", "server.auth.token_review", "server.auth.mtls_roles", "allow_unauthenticated"]
    {
        assert!(message.contains(key), "the refusal names `{key}`: {message}");
    }

    let loopback = start(ServerConfig::ephemeral()).await.expect("loopback starts with nothing configured");
    assert!(loopback.grpc_addr.ip().is_loopback());

    everywhere.auth.allow_unauthenticated = true;
    start(everywhere).await.expect("the explicit opt-out starts");
}

#[tokio::test]
async fn a_token_file_is_authentication_enough_for_any_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "t,alice,1,viewer\n").expect("write");
    let mut config = ServerConfig::ephemeral();
    config.grpc_addr = SocketAddr::from(([0, 0, 0, 0], 0));
    config.auth.token_file = Some(tokens);
    start(config).await.expect("starts with a token file");
}
