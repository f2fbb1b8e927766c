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
//!
//! An update takes its record out and puts the record it wrote back, decoded: a session
//! updated again and again on this replica is then neither decoded nor copied for it.
//! A read leaves the bytes it read, since most records read are never updated here.

use bytes::Bytes;
use quick_cache::{Weighter, sync::Cache};

use crate::{id::SessionId, record::Record};

/// Bytes counted for an entry beyond its id and record: the cache's own bookkeeping.
const ENTRY_OVERHEAD: u64 = 64;

/// A record at the version the store gave it.
#[derive(Clone, Debug)]
struct Cached {
    version: u64,
    /// How many bytes the record takes encoded, which is what the entry is weighed by.
    encoded_len: usize,
    record: Held,
}

/// A record as the cache holds it.
#[derive(Clone, Debug)]
enum Held {
    /// As the store holds it: what a read left.
    Encoded(Bytes),
    /// Ready to change: what an update wrote.
    Decoded(Record),
}

/// Weighs an entry by the bytes it holds.
#[derive(Clone, Debug)]
struct ByteWeight;

impl Weighter<String, Cached> for ByteWeight {
    fn weight(&self, id: &String, cached: &Cached) -> u64 {
        (id.len() + cached.encoded_len) as u64 + ENTRY_OVERHEAD
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
        let value = value.into();
        self.insert(id, Cached { version, encoded_len: value.len(), record: Held::Encoded(value) });
    }

    /// Remembers that session `id` is `record`, `encoded_len` bytes encoded, at `version`.
    pub fn remember_record(&self, id: &SessionId, version: u64, record: Record, encoded_len: usize) {
        self.insert(id, Cached { version, encoded_len, record: Held::Decoded(record) });
    }

    fn insert(&self, id: &SessionId, cached: Cached) {
        if let Some(entries) = &self.entries {
            entries.insert(id.as_str().to_owned(), cached);
        }
    }

    /// Takes out the version and record last remembered for `id`, if any, at a version
    /// `wanted` accepts, and still decodable. The caller owns the record from then on; it
    /// puts back what it writes. An entry at a version not wanted stays for the next
    /// caller: a writer with a stale version must not cost the others their cached record.
    pub fn take(&self, id: &SessionId, wanted: impl FnOnce(u64) -> bool) -> Option<(u64, Record)> {
        let (_, cached) = self.entries.as_ref()?.remove_if(id.as_str(), |cached| wanted(cached.version))?;
        let record = match cached.record {
            Held::Decoded(record) => record,
            Held::Encoded(value) => Record::decode_from(&value)?,
        };
        Some((cached.version, record))
    }

    /// Forgets `id`, once it is deleted: no write can succeed from its record any more,
    /// so it would only take room.
    pub fn forget(&self, id: &SessionId) {
        if let Some(entries) = &self.entries {
            entries.remove(id.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message;

    use super::*;

    fn record(cart: &str) -> Record {
        Record { ttl_ms: 60_000, attributes: HashMap::from([("cart".into(), cart.into())]), ..Record::default() }
    }

    #[test]
    fn an_update_takes_the_record_out_and_puts_back_what_it_wrote() {
        let cache = RecordCache::new(1 << 20);
        let id = SessionId::generate();
        cache.remember(&id, 3, record("read").encode_to_vec());
        assert_eq!(cache.take(&id, |version| version == 2), None, "a stale version takes nothing");
        assert_eq!(cache.take(&id, |_| true), Some((3, record("read"))), "and leaves the entry");
        assert_eq!(cache.take(&id, |_| true), None, "a taken record is the taker's alone");

        let written = record("written");
        let encoded_len = written.encoded_len();
        cache.remember_record(&id, 4, written.clone(), encoded_len);
        assert_eq!(cache.take(&id, |version| version == 4), Some((4, written)));
    }

    #[test]
    fn undecodable_bytes_and_a_cache_of_nothing_give_nothing() {
        let id = SessionId::generate();
        let cache = RecordCache::new(1 << 20);
        cache.remember(&id, 1, vec![0xff; 3]);
        assert_eq!(cache.take(&id, |_| true), None);

        let none = RecordCache::new(0);
        none.remember_record(&id, 1, record("x"), 10);
        assert_eq!(none.take(&id, |_| true), None);
    }
}
