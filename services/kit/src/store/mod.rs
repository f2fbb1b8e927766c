//! Durable key-value storage that each service owns.
//!
//! A service keeps its state in one [`Store`], chosen by one setting: a directory for the
//! embedded store (redb, a single file, nothing else to run) or a `redis://` / `rediss://`
//! URL when several replicas share state. Both backends keep one contract, checked by the
//! same test suite:
//!
//! - every write gets a fresh version from a counter that only grows across the whole store,
//!   so a version is never reused even after a delete (no ABA on compare-and-set), and a
//!   version doubles as a fencing token;
//! - writes are compare-and-set through [`Expect`];
//! - an entry may expire; an expired entry is never returned;
//! - [`Store::watch`] notifies of changes, so a replica can follow another's writes; a
//!   namespace nobody follows is opened with [`Announce::Nothing`] and costs nothing for it.

mod embedded;
mod follower;
mod redis;

use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use self::embedded::EmbeddedStore;
pub use self::follower::Follower;
pub use self::redis::RedisStore;

/// One stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key, without the store's namespace.
    pub key: String,
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Version assigned by the last write.
    pub version: u64,
    /// When the entry stops existing, if it expires.
    pub expires_at: Option<SystemTime>,
}

/// What a write with [`Store::put_extending`] left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The version the write assigned.
    pub version: u64,
    /// When the entry now expires; `None` when it never does.
    pub expires_at: Option<SystemTime>,
}

/// The condition a write or delete needs to go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Unconditional.
    Any,
    /// The key must not exist (or must have expired).
    Absent,
    /// The key must exist at exactly this version.
    Version(u64),
}

/// A change, as [`Store::watch`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A key was written and now has `version`.
    Put {
        /// The key.
        key: String,
        /// Its new version.
        version: u64,
    },
    /// A key was deleted or swept after expiring.
    Deleted {
        /// The key.
        key: String,
    },
    /// Changes may have been missed (the connection to the backend dropped):
    /// re-read what you follow with [`Store::scan`].
    Resync,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The [`Expect`] condition did not hold; nothing was written.
    #[error("version conflict on {key}: current version is {current:?}")]
    Conflict {
        /// The key.
        key: String,
        /// The current version, `None` when the key does not exist.
        current: Option<u64>,
    },
    /// The backend cannot be reached or did not answer in time; retrying may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The setting or data cannot be used; retrying will not help.
    #[error("store error: {0}")]
    Invalid(String),
}

/// The result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether a write replaces the expiry or keeps a later one the entry already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifetime {
    /// The write's TTL decides, shorter or longer.
    Exact,
    /// The later of the write's TTL and the live entry's expiry.
    KeepLater,
}

/// Whether a store announces its writes to watchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// Someone may follow the namespace with [`Store::watch`]: every write is announced.
    Writes,
    /// Nobody follows the namespace: writes go unannounced, which on Redis spares a
    /// publish per write, and [`Store::watch`] ends at once. For state that each replica
    /// reads from the store when it needs it, such as sessions.
    Nothing,
}

/// How many changes a watcher may fall behind before it gets
/// [`RecvError::Lagged`](broadcast::error::RecvError::Lagged) and has to rescan: enough to
/// absorb a burst of writes, small enough that a stuck watcher does not hold much memory.
const WATCH_CAPACITY: usize = 1024;

/// What watching a store that announces nothing gives: a channel that is already closed.
fn unannounced() -> broadcast::Receiver<Change> {
    broadcast::channel(1).1
}

/// The longest TTL accepted. Anything longer is almost certainly a unit mistake, and
/// refusing it keeps expiry arithmetic (milliseconds since 1970) far from overflow.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The TTL in whole milliseconds, the unit both backends keep; rounded up so that a
/// sub-millisecond TTL still expires in the future rather than at once.
fn ttl_millis(ttl: Duration) -> Result<u64> {
    if ttl > MAX_TTL {
        return Err(StoreError::Invalid(format!("ttl {ttl:?} is longer than the maximum of {MAX_TTL:?}")));
    }
    let millis = ttl.as_nanos().div_ceil(1_000_000).max(1);
    u64::try_from(millis).map_err(|_| StoreError::Invalid(format!("ttl {ttl:?} is too long")))
}

/// `expires_at` as both backends store it: milliseconds since the Unix epoch, 0 for never.
fn expiry_time(unix_millis: u64) -> Option<SystemTime> {
    (unix_millis != 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(unix_millis))
}

/// Namespaces become file names and key prefixes, so they are restricted to characters
/// that are safe in both and cannot make one namespace's keys look like another's
/// (a `:` would).
fn check_namespace(namespace: &str) -> Result<()> {
    let valid = !namespace.is_empty()
        && namespace.len() <= 64
        && namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("namespace {namespace:?} must be 1 to 64 ASCII letters, digits, '_' or '-'")))
    }
}

