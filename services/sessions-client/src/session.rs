//! A session as the application holds it during a request: what the store returned plus
//! the changes made since, which [`save`](crate::SessionClient::save) sends as one
//! compare-and-set update.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime},
};

use ficus_proto::sessions::v1 as proto;

/// A session snapshot with pending changes.
///
/// Reads see the pending changes; the store sees them only when the session is saved,
/// and only if nobody else wrote it since it was read.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    id: String,
    version: u64,
    /// The snapshot with the pending changes applied.
    attributes: HashMap<String, Vec<u8>>,
    created_at: Option<SystemTime>,
    expires_at: Option<SystemTime>,
    max_expires_at: Option<SystemTime>,
    set: HashMap<String, Vec<u8>>,
    removed: HashSet<String>,
}

impl Session {
    /// The id, to put in the cookie. It is a credential: keep it out of logs and URLs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The version read from the store; a save succeeds only while the store has it.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// An attribute, including unsaved changes.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.attributes.get(name).map(Vec::as_slice)
    }

    /// An attribute as UTF-8 text; `None` when absent or not text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Every attribute, including unsaved changes, in no particular order.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.attributes.iter().map(|(name, value)| (name.as_str(), value.as_slice()))
    }

    /// Sets an attribute, to be saved.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        let (name, value) = (name.into(), value.into());
        self.removed.remove(&name);
        self.attributes.insert(name.clone(), value.clone());
        self.set.insert(name, value);
    }

    /// Removes an attribute, to be saved.
    pub fn remove(&mut self, name: &str) {
        self.attributes.remove(name);
        self.set.remove(name);
        self.removed.insert(name.to_owned());
    }

    /// Whether there are changes to save.
    pub fn is_modified(&self) -> bool {
        !self.set.is_empty() || !self.removed.is_empty()
    }

    /// When the session was created.
    pub fn created_at(&self) -> Option<SystemTime> {
        self.created_at
    }

    /// When the session expires unless used again.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// When the session ends regardless of use, if it has a maximum lifetime.
    pub fn max_expires_at(&self) -> Option<SystemTime> {
        self.max_expires_at
    }

    /// The pending changes as an update of this version; they stay pending until
    /// [`Session::saved`] takes in the store's answer.
    pub(crate) fn update_request(&self) -> proto::UpdateSessionRequest {
        proto::UpdateSessionRequest {
            id: self.id.clone(),
            expected_version: self.version,
            set: self.set.clone(),
            remove: self.removed.iter().cloned().collect(),
            ttl: None,
            omit_attributes: self.knows_saved_attributes(),
        }
    }

    /// Takes in the store's answer to [`update_request`](Self::update_request): the new
    /// version and expiry, and no pending changes.
    pub(crate) fn saved(&mut self, reply: proto::Session) {
        let attributes =
            if self.knows_saved_attributes() { std::mem::take(&mut self.attributes) } else { reply.attributes };
        *self = Self::from_proto(proto::Session { attributes, ..reply });
    }

    /// Whether a successful save leaves exactly the attributes this session shows: it
    /// does when the save is conditional on the version they were read at, so the store
    /// need not send them back.
    fn knows_saved_attributes(&self) -> bool {
        self.version != 0
    }

    /// The session as the store returned it, with no pending changes.
    pub(crate) fn from_proto(session: proto::Session) -> Self {
        Self {
            id: session.id,
            version: session.version,
            attributes: session.attributes,
            created_at: session.created_at.and_then(system_time),
            expires_at: session.expires_at.and_then(system_time),
            max_expires_at: session.max_expires_at.and_then(system_time),
            set: HashMap::new(),
            removed: HashSet::new(),
        }
    }
}

fn system_time(timestamp: pbjson_types::Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(timestamp.seconds).ok()?;
    let nanos = u32::try_from(timestamp.nanos).ok().filter(|nanos| *nanos < 1_000_000_000)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Session {
        Session::from_proto(proto::Session {
            id: "id".into(),
            version: 7,
            attributes: HashMap::from([("user".into(), b"ada".to_vec()), ("theme".into(), b"dark".to_vec())]),
            created_at: Some(pbjson_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
            expires_at: None,
            max_expires_at: None,
        })
    }

    #[test]
    fn reads_see_pending_changes() {
        let mut session = stored();
        assert!(!session.is_modified());
        session.set("cart", "3 items");
        session.remove("theme");
        assert_eq!(session.get_str("cart"), Some("3 items"));
        assert_eq!(session.get("theme"), None);
        assert_eq!(session.get_str("user"), Some("ada"));
        assert!(session.is_modified());
        assert_eq!(session.created_at(), Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)));
    }

    #[test]
    fn the_update_carries_only_the_changes_at_the_version_read() {
        let mut session = stored();
        session.set("cart", "1");
        session.remove("theme");
        session.set("theme", "light");
        session.set("gone", "x");
        session.remove("gone");
        let request = session.update_request();
        assert_eq!(request.expected_version, 7);
        assert_eq!(request.set, HashMap::from([("cart".into(), b"1".to_vec()), ("theme".into(), b"light".to_vec())]));
        assert_eq!(request.remove, vec!["gone".to_owned()]);
        assert!(request.omit_attributes, "a save at a known version knows what it leaves");
    }

    #[test]
    fn a_saved_session_keeps_what_it_shows_at_the_stores_new_version() {
        let mut session = stored();
        session.set("cart", "1");
        session.remove("theme");
        let shown: HashMap<String, Vec<u8>> =
            session.attributes().map(|(name, value)| (name.to_owned(), value.to_vec())).collect();
        let expires = pbjson_types::Timestamp { seconds: 1_700_000_600, nanos: 0 };
        session.saved(proto::Session {
            id: "id".into(),
            version: 9,
            attributes: HashMap::new(),
            created_at: Some(pbjson_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
            expires_at: Some(expires),
            max_expires_at: None,
        });
        assert_eq!((session.version(), session.is_modified()), (9, false));
        assert_eq!(session.expires_at(), system_time(expires));
        assert_eq!(session.attributes, shown);
    }

    #[test]
    fn an_unconditional_save_takes_the_stores_attributes() {
        let mut session = Session { version: 0, ..stored() };
        session.set("cart", "1");
        assert!(!session.update_request().omit_attributes);
        let stored_now = HashMap::from([("cart".into(), b"1".to_vec()), ("other".into(), b"x".to_vec())]);
        session.saved(proto::Session {
            id: "id".into(),
            version: 3,
            attributes: stored_now.clone(),
            ..Default::default()
        });
        assert_eq!(session.attributes, stored_now);
    }
}
