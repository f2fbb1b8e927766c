//! Calling other ficus services.
//!
//! [`connect`] gives a channel that opens lazily, times out connects and calls, and wraps
//! every call in a `grpc.client` span whose W3C trace context travels in the request
//! headers, so the callee's server span becomes its child.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use opentelemetry::{global, propagation::Injector};
use tonic::transport::{Channel, Endpoint};
use tower::Service;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How long establishing a connection may take before the call fails with UNAVAILABLE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel to another service that propagates trace context.
pub type TracedChannel = TraceContext<Channel>;

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {address}: {source}")]
pub struct AddressError {
    address: String,
    source: tonic::transport::Error,
}

/// A lazily connecting channel to `address` (`http://host:port` or `host:port`); each call
/// may take at most `timeout`.
pub fn connect(address: &str, timeout: Duration) -> Result<TracedChannel, AddressError> {
    let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|source| AddressError { address: address.to_owned(), source })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true);
    Ok(TraceContext { inner: endpoint.connect_lazy() })
}

/// Wraps calls in a client span and injects its context into the request headers.
#[derive(Clone, Debug)]
pub struct TraceContext<S> {
    inner: S,
}

impl<S> TraceContext<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> Service<Request<B>> for TraceContext<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            rpc.system = "grpc",
        );
        inject(&span, request.headers_mut());
        let _entered = span.enter();
        self.inner.call(request).in_current_span()
    }
}

/// Writes `span`'s trace context into `headers` (W3C `traceparent`, `tracestate`).
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    let context = span.context();
    global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut HeaderInjector(headers)));
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// Another ficus service this one needs, probed through its gRPC health service.
#[derive(Clone, Debug)]
pub struct Peer {
    service: &'static str,
    health: tonic_health::pb::health_client::HealthClient<TracedChannel>,
}

impl Peer {
    /// The service named `service` (e.g. `ficus.traffic.v1.TrafficControl`) behind `channel`.
    pub fn new(service: &'static str, channel: TracedChannel) -> Self {
        Self { service, health: tonic_health::pb::health_client::HealthClient::new(channel) }
    }
}

impl crate::server::Dependency for Peer {
    fn name(&self) -> &str {
        self.service
    }

    fn probe(&self) -> futures::future::BoxFuture<'_, Result<(), String>> {
        let mut health = self.health.clone();
        let request = tonic_health::pb::HealthCheckRequest { service: self.service.to_owned() };
        Box::pin(async move {
            let response = health.check(request).await.map_err(|status| status.message().to_owned())?;
            match response.into_inner().status() {
                tonic_health::pb::health_check_response::ServingStatus::Serving => Ok(()),
                status => Err(format!("reports {}", status.as_str_name())),
            }
        })
    }
}
