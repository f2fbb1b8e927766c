//! The Redis backend, for replicas that share state.
//!
//! Layout, for namespace `ns`:
//!
//! - `ficus:ns:e:{key}`: a hash with `val` (the bytes), `ver` (the version) and `exp` (the
//!   expiry in Unix milliseconds, 0 for never), with a matching Redis expiry so that Redis
//!   itself removes expired entries;
//! - `ficus:ns:version`: the store-wide version counter (`INCR`), never deleted, so a
//!   version is never reused;
//! - channel `ficus:ns:changes`: `p:{version}:{key}` after a put, `d:{key}` after a delete,
//!   unless the store was opened with [`Announce::Nothing`].
//!
//! Every write is one Lua script, so the compare-and-set, the version, the expiry and the
//! notification happen atomically. Expiry times come from the server's clock (Redis sets
//! them from a TTL and reports them with `PEXPIRETIME`, both Redis 7), so replicas with
//! skewed clocks still agree on them.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::{
    Client, ErrorKind, IntoConnectionInfo, Msg, ProtocolVersion, RedisError, RedisResult, Script, ScriptInvocation,
    ServerErrorKind,
};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout, timeout_at};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Announce, Change, Entry, Expect, Lifetime, Result, StoreError, WATCH_CAPACITY, Written, check_namespace,
    expiry_time, ttl_millis, unannounced,
};

/// How long to wait for a TCP (and TLS) connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the change feed waits for Redis to answer a subscribe or a ping.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The most one round trip may take in total, reconnecting and the one retry included.
/// This is what makes an outage fail fast with [`StoreError::Unavailable`] instead of
/// hanging a request for as long as the connection manager would keep trying.
const ROUND_TRIP_DEADLINE: Duration = Duration::from_secs(2);

/// Reconnection attempts per failed connection: few and quick, because every caller
/// waits on them; the next operation starts a fresh attempt anyway.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(250);

/// Keys asked for per SCAN and fetched per pipeline during [`RedisStore::scan`].
const SCAN_BATCH: usize = 500;

/// How long [`RedisStore::watch`] waits for the change feed's first subscription. Redis
/// answers within milliseconds when it is up; when it is not, a watcher should not hold up
/// a start (it gets [`Change::Resync`] once the feed is there).
const FEED_SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

/// How often the change feed checks that its connection still answers. A server that
/// vanished without closing the connection would otherwise leave watchers silently deaf.
const FEED_PING_INTERVAL: Duration = Duration::from_secs(5);

/// Delays between attempts to re-establish the change feed.
const FEED_RETRY_MIN: Duration = Duration::from_millis(100);
const FEED_RETRY_MAX: Duration = Duration::from_secs(2);

/// Writes `val` if the expectation holds, with a fresh version and the expiry, and
/// publishes the change when the store announces writes. With `keep` set, a live entry's
/// later expiry (never is the latest) stays.
///
/// Replies `"{version}:{expiry}"`, or `"!{current version}"` (empty when there is none) on
/// a conflict: one string costs Redis less to build and send than an array, and this
/// script is the hot path of every session update. For the same reason the channel and key
/// are passed only when announcing, and Redis works out the deadline itself (`PEXPIRE`,
/// with `GT` to keep a later one) instead of the script doing arithmetic on `TIME`. A new
/// entry that expires gets its version first, since only an existing key takes an expiry.
/// Numbers are formatted with `%d` because Lua would print a large one in exponent notation.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: entry, counter. ARGV: expectation, value, ttl ms (0 = none), keep, then channel and key when announcing
local found = redis.call('HGET', KEYS[1], 'ver')
local expected = ARGV[1]
if (expected == '-' and found) or (expected ~= '' and expected ~= '-' and found ~= expected) then
  return '!' .. (found or '')
end
local version = string.format('%d', redis.call('INCR', KEYS[2]))
local expires = '0'
if ARGV[3] == '0' then
  redis.call('PERSIST', KEYS[1])
else
  if not found then
    redis.call('HSET', KEYS[1], 'ver', version)
  end
  if ARGV[4] == '1' and found then
    redis.call('PEXPIRE', KEYS[1], ARGV[3], 'GT')
  else
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  expires = string.format('%d', math.max(redis.call('PEXPIRETIME', KEYS[1]), 0))
end
redis.call('HSET', KEYS[1], 'val', ARGV[2], 'ver', version, 'exp', expires)
if ARGV[5] then
  redis.call('PUBLISH', ARGV[5], 'p:' .. version .. ':' .. ARGV[6])
