//! Trace context crosses a gRPC hop: the server's span is a child of the caller's.

use std::time::Duration;

use ficus_kit::{
    client,
    server::{Server, ServerConfig},
    telemetry::{self, TelemetryConfig},
};
use ficus_proto::sessions::v1::session_store_server::{SessionStore, SessionStoreServer};
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A service with no methods of its own: the call goes to the health service kit adds.
struct Empty;

impl SessionStore for Empty {}

fn find<'a>(spans: &'a [SpanData], name: &str, kind: SpanKind) -> Option<&'a SpanData> {
    spans.iter().find(|span| span.name == name && span.span_kind == kind)
}

#[tokio::test]
async fn the_server_span_is_a_child_of_the_client_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    telemetry::init_with_provider(&TelemetryConfig::default(), provider.clone()).expect("subscriber installs");

    let shutdown = CancellationToken::new();
    let routes = tonic::service::Routes::new(SessionStoreServer::new(Empty));
    let running = Server::new("ficus.test.Empty", ServerConfig::ephemeral(), routes)
        .start(shutdown.clone())
        .await
        .expect("server starts");
    let channel = client::connect(&running.grpc_addr.to_string(), Duration::from_secs(5)).expect("valid address");
    let mut health = HealthClient::new(channel);

    let caller = tracing::info_span!("caller");
    let caller_trace = caller.context().span().span_context().trace_id();
    health
        .check(HealthCheckRequest { service: String::new() })
        .instrument(caller.clone())
        .await
        .expect("health answers");
    drop(caller);

    let method = "grpc.health.v1.Health/Check";
    let spans = ficus_testkit::wait_until(Duration::from_secs(5), || {
        let exporter = exporter.clone();
        async move {
            let spans = exporter.get_finished_spans().ok()?;
            let complete = find(&spans, method, SpanKind::Client).is_some()
                && find(&spans, method, SpanKind::Server).is_some()
                && spans.iter().any(|span| span.name == "caller");
            complete.then_some(spans)
        }
    })
    .await;
    let client_span = find(&spans, method, SpanKind::Client).expect("client span");
    let server_span = find(&spans, method, SpanKind::Server).expect("server span");
    let caller_span = spans.iter().find(|span| span.name == "caller").expect("caller span");

    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id(),
        "server span's parent is the client span"
    );
    assert_eq!(client_span.parent_span_id, caller_span.span_context.span_id(), "client span's parent is the caller");
    assert_eq!(server_span.span_context.trace_id(), caller_trace, "one trace across the hop");
    assert!(server_span.parent_span_is_remote, "the server learnt its parent from the wire");

    shutdown.cancel();
    running.wait().await.expect("server stops cleanly");
    provider.shutdown().expect("provider shuts down");
}
