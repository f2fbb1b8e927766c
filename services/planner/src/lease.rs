//! Leadership among planner replicas: exactly one drives rollouts at a time.
//!
//! The lease is one key in the shared store, written with a TTL by its holder and renewed
//! by compare-and-set on its version well before it runs out. If the holder dies, the key
//! expires and another replica takes it within one lease time. The version of the write
//! that won the lease is the fencing token of that tenure. With the embedded store there
//! is one replica, so it always leads.

use std::time::Duration;

use ficus_kit::store::{Expect, Store, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const KEY: &str = "lease/driver";

/// Tells whether this replica leads, and with which fencing token.
pub type Leadership = watch::Receiver<Option<u64>>;

/// Holds or waits for the lease until `shutdown`, reporting leadership on the returned
/// channel. `holder` names this replica in the store, for operators.
pub fn run(store: Store, holder: String, ttl: Duration, shutdown: CancellationToken) -> Leadership {
    let (report, leadership) = watch::channel(None);
    tokio::spawn(async move {
        // Renew three times per lease, so one slow round trip never loses it.
        let mut ticks = tokio::time::interval(ttl / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held: Option<(u64, u64)> = None; // (token, current version)
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => break,
            }
            held = match held {
                Some((token, version)) => {
                    match store.put(KEY, holder.clone().into_bytes(), Expect::Version(version), Some(ttl)).await {
                        Ok(version) => Some((token, version)),
                        Err(StoreError::Unavailable(reason)) => {
                            // The lease may still be ours; stop driving anyway, as the store
                            // cannot record decisions now.
                            tracing::warn!(%reason, "cannot renew the driver lease");
                            None
                        }
                        Err(error) => {
                            tracing::warn!(%error, "lost the driver lease");
                            None
                        }
                    }
                }
                None => match store.put(KEY, holder.clone().into_bytes(), Expect::Absent, Some(ttl)).await {
                    Ok(version) => {
                        tracing::info!(holder, token = version, "took the driver lease");
                        Some((version, version))
                    }
                    Err(_) => None,
                },
            };
            report.send_if_modified(|current| {
                let now = held.map(|(token, _)| token);
                let changed = *current != now;
                *current = now;
                changed
            });
        }
        report.send_replace(None);
        if let Some((_, version)) = held {
            // Hand over at once instead of making the next replica wait out the TTL.
            let _ = store.delete(KEY, Expect::Version(version)).await;
        }
    });
    leadership
}