end
return version .. ':' .. expires
",
    )
});

/// Deletes the entry if the expectation holds and publishes the change when the store
/// announces writes. Replies `{1, 1}` when it deleted, `{1, 0}` when there was nothing to
/// delete, and `{0, current version or -1}` on a conflict.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: entry. ARGV: expectation, then channel and key when announcing
local found = redis.call('HGET', KEYS[1], 'ver')
local expected = ARGV[1]
if (expected == '-' and found) or (expected ~= '' and expected ~= '-' and found ~= expected) then
  return {0, found and tonumber(found) or -1}
end
if not found then
  return {1, 0}
end
redis.call('DEL', KEYS[1])
if ARGV[2] then
  redis.call('PUBLISH', ARGV[2], 'd:' .. ARGV[3])
end
return {1, 1}
",
    )
});

/// Moves the expiry of an existing entry, leaving its value and version alone. Replies
/// 1, or 0 when there is no entry.
static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS: entry. ARGV: ttl ms
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'exp', string.format('%d', redis.call('PEXPIRETIME', KEYS[1])))
return 1
",
    )
});

/// A store in a Redis server (7 or later), shared by every replica that opens the same
/// URL and namespace.
///
/// Clones share one multiplexed connection, which reconnects by itself after an outage:
/// while Redis is unreachable, operations fail within about two seconds with
/// [`StoreError::Unavailable`], and they work again once it is back, on the same value.
/// A write that fails with `Unavailable` may or may not have happened (the answer was
/// lost); compare-and-set makes retrying it safe.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    names: Names,
    /// Where the server is, without credentials, for errors and Debug.
    address: String,
    changes: broadcast::Sender<Change>,
    announce: Announce,
    /// The change feed until the first watcher starts it: a replica that never watches
    /// holds no subscribed connection, and Redis does not push every write to it.
    feed: Mutex<Option<Feed>>,
    /// Where the feed's first subscription stands, shared with the feed.
    feed_start: Arc<watch::Sender<FeedStart>>,
    /// Stops the change feed as soon as the last clone is dropped.
    _feed_stop: DropGuard,
}

/// The Redis names of one namespace.
#[derive(Clone, Debug)]
struct Names {
    namespace: String,
    /// Prefix of every entry key; the user's key follows it.
    entry_prefix: String,
    counter: String,
    channel: String,
}

