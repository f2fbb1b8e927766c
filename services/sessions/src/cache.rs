//! Session records this replica read or wrote lately, so that an update can write
//! without reading the session again first.
//!
//! A cached record is exact, not merely recent: the store never reuses a version, so the
//! bytes stored at a version never change. An update that expects a cached version can
//! apply its changes to the cached record and write with compare-and-set on that version;
//! if the session moved on meanwhile (another replica wrote, or it expired or was
//! deleted), the store refuses the write and the caller hears exactly what a read would
//! have told it. So nothing here is ever invalidated for correctness; entries are only
//! evicted to bound memory.

use bytes::Bytes;
use quick_cache::{Weighter, sync::Cache};

use crate::{id::SessionId, record::Record};

/// Bytes counted for an entry beyond its id and record: the cache's own bookkeeping.
const ENTRY_OVERHEAD: u64 = 64;

/// A record at the version the store gave it, as the store holds it (encoded).
#[derive(Clone, Debug)]
struct Cached {
    version: u64,
    value: Bytes,
}

/// Weighs an entry by the bytes it holds.
#[derive(Clone, Debug)]
struct ByteWeight;

impl Weighter<String, Cached> for ByteWeight {
    fn weight(&self, id: &String, cached: &Cached) -> u64 {
        (id.len() + cached.value.len()) as u64 + ENTRY_OVERHEAD
    }
}

/// Recently seen session records, bounded in bytes.
#[derive(Debug)]
pub struct RecordCache {
    /// `None` when the cache is configured away.
    entries: Option<Cache<String, Cached, ByteWeight>>,
}

impl RecordCache {
    /// A cache of at most about `bytes` bytes; 0 caches nothing.
    pub fn new(bytes: u64) -> Self {
        let entries = (bytes > 0).then(|| {
            // The estimate only sizes the first allocation; a session is typically a
            // few hundred bytes.
            let estimated_items = usize::try_from(bytes / 512).unwrap_or(usize::MAX).max(16);
            Cache::with_weighter(estimated_items, bytes, ByteWeight)
        });
        Self { entries }
    }

    /// Remembers that session `id` is `value` (encoded) at `version`.
    pub fn remember(&self, id: &SessionId, version: u64, value: impl Into<Bytes>) {
        if let Some(entries) = &self.entries {
            entries.insert(id.as_str().to_owned(), Cached { version, value: value.into() });
        }
    }

    /// The version and record last remembered for `id`, if any and still decodable.
    pub fn recall(&self, id: &SessionId) -> Option<(u64, Record)> {
        let cached = self.entries.as_ref()?.get(id.as_str())?;
        Some((cached.version, Record::decode_from(&cached.value)?))
    }

    /// Forgets `id`, once it is deleted: no write can succeed from its record any more,
    /// so it would only take room.
    pub fn forget(&self, id: &SessionId) {
        if let Some(entries) = &self.entries {
            entries.remove(id.as_str());
        }
    }
}
