//! The layer every gRPC call passes through: a `grpc.server` span whose parent is the
//! caller's trace context, and per-rpc call counts and latency by status code.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use opentelemetry::{global, propagation::Extractor};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Labels of the per-rpc metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

type LatencyFamily = Family<CallLabels, Histogram, fn() -> Histogram>;

/// The `method` label of calls answered UNIMPLEMENTED, which is what a path the server has
/// no handler for gets: the path is the caller's choice, and a label per made-up path would
/// let anyone who reaches the port add series to `/metrics` without bound. The server's
/// own methods keep their names, since none of them answers UNIMPLEMENTED.
const UNKNOWN_METHOD: &str = "unknown";

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s: loopback calls to slow dependency timeouts.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17))
}

/// Per-rpc metrics, registered once per service.
#[derive(Clone, Debug)]
pub(crate) struct CallMetrics {
    calls: Family<CallLabels, Counter>,
    latency: LatencyFamily,
}

impl CallMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let latency = LatencyFamily::new_with_constructor(latency_histogram);
        registry.register("grpc_server_calls", "gRPC calls by method and status code", calls.clone());
        registry.register(
            "grpc_server_call_duration_seconds",
            "Time to the response headers of gRPC calls by method and status code",
            latency.clone(),
        );
        Self { calls, latency }
    }

    fn record(&self, method: &str, code: &str, seconds: f64) {
        let labels = CallLabels { method: method.to_owned(), code: code.to_owned() };
        self.calls.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }
}

/// Adds [`Observe`] to a service.
#[derive(Clone, Debug)]
pub(crate) struct ObserveLayer {
    metrics: Arc<CallMetrics>,
}

impl ObserveLayer {
    pub(crate) fn new(metrics: CallMetrics) -> Self {
        Self { metrics: Arc::new(metrics) }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner, metrics: self.metrics.clone() }
    }
}

/// Traces and measures each call.
#[derive(Clone, Debug)]
pub(crate) struct Observe<S> {
    inner: S,
    metrics: Arc<CallMetrics>,
}

impl<S, B, R> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let parent =
            global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(request.headers())));
        // A missing or malformed traceparent leaves the span a root; nothing to report.
        let _ = span.set_parent(parent);
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let result = future.await;
                // Errors returned by handlers travel in the headers (trailers-only responses);
                // a response that starts normally reports its status in trailers, as OK here.
                let code = response_code(&result);
                tracing::Span::current().record("rpc.grpc.status_code", code as i32);
                let label = if code == Code::Unimplemented { UNKNOWN_METHOD } else { method.as_str() };
                metrics.record(label, crate::status::code_name(code), started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

/// The status a call ended with. Errors returned by handlers travel in the headers
/// (trailers-only responses); a response that starts normally reports its status in
/// trailers, and counts as OK here. A transport failure is UNAVAILABLE.
pub(crate) fn response_code<R, E>(result: &Result<Response<R>, E>) -> Code {
    match result {
        Ok(response) => response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<i32>().ok())
            .map_or(Code::Ok, Code::from),
        Err(_) => Code::Unavailable,
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