impl Names {
    fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            entry_prefix: format!("ficus:{namespace}:e:"),
            counter: format!("ficus:{namespace}:version"),
            channel: format!("ficus:{namespace}:changes"),
        }
    }

    fn entry(&self, key: &str) -> String {
        format!("{}{key}", self.entry_prefix)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.inner.address)
            .field("namespace", &self.inner.names.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[:password@]host[:port][/db]`, or
    /// `rediss://` for TLS), keeping this store's keys under `ficus:{namespace}:`.
    ///
    /// Opening succeeds while Redis is down, so a service can start and report itself
    /// not ready (see [`ping`](Self::ping)) until Redis is back. It fails only with
    /// [`StoreError::Invalid`], for a bad URL or namespace.
    ///
    /// With [`Announce::Nothing`], writes are not published on the namespace's change
    /// channel: replicas that open it announcing hear only of expiries.
    ///
    /// Deleted-on-expiry notifications need the server's `notify-keyspace-events` to
    /// include `Ex`; without it, expired entries still vanish but watchers are not told.
    pub async fn open(url: &str, namespace: &str, announce: Announce) -> Result<Self> {
        check_namespace(namespace)?;
        crate::tls::install_crypto_provider();
        let info = url.into_connection_info().map_err(|error| {
            // The message may quote the URL, which may hold a password; keep only the kind.
            StoreError::Invalid(format!("invalid redis URL: {}", error.category()))
        })?;
        let address = info.addr().to_string();
        let db = info.redis_settings().db();
        let names = Names::new(namespace);

        // RESP3 lets the connection manager notice a dropped connection as soon as it
        // happens and reconnect before the next call, instead of failing that call.
        let resp3 = info.clone().set_redis_settings(info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3));
        // Every command is bounded by its round trip's deadline. A timer of the connection's
        // own per command would add nothing but its cost: a command that times out there
        // does not make the manager reconnect either.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None)
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let client = Client::open(resp3).map_err(|error| invalid_config(&error))?;
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|error| invalid_config(&error))?;

        // The feed uses a dedicated RESP2 connection: a subscribed connection cannot run
        // other commands, and RESP2 pub/sub is what every Redis version speaks.
        let resp2 = info.clone().set_redis_settings(info.redis_settings().clone().set_protocol(ProtocolVersion::RESP2));
        let feed_client = Client::open(resp2).map_err(|error| invalid_config(&error))?;
        let (changes, _) = broadcast::channel(WATCH_CAPACITY);
        let stop = CancellationToken::new();
        let feed_start = Arc::new(watch::Sender::new(FeedStart::Pending));
        let feed = Feed {
            client: feed_client,
            names: names.clone(),
            expired_channel: format!("__keyevent@{db}__:expired"),
            changes: changes.clone(),
            start: feed_start.clone(),
            stop: stop.clone(),
        };

        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                names,
                address,
                changes,
                announce,
                feed: Mutex::new(Some(feed)),
                feed_start,
                _feed_stop: stop.drop_guard(),
            }),
        })
    }

    /// See [`Store::get`](super::Store::get).
    pub async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let mut command = redis::cmd("HMGET");
        command.arg(self.inner.names.entry(key)).arg(&["val", "ver", "exp"]);
        let command = &command;
        let fields: Fields = self
            .round_trip(Retry::Safe, |mut connection| async move { command.query_async(&mut connection).await })
            .await?;
        entry(key, fields)
    }

    /// See [`Store::put`](super::Store::put).
    pub async fn put(&self, key: &str, value: Vec<u8>, expect: Expect, ttl: Option<Duration>) -> Result<u64> {
        Ok(self.write_entry(key, value, expect, ttl, Lifetime::Exact).await?.version)
    }

    /// See [`Store::put_extending`](super::Store::put_extending).
    pub async fn put_extending(&self, key: &str, value: Vec<u8>, expect: Expect, ttl: Duration) -> Result<Written> {
        self.write_entry(key, value, expect, Some(ttl), Lifetime::KeepLater).await
    }

    /// Runs [`PUT`]: the entry expires `ttl` from now (never when `None`), or later as
    /// `lifetime` allows.
    async fn write_entry(
        &self,
        key: &str,
        value: Vec<u8>,
        expect: Expect,
        ttl: Option<Duration>,
        lifetime: Lifetime,
    ) -> Result<Written> {
        let ttl = ttl.map(ttl_millis).transpose()?.unwrap_or(0);
        let names = &self.inner.names;
        let mut invocation = PUT.prepare_invoke();
        invocation
            .key(names.entry(key))
            .key(&names.counter)
            .arg(expectation(expect))
            .arg(value)
            .arg(ttl)
            .arg(u8::from(lifetime == Lifetime::KeepLater));
        self.announce_to(&mut invocation, key);
        let invocation = &invocation;
        let reply: String =
            self.round_trip(Retry::IfNotSent, |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        written(key, &reply)
    }

    /// See [`Store::delete`](super::Store::delete).
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<bool> {
        let mut invocation = DELETE.prepare_invoke();
        invocation.key(self.inner.names.entry(key)).arg(expectation(expect));
        self.announce_to(&mut invocation, key);
        let invocation = &invocation;
        let (applied, outcome): (i64, i64) =
            self.round_trip(Retry::IfNotSent, |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        match applied {
            1 => Ok(outcome == 1),
            _ => Err(conflict(key, outcome)),
        }
    }

    /// See [`Store::expire`](super::Store::expire).
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        let ttl = ttl_millis(ttl)?;
        let mut invocation = EXPIRE.prepare_invoke();
        invocation.key(self.inner.names.entry(key)).arg(ttl);
        let invocation = &invocation;
        // Setting the same expiry twice is harmless, so a retry is safe.
        let extended: i64 = self
            .round_trip(Retry::Safe, |mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        Ok(extended == 1)
    }

    /// See [`Store::scan`](super::Store::scan).
    ///
    /// Not a snapshot: SCAN walks the keyspace in steps, so an entry written during the
    /// scan may or may not be included; one deleted or expired during it is left out.
    pub async fn scan(&self, prefix: &str) -> Result<Vec<Entry>> {
        let names = &self.inner.names;
        let pattern = format!("{}{}*", glob_escape(&names.entry_prefix), glob_escape(prefix));
        // SCAN may return a key more than once; the set also sorts them.
        let mut keys = BTreeSet::new();
        let mut cursor = 0_u64;
        loop {
            let mut command = redis::cmd("SCAN");
            command.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_BATCH);
            let command = &command;
            let (next, batch): (u64, Vec<Vec<u8>>) = self
                .round_trip(Retry::Safe, |mut connection| async move { command.query_async(&mut connection).await })
                .await?;
            // Keys are strings in this API; anything else under the prefix is not ours.
            keys.extend(batch.into_iter().filter_map(|key| String::from_utf8(key).ok()));
            if next == 0 {
                break;
            }
            cursor = next;
        }

        let keys: Vec<String> = keys.into_iter().collect();
        let mut entries = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SCAN_BATCH) {
            let mut pipeline = redis::pipe();
            for key in chunk {
                pipeline.cmd("HMGET").arg(key).arg(&["val", "ver", "exp"]);
            }
            let pipeline = &pipeline;
            let rows: Vec<Fields> = self
                .round_trip(Retry::Safe, |mut connection| async move { pipeline.query_async(&mut connection).await })
                .await?;
            for (redis_key, fields) in chunk.iter().zip(rows) {
                let key = redis_key.strip_prefix(names.entry_prefix.as_str()).unwrap_or(redis_key);
                if let Some(entry) = entry(key, fields)? {
                    entries.push(entry);
                }
            }
        }
        Ok(entries)
    }

    /// See [`Store::watch`](super::Store::watch).
    ///
    /// Changes arrive through Redis pub/sub, so they include other replicas' writes, and
    /// a new watcher may still get changes made just before it subscribed (they were in
    /// flight); followers compare versions anyway, so that is harmless. When
    /// the feed's connection drops and comes back, the watcher gets [`Change::Resync`],
    /// since pub/sub does not replay what was published meanwhile. A watcher that falls
    /// more than a thousand changes behind gets
    /// [`RecvError::Lagged`](broadcast::error::RecvError::Lagged), which means the same.
    ///
    /// The first call starts the change feed. Until the feed has subscribed once, each call
    /// waits for it, at most about a second, so that a watcher misses nothing from the
    /// start when Redis is up; when Redis is down, the feed keeps trying and a watcher that
    /// stopped waiting gets [`Change::Resync`] once it is there.
    pub async fn watch(&self) -> broadcast::Receiver<Change> {
        if self.inner.announce == Announce::Nothing {
            return unannounced();
        }
        // Subscribed before the feed starts, so the watcher sees any Resync it sends.
        let changes = self.inner.changes.subscribe();
        let feed = self.inner.feed.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(feed) = feed {
            tokio::spawn(feed.run());
        }
        let mut start = self.inner.feed_start.subscribe();
        let subscribed = timeout(FEED_SUBSCRIBE_WAIT, start.wait_for(|start| *start == FeedStart::Subscribed)).await;
        if !matches!(subscribed, Ok(Ok(_))) {
            // Decided under the channel's lock, which the feed takes when it subscribes:
            // either it has subscribed by now, and this watcher missed nothing, or it will
            // see that a watcher gave up and tell watchers to re-read. Nobody waits for
            // `Late`, so nobody is woken for it.
            self.inner.feed_start.send_if_modified(|start| {
                if *start == FeedStart::Pending {
                    *start = FeedStart::Late;
                }
                false
            });
        }
        changes
    }

    /// Adds the channel and the key to a write script's arguments when this store
    /// announces writes; without them the script publishes nothing.
    fn announce_to(&self, invocation: &mut ScriptInvocation<'_>, key: &str) {
        if self.inner.announce == Announce::Writes {
            invocation.arg(&self.inner.names.channel).arg(key);
        }
    }

    /// See [`Store::ping`](super::Store::ping): sends PING.
    pub async fn ping(&self) -> Result<()> {
        let command = redis::cmd("PING");
        let command = &command;
        let _: redis::Value = self
            .round_trip(Retry::Safe, |mut connection| async move { command.query_async(&mut connection).await })
            .await?;
        Ok(())
    }

    /// Runs one request with the deadline and retry policy that keep an outage short:
    /// a request that failed because the connection was down is retried once on a fresh
    /// connection (the connection manager starts reconnecting when it sees the failure),
    /// and the whole thing gives up after [`ROUND_TRIP_DEADLINE`].
    async fn round_trip<T, F, Fut>(&self, retry: Retry, mut request: F) -> Result<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = Instant::now() + ROUND_TRIP_DEADLINE;
        let mut retried = false;
        loop {
            match timeout_at(deadline, request(self.inner.connection.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) if !retried && retry.allows(&error) => retried = true,
                Ok(Err(error)) => return Err(self.error(&error)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "redis at {} did not answer within {ROUND_TRIP_DEADLINE:?}",
                        self.inner.address
                    )));
                }
            }
        }
    }

    fn error(&self, error: &RedisError) -> StoreError {
        let address = &self.inner.address;
        if is_unavailable(error) {
            StoreError::Unavailable(format!("redis at {address}: {error}"))
        } else {
            StoreError::Invalid(format!("redis at {address}: {error}"))
        }
    }
}

