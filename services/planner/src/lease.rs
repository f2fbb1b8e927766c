//! Which replica drives which rollout.
//!
//! With the shared store, every rollout has a lease of its own (`lease/rollout/{id}`),
//! so N replicas share the work: each claims rollouts up to its fair share (the rollouts
//! to drive over the live replicas, rounded up), renews the lease of each it drives three
//! times per lease time, and drops a rollout whose lease it could not renew. When a
//! replica dies its leases expire, and the others claim its rollouts within a lease time
//! and a rescan. Replicas say they are alive with a key of their own
//! (`lease/replicas/{name}`) that expires the same way. With the embedded store there is
//! one replica, which claims everything.
//!
//! Planners in a cluster may instead elect one leader through a Kubernetes Lease
//! ([`crate::kubernetes::lease`]); that leader drives every rollout ([`Leadership`]).
//!
//! Each claim has a fencing token, sent with every weight change so that traffic refuses
//! a driver that was replaced. Tokens rise with every claim: each is the previous one plus
//! one, or the current Unix time in milliseconds when that is higher. The time part keeps
//! them rising over a store that was reset or replaced (a new volume, a flushed Redis),
//! whose counters would start again below what traffic has seen and fence the planner out
//! of its own routes forever; Kubernetes Lease tokens are drawn from time the same way.

use std::time::{Duration, SystemTime};

use ficus_kit::{
    clock::Clock,
    store::{Expect, Store, StoreError},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Tells whether this replica leads through a Kubernetes Lease, and with which fencing
/// token.
pub type Leadership = watch::Receiver<Option<u64>>;

/// Per-rollout leases: `lease/rollout/{id}`, holding the driving replica's name.
const ROLLOUT_LEASES: &str = "lease/rollout/";

/// Live replicas: `lease/replicas/{name}`.
const REPLICAS: &str = "lease/replicas/";

/// The last fencing token handed out; never expires, so tokens keep rising.
const TOKEN_KEY: &str = "lease/token";

/// How often drawing a token is tried against replicas drawing at the same time.
const TOKEN_ATTEMPTS: usize = 16;

/// This replica's leases in the shared store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Leases {
    store: Store,
    holder: String,
    ttl: Duration,
    clock: Clock,
}

/// A rollout this replica may drive until the lease is lost.
#[derive(Debug)]
pub struct Claim {
    key: String,
    version: u64,
    /// The fencing token of this claim.
    pub token: u64,
}

impl Leases {
    /// Leases held as `holder` (this replica's name, shown to operators) for `ttl`, with
    /// fencing tokens drawn from `clock`.
    pub fn new(store: Store, holder: String, ttl: Duration, clock: Clock) -> Self {
        Self { store, holder, ttl, clock }
    }

