//! Statistics over every replica of the data plane.
//!
//! Each proxy replica counts the requests it serves. Replicas that share a Redis store
//! publish their closed seconds there, per route, backend and half, and a snapshot adds up
//! its own seconds and everyone else's, so that analysis gets the same totals whichever
//! replica it asks. A second is published within about a second of closing; a snapshot
//! therefore ends [`LAG`] ago, when every live replica has published every second of its
//! window. A replica that dies stops publishing, and what it published still counts until
//! it leaves the retention.
//!
//! In Redis, route `r` is the sorted set `ficus:traffic:stats:{r}`: one member per replica,
//! backend, half and second, scored by the Unix second. Members are binary (see
//! [`encode`]); the set expires a retention after its last write, and seconds older than
//! the retention are trimmed at every publication.

use std::{collections::HashSet, time::Duration};

use bytes::{Buf, BufMut};
use prost::encoding::{decode_varint, encode_varint};
use redis::aio::ConnectionManager;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ClosedSecond, Half, Published, Stats, series::Counts, series::OUTCOMES, series::Period};

/// How far back a cluster-wide snapshot ends: a second closes when it ends, is published
/// at the next tick, and then counts.
pub const LAG: Duration = Duration::from_secs(2);

/// How often closed seconds are published.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// The first byte of every member, so a change of layout is recognised.
const LAYOUT: u8 = 1;

/// Most latency buckets a member may hold: a second's dense histogram has 2560.
const MAX_BUCKETS: u64 = 4096;

/// Why the other replicas' statistics could not be exchanged.
pub type ClusterError = redis::RedisError;

/// This replica's side of the exchange; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    redis: ConnectionManager,
    /// Tells this replica's members from the others'.
    replica: [u8; 16],
    retention_secs: u64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("retention_secs", &self.retention_secs).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Joins the replicas sharing the Redis at `url`, keeping seconds as long as `stats`.
    pub async fn join(url: &str, stats: &Stats) -> Result<Self, ClusterError> {
        ficus_kit::tls::install_crypto_provider();
        let redis = ConnectionManager::new(redis::Client::open(url)?).await?;
        Ok(Self { redis, replica: rand::random(), retention_secs: stats.inner.retention_secs })
    }

    /// Publishes `stats`' closed seconds every half second until `stop`. Seconds that
    /// cannot be published now (Redis down) are published once it is back, as long as
    /// they are still retained.
    pub async fn publish(self, stats: Stats, stop: CancellationToken) {
        let mut published = Published::new();
        let mut ticks = tokio::time::interval(PUBLISH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let mut attempt = published.clone();
            let seconds = stats.closed_seconds(Instant::now().into_std(), &mut attempt);
            match self.write(&seconds).await {
                Ok(()) => published = attempt,
                Err(error) => tracing::debug!(%error, "statistics not published; retrying"),
            }
        }
    }

    async fn write(&self, seconds: &[ClosedSecond]) -> Result<(), ClusterError> {
        if seconds.is_empty() {
            return Ok(());
        }
        let now_unix = seconds.iter().map(|second| second.unix_second).max().unwrap_or_default();
        let mut pipe = redis::pipe();
        let mut routes = HashSet::new();
        for second in seconds {
            let key = key(&second.route);
            pipe.zadd(&key, encode(&self.replica, second), second.unix_second).ignore();
            routes.insert(key);
        }
        for key in routes {
            let expired = now_unix.saturating_sub(self.retention_secs);
            pipe.cmd("ZREMRANGEBYSCORE").arg(&key).arg("-inf").arg(format!("({expired}")).ignore();
            pipe.expire(&key, i64::try_from(self.retention_secs + 60).unwrap_or(i64::MAX)).ignore();
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await
    }

    /// The seconds the other replicas published for `route` from Unix second `first` to
    /// `last`.
    pub async fn fetch(&self, route: &str, first: u64, last: u64) -> Result<Remote, ClusterError> {
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
            .arg(key(route))
            .arg(first)
            .arg(last)
            .query_async(&mut self.redis.clone())
            .await?;
        let mut remote = Remote::default();
        let mut replicas = HashSet::new();
        for member in members {
            match decode(&member) {
                Some((replica, _)) if replica == self.replica => {}
                Some((replica, second)) => {
                    replicas.insert(replica);
                    remote.seconds.push(second);
                }
                None => tracing::warn!(route, "a published second does not decode; skipped"),
            }
        }
        remote.others = u32::try_from(replicas.len()).unwrap_or(u32::MAX);
        Ok(remote)
    }
}

fn key(route: &str) -> String {
    format!("ficus:traffic:stats:{route}")
}

/// One second another replica published.
#[derive(Debug)]
pub(super) struct RemoteSecond {
    backend: String,
    half: Half,
    unix_second: u64,
    period: Period,
}

