//! Calling other ficus services.
//!
//! [`connect`] gives a channel that opens lazily, times out connects and calls, and wraps
//! every call in a `grpc.client` span whose W3C trace context travels in the request
//! headers, so the callee's server span becomes its child.

use std::{
    path::Path,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use opentelemetry::{global, propagation::Injector};
use tonic::transport::{Channel, Endpoint};
use tower::Service;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::TokenFileError;

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
    connect_as(address, timeout, None)
}

/// [`connect`], presenting `token` on every call when given.
pub fn connect_as(
    address: &str,
    timeout: Duration,
    token: Option<&BearerToken>,
) -> Result<TracedChannel, AddressError> {
    let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|source| AddressError { address: address.to_owned(), source })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true);
    let authorization = token.map(|token| token.0.clone());
    Ok(TraceContext { inner: endpoint.connect_lazy(), authorization })
}

/// A bearer token a client presents in `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerToken(HeaderValue);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// `token`, which must be visible ASCII without spaces.
    pub fn new(token: &str) -> Result<Self, InvalidToken> {
        let usable = !token.is_empty() && token.bytes().all(|byte| byte.is_ascii_graphic());
        let mut value =
            usable.then(|| HeaderValue::try_from(format!("Bearer {token}")).ok()).flatten().ok_or(InvalidToken)?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// The token in the file at `path`, surrounding whitespace ignored.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let text = crate::auth::read_token_file(path)?;
        Self::new(text.trim()).map_err(|InvalidToken| TokenFileError::Line {
            path: path.to_owned(),
            line: 1,
            reason: InvalidToken.to_string(),
        })
    }
}

/// A token that cannot travel in a header.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("a bearer token must be visible ASCII characters without spaces")]
pub struct InvalidToken;

/// Wraps calls in a client span and injects its context into the request headers, with
/// the caller's credential when it has one.
#[derive(Clone, Debug)]
pub struct TraceContext<S> {
    inner: S,
    /// `Bearer <token>`, marked sensitive so it is never logged.
    authorization: Option<HeaderValue>,
}

impl<S> TraceContext<S> {
    /// Wraps `inner`, with no credential.
    pub fn new(inner: S) -> Self {
        Self { inner, authorization: None }
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
        if let Some(authorization) = &self.authorization {
            request.headers_mut().insert(http::header::AUTHORIZATION, authorization.clone());
        }
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
