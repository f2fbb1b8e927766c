//! The audit trail of a call on its span: who called, how they proved it, what the call
//! acted on (a session id cut to a prefix) and how it ended; refusals too.

use std::time::Duration;

use ficus_kit::{
    client::{self, BearerToken, Credentials},
    server::{Server, ServerConfig},
    telemetry::{self, TelemetryConfig},
};
use ficus_proto::sessions::v1::{
    DeleteSessionRequest, DeleteSessionResponse,
    session_store_client::SessionStoreClient,
    session_store_server::{SessionStore, SessionStoreServer},
};
use opentelemetry::{KeyValue, trace::SpanKind};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

/// A store that knows no session, and says what it was asked about.
struct Forgetful;

#[tonic::async_trait]
impl SessionStore for Forgetful {
    async fn delete_session(
        &self,
        request: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteSessionResponse>, Status> {
        ficus_kit::auth::audit::note(&request);
        Err(Status::not_found("no such session"))
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|KeyValue { key: found, .. }| found.as_str() == key).map(|kv| kv.value.to_string())
}

#[tokio::test]
async fn a_change_and_a_refusal_carry_who_what_and_how_it_ended_on_their_spans() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    telemetry::init_with_provider(&TelemetryConfig::default(), provider.clone()).expect("subscriber installs");

    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "t-app,shop,1,app\nt-viewer,eve,2,viewer\n").expect("write tokens");
    let mut config = ServerConfig::ephemeral();
    config.auth.token_file = Some(tokens);
    let shutdown = CancellationToken::new();
    let routes = tonic::service::Routes::new(SessionStoreServer::new(Forgetful));
    let running = Server::new("ficus.test.Forgetful", config, routes).start(shutdown.clone()).await.expect("starts");
    let delete_as = |token: &str| {
        let credentials = Credentials { token: Some(BearerToken::new(token).expect("token")), tls: None };
        let channel = client::connect_with(&running.grpc_addr.to_string(), Duration::from_secs(5), &credentials)
            .expect("address");
        async move {
            let request = DeleteSessionRequest { id: "0123456789abcdef".into() };
            SessionStoreClient::new(channel).delete_session(request).await.expect_err("nothing to delete").code()
        }
    };
    assert_eq!(delete_as("t-app").await, Code::NotFound);
    assert_eq!(delete_as("t-viewer").await, Code::PermissionDenied);

    let method = "ficus.sessions.v1.SessionStore/DeleteSession";
    let spans = ficus_testkit::wait_until(Duration::from_secs(5), || {
        let exporter = exporter.clone();
        async move {
            let spans: Vec<SpanData> = exporter
                .get_finished_spans()
                .ok()?
                .into_iter()
                .filter(|span| span.name == method && span.span_kind == SpanKind::Server)
                .collect();
            (spans.len() == 2).then_some(spans)
        }
    })
    .await;
    let by = |user: &str| {
        spans.iter().find(|span| attribute(span, "enduser.id").as_deref() == Some(user)).expect("a span of the caller")
    };
    let change = by("shop");
    assert_eq!(attribute(change, "ficus.auth.credential").as_deref(), Some("token"));
    assert_eq!(attribute(change, "ficus.audit.resource").as_deref(), Some("session/012345…"));
    assert_eq!(attribute(change, "ficus.audit.outcome").as_deref(), Some("NOT_FOUND"));
    let refusal = by("eve");
    assert_eq!(attribute(refusal, "ficus.audit.outcome").as_deref(), Some("PERMISSION_DENIED"));
    assert_eq!(attribute(refusal, "ficus.audit.resource"), None, "a refused call never reaches the handler");

    shutdown.cancel();
    running.wait().await.expect("stops");
    provider.shutdown().expect("provider shuts down");
}
