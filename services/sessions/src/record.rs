//! How a session is kept in the store: one entry per session, keyed by its id, holding a
//! small protobuf message.
//!
//! Protobuf because it is compact, fast to encode and decode on every call, and lets a
//! later version add fields that an older replica skips during a rolling upgrade. What
//! the store already tracks is not repeated here: the entry version is the session
//! version, and the entry expiry is the session's sliding expiry, which a touch moves
//! without rewriting the value.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use prost::Message;

/// The stored form of a session.
#[derive(Clone, PartialEq, Message)]
pub struct Record {
    /// Creation time, in milliseconds since the Unix epoch.
    #[prost(uint64, tag = "1")]
    pub created_at_ms: u64,
    /// Idle TTL in milliseconds: how far each touch moves the expiry.
    #[prost(uint64, tag = "2")]
    pub ttl_ms: u64,
    /// Hard end of life in milliseconds since the Unix epoch; absent when unlimited.
    #[prost(uint64, optional, tag = "3")]
    pub max_expires_at_ms: Option<u64>,
    /// The attributes.
    #[prost(map = "string, bytes", tag = "4")]
    pub attributes: HashMap<String, Vec<u8>>,
}

impl Record {
    /// Decodes a stored value; `None` when it is not a record, which only a bug or another
    /// program writing into the namespace can cause.
    pub fn decode_from(bytes: &[u8]) -> Option<Self> {
        Self::decode(bytes).ok()
    }

    /// The idle TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// Sets the idle TTL, rounded up to whole milliseconds like the store's expiry.
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl_ms = millis(ttl);
    }

    /// Creation time.
    pub fn created_at(&self) -> SystemTime {
        from_unix_millis(self.created_at_ms)
    }

    /// Hard end of life, if any.
    pub fn max_expires_at(&self) -> Option<SystemTime> {
        self.max_expires_at_ms.map(from_unix_millis)
    }

    /// The same session without its attributes, for a reply that leaves them out.
    pub fn without_attributes(&self) -> Self {
        Self { attributes: HashMap::new(), ..*self }
    }
}

/// `time` in whole milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, millis)
}

fn from_unix_millis(millis: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(millis)
}

/// Whole milliseconds, rounded up, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_encoding() {
        let mut record = Record {
            created_at_ms: 1_700_000_000_123,
            ttl_ms: 0,
            max_expires_at_ms: Some(1_700_000_360_000),
            attributes: HashMap::from([("cart".to_owned(), vec![1, 2, 3]), ("empty".to_owned(), vec![])]),
        };
        record.set_ttl(Duration::from_secs(1800));
        let decoded = Record::decode_from(&record.encode_to_vec());
        assert_eq!(decoded.as_ref(), Some(&record));
        assert_eq!(decoded.map(|record| record.ttl()), Some(Duration::from_secs(1800)));
    }

    #[test]
    fn no_maximum_lifetime_is_distinct_from_zero() {
        let record = Record { max_expires_at_ms: None, ..Record::default() };
        assert_eq!(Record::decode_from(&record.encode_to_vec()).and_then(|record| record.max_expires_at()), None);
    }

    #[test]
    fn garbage_is_not_a_record() {
        assert_eq!(Record::decode_from(&[0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn times_round_trip_at_millisecond_precision() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(from_unix_millis(unix_millis(time)), time);
        assert_eq!(millis(Duration::from_micros(1)), 1);
    }
}