    /// How often held leases are renewed, and how often replicas look for rollouts nobody
    /// drives: three times per lease time, so one slow round trip never loses a lease.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Says this replica is alive, every [`Leases::renew_every`], until `shutdown`; then
    /// says it no longer is, so the others take its share at once.
    pub async fn heartbeat(self, shutdown: CancellationToken) {
        let key = format!("{REPLICAS}{}", self.holder);
        let mut ticks = tokio::time::interval(self.renew_every());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(error) = self.store.put(&key, Vec::new(), Expect::Any, Some(self.ttl)).await {
                tracing::warn!(%error, "cannot announce this replica");
            }
        }
        let _ = self.store.delete(&key, Expect::Any).await;
    }

    /// How many replicas are alive (at least this one).
    pub async fn replicas(&self) -> Result<usize, StoreError> {
        Ok(self.store.scan(REPLICAS).await?.len().max(1))
    }

    /// Claims rollout `id` unless another replica holds it; `None` when one does.
    pub async fn claim(&self, id: &str) -> Result<Option<Claim>, StoreError> {
        let key = format!("{ROLLOUT_LEASES}{id}");
        let version = match self.store.put(&key, self.holder.clone().into_bytes(), Expect::Absent, Some(self.ttl)).await
        {
            Ok(version) => version,
            Err(StoreError::Conflict { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        match next_token(&self.store, self.clock.now()).await {
            Ok(token) => Ok(Some(Claim { key, version, token })),
            Err(error) => {
                // No token, no claim: give the lease back for a later round.
                let _ = self.store.delete(&key, Expect::Version(version)).await;
                Err(error)
            }
        }
    }

    /// Extends `claim` by a lease time; an error when it was lost (expired and taken, or
    /// the store is down, when it may be about to be).
    pub async fn renew(&self, claim: &mut Claim) -> Result<(), StoreError> {
        let holder = self.holder.clone().into_bytes();
        claim.version = self.store.put(&claim.key, holder, Expect::Version(claim.version), Some(self.ttl)).await?;
        Ok(())
    }

    /// Gives `claim` up, so another replica may claim the rollout at once.
    pub async fn release(&self, claim: Claim) {
        let _ = self.store.delete(&claim.key, Expect::Version(claim.version)).await;
    }

    /// The replica that holds rollout `id`'s lease, if any: for operators and tests.
    pub async fn holder(store: &Store, id: &str) -> Result<Option<String>, StoreError> {
        let entry = store.get(&format!("{ROLLOUT_LEASES}{id}")).await?;
        Ok(entry.map(|entry| String::from_utf8_lossy(&entry.value).into_owned()))
    }
}

/// How many rollouts one of `replicas` replicas drives when `rollouts` need driving.
pub fn fair_share(rollouts: usize, replicas: usize) -> usize {
    rollouts.div_ceil(replicas.max(1))
}

/// Draws the next fencing token at time of day `now` (see the module's documentation).
async fn next_token(store: &Store, now: SystemTime) -> Result<u64, StoreError> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (last, expect) = match store.get(TOKEN_KEY).await? {
            Some(entry) => {
                let bytes: [u8; 8] = entry.value.as_slice().try_into().unwrap_or_default();
                (u64::from_be_bytes(bytes), Expect::Version(entry.version))
            }
            None => (0, Expect::Absent),
        };
        let token = last.saturating_add(1).max(now);
        // Replicas claiming at once race here; the loser draws again, above the winner.
        match store.put(TOKEN_KEY, token.to_be_bytes().to_vec(), expect, None).await {
            Ok(_) => return Ok(token),
            Err(StoreError::Conflict { .. }) if attempts < TOKEN_ATTEMPTS => continue,
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_rise_with_every_claim_and_over_a_fresh_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("a").display().to_string(), "planner").await.expect("store");
        let first = next_token(&store, SystemTime::now()).await.expect("token");
        let second = next_token(&store, SystemTime::now()).await.expect("token");
        assert!(second > first, "{second} after {first}");
        // A token from the future (a clock that ran ahead) is still followed, not wrapped.
        store.put(TOKEN_KEY, u64::MAX.to_be_bytes().to_vec(), Expect::Any, None).await.expect("put");
        assert_eq!(
            next_token(&store, SystemTime::now()).await.expect("token"),
            u64::MAX,
            "saturates rather than wrapping"
        );

        // A store that starts over (a new volume) still hands out tokens above those drawn
        // before now: at least the time in milliseconds, not 1.
        let fresh = Store::open(&dir.path().join("b").display().to_string(), "planner").await.expect("store");
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_millis();
        let token = next_token(&fresh, SystemTime::now()).await.expect("token");
        assert!(u128::from(token) >= now, "{token} is below the time, {now} ms");
    }

    #[tokio::test]
    async fn a_rollout_is_claimed_by_one_replica_until_released() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().display().to_string(), "planner").await.expect("store");
        let ttl = Duration::from_secs(60);
        let lease = |holder: &str| Leases::new(store.clone(), holder.into(), ttl, Clock::System);
        let (a, b) = (lease("a"), lease("b"));
        let mut claim = a.claim("r1").await.expect("store").expect("free");
        assert!(b.claim("r1").await.expect("store").is_none(), "held by a");
        a.renew(&mut claim).await.expect("renewed");
        assert_eq!(Leases::holder(&store, "r1").await.expect("store").as_deref(), Some("a"));
        let other = b.claim("r2").await.expect("store").expect("free");
        assert!(other.token > claim.token, "every claim a newer token");
        a.release(claim).await;
        assert!(b.claim("r1").await.expect("store").is_some(), "free once released");
    }

    #[test]
    fn the_work_is_shared_rounded_up() {
        assert_eq!(fair_share(30, 3), 10);
        assert_eq!(fair_share(31, 3), 11);
        assert_eq!(fair_share(1, 3), 1);
        assert_eq!(fair_share(0, 3), 0);
        assert_eq!(fair_share(5, 0), 5, "no replica seen yet: this one");
    }
}
