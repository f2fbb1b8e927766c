//! An application reaches a session store that requires TLS and a token through the
//! client crate: with the `app` token over TLS it keeps its sessions; without the token,
//! or with a viewer's, it is refused and nothing is stored.

use std::sync::Arc;

use ficus_kit::{server::ServerConfig, tls::ServerTlsConfig};
use ficus_sessions::Config;
use ficus_sessions_client::{ConnectOptions, Error, SessionClient};
use tokio_util::sync::CancellationToken;
use tonic::Code;

#[tokio::test]
async fn an_application_with_the_app_token_over_tls_keeps_its_sessions_and_others_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let mut server = ServerConfig::ephemeral();
    server.tls = Some(ServerTlsConfig {
        cert: write("server.crt", &certificate.pem()),
        key: write("server.key", &key.serialize_pem()),
        client_ca: None,
        client_cert_optional: false,
    });
    server.auth.token_file = Some(write("tokens.csv", "t-shop,shop,1,app\nt-eve,eve,2,viewer\n"));
    let store = dir.path().join("store").display().to_string();
    let shutdown = CancellationToken::new();
    let running =
        ficus_sessions::start(Config { server, store, ..Config::default() }, shutdown.clone()).await.expect("starts");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate.der().clone()).expect("root");
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let address = format!("https://localhost:{}", running.grpc_addr.port());
    let client = |token: Option<&str>| {
        let options = ConnectOptions { token: token.map(str::to_owned), tls: Some(tls.clone()) };
        SessionClient::connect_lazy_with(&address, &options).expect("client")
    };

    let shop = client(Some("t-shop"));
    let loaded = shop.load_or_create(None).await.expect("the app keeps sessions");
    assert!(loaded.created);
    let found = shop.peek(loaded.session.id()).await.expect("read back");
    assert!(found.is_some(), "the session was stored");

    for (who, token) in [("anonymous", None), ("a viewer", Some("t-eve"))] {
        match client(token).load_or_create(None).await {
            Err(Error::Rpc(status)) => {
                assert!(matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied), "{who}: {status:?}");
            }
            other => panic!("{who} was let in: {other:?}"),
        }
    }
    let plaintext = SessionClient::connect_lazy(&format!("127.0.0.1:{}", running.grpc_addr.port())).expect("client");
    assert!(plaintext.load_or_create(None).await.is_err(), "plaintext is not served");
    assert!(
        matches!(
            SessionClient::connect_lazy_with("http://localhost:1", &ConnectOptions { token: None, tls: Some(tls) }),
            Err(Error::Address { .. })
        ),
        "http:// with TLS options is refused rather than sent in the clear"
    );
    shutdown.cancel();
}
