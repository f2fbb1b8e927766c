//! The embedded backend: one redb file per namespace.
//!
//! redb is synchronous and a durable commit waits for an fsync, so every call runs on
//! tokio's blocking pool and never stalls the runtime's worker threads.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::broadcast;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Announce, Change, Entry, Expect, Lifetime, Result, StoreError, WATCH_CAPACITY, Written, check_namespace,
    expiry_time, ttl_millis, unannounced,
};

/// Key -> (version, expires_at in Unix milliseconds or 0 for never, value).
const ENTRIES: TableDefinition<&str, (u64, u64, &[u8])> = TableDefinition::new("entries");

/// Store-wide bookkeeping; holds [`VERSION`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The last version handed out. It lives apart from the entries so that deleting an entry
/// never lowers it: versions are not reused.
const VERSION: &str = "version";

/// How often expired entries are removed and reported. Reads already hide them, so this
/// only bounds how late [`Change::Deleted`] arrives and how long the bytes stay on disk.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long [`EmbeddedStore::open`] waits for the file lock. Dropping a store closes its
/// file, but a blocking call of that store still finishing (a sweep, or an operation
/// whose caller gave up) may hold it a moment longer; reopening in the same process right
/// after a drop must not fail because of that.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A store in a single redb file, `{dir}/{namespace}.redb`: nothing else to run.
///
/// Clones share one open database. The file is locked while open, so only one process
/// (and one store value with its clones) can use it at a time. Every commit is durable:
/// a write that returned is on disk. Dropping the last clone closes the file, which
/// flushes it, so that drop blocks briefly. Expired entries are swept about once a
/// second, and watchers then get [`Change::Deleted`] for them.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    changes: broadcast::Sender<Change>,
    announce: Announce,
    /// Held from the start of a write transaction until its change is broadcast, so that
    /// watchers see changes in commit order (redb would serialise the writers anyway).
    write_order: Mutex<()>,
    /// Stops the sweeper as soon as the last clone is dropped.
    _sweeper: DropGuard,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens `{dir}/{namespace}.redb`, creating the directory and the file if needed.
    ///
    /// Fails with [`StoreError::Invalid`] when the namespace is not a plain name, the
    /// directory cannot be created, or another process holds the file.
    pub async fn open(dir: &Path, namespace: &str, announce: Announce) -> Result<Self> {
        check_namespace(namespace)?;
        let dir = dir.to_owned();
        let path = dir.join(format!("{namespace}.redb"));
        let db = {
            let path = path.clone();
            unblock(move || open_database(&dir, &path)).await?
        };
        let stop = CancellationToken::new();
        let (changes, _) = broadcast::channel(WATCH_CAPACITY);
        let inner = Arc::new(Inner {
            db,
            path,
            changes,
            announce,
            write_order: Mutex::new(()),
            _sweeper: stop.clone().drop_guard(),
        });
        tokio::spawn(sweep_periodically(Arc::downgrade(&inner), stop));
        Ok(Self { inner })
    }

    /// See [`Store::get`](super::Store::get).
    pub async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let key = key.to_owned();
        self.run(move |inner| {
            let txn = inner.db.begin_read().map_err(db_error)?;
            let entries = txn.open_table(ENTRIES).map_err(db_error)?;
            let entry = entries.get(key.as_str()).map_err(db_error)?.and_then(|row| {
                let (version, expires_at, value) = row.value();
                live(expires_at, now_millis()).then(|| Entry {
                    key: key.clone(),
                    value: value.to_vec(),
                    version,
                    expires_at: expiry_time(expires_at),
                })
            });
            Ok(entry)
        })
        .await
    }

    /// See [`Store::put`](super::Store::put).
    pub async fn put(&self, key: &str, value: Vec<u8>, expect: Expect, ttl: Option<Duration>) -> Result<u64> {
        Ok(self.write_entry(key, value, expect, ttl, Lifetime::Exact).await?.version)
    }

    /// See [`Store::put_extending`](super::Store::put_extending).
    pub async fn put_extending(&self, key: &str, value: Vec<u8>, expect: Expect, ttl: Duration) -> Result<Written> {
        self.write_entry(key, value, expect, Some(ttl), Lifetime::KeepLater).await
    }

    /// Writes an entry that expires `ttl` from now (never when `None`), or later as
    /// `lifetime` allows.
    async fn write_entry(
        &self,
        key: &str,
        value: Vec<u8>,
        expect: Expect,
        ttl: Option<Duration>,
        lifetime: Lifetime,
    ) -> Result<Written> {
        let ttl = ttl.map(ttl_millis).transpose()?;
        let key = key.to_owned();
        self.run(move |inner| {
            let written = inner.write(|txn| {
                let now = now_millis();
                let mut entries = txn.open_table(ENTRIES).map_err(db_error)?;
                let current = live_row(&entries, &key, now)?;
                check(&key, expect, current.map(|(version, _)| version))?;
                let mut meta = txn.open_table(META).map_err(db_error)?;
                let last = meta.get(VERSION).map_err(db_error)?.map_or(0, |v| v.value());
                let version = last
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Invalid("the version counter is exhausted".to_owned()))?;
                meta.insert(VERSION, version).map_err(db_error)?;
                let mut expires_at = ttl.map_or(0, |ttl| now.saturating_add(ttl));
                if let (Lifetime::KeepLater, Some((_, kept))) = (lifetime, current) {
                    // 0 is never, the latest expiry of all.
                    if kept == 0 || kept > expires_at {
                        expires_at = kept;
                    }
                }
                entries.insert(key.as_str(), (version, expires_at, value.as_slice())).map_err(db_error)?;
                Ok(Some((version, expires_at)))
            })?;
            let (version, expires_at) = written.ok_or_else(|| StoreError::Invalid("a put wrote nothing".to_owned()))?;
            let _ = inner.changes.send(Change::Put { key, version });
            Ok(Written { version, expires_at: expiry_time(expires_at) })
        })
        .await
    }

    /// See [`Store::delete`](super::Store::delete).
    ///
    /// An entry that has expired but not been swept yet counts as absent and is left to
    /// the sweeper, which reports it as deleted.
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<bool> {
        let key = key.to_owned();
        self.run(move |inner| {
            let removed = inner.write(|txn| {
                let mut entries = txn.open_table(ENTRIES).map_err(db_error)?;
                let current = live_row(&entries, &key, now_millis())?.map(|(version, _)| version);
                check(&key, expect, current)?;
                if current.is_none() {
                    return Ok(None);
                }
                entries.remove(key.as_str()).map_err(db_error)?;
                Ok(Some(()))
            })?;
            if removed.is_some() {
                let _ = inner.changes.send(Change::Deleted { key });
            }
            Ok(removed.is_some())
        })
        .await
    }

    /// See [`Store::expire`](super::Store::expire).
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        let ttl = ttl_millis(ttl)?;
        let key = key.to_owned();
        self.run(move |inner| {
            let extended = inner.write(|txn| {
                let now = now_millis();
                let mut entries = txn.open_table(ENTRIES).map_err(db_error)?;
                let row = entries.get(key.as_str()).map_err(db_error)?.and_then(|row| {
                    let (version, expires_at, value) = row.value();
                    live(expires_at, now).then(|| (version, value.to_vec()))
                });
                let Some((version, value)) = row else {
                    return Ok(None);
                };
                entries.insert(key.as_str(), (version, now.saturating_add(ttl), value.as_slice())).map_err(db_error)?;
                Ok(Some(()))
            })?;
            Ok(extended.is_some())
        })
        .await
    }

    /// See [`Store::scan`](super::Store::scan).
    pub async fn scan(&self, prefix: &str) -> Result<Vec<Entry>> {
        let prefix = prefix.to_owned();
        self.run(move |inner| {
            let now = now_millis();
            let txn = inner.db.begin_read().map_err(db_error)?;
            let entries = txn.open_table(ENTRIES).map_err(db_error)?;
            let mut found = Vec::new();
            // Keys sort bytewise, so the keys with this prefix are one contiguous run.
            for row in entries.range(prefix.as_str()..).map_err(db_error)? {
                let (key, row) = row.map_err(db_error)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                let (version, expires_at, value) = row.value();
                if live(expires_at, now) {
                    found.push(Entry {
                        key: key.to_owned(),
                        value: value.to_vec(),
                        version,
                        expires_at: expiry_time(expires_at),
                    });
                }
            }
            Ok(found)
        })
        .await
    }

    /// See [`Store::watch`](super::Store::watch).
    ///
    /// A watcher that falls more than a thousand changes behind gets
    /// [`RecvError::Lagged`](broadcast::error::RecvError::Lagged); like
    /// [`Change::Resync`], that means: rescan what you follow.
    pub fn watch(&self) -> broadcast::Receiver<Change> {
        match self.inner.announce {
            Announce::Writes => self.inner.changes.subscribe(),
            Announce::Nothing => unannounced(),
        }
    }

    /// See [`Store::ping`](super::Store::ping): checks that the file can still be read.
    pub async fn ping(&self) -> Result<()> {
        self.run(|inner| {
            let txn = inner.db.begin_read().map_err(db_error)?;
            txn.open_table(META).map_err(db_error)?;
            Ok(())
        })
        .await
    }

    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        unblock(move || f(&inner)).await
    }
}

