//! Session counters on `/metrics`, next to the per-rpc calls and latency kit records.
//!
//! Only what the rpc metrics cannot tell: a created session is an OK CreateSession, but
//! a delete that found nothing and a lost compare-and-set look like any other OK or
//! ABORTED call there.

use prometheus_client::{metrics::counter::Counter, registry::Registry};

/// Counters the session operations bump; clones share the same counters.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Sessions created.
    pub created: Counter,
    /// Live sessions removed by DeleteSession (not counting deletes of absent ones).
    pub deleted: Counter,
    /// Updates refused because the session had changed since the caller read it.
    pub conflicts: Counter,
}

impl Metrics {
    /// Exports these counters through `registry` (prefixed `ficus_` by kit).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("sessions_created", "Sessions created", self.created.clone());
        registry.register("sessions_deleted", "Live sessions deleted on request", self.deleted.clone());
        registry.register(
            "session_update_conflicts",
            "Session updates refused because the expected version was stale",
            self.conflicts.clone(),
        );
    }
}
