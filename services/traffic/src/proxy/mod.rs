//! The embedded data plane: an HTTP/1.1 and HTTP/2 reverse proxy that follows the route
//! table live.
//!
//! Every request reads the table with one atomic load, so a weight change applies to the
//! next request. Upstream connections are pooled. A backend that refuses or does not
//! answer in time gives the client 502 or 504 and counts as that backend's error, because
//! that is exactly the evidence analysis needs to roll it back.
//!
//! The proxy runs on worker threads of its own, each a single-threaded event loop with its
//! own upstream pool that accepts from the shared listener, as nginx's worker processes do:
//! a request never hops between threads, and the data plane never waits behind the control
//! plane's work.

mod choose;
mod forward;
mod limits;
mod upstream;

use std::{convert::Infallible, net::SocketAddr, num::NonZeroUsize, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use self::limits::ProxyMetrics;
use self::{limits::Admission, upstream::Upstreams};
use crate::table::LiveTable;

/// Bodies the proxy sends and returns.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Data plane settings, the `proxy` section of the traffic configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// Listen address of the data plane.
    pub listen: SocketAddr,
    /// Longest wait for an upstream's response headers before answering 504.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest wait for an upstream connection before answering 502.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long an idle connection, client or upstream, is kept; HTTP/2 clients are
    /// pinged at half of it and dropped when a ping goes unanswered for as long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a client has to send a request's head: the first bytes of a new
    /// connection, and each HTTP/1 request head (which includes a keep-alive connection's
    /// wait for its next request).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Client connections open at most; one more is accepted and closed at once.
    pub max_connections: usize,
    /// Streams one HTTP/2 client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Networks of proxies in front (load balancers) whose `X-Forwarded-*` and
    /// `Forwarded` headers are kept and extended; anyone else's are replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest request body copied to a mirror; larger requests are not mirrored.
    pub max_mirror_body_bytes: u64,
    /// How long connections may finish their requests after shutdown starts.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// Threads serving the data plane, each with its own event loop and upstream pool;
    /// one per CPU the process may use when unset.
    pub workers: Option<NonZeroUsize>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_concurrent_streams: 200,
            trusted_proxies: Vec::new(),
            max_mirror_body_bytes: 1 << 20,
            grace_period: Duration::from_secs(10),
            workers: None,
        }
    }
}

impl ProxyConfig {
    /// How many worker threads serve: `workers`, else one per CPU the process may use.
    pub fn worker_count(&self) -> NonZeroUsize {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
    }
}

/// The proxy's state shared by its workers.
#[derive(Debug)]
pub struct Proxy {
    table: Arc<LiveTable>,
    config: ProxyConfig,
    admission: Admission,
    metrics: ProxyMetrics,
}

impl Proxy {
    /// A proxy over `table`, counting its connections in `metrics`.
    pub fn new(table: Arc<LiveTable>, config: ProxyConfig, metrics: ProxyMetrics) -> Self {
        let admission = Admission::new(config.max_connections, metrics.clone());
        Self { table, config, admission, metrics }
    }

    /// Starts the worker threads, which accept from `listener` until `shutdown` and then
    /// let open connections finish within the grace period. The returned task ends when
    /// every worker has, with the first error any of them met.
    pub fn start(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
        listener.set_nonblocking(true)?;
        // Should a thread fail to start or a worker fail, the other workers stop with this token.
        let stop = shutdown.child_token();
        let mut stopped = Vec::new();
        for index in 0..self.config.worker_count().get() {
            let (done, finished) = oneshot::channel();
            let worker = Worker::new(self.clone());
            let (listener, stop_worker, stop_all) = (listener.try_clone(), stop.clone(), stop.clone());
            let started = listener.and_then(|listener| {
                std::thread::Builder::new().name(format!("ficus-proxy-{index}")).spawn(move || {
                    let served =
                        tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|runtime| {
                            runtime.block_on(async move {
                                // Registers with this thread's event loop, so must run inside it.
                                worker.serve(TcpListener::from_std(listener)?, stop_worker).await
                            })
                        });
                    // One worker down takes the data plane down, so the service reports it
                    // instead of serving on with fewer workers unnoticed.
                    if served.is_err() {
                        stop_all.cancel();
                    }
                    let _ = done.send(served);
                })
            });
            if let Err(error) = started {
                stop.cancel();
                return Err(error);
            }
            stopped.push(finished);
        }
        Ok(tokio::spawn(async move {
            let mut outcome = Ok(());
            for finished in stopped {
                let served = finished.await.unwrap_or_else(|_| Err(std::io::Error::other("a proxy worker panicked")));
                outcome = outcome.and(served);
            }
            outcome
        }))
    }
}