/// A service's store: embedded or Redis, chosen at start.
#[derive(Clone, Debug)]
pub enum Store {
    /// A redb file under a data directory.
    Embedded(EmbeddedStore),
    /// A Redis server shared by replicas.
    Redis(RedisStore),
}

impl Store {
    /// Opens the store named by `location`: a `redis://` or `rediss://` URL, or a directory
    /// for the embedded store. `namespace` keeps one service's keys apart from another's.
    /// Its writes are announced to watchers.
    pub async fn open(location: &str, namespace: &str) -> Result<Self> {
        Self::open_announcing(location, namespace, Announce::Writes).await
    }

    /// Opens the store as [`open`](Self::open) does, announcing writes as `announce` says.
    /// Every replica of a service must open its namespace the same way.
    pub async fn open_announcing(location: &str, namespace: &str, announce: Announce) -> Result<Self> {
        if location.starts_with("redis://") || location.starts_with("rediss://") {
            Ok(Self::Redis(RedisStore::open(location, namespace, announce).await?))
        } else {
            Ok(Self::Embedded(EmbeddedStore::open(location.as_ref(), namespace, announce).await?))
        }
    }

    /// Whether replicas of a service can share this store (Redis), rather than each
    /// keeping its own (embedded).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    /// Reads a live entry.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>> {
        match self {
            Self::Embedded(store) => store.get(key).await,
            Self::Redis(store) => store.get(key).await,
        }
    }

    /// Writes `value` if `expect` holds and returns the new version. `ttl` sets the expiry;
    /// `None` makes the entry permanent.
    pub async fn put(&self, key: &str, value: Vec<u8>, expect: Expect, ttl: Option<Duration>) -> Result<u64> {
        match self {
            Self::Embedded(store) => store.put(key, value, expect, ttl).await,
            Self::Redis(store) => store.put(key, value, expect, ttl).await,
        }
    }

    /// Writes `value` if `expect` holds, expiring `ttl` from now unless the live entry it
    /// replaces expires later (or never): then that expiry stays. Returns the new version
    /// and the resulting expiry, both decided by the backend in the same atomic write.
    ///
    /// This is a write on behalf of activity that must not cut short an expiry someone
    /// extended, without reading the entry first to learn that expiry.
    pub async fn put_extending(&self, key: &str, value: Vec<u8>, expect: Expect, ttl: Duration) -> Result<Written> {
        match self {
            Self::Embedded(store) => store.put_extending(key, value, expect, ttl).await,
            Self::Redis(store) => store.put_extending(key, value, expect, ttl).await,
        }
    }

    /// Deletes a key if `expect` holds; returns whether a live entry was removed.
    /// With [`Expect::Any`], deleting a missing key succeeds with `false`.
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<bool> {
        match self {
            Self::Embedded(store) => store.delete(key, expect).await,
            Self::Redis(store) => store.delete(key, expect).await,
        }
    }

    /// Moves a live entry's expiry to `ttl` from now without changing its value or version;
    /// returns false when there is no live entry.
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        match self {
            Self::Embedded(store) => store.expire(key, ttl).await,
            Self::Redis(store) => store.expire(key, ttl).await,
        }
    }

    /// Every live entry whose key starts with `prefix`, ordered by key.
    pub async fn scan(&self, prefix: &str) -> Result<Vec<Entry>> {
        match self {
            Self::Embedded(store) => store.scan(prefix).await,
            Self::Redis(store) => store.scan(prefix).await,
        }
    }

    /// Follows changes from now on, including other replicas' writes on Redis.
    ///
    /// On Redis the first watcher subscribes this replica to the change feed, and watchers
    /// wait at most about a second for that subscription, so a replica that never watches
    /// is not sent every write. On a store opened with [`Announce::Nothing`], watching
    /// ends at once: `recv` reports the channel closed.
    ///
    /// A watcher that falls too far behind gets
    /// [`RecvError::Lagged`](broadcast::error::RecvError::Lagged) from `recv`; like
    /// [`Change::Resync`], that means some changes were missed and it should rescan.
    pub async fn watch(&self) -> broadcast::Receiver<Change> {
        match self {
            Self::Embedded(store) => store.watch(),
            Self::Redis(store) => store.watch().await,
        }
    }

    /// Follows changes as a replica that has just loaded what it follows does, until
    /// `shutdown`: see [`Follower::next`]. Subscribes on the first `next`.
    pub fn follow(&self, shutdown: CancellationToken) -> Follower {
        Follower::new(self.clone(), shutdown)
    }

    /// Checks that the backend answers, for readiness.
    pub async fn ping(&self) -> Result<()> {
        match self {
            Self::Embedded(store) => store.ping().await,
            Self::Redis(store) => store.ping().await,
        }
    }
}
