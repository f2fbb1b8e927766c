//! Calling other ficus services.
//!
//! [`connect`] gives a channel that opens lazily, times out connects and calls, and wraps
//! every call in a `grpc.client` span whose W3C trace context travels in the request
//! headers, so the callee's server span becomes its child.

use std::{
    path::Path,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use ficus_tls_connector::Dial;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use opentelemetry::{global, propagation::Injector};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tower::Service;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    auth::TokenFileError,
    reload,
    tls::{ClientTls, TlsError},
};

/// How long establishing a connection may take before the call fails with UNAVAILABLE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel to another service that propagates trace context.
pub type TracedChannel = TraceContext<Channel>;

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {address}: {reason}")]
pub struct AddressError {
    address: String,
    reason: String,
}

/// A lazily connecting channel to `address` (`http://host:port` or `host:port`); each call
/// may take at most `timeout`.
pub fn connect(address: &str, timeout: Duration) -> Result<TracedChannel, AddressError> {
    connect_with(address, timeout, &Credentials::default())
}

/// What a client proves itself with: a bearer token, TLS, or both.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Presented on every call.
    pub token: Option<BearerToken>,
    /// Used for every connection; with it, `host:port` addresses are dialled over TLS.
    pub tls: Option<ClientTls>,
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The token file cannot be used.
    #[error(transparent)]
    Token(#[from] TokenFileError),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// [`connect`] with `credentials`. An `https://` address without TLS settings is dialled
/// over TLS trusting the system's roots; an `http://` address with them is refused, since
/// the caller meant TLS and would otherwise send its token in the clear.
pub fn connect_with(
    address: &str,
    timeout: Duration,
    credentials: &Credentials,
) -> Result<TracedChannel, AddressError> {
    let refuse = |reason: String| AddressError { address: address.to_owned(), reason };
    let dial = Dial::of(address, credentials.tls.is_some()).map_err(refuse)?;
    let tls = match (dial.tls, &credentials.tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls.clone()),
        (true, None) => Some(ClientTls::system().map_err(|error| refuse(error.to_string()))?),
    };
    let uri = dial.uri();
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|source| refuse(source.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true);
    let channel = match tls {
        Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
        None => endpoint.connect_lazy(),
    };
    Ok(TraceContext { inner: channel, authorization: credentials.token.clone() })
}

/// A bearer token a client presents in `authorization: Bearer <token>`; one read from a
/// file may follow the file as it changes. Cheap to clone.
#[derive(Clone)]
pub struct BearerToken(Arc<ArcSwap<HeaderValue>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// `token`, which must be visible ASCII without spaces.
    pub fn new(token: &str) -> Result<Self, InvalidToken> {
        Ok(Self(Arc::new(ArcSwap::from_pointee(header(token)?))))
    }

    /// The token in the file at `path`, surrounding whitespace ignored.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        Ok(Self(Arc::new(ArcSwap::from_pointee(header_in(path)?))))
    }

    /// [`BearerToken::from_file`], re-read whenever the file changes for as long as a
    /// clone is alive: a projected ServiceAccount token, which the kubelet renews before
    /// it expires, keeps working.
    pub fn follow_file(path: &Path) -> Result<Self, TokenFileError> {
        let (files, path) = (vec![path.to_owned()], path.to_owned());
        let build = move || header_in(&path);
        Ok(Self(reload::load_and_follow("bearer token", files, build, CancellationToken::new())?))
    }

    /// The token itself, for clients that build their own header (e.g. the session
    /// client).
    pub fn secret(&self) -> String {
        let value = self.0.load();
        value.to_str().unwrap_or_default().strip_prefix("Bearer ").unwrap_or_default().to_owned()
    }

    /// The header value, as last read.
    fn header(&self) -> HeaderValue {
        HeaderValue::clone(&self.0.load())
    }
}

/// `Bearer <token>`, marked sensitive so it is never logged.
fn header(token: &str) -> Result<HeaderValue, InvalidToken> {
    let usable = !token.is_empty() && token.bytes().all(|byte| byte.is_ascii_graphic());
    let mut value =
        usable.then(|| HeaderValue::try_from(format!("Bearer {token}")).ok()).flatten().ok_or(InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

fn header_in(path: &Path) -> Result<HeaderValue, TokenFileError> {
    let text = crate::auth::read_token_file(path)?;
    header(text.trim()).map_err(|InvalidToken| TokenFileError::Line {
        path: path.to_owned(),
        line: 1,
        reason: InvalidToken.to_string(),
    })
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
    /// The caller's token, if it has one.
    authorization: Option<BearerToken>,
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
            request.headers_mut().insert(http::header::AUTHORIZATION, authorization.header());
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