/// Which failed requests may be sent again.
#[derive(Clone, Copy)]
enum Retry {
    /// Reads and idempotent writes: any connection failure.
    Safe,
    /// Other writes: only when the request cannot have reached Redis, because a write
    /// whose answer was lost may have happened, and doing it twice would bump the version
    /// twice.
    IfNotSent,
}

impl Retry {
    fn allows(self, error: &RedisError) -> bool {
        match self {
            Self::Safe => error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal(),
            Self::IfNotSent => error.is_connection_refusal(),
        }
    }
}

/// Whether `error` may go away by itself: the connection, or a server that is loading,
/// failing over or read-only for now. Everything else (a script error, a wrong password,
/// a key of another type) will not.
fn is_unavailable(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            ) | ErrorKind::ClusterConnectionNotFound
        )
}

fn invalid_config(error: &RedisError) -> StoreError {
    StoreError::Invalid(format!("redis client: {error}"))
}

/// `val`, `ver` and `exp` of one entry hash, each missing when the key does not exist.
type Fields = (Option<Vec<u8>>, Option<u64>, Option<u64>);

fn entry(key: &str, (value, version, expires_at): Fields) -> Result<Option<Entry>> {
    match (value, version) {
        (Some(value), Some(version)) => {
            Ok(Some(Entry { key: key.to_owned(), value, version, expires_at: expiry_time(expires_at.unwrap_or(0)) }))
        }
        (None, None) => Ok(None),
        _ => Err(StoreError::Invalid(format!("redis entry {key:?} is missing its value or version"))),
    }
}