impl Inner {
    /// Runs `f` in a write transaction, in commit order with the other writers. `f`
    /// returns `Some` to commit and `None` (or an error) to roll back, so that checks that
    /// write nothing cost no fsync.
    fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<Option<T>>) -> Result<Option<T>> {
        // A panic while holding the lock cannot leave redb half-written (the transaction
        // rolls back), so a poisoned lock is safe to take over.
        let _order = self.write_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let txn = self.db.begin_write().map_err(db_error)?;
        match f(&txn) {
            Ok(Some(value)) => {
                txn.commit().map_err(db_error)?;
                Ok(Some(value))
            }
            Ok(None) => {
                txn.abort().map_err(db_error)?;
                Ok(None)
            }
            Err(error) => {
                // The error that made us roll back matters more than a failed rollback.
                let _ = txn.abort();
                Err(error)
            }
        }
    }

    /// Removes the entries that have expired and reports each as deleted.
    fn sweep(&self) -> Result<()> {
        // Look first with a read transaction, so a sweep that finds nothing (the usual
        // case) costs no commit.
        let expired: Vec<String> = {
            let now = now_millis();
            let txn = self.db.begin_read().map_err(db_error)?;
            let entries = txn.open_table(ENTRIES).map_err(db_error)?;
            let mut expired = Vec::new();
            for row in entries.iter().map_err(db_error)? {
                let (key, row) = row.map_err(db_error)?;
                if !live(row.value().1, now) {
                    expired.push(key.value().to_owned());
                }
            }
            expired
        };
        if expired.is_empty() {
            return Ok(());
        }
        let _order = self.write_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let txn = self.db.begin_write().map_err(db_error)?;
        let mut removed = Vec::with_capacity(expired.len());
        {
            let now = now_millis();
            let mut entries = txn.open_table(ENTRIES).map_err(db_error)?;
            for key in expired {
                // Re-check: a put since the read may have revived the key.
                let still_expired =
                    entries.get(key.as_str()).map_err(db_error)?.is_some_and(|row| !live(row.value().1, now));
                if still_expired {
                    entries.remove(key.as_str()).map_err(db_error)?;
                    removed.push(key);
                }
            }
        }
        txn.commit().map_err(db_error)?;
        for key in removed {
            let _ = self.changes.send(Change::Deleted { key });
        }
        Ok(())
    }
}

