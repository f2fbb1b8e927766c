//! One worker's upstream connections: HTTP/1.1 connections to each endpoint, kept open
//! between requests and reused most recent first.
//!
//! A worker's requests and connections live on its one thread, so the pool is a plain map
//! behind a lock nobody else takes, and a request goes straight to its connection's task
//! without hopping threads.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use http::{Request, Response, uri::Authority};
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::ProxyBody;

/// Most idle connections kept per endpoint; more are closed after their request.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// Why a request got no response from its endpoint.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    /// The TCP connection was refused or failed.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: Authority,
        /// Why.
        source: std::io::Error,
    },
    /// The TCP connection did not complete within the connect timeout.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(Authority),
    /// The connection failed while the request was sent or its response read.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// A response head and when its request was handed to a ready connection.
///
/// A backend's latency is measured from `handed`, not from when the proxy chose the
/// backend, so connection set-up is not part of it: how often a backend needs a new
/// connection depends on its share of the traffic (a 5% side's connections idle out and
/// its bursts outgrow its pool more often) rather than on the backend, and counting it
/// would make the smaller side of an identical pair look slower.
#[derive(Debug)]
pub(super) struct Sent {
    /// The response head; its body still streams from the connection.
    pub(super) response: Response<Incoming>,
    /// When the request was handed to the connection that answered it.
    pub(super) handed: Instant,
}

/// A connection waiting for its next request.
#[derive(Debug)]
struct Pooled {
    sender: http1::SendRequest<ProxyBody>,
    /// When it was last handed a request.
    used: Instant,
}

/// The pool of one worker.
#[derive(Debug)]
pub(super) struct Upstreams {
    idle: Mutex<HashMap<Authority, Vec<Pooled>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Upstreams {
    /// An empty pool; connections wait at most `idle_timeout` for their next request.
    pub(super) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self { idle: Mutex::new(HashMap::new()), connect_timeout, idle_timeout })
    }

    /// Closes idle connections past the idle timeout every half of it, until `stop`.
    pub(super) fn sweep_until(self: &Arc<Self>, stop: CancellationToken) {
        let pool = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(pool.idle_timeout / 2);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => pool.sweep(),
                }
            }
        });
    }

    /// Sends `request` (origin-form URI, `Host` set) to `endpoint` on a pooled connection,
    /// or a new one. Returns the response head and when the request was handed to the
    /// connection that answered it: the moment the backend's own time starts, after any
    /// connection set-up (see `Sent`).
    pub(super) async fn send(
        &self,
        endpoint: &Authority,
        mut request: Request<ProxyBody>,
    ) -> Result<Sent, UpstreamError> {
        // A pooled connection may have been closed by the backend since its last request;
        // a request it could not take is sent again on the next one, or a new one.
        while let Some(mut sender) = self.checkout(endpoint) {
            let handed = Instant::now();
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.checkin(endpoint, sender);
                    return Ok(Sent { response, handed });
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(failed.into_error().into()),
                },
            }
        }
        let (mut sender, connection) = self.connect(endpoint).await?;
        spawn_connection(endpoint, connection);
        let handed = Instant::now();
        let response = sender.send_request(request).await?;
        self.checkin(endpoint, sender);
        Ok(Sent { response, handed })
    }

    /// Sends an upgrade request (a WebSocket handshake) to `endpoint` on a connection of
    /// its own, which after a `101 Switching Protocols` belongs to the tunnel and never
    /// returns to the pool.
    pub(super) async fn send_upgrade(
        &self,
        endpoint: &Authority,
        request: Request<ProxyBody>,
    ) -> Result<Sent, UpstreamError> {
        let (mut sender, connection) = self.connect(endpoint).await?;
        let endpoint_name = endpoint.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, endpoint = %endpoint_name, "upgraded upstream connection ended with an error");
            }
        });
        let handed = Instant::now();
        let response = sender.send_request(request).await?;
        Ok(Sent { response, handed })
    }

    /// A ready connection to `endpoint`, most recently used first. Closed and expired
    /// connections are dropped on the way; busy ones (still streaming a response) stay.
    fn checkout(&self, endpoint: &Authority) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let pooled = idle.get_mut(endpoint)?;
        let now = Instant::now();
        pooled.retain(|connection| !self.expired(connection, now));
        let ready = pooled.iter().rposition(|connection| connection.sender.is_ready())?;
        Some(pooled.swap_remove(ready).sender)
    }

    fn checkin(&self, endpoint: &Authority, sender: http1::SendRequest<ProxyBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let pooled = idle.entry(endpoint.clone()).or_default();
        if pooled.len() < MAX_IDLE_PER_ENDPOINT {
            pooled.push(Pooled { sender, used: Instant::now() });
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        for pooled in idle.values_mut() {
            pooled.retain(|connection| !self.expired(connection, now));
        }
        idle.retain(|_, pooled| !pooled.is_empty());
    }

    fn expired(&self, connection: &Pooled, now: Instant) -> bool {
        connection.sender.is_closed() || now.duration_since(connection.used) > self.idle_timeout
    }

    async fn connect(
        &self,
        endpoint: &Authority,
    ) -> Result<(http1::SendRequest<ProxyBody>, Connection), UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint.as_str()))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(endpoint.clone()))?
            .map_err(|source| UpstreamError::Connect { endpoint: endpoint.clone(), source })?;
        // Requests and responses are forwarded as they come; Nagle would hold them back.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %endpoint, "cannot disable Nagle on an upstream connection");
        }
        // Heads and small bodies go out from one buffer in one write.
        Ok(http1::Builder::new().writev(false).handshake(TokioIo::new(stream)).await?)
    }
}

/// An upstream connection's task, to be spawned.
type Connection = http1::Connection<TokioIo<TcpStream>, ProxyBody>;

fn spawn_connection(endpoint: &Authority, connection: Connection) {
    let endpoint = endpoint.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, %endpoint, "upstream connection ended with an error");
        }
    });
}