/// The scripts' expectation argument: empty for any, `-` for absent, else the version.
fn expectation(expect: Expect) -> String {
    match expect {
        Expect::Any => String::new(),
        Expect::Absent => "-".to_owned(),
        Expect::Version(version) => version.to_string(),
    }
}

/// What [`PUT`] replied: the new version and expiry, or the conflict it found.
fn written(key: &str, reply: &str) -> Result<Written> {
    if let Some(current) = reply.strip_prefix('!') {
        return Err(StoreError::Conflict { key: key.to_owned(), current: current.parse().ok() });
    }
    let parsed =
        reply.split_once(':').and_then(|(version, expires_at)| Some((version.parse().ok()?, expires_at.parse().ok()?)));
    let (version, expires_at) =
        parsed.ok_or_else(|| StoreError::Invalid(format!("redis put script replied {reply:?}")))?;
    Ok(Written { version, expires_at: expiry_time(expires_at) })
}

/// The conflict the delete script reported, with the current version it read (-1 for none).
fn conflict(key: &str, current: i64) -> StoreError {
    StoreError::Conflict { key: key.to_owned(), current: u64::try_from(current).ok() }
}

/// Escapes what SCAN's MATCH would read as a pattern, so a prefix matches only itself.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Follows the namespace's change channel (and Redis' expired-key events) on a dedicated
/// pub/sub connection and forwards changes to the watchers, re-subscribing after the
/// connection drops.
struct Feed {
    client: Client,
    names: Names,
    /// Keyspace event channel for expired keys in the store's database.
    expired_channel: String,
    changes: broadcast::Sender<Change>,
    /// Shared with the watchers, who wait on it (see [`RedisStore::watch`]).
    start: Arc<watch::Sender<FeedStart>>,
    stop: CancellationToken,
}

/// Where the feed's first subscription stands for watchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FeedStart {
    /// Not subscribed yet; every watcher so far is still waiting.
    Pending,
    /// Not subscribed yet, and a watcher stopped waiting: it may miss changes.
    Late,
    /// Subscribed at least once.
    Subscribed,
}

/// Why following the feed ended.
enum FeedEnd {
    Stopped,
    Lost,
}