/// Creates the directory and opens or creates the database with both tables.
fn open_database(dir: &Path, path: &Path) -> Result<Database> {
    std::fs::create_dir_all(dir)
        .map_err(|error| StoreError::Invalid(format!("cannot create store directory {}: {error}", dir.display())))?;
    let deadline = Instant::now() + LOCK_WAIT;
    let db = loop {
        match Database::create(path) {
            Ok(db) => break db,
            Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Invalid(format!("{} is already open elsewhere", path.display())));
            }
            Err(error) => return Err(db_error(error)),
        }
    };
    // Creating the tables up front lets reads open them without handling "no such table".
    let txn = db.begin_write().map_err(db_error)?;
    txn.open_table(ENTRIES).map_err(db_error)?;
    txn.open_table(META).map_err(db_error)?;
    txn.commit().map_err(db_error)?;
    Ok(db)
}

/// Sweeps every [`SWEEP_INTERVAL`] until the store is dropped. Holds the store only
/// weakly, so that it does not keep it (and its file lock) alive.
async fn sweep_periodically(store: Weak<Inner>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(inner) = store.upgrade() else { return };
        if let Err(error) = unblock(move || inner.sweep()).await {
            tracing::warn!(%error, "sweeping expired store entries failed; retrying later");
        }
    }
}

/// Runs blocking redb work on tokio's blocking pool.
async fn unblock<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        // A panic is a bug in this module; surface it where it happened.
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(StoreError::Unavailable(format!("store task did not finish: {error}"))),
    }
}

/// The version of the live entry under `key`, if any.
/// The version and expiry of `key`'s live entry.
fn live_row(
    entries: &impl ReadableTable<&'static str, (u64, u64, &'static [u8])>,
    key: &str,
    now: u64,
) -> Result<Option<(u64, u64)>> {
    Ok(entries.get(key).map_err(db_error)?.and_then(|row| {
        let (version, expires_at, _) = row.value();
        live(expires_at, now).then_some((version, expires_at))
    }))
}

/// Whether `expect` holds for an entry currently at `current`.
fn check(key: &str, expect: Expect, current: Option<u64>) -> Result<()> {
    let holds = match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Version(version) => current == Some(version),
    };
    if holds { Ok(()) } else { Err(StoreError::Conflict { key: key.to_owned(), current }) }
}

fn live(expires_at: u64, now: u64) -> bool {
    expires_at == 0 || expires_at > now
}

fn now_millis() -> u64 {
    // A clock before 1970 is a broken machine; treating it as the epoch keeps expiry
    // conservative (entries look younger) instead of failing every operation.
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// Failures of the disk may pass (a full disk gets space back); anything else, such as a
/// corrupt file, will not.
fn db_error(error: impl Into<redb::Error>) -> StoreError {
    let error = error.into();
    match error {
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
            StoreError::Unavailable(format!("embedded store: {error}"))
        }
        _ => StoreError::Invalid(format!("embedded store: {error}")),
    }
}
