//! Session metrics on `/metrics`, next to the per-rpc calls and latency kit records.
//!
//! The counters say what the rpc metrics cannot: a created session is an OK
//! CreateSession, but a delete that found nothing and a lost compare-and-set look like
//! any other OK or ABORTED call there. Calls made over a Pipeline stream are not rpcs of
//! their own, so they are counted and timed here, by operation and status code.

use std::time::Duration;

use ficus_kit::status::code_name;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Labels of a pipelined call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: &'static str,
    code: &'static str,
}

/// Labels of a pipelined call's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

type LatencyFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;

/// What a pipelined call asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// CreateSession.
    Create,
    /// GetSession.
    Get,
    /// UpdateSession.
    Update,
    /// TouchSession.
    Touch,
    /// DeleteSession.
    Delete,
    /// A call that names no operation.
    Unknown,
}

impl Operation {
    const ALL: [Self; 6] = [Self::Create, Self::Get, Self::Update, Self::Touch, Self::Delete, Self::Unknown];

    /// The `operation` label.
    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Get => "get",
            Self::Update => "update",
            Self::Touch => "touch",
            Self::Delete => "delete",
            Self::Unknown => "unknown",
        }
    }
}

/// One operation's series that nearly every call updates, held rather than looked up
/// by label on each call: a session call is short enough for the lookup to show.
#[derive(Clone, Debug)]
struct OperationSeries {
    ok: Counter,
    latency: Histogram,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~3.3 s: a cached read on loopback up to the store's round-trip deadline.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// Metrics the session operations update; clones share them.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Sessions created.
    pub created: Counter,
    /// Live sessions removed by DeleteSession (not counting deletes of absent ones).
    pub deleted: Counter,
    /// Updates refused because the session had changed since the caller read it.
    pub conflicts: Counter,
    /// Updates written from a record this replica had cached, without reading it again.
    pub updates_from_cache: Counter,
    pipelined_calls: Family<CallLabels, Counter>,
    pipelined_latency: LatencyFamily,
    /// The OK count and latency of each [`Operation`], at its discriminant.
    operations: [OperationSeries; Operation::ALL.len()],
    pipeline_streams: Gauge,
    pipeline_messages: Counter,
}

/// Counts a Pipeline stream as open until dropped.
#[derive(Debug)]
pub struct OpenStream(Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let pipelined_calls = Family::<CallLabels, Counter>::default();
        let pipelined_latency = LatencyFamily::new_with_constructor(latency_histogram);
        let operations = Operation::ALL.map(|operation| {
            let operation = operation.name();
            OperationSeries {
                ok: pipelined_calls.get_or_create_owned(&CallLabels { operation, code: code_name(tonic::Code::Ok) }),
                latency: pipelined_latency.get_or_create_owned(&OperationLabels { operation }),
            }
        });
        Self {
            created: Counter::default(),
            deleted: Counter::default(),
            conflicts: Counter::default(),
            updates_from_cache: Counter::default(),
            pipelined_calls,
            pipelined_latency,
            operations,
            pipeline_streams: Gauge::default(),
            pipeline_messages: Counter::default(),
        }
    }
}

impl Metrics {
    /// Exports these metrics through `registry` (prefixed `ficus_` by kit).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("sessions_created", "Sessions created", self.created.clone());
        registry.register("sessions_deleted", "Live sessions deleted on request", self.deleted.clone());
        registry.register(
            "session_update_conflicts",
            "Session updates refused because the expected version was stale",
            self.conflicts.clone(),
        );
        registry.register(
            "session_updates_from_cache",
            "Session updates written from a record this replica had cached, without reading it again",
            self.updates_from_cache.clone(),
        );
        registry.register(
            "session_pipeline_calls",
            "Session calls made over Pipeline streams, by operation and status code",
            self.pipelined_calls.clone(),
        );
        registry.register(
            "session_pipeline_call_duration_seconds",
            "Time to answer session calls made over Pipeline streams, by operation",
            self.pipelined_latency.clone(),
        );
        registry.register(
            "session_pipeline_streams",
            "Pipeline streams open now; a client keeps one per connection",
            self.pipeline_streams.clone(),
        );
        registry.register(
            "session_pipeline_messages",
            "Messages of calls read from Pipeline streams; calls per message is how well clients batch",
            self.pipeline_messages.clone(),
        );
    }

    /// Counts a Pipeline stream as open for as long as the returned guard lives.
    pub fn stream_opened(&self) -> OpenStream {
        self.pipeline_streams.inc();
        OpenStream(self.pipeline_streams.clone())
    }

    /// Counts a message of calls read from a Pipeline stream.
    pub fn pipeline_message(&self) {
        self.pipeline_messages.inc();
    }

    /// Counts a pipelined `operation` that ended with `code` after `elapsed`.
    pub fn pipelined(&self, operation: Operation, code: tonic::Code, elapsed: Duration) {
        let series = &self.operations[operation as usize];
        if code == tonic::Code::Ok {
            series.ok.inc();
        } else {
            let labels = CallLabels { operation: operation.name(), code: code_name(code) };
            self.pipelined_calls.get_or_create(&labels).inc();
        }
        series.latency.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_series_of_its_own() {
        // `pipelined` finds an operation's series at its discriminant.
        for (index, operation) in Operation::ALL.into_iter().enumerate() {
            assert_eq!(operation as usize, index, "{operation:?}");
        }
    }
}