impl Feed {
    async fn run(self) {
        let mut delay = FEED_RETRY_MIN;
        loop {
            let subscribed = tokio::select! {
                () = self.stop.cancelled() => return,
                subscribed = timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, self.subscribe()) => subscribed,
            };
            match subscribed {
                Ok(Ok(pubsub)) => {
                    // Whatever was published while we were not subscribed is lost, so
                    // watchers must re-read; unless this is the first subscription and
                    // every watcher waited for it, having missed nothing.
                    if self.start.send_replace(FeedStart::Subscribed) != FeedStart::Pending {
                        let _ = self.changes.send(Change::Resync);
                    }
                    delay = FEED_RETRY_MIN;
                    match self.follow(pubsub).await {
                        FeedEnd::Stopped => return,
                        FeedEnd::Lost => {
                            tracing::warn!(namespace = %self.names.namespace, "lost the redis change feed; reconnecting")
                        }
                    }
                }
                Ok(Err(error)) => tracing::debug!(%error, "cannot subscribe to the redis change feed yet"),
                Err(_) => tracing::debug!("subscribing to the redis change feed timed out"),
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = sleep(delay) => {}
            }
            delay = (delay * 2).min(FEED_RETRY_MAX);
        }
    }

    async fn subscribe(&self) -> RedisResult<PubSub> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(&[self.names.channel.as_str(), self.expired_channel.as_str()]).await?;
        Ok(pubsub)
    }

    async fn follow(&self, pubsub: PubSub) -> FeedEnd {
        let (mut sink, mut messages) = pubsub.split();
        let mut pings = tokio::time::interval_at(Instant::now() + FEED_PING_INTERVAL, FEED_PING_INTERVAL);
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return FeedEnd::Stopped,
                message = messages.next() => match message {
                    Some(message) => self.forward(&message),
                    None => return FeedEnd::Lost,
                },
                _ = pings.tick() => {
                    if !matches!(timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await, Ok(Ok(_))) {
                        return FeedEnd::Lost;
                    }
                }
            }
        }
    }

    fn forward(&self, message: &Msg) {
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            return;
        };
        let change = if message.get_channel_name() == self.expired_channel {
            // Expired keys of every namespace and application in this database land here.
            payload.strip_prefix(self.names.entry_prefix.as_str()).map(|key| Change::Deleted { key: key.to_owned() })
        } else {
            parse_change(payload)
        };
        match change {
            Some(change) => {
                let _ = self.changes.send(change);
            }
            None if message.get_channel_name() == self.names.channel => {
                tracing::warn!(payload, "ignoring a malformed redis change notification");
            }
            None => {}
        }
    }
}

/// Parses a notification as the scripts publish it.
fn parse_change(payload: &str) -> Option<Change> {
    if let Some(rest) = payload.strip_prefix("p:") {
        let (version, key) = rest.split_once(':')?;
        Some(Change::Put { key: key.to_owned(), version: version.parse().ok()? })
    } else {
        payload.strip_prefix("d:").map(|key| Change::Deleted { key: key.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape("a*b?c[d]e\\f^g-h"), "a\\*b\\?c\\[d\\]e\\\\f^g-h");
        assert_eq!(glob_escape("plain:key"), "plain:key");
    }

    #[test]
    fn notifications_parse_with_colons_in_keys() {
        assert_eq!(parse_change("p:42:a:b"), Some(Change::Put { key: "a:b".to_owned(), version: 42 }));
        assert_eq!(parse_change("d:a:b"), Some(Change::Deleted { key: "a:b".to_owned() }));
        assert_eq!(parse_change("p:x:a"), None);
        assert_eq!(parse_change("z"), None);
    }

    #[test]
    fn put_replies_parse_into_writes_conflicts_or_errors() {
        let plain = written("k", "7:0").unwrap();
        assert_eq!((plain.version, plain.expires_at), (7, None));
        assert_eq!(written("k", "8:1000").unwrap().expires_at, expiry_time(1000));
        assert!(matches!(written("k", "!5"), Err(StoreError::Conflict { current: Some(5), .. })));
        assert!(matches!(written("k", "!"), Err(StoreError::Conflict { current: None, .. })));
        for garbage in ["", "7", "x:1", "7:-1"] {
            assert!(matches!(written("k", garbage), Err(StoreError::Invalid(_))), "{garbage:?}");
        }
    }
}
