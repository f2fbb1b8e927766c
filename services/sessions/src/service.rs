//! The session operations, over the service's [`Store`], in domain types.
//!
//! A session is one store entry (see [`record`](crate::record)): its version is the
//! entry's version, so compare-and-set is the store's, and its sliding expiry is the
//! entry's expiry, so a touch is one [`Store::expire`] that leaves value and version alone.
//! Every request is checked against the [`Limits`] before anything is written, so a
//! refused request changes nothing.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::{Duration, SystemTime},
};

use ficus_kit::store::{Expect, Store, StoreError, Written};
use prost::Message;
use tokio::sync::{Mutex, MutexGuard};

use crate::{
    cache::RecordCache,
    error::SessionError,
    expiry,
    id::SessionId,
    limits::Limits,
    metrics::Metrics,
    record::{Record, unix_millis},
};

/// How often an unconditional update re-reads and retries after losing a race with
/// another replica's writer; each lost race means some other write went through.
const UNCONDITIONAL_ATTEMPTS: u32 = 16;

/// Longest pause between two attempts of an unconditional update; the pause is random
/// up to a window that grows with each loss, so racing replicas stop colliding.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Locks that serialise unconditional updates of one session within this replica.
const UPDATE_LANES: usize = 256;

/// How many fresh ids a create tries. With 192 random bits a collision is not expected in
/// the life of the universe; the retry exists because `Expect::Absent` makes it cheap to
/// be certain that no session is ever handed to two users.
const ID_ATTEMPTS: usize = 3;

/// A live session.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The store version of its last write.
    pub version: u64,
    /// The attributes.
    pub attributes: HashMap<String, Vec<u8>>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it expires unless touched.
    pub expires_at: SystemTime,
    /// When it expires whatever happens, if it has a maximum lifetime.
    pub max_expires_at: Option<SystemTime>,
}

impl Session {
    fn new(id: SessionId, version: u64, record: Record, expires_at: SystemTime) -> Self {
        Self {
            id,
            version,
            created_at: record.created_at(),
            max_expires_at: record.max_expires_at(),
            attributes: record.attributes,
            expires_at,
        }
    }
}

/// What CreateSession asks for.
#[derive(Clone, Debug, Default)]
pub struct NewSession {
    /// Initial attributes.
    pub attributes: HashMap<String, Vec<u8>>,
    /// Idle TTL; the configured default when `None`.
    pub ttl: Option<Duration>,
    /// Maximum lifetime; the configured default (possibly none) when `None`.
    pub max_lifetime: Option<Duration>,
}

/// What UpdateSession asks for.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// The version the caller read; 0 for an unconditional update.
    pub expected_version: u64,
    /// Attributes to add or overwrite.
    pub set: HashMap<String, Vec<u8>>,
    /// Attributes to remove, after `set`.
    pub remove: Vec<String>,
    /// New idle TTL, kept from now on; the current one when `None`.
    pub ttl: Option<Duration>,
    /// Return the session without its attributes, which the caller already knows.
    pub omit_attributes: bool,
}

/// A session as read from the store.
struct Loaded {
    version: u64,
    record: Record,
    expires_at: SystemTime,
}

/// A session as written: its new version and expiry.
struct Saved {
    version: u64,
    expires_at: SystemTime,
}

/// The session operations.
#[derive(Clone, Debug)]
pub struct Sessions {
    store: Store,
    limits: Arc<Limits>,
    metrics: Metrics,
    lanes: Arc<Lanes>,
    cache: Arc<RecordCache>,
}

impl Sessions {
    /// Sessions kept in `store`, bounded by `limits`, counted in `metrics`, with up to
    /// `cache_bytes` of recently seen records kept to spare updates a read.
    pub fn new(store: Store, limits: Limits, metrics: Metrics, cache_bytes: u64) -> Self {
        Self {
            store,
            limits: Arc::new(limits),
            metrics,
            lanes: Arc::new(Lanes::new()),
            cache: Arc::new(RecordCache::new(cache_bytes)),
        }
    }

