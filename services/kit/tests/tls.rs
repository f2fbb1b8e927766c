//! TLS and mutual TLS on a real gRPC server, with certificates made here: a client with a
//! certificate of the configured CA gets the roles of its name; one from an unknown CA,
//! an expired one and one not yet valid are refused in the handshake; a server
//! certificate rotated on disk is served to new connections without a restart, while
//! connections already open carry on.

use std::{collections::BTreeMap, path::Path, time::Duration};

use ficus_kit::{
    client::{self, BearerToken, Credentials},
    server::{Running, Server, ServerConfig},
    tls::{ClientTls, ClientTlsConfig, ServerTlsConfig},
};
use ficus_proto::sessions::v1::{
    GetSessionRequest,
    session_store_client::SessionStoreClient,
    session_store_server::{SessionStore, SessionStoreServer},
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// A session store whose own methods all answer UNIMPLEMENTED: what matters is whether a
/// call gets that far.
struct Empty;

impl SessionStore for Empty {}

/// A certificate authority of the test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    /// A leaf certificate and its key, PEM, valid from `from` to `until` days from now.
    fn issue(&self, name: &str, from: i64, until: i64) -> (String, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names =
            vec![SanType::IpAddress([127, 0, 0, 1].into()), SanType::DnsName("localhost".try_into().expect("dns"))];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(until);
        let key = KeyPair::generate().expect("key");
        let certificate = params.signed_by(&key, &self.issuer).expect("certificate");
        (certificate.pem(), key.serialize_pem())
    }
}

/// Writes `(certificate, key)` as `<name>.crt` and `<name>.key` in `dir`; returns the paths.
fn write(dir: &Path, name: &str, (certificate, key): &(String, String)) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, certificate).expect("write certificate");
    std::fs::write(&key_path, key).expect("write key");
    (cert_path, key_path)
}

fn write_ca(dir: &Path, name: &str, ca: &Ca) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, &ca.pem).expect("write CA");
    path
}

struct Fixture {
    dir: tempfile::TempDir,
    running: Running,
    shutdown: CancellationToken,
    server_ca: Ca,
    client_ca: Ca,
}

impl Fixture {
    async fn start(client_cert_optional: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
        let (cert, key) = write(dir.path(), "server", &server_ca.issue("server", -1, 30));
        let mut config = ServerConfig::ephemeral();
        config.tls = Some(ServerTlsConfig {
            cert,
            key,
            client_ca: Some(write_ca(dir.path(), "client-ca", &client_ca)),
            client_cert_optional,
        });
        config.auth.mtls_roles = BTreeMap::from([("shop".to_owned(), vec!["app".to_owned()])]);
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(&tokens, "t-shop,shop-by-token,1,app\n").expect("write tokens");
        config.auth.token_file = Some(tokens);
        let shutdown = CancellationToken::new();
        let routes = tonic::service::Routes::new(SessionStoreServer::new(Empty));
        let running = Server::new("ficus.test.Empty", config, routes).start(shutdown.clone()).await.expect("starts");
        Self { dir, running, shutdown, server_ca, client_ca }
    }

    /// A client trusting `ca` (the server's CA by default), presenting `identity` when
    /// given (written under `name`) and `token` when given.
    fn client(&self, name: &str, ca: &Ca, identity: Option<&(String, String)>, token: Option<&str>) -> Client {
        let (cert, key) = identity.map(|identity| write(self.dir.path(), name, identity)).unzip();
        let config = ClientTlsConfig {
            ca_cert: Some(write_ca(self.dir.path(), &format!("{name}-trusts"), ca)),
            cert,
            key,
            server_name: None,
        };
        let credentials = Credentials {
            token: token.map(|token| BearerToken::new(token).expect("token")),
            tls: Some(ClientTls::load(&config).expect("client TLS")),
        };
        let channel = client::connect_with(&self.running.grpc_addr.to_string(), Duration::from_secs(5), &credentials)
            .expect("address");
        SessionStoreClient::new(channel)
    }
}

type Client = SessionStoreClient<client::TracedChannel>;

