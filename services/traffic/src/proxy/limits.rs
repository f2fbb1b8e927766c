//! What one client can take from the data plane: connections are capped, a connection
//! must start talking within the header timeout, and accept errors back off. Each limit
//! counts on `/metrics` when it is hit.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpStream;

/// How long accepting pauses after the listener fails (e.g. out of file descriptors),
/// rather than spinning on the error.
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The data plane's connection counters, shared by its workers.
#[derive(Clone, Debug, Default)]
pub struct ProxyMetrics {
    open: Gauge,
    refused: Counter,
    silent: Counter,
    accept_errors: Counter,
}

impl ProxyMetrics {
    /// Counters registered in `registry` (under the service's `ficus_` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register("proxy_open_connections", "Client connections the data plane has open", metrics.open.clone());
        registry.register(
            "proxy_connections_refused",
            "Client connections closed at once because max_connections were open",
            metrics.refused.clone(),
        );
        registry.register(
            "proxy_connections_silent",
            "Client connections closed because they sent nothing within the header timeout",
            metrics.silent.clone(),
        );
        registry.register(
            "proxy_accept_errors",
            "Failed accepts (e.g. out of file descriptors), each followed by a pause",
            metrics.accept_errors.clone(),
        );
        metrics
    }

    pub(super) fn accept_failed(&self) {
        self.accept_errors.inc();
    }

    pub(super) fn silent(&self) {
        self.silent.inc();
    }
}

/// Admission of client connections against `max_connections`; cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Admission {
    open: Arc<AtomicI64>,
    max: i64,
    metrics: ProxyMetrics,
}

impl Admission {
    pub(super) fn new(max: usize, metrics: ProxyMetrics) -> Self {
        Self { open: Arc::new(AtomicI64::new(0)), max: i64::try_from(max).unwrap_or(i64::MAX), metrics }
    }

    /// A slot for one more connection, or `None` (counted) when all are taken; the
    /// connection is then to be closed at once rather than queued.
    pub(super) fn admit(&self) -> Option<Slot> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if open > self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused.inc();
            return None;
        }
        self.metrics.open.set(open);
        Some(Slot { admission: self.clone() })
    }
}

/// An admitted connection's place; freed when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    admission: Admission,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self.admission.open.fetch_sub(1, Ordering::AcqRel) - 1;
        self.admission.metrics.open.set(open);
    }
}

/// Whether `stream` sends its first bytes within `timeout`: a connection that says nothing
/// (or closes) is not handed to the HTTP protocols, whose detection would wait for it.
pub(super) async fn speaks_within(stream: &TcpStream, timeout: Duration) -> bool {
    let mut first = [0; 1];
    matches!(tokio::time::timeout(timeout, stream.peek(&mut first)).await, Ok(Ok(read)) if read > 0)
}