    /// The metrics the operations update.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Creates a session under a fresh id.
    pub async fn create(&self, new: NewSession) -> Result<Session, SessionError> {
        if let Some(ttl) = new.ttl {
            self.limits.check_ttl("ttl", ttl)?;
        }
        if let Some(lifetime) = new.max_lifetime {
            self.limits.check_max_lifetime("max_lifetime", lifetime)?;
        }
        self.limits.check_writes("attributes", &new.attributes)?;
        self.limits.check_session("attributes", &new.attributes)?;
        let ttl = new.ttl.unwrap_or(self.limits.default_ttl);
        let max_lifetime = new.max_lifetime.or(self.limits.default_max_lifetime);

        let now = SystemTime::now();
        let max_expires_at = max_lifetime.and_then(|lifetime| now.checked_add(lifetime));
        let mut record = Record {
            created_at_ms: unix_millis(now),
            ttl_ms: 0,
            max_expires_at_ms: max_expires_at.map(unix_millis),
            attributes: new.attributes,
        };
        record.set_ttl(ttl);
        let (expires_at, left) = schedule(now, expiry::after_explicit_ttl(now, ttl, record.max_expires_at()))
            .ok_or_else(|| SessionError::Internal("a new session would expire at once".to_owned()))?;

        let value = record.encode_to_vec();
        for _ in 0..ID_ATTEMPTS {
            let id = SessionId::generate();
            match self.store.put(id.as_str(), value.clone(), Expect::Absent, Some(left)).await {
                Ok(version) => {
                    self.metrics.created.inc();
                    self.cache.remember(&id, version, value);
                    return Ok(Session::new(id, version, record, expires_at));
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(SessionError::Internal("every generated session id was taken".to_owned()))
    }

    /// Reads a session; with `touch`, also slides its expiry as a user's request would.
    pub async fn get(&self, id: &str, touch: bool) -> Result<Session, SessionError> {
        let id = parse_id(id)?;
        let now = SystemTime::now();
        let mut loaded = self.load(&id, now).await?;
        if touch {
            let max = loaded.record.max_expires_at();
            let slid = expiry::after_activity(now, loaded.record.ttl(), Some(loaded.expires_at), max);
            loaded.expires_at = self.extend(&id, now, loaded.expires_at, slid).await?;
        }
        Ok(Session::new(id, loaded.version, loaded.record, loaded.expires_at))
    }

    /// Extends a session's expiry without changing its attributes or version.
    ///
    /// A `ttl` sets the expiry to exactly that far from now, this once: keeping it as the
    /// session's TTL would mean rewriting the session, which would change its version.
    /// UpdateSession changes the TTL for good.
    pub async fn touch(&self, id: &str, ttl: Option<Duration>) -> Result<Session, SessionError> {
        let id = parse_id(id)?;
        if let Some(ttl) = ttl {
            self.limits.check_ttl("ttl", ttl)?;
        }
        let now = SystemTime::now();
        let mut loaded = self.load(&id, now).await?;
        let max = loaded.record.max_expires_at();
        let moved = match ttl {
            Some(ttl) => expiry::after_explicit_ttl(now, ttl, max),
            None => expiry::after_activity(now, loaded.record.ttl(), Some(loaded.expires_at), max),
        };
        loaded.expires_at = self.extend(&id, now, loaded.expires_at, moved).await?;
        Ok(Session::new(id, loaded.version, loaded.record, loaded.expires_at))
    }

    /// Sets and removes attributes in one write, if the session is still at
    /// `expected_version` (any version when it is 0). An update is activity: it also slides
    /// the expiry, or sets it from a new TTL.
    ///
    /// When this replica has the record of the expected version (or, for an unconditional
    /// update, of any version) in its cache, the update writes without reading first:
    /// compare-and-set on that version makes the outcome the same as after a read.
    pub async fn update(&self, id: &str, changes: Changes) -> Result<Session, SessionError> {
        let id = parse_id(id)?;
        self.limits.check_writes("set", &changes.set)?;
        self.limits.check_removals(&changes.remove)?;
        if let Some(ttl) = changes.ttl {
            self.limits.check_ttl("ttl", ttl)?;
        }
        let conditional = changes.expected_version != 0;
        // An unconditional update must not fail because the same user's parallel requests
        // raced: they queue here, and only writers on other replicas can still get in
        // between. A conditional one needs no queue; whoever loses is told so.
        let _lane = if conditional { None } else { Some(self.lanes.enter(&id).await) };
        let mut cached = self.cache.take(&id, |version| !conditional || version == changes.expected_version);
        let mut current = None;
        for attempt in 0..UNCONDITIONAL_ATTEMPTS {
            if attempt > 0 {
                let window = MAX_RETRY_PAUSE.min(Duration::from_millis(1) * attempt);
                tokio::time::sleep(window.mul_f64(rand::random::<f64>())).await;
            }
            let now = SystemTime::now();
            let (version, mut record) = match cached.take() {
                Some(hit) => {
                    self.metrics.updates_from_cache.inc();
                    hit
                }
                None => {
                    let loaded = self.load(&id, now).await?;
                    (loaded.version, loaded.record)
                }
            };
            if conditional && version != changes.expected_version {
                return Err(self.conflict(version));
            }
            for (name, value) in &changes.set {
                record.attributes.insert(name.clone(), value.clone());
            }
            for name in &changes.remove {
                record.attributes.remove(name);
            }
            self.limits.check_session("set", &record.attributes)?;
            if let Some(ttl) = changes.ttl {
                record.set_ttl(ttl);
            }
            let value = record.encode_to_vec();
            let encoded_len = value.len();
            match self.save(&id, now, &record, value, version, changes.ttl.is_some()).await {
                Ok(saved) => {
                    let reply = if changes.omit_attributes { record.without_attributes() } else { record.clone() };
                    self.cache.remember_record(&id, saved.version, record, encoded_len);
                    return Ok(Session::new(id, saved.version, reply, saved.expires_at));
                }
                // Deleted or expired since the read (or since the cached write).
                Err(StoreError::Conflict { current: None, .. }) => return Err(SessionError::NotFound),
                Err(StoreError::Conflict { current: Some(now_at), .. }) if conditional => {
                    return Err(self.conflict(now_at));
                }
                // Another writer got in between; an unconditional update simply goes again.
                Err(StoreError::Conflict { current: Some(now_at), .. }) => current = Some(now_at),
                Err(error) => return Err(error.into()),
            }
        }
        let current = current.ok_or_else(|| SessionError::Internal("no update attempt was made".to_owned()))?;
        Err(self.conflict(current))
    }

    /// Writes `record` (encoded as `value`) over `version` and moves the expiry: to exactly
    /// the record's TTL from now after a new TTL, otherwise by sliding it, never earlier
    /// than the store already has it. Either way the maximum lifetime caps it; a session
    /// past its maximum is a conflict with nothing, as if it were gone.
    async fn save(
        &self,
        id: &SessionId,
        now: SystemTime,
        record: &Record,
        value: Vec<u8>,
        version: u64,
        new_ttl: bool,
    ) -> Result<Saved, StoreError> {
        let max = record.max_expires_at();
        let gone = || StoreError::Conflict { key: id.as_str().to_owned(), current: None };
        if new_ttl {
            let (expires_at, left) =
                schedule(now, expiry::after_explicit_ttl(now, record.ttl(), max)).ok_or_else(gone)?;
            let version = self.store.put(id.as_str(), value, Expect::Version(version), Some(left)).await?;
            return Ok(Saved { version, expires_at });
        }
        let (slid, left) = schedule(now, expiry::after_activity(now, record.ttl(), None, max)).ok_or_else(gone)?;
        let Written { version, expires_at } =
            self.store.put_extending(id.as_str(), value, Expect::Version(version), left).await?;
        // The store says what it keeps; every session expires, but should the entry not,
        // the slid deadline is the one this write asked for.
        let expires_at = expires_at.map_or(slid, |kept| max.map_or(kept, |max| kept.min(max)));
        Ok(Saved { version, expires_at })
    }

    /// Deletes a session; returns whether a live one was removed. Deleting an unknown or
    /// expired session succeeds, so a retried logout is harmless.
    pub async fn delete(&self, id: &str) -> Result<bool, SessionError> {
        let id = parse_id(id)?;
        let existed = self.store.delete(id.as_str(), Expect::Any).await?;
        self.cache.forget(&id);
        if existed {
            self.metrics.deleted.inc();
        }
        Ok(existed)
    }

    /// Reads a live session. The hard maximum is checked here as well as by the store's
    /// expiry: the store computes its deadline a moment after this service does (and on
    /// Redis, by another clock), and an expired session must never be returned.
    async fn load(&self, id: &SessionId, now: SystemTime) -> Result<Loaded, SessionError> {
        let entry = self.store.get(id.as_str()).await?.ok_or(SessionError::NotFound)?;
        let record = Record::decode_from(&entry.value)
            .ok_or_else(|| SessionError::Internal("a stored session cannot be decoded".to_owned()))?;
        // Every session is written with a TTL; should one lack it, treat it as idle from
        // now rather than keep it forever, and let the next touch repair it.
        let expires_at = entry.expires_at.or_else(|| now.checked_add(record.ttl())).unwrap_or(now);
        let expires_at = record.max_expires_at().map_or(expires_at, |max| expires_at.min(max));
        if expires_at <= now {
            return Err(SessionError::NotFound);
        }
        self.cache.remember(id, entry.version, entry.value);
        Ok(Loaded { version: entry.version, record, expires_at })
    }

    /// Moves the expiry from `current` to `moved` (when it moves at all) and returns the
    /// new expiry; NOT_FOUND when the session is over or vanished meanwhile.
    async fn extend(
        &self,
        id: &SessionId,
        now: SystemTime,
        current: SystemTime,
        moved: Option<SystemTime>,
    ) -> Result<SystemTime, SessionError> {
        let (expires_at, left) = schedule(now, moved).ok_or(SessionError::NotFound)?;
        // Same deadline to the millisecond: spare the store a write.
        if unix_millis(expires_at) == unix_millis(current) {
            return Ok(current);
        }
        if self.store.expire(id.as_str(), left).await? { Ok(expires_at) } else { Err(SessionError::NotFound) }
    }

    fn conflict(&self, current: u64) -> SessionError {
        self.metrics.conflicts.inc();
        SessionError::Conflict { current }
    }
}

/// Striped locks: a session's unconditional updates take the lock its id hashes to.
/// A fixed set of locks keeps memory bounded whatever the number of sessions; two
/// sessions that share a lock only wait for each other's short update.
#[derive(Debug)]
struct Lanes {
    hasher: RandomState,
    locks: Box<[Mutex<()>]>,
}

impl Lanes {
    fn new() -> Self {
        Self { hasher: RandomState::new(), locks: (0..UPDATE_LANES).map(|_| Mutex::new(())).collect() }
    }

    async fn enter(&self, id: &SessionId) -> MutexGuard<'_, ()> {
        let lane = usize::try_from(self.hasher.hash_one(id.as_str()) % UPDATE_LANES as u64).unwrap_or_default();
        self.locks[lane].lock().await
    }
}

/// An expiry and the TTL that gets the store there from `now`; `None` when it has passed.
fn schedule(now: SystemTime, expires_at: Option<SystemTime>) -> Option<(SystemTime, Duration)> {
    let expires_at = expires_at?;
    Some((expires_at, expiry::remaining(now, expires_at)?))
}

fn parse_id(id: &str) -> Result<SessionId, SessionError> {
    SessionId::parse(id).map_err(|error| SessionError::invalid("id", error))
}