/// What the other replicas published for a window: their seconds, and how many they are.
#[derive(Debug, Default)]
pub struct Remote {
    seconds: Vec<RemoteSecond>,
    others: u32,
}

impl Remote {
    /// Replicas counted: this one and the others.
    pub(super) fn replicas(&self) -> u32 {
        self.others.saturating_add(1)
    }

    /// The seconds of `backend`: half, Unix second, counts and buckets.
    pub(super) fn seconds_of(&self, backend: &str) -> Vec<(Half, u64, &Period)> {
        let seconds = self.seconds.iter().filter(|second| second.backend == backend);
        seconds.map(|second| (second.half, second.unix_second, &second.period)).collect()
    }
}

/// A member: layout, replica, backend, half, Unix second, counts, then the buckets with
/// their bounds as deltas, all integers as varints.
fn encode(replica: &[u8; 16], second: &ClosedSecond) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + second.backend.len() + 6 * second.period.buckets.len());
    out.put_u8(LAYOUT);
    out.put_slice(replica);
    encode_varint(second.backend.len() as u64, &mut out);
    out.put_slice(second.backend.as_bytes());
    out.put_u8(match second.half {
        Half::First => 0,
        Half::Second => 1,
    });
    encode_varint(second.unix_second, &mut out);
    let counts = &second.period.counts;
    for count in counts.by_outcome {
        encode_varint(count, &mut out);
    }
    encode_varint(counts.latency_sum_micros, &mut out);
    encode_varint(counts.latency_max_micros, &mut out);
    encode_varint(second.period.buckets.len() as u64, &mut out);
    let mut previous = 0;
    for &(micros, count) in &second.period.buckets {
        encode_varint(u64::from(micros.saturating_sub(previous)), &mut out);
        encode_varint(count, &mut out);
        previous = micros;
    }
    out
}

/// The replica and second of a member; `None` for anything that is not one.
fn decode(mut member: &[u8]) -> Option<([u8; 16], RemoteSecond)> {
    let buf = &mut member;
    if buf.remaining() < 17 || buf.get_u8() != LAYOUT {
        return None;
    }
    let mut replica = [0; 16];
    buf.copy_to_slice(&mut replica);
    let length = usize::try_from(decode_varint(buf).ok()?).ok()?;
    if buf.remaining() < length + 1 {
        return None;
    }
    let backend = String::from_utf8(buf.copy_to_bytes(length).to_vec()).ok()?;
    let half = match buf.get_u8() {
        0 => Half::First,
        1 => Half::Second,
        _ => return None,
    };
    let unix_second = decode_varint(buf).ok()?;
    let mut counts = Counts::default();
    for slot in 0..OUTCOMES {
        counts.by_outcome[slot] = decode_varint(buf).ok()?;
    }
    counts.latency_sum_micros = decode_varint(buf).ok()?;
    counts.latency_max_micros = decode_varint(buf).ok()?;
    let buckets = decode_varint(buf).ok()?;
    if buckets > MAX_BUCKETS {
        return None;
    }
    let mut period = Period { index: 0, counts, buckets: Vec::with_capacity(usize::try_from(buckets).ok()?) };
    let mut micros: u32 = 0;
    for _ in 0..buckets {
        micros = micros.checked_add(u32::try_from(decode_varint(buf).ok()?).ok()?)?;
        period.buckets.push((micros, decode_varint(buf).ok()?));
    }
    buf.is_empty().then_some((replica, RemoteSecond { backend, half, unix_second, period }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second() -> ClosedSecond {
        let mut counts = Counts::default();
        counts.add(1, 1_200);
        counts.add(4, 90_000);
        ClosedSecond {
            route: "shop".into(),
            backend: "canary".into(),
            half: Half::Second,
            unix_second: 1_800_000_000,
            period: Period { index: 7, counts, buckets: vec![(1_207, 1), (90_111, 1)] },
        }
    }

    #[test]
    fn a_member_reads_back_as_written() {
        let replica = [9; 16];
        let (found, remote) = decode(&encode(&replica, &second())).expect("decodes");
        assert_eq!(found, replica);
        assert_eq!((remote.backend.as_str(), remote.half, remote.unix_second), ("canary", Half::Second, 1_800_000_000));
        assert_eq!(remote.period.counts, second().period.counts);
        assert_eq!(remote.period.buckets, second().period.buckets);
    }

    #[test]
    fn truncated_or_padded_members_are_refused() {
        let member = encode(&[1; 16], &second());
        for cut in 0..member.len() {
            assert!(decode(&member[..cut]).is_none(), "cut at {cut}");
        }
        let mut padded = member.clone();
        padded.push(0);
        assert!(decode(&padded).is_none());
    }

    proptest::proptest! {
        /// Whatever a member holds, decoding answers or refuses; it never panics.
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