/// One worker thread's part of the proxy: its upstream pool, used only from its thread.
#[derive(Debug)]
struct Worker {
    proxy: Arc<Proxy>,
    upstreams: Arc<Upstreams>,
}

impl Worker {
    fn new(proxy: Arc<Proxy>) -> Self {
        let upstreams = Upstreams::new(proxy.config.connect_timeout, proxy.config.idle_timeout);
        Self { proxy, upstreams }
    }

    /// Serves connections from `listener` until `shutdown`, then lets open connections
    /// finish within the grace period.
    async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        let worker = Arc::new(self);
        let config = &worker.proxy.config;
        worker.upstreams.sweep_until(shutdown.clone());
        let mut connections = auto::Builder::new(TokioExecutor::new());
        // Heads and small bodies are copied into one buffer and written with one `write`:
        // cheaper than a vectored write of several small slices.
        connections.http1().timer(TokioTimer::new()).header_read_timeout(config.header_timeout).writev(false);
        connections
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .keep_alive_interval(config.idle_timeout / 2)
            .keep_alive_timeout(config.idle_timeout / 2);
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, client) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Running out of file descriptors must not end the data plane, nor
                        // spin it: the error repeats until a connection closes.
                        tracing::warn!(%error, "cannot accept a connection");
                        worker.proxy.metrics.accept_failed();
                        tokio::time::sleep(limits::ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let Some(slot) = worker.proxy.admission.admit() else {
                drop(stream);
                continue;
            };
            // Responses are forwarded as they come; Nagle would hold small ones back.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot disable Nagle on a client connection");
            }
            let service = {
                let worker = worker.clone();
                hyper::service::service_fn(move |request| worker.clone().handle(client, request))
            };
            let (connections, graceful_watch, worker) = (connections.clone(), graceful.watcher(), worker.clone());
            tokio::spawn(async move {
                let _slot = slot;
                if !limits::speaks_within(&stream, worker.proxy.config.header_timeout).await {
                    worker.proxy.metrics.silent();
                    return;
                }
                let connection = connections.serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(error) = graceful_watch.watch(connection.into_owned()).await {
                    tracing::debug!(%error, %client, "client connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(config.grace_period, graceful.shutdown()).await.is_err() {
            tracing::warn!("data plane grace period over; closing connections still open");
        }
        Ok(())
    }

    async fn handle(
        self: Arc<Self>,
        client: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let headers = request.headers();
        if headers.contains_key(hyper::header::CONTENT_LENGTH) && headers.contains_key(hyper::header::TRANSFER_ENCODING)
        {
            // RFC 9112 §6.1: the two framings disagree about where the request ends, the
            // raw material of request smuggling; refused rather than guessed at.
            return Ok(plain(StatusCode::BAD_REQUEST, "both Content-Length and Transfer-Encoding are set\n"));
        }
        let table = self.proxy.table.load();
        let host = forward::request_host(&request);
        let Some(active) = table.find(host.as_deref(), request.uri().path()) else {
            return Ok(plain(StatusCode::NOT_FOUND, "no route matches this request\n"));
        };
        let Some(choice) = choose::backend(active, request.headers()) else {
            return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "the route has no backend with weight\n"));
        };
        let response = forward::forward(&self, active, (choice.backend, choice.half), client, host, request).await;
        Ok(match choice.new_sticky_cookie {
            Some(cookie) => choose::set_cookie(response, &cookie),
            None => response,
        })
    }
}

/// A short plain-text response generated by the proxy itself.
fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(text.as_bytes())).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