/// Whether `status` is a refusal of the connection itself rather than an answer of the
/// server: TLS 1.3 clients learn of a refused certificate only at their first read, which
/// surfaces as a transport error.
fn refused_in_handshake(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown) && std::error::Error::source(status).is_some()
}

/// One call; UNIMPLEMENTED means it got through to the service.
async fn call(client: &Client) -> Status {
    let request = GetSessionRequest { id: "s".into(), touch: false };
    client.clone().get_session(request).await.expect_err("an empty store answers nothing")
}

#[tokio::test]
async fn client_certificates_of_the_ca_get_the_roles_of_their_name_and_others_are_refused() {
    let fixture = Fixture::start(false).await;
    let ca = &fixture.client_ca;

    let shop = fixture.client("shop", &fixture.server_ca, Some(&ca.issue("shop", -1, 30)), None);
    assert_eq!(call(&shop).await.code(), Code::Unimplemented, "a mapped certificate gets through");

    let stranger = fixture.client("stranger", &fixture.server_ca, Some(&ca.issue("stranger", -1, 30)), None);
    let refused = call(&stranger).await;
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("stranger"), "the refusal names the certificate: {refused:?}");

    let forged = Ca::new("client CA");
    for (name, identity) in [
        ("unknown-ca", forged.issue("shop", -1, 30)),
        ("expired", ca.issue("shop", -30, -1)),
        ("not-yet-valid", ca.issue("shop", 1, 30)),
    ] {
        let client = fixture.client(name, &fixture.server_ca, Some(&identity), None);
        let refused = call(&client).await;
        assert!(refused_in_handshake(&refused), "{name}: refused in the handshake: {refused:?}");
    }

    let anonymous = fixture.client("anonymous", &fixture.server_ca, None, Some("t-shop"));
    let refused = call(&anonymous).await;
    assert!(refused_in_handshake(&refused), "a client certificate is required: {refused:?}");

    let distrusting = fixture.client("distrusting", &Ca::new("server CA"), Some(&ca.issue("shop", -1, 30)), None);
    let refused = call(&distrusting).await;
    assert!(refused_in_handshake(&refused), "the client checks the server too: {refused:?}");

    let plaintext = SessionStoreClient::new(
        client::connect(&fixture.running.grpc_addr.to_string(), Duration::from_secs(5)).expect("address"),
    );
    let refused = call(&plaintext).await;
    assert!(refused_in_handshake(&refused), "plaintext is not served: {refused:?}");
    fixture.shutdown.cancel();
}

#[tokio::test]
async fn with_optional_client_certificates_a_token_or_a_certificate_will_do() {
    let fixture = Fixture::start(true).await;
    let by_token = fixture.client("by-token", &fixture.server_ca, None, Some("t-shop"));
    assert_eq!(call(&by_token).await.code(), Code::Unimplemented);
    let nothing = fixture.client("nothing", &fixture.server_ca, None, None);
    assert_eq!(call(&nothing).await.code(), Code::Unauthenticated);
    let shop = fixture.client("shop", &fixture.server_ca, Some(&fixture.client_ca.issue("shop", -1, 30)), None);
    assert_eq!(call(&shop).await.code(), Code::Unimplemented);
    fixture.shutdown.cancel();
}

#[tokio::test]
async fn a_rotated_server_certificate_is_served_without_a_restart_or_a_dropped_connection() {
    let fixture = Fixture::start(false).await;
    let identity = fixture.client_ca.issue("shop", -1, 30);
    let before = fixture.client("before", &fixture.server_ca, Some(&identity), None);
    assert_eq!(call(&before).await.code(), Code::Unimplemented);

    // The Secret is updated: a certificate of another CA, which only `after` trusts.
    let next_ca = Ca::new("next server CA");
    write(fixture.dir.path(), "server", &next_ca.issue("server", -1, 30));
    let after = fixture.client("after", &next_ca, Some(&identity), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match call(&after).await.code() {
            Code::Unimplemented => break,
            code => assert!(tokio::time::Instant::now() < deadline, "the new certificate is never served: {code:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `before` trusts only the old CA, so it can only be answered on the connection it
    // opened before the rotation.
    assert_eq!(call(&before).await.code(), Code::Unimplemented, "the open connection was kept");
    fixture.shutdown.cancel();
}
