//! Leadership among planner replicas: exactly one drives rollouts at a time.
//!
//! The lease is one key in the shared store, written with a TTL by its holder and renewed
//! by compare-and-set on its version well before it runs out. If the holder dies, the key
//! expires and another replica takes it within one lease time. With the embedded store
//! there is one replica, so it always leads.
//!
//! Each tenure has a fencing token, sent with every weight change so that traffic refuses
//! a leader that was replaced. Tokens rise with every tenure: each is the previous one
//! plus one, or the current Unix time in milliseconds when that is higher. The time part
//! keeps them rising over a store that was reset or replaced (a new volume, a flushed
//! Redis), whose counters would start again below what traffic has seen and fence the
//! planner out of its own routes forever.

use std::time::{Duration, SystemTime};

use ficus_kit::store::{Expect, Store, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const KEY: &str = "lease/driver";

/// The last fencing token handed out; never expires, so tokens keep rising.
const TOKEN_KEY: &str = "lease/token";

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
                    Ok(version) => match next_token(&store).await {
                        Ok(token) => {
                            tracing::info!(holder, token, "took the driver lease");
                            Some((token, version))
                        }
                        Err(error) => {
                            // No token, no tenure: give the lease back for a later round.
                            tracing::warn!(%error, "cannot draw a fencing token");
                            let _ = store.delete(KEY, Expect::Version(version)).await;
                            None
                        }
                    },
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

/// Draws the next fencing token (see the module's documentation). Only the lease holder
/// calls it, so the compare-and-set loses only to a store that changed under it.
async fn next_token(store: &Store) -> Result<u64, StoreError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    let (last, expect) = match store.get(TOKEN_KEY).await? {
        Some(entry) => {
            let bytes: [u8; 8] = entry.value.as_slice().try_into().unwrap_or_default();
            (u64::from_be_bytes(bytes), Expect::Version(entry.version))
        }
        None => (0, Expect::Absent),
    };
    let token = last.saturating_add(1).max(now);
    store.put(TOKEN_KEY, token.to_be_bytes().to_vec(), expect, None).await?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_rise_with_every_tenure_and_over_a_fresh_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("a").display().to_string(), "planner").await.expect("store");
        let first = next_token(&store).await.expect("token");
        let second = next_token(&store).await.expect("token");
        assert!(second > first, "{second} after {first}");
        // A token from the future (a clock that ran ahead) is still followed by a higher one.
        store.put(TOKEN_KEY, u64::MAX.to_be_bytes().to_vec(), Expect::Any, None).await.expect("put");
        assert_eq!(next_token(&store).await.expect("token"), u64::MAX, "saturates rather than wrapping");

        // A store that starts over (a new volume) still hands out tokens above those drawn
        // before now: at least the time in milliseconds, not 1.
        let fresh = Store::open(&dir.path().join("b").display().to_string(), "planner").await.expect("store");
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_millis();
        let token = next_token(&fresh).await.expect("token");
        assert!(u128::from(token) >= now, "{token} is below the time, {now} ms");
    }
}
