//! How big and how long-lived a session may be: the `limits` section of the configuration,
//! and the checks that refuse a request over a limit before anything is written.
//!
//! Every refusal names the field path (`set["cart"]`, `ttl`) and the limit by its
//! configuration key (`limits.max_value_bytes`), so whoever hits it knows both what to
//! change in the request and which setting allows more.

use std::{collections::HashMap, time::Duration};

use ficus_kit::config::ConfigError;
use serde::{Deserialize, Serialize};

use crate::error::SessionError;

/// The largest `max_session_bytes` accepted: a session travels in one gRPC message, and
/// clients refuse messages over 4 MiB by default; the rest is room for names and framing.
const SESSION_BYTES_CEILING: usize = 3 * 1024 * 1024;

/// Bounds on session contents and lifetimes; the `limits` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most attributes one session may hold.
    pub max_attributes: usize,
    /// Longest attribute name, in bytes of UTF-8.
    pub max_name_bytes: usize,
    /// Longest attribute value, in bytes.
    pub max_value_bytes: usize,
    /// Most bytes of names and values together in one session.
    pub max_session_bytes: usize,
    /// Shortest idle TTL a client may ask for.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Longest idle TTL a client may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Idle TTL of a session created without one.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Maximum lifetime of a session created without one; none when unset.
    #[serde(with = "humantime_serde")]
    pub default_max_lifetime: Option<Duration>,
    /// Longest maximum lifetime a client may ask for.
    #[serde(with = "humantime_serde")]
    pub max_lifetime_cap: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_attributes: 256,
            max_name_bytes: 256,
            max_value_bytes: 64 * 1024,
            max_session_bytes: 1024 * 1024,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            default_ttl: Duration::from_secs(30 * 60),
            default_max_lifetime: None,
            max_lifetime_cap: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

impl Limits {
    /// Refuses limits that contradict each other; `section` is where they sit (`limits`).
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let key = |name: &str| format!("{section}.{name}");
        if self.max_attributes == 0 {
            return Err(ConfigError::invalid(key("max_attributes"), "must be at least 1"));
        }
        if self.max_name_bytes == 0 {
            return Err(ConfigError::invalid(key("max_name_bytes"), "must be at least 1"));
        }
        if self.max_session_bytes > SESSION_BYTES_CEILING {
            return Err(ConfigError::invalid(
                key("max_session_bytes"),
                format!("must be at most {SESSION_BYTES_CEILING} so a session fits in one gRPC message"),
            ));
        }
        if self.max_value_bytes > self.max_session_bytes {
            return Err(ConfigError::invalid(key("max_value_bytes"), "must not exceed max_session_bytes"));
        }
        if self.min_ttl.is_zero() {
            return Err(ConfigError::invalid(key("min_ttl"), "must be longer than zero"));
        }
        if self.max_ttl < self.min_ttl {
            return Err(ConfigError::invalid(key("max_ttl"), "must not be shorter than min_ttl"));
        }
        if !(self.min_ttl..=self.max_ttl).contains(&self.default_ttl) {
            return Err(ConfigError::invalid(key("default_ttl"), "must lie between min_ttl and max_ttl"));
        }
        if self.max_lifetime_cap < self.min_ttl {
            return Err(ConfigError::invalid(key("max_lifetime_cap"), "must not be shorter than min_ttl"));
        }
        // Beyond a century the store refuses the TTL anyway; better to say so at start.
        if self.max_ttl.max(self.max_lifetime_cap) > Duration::from_secs(100 * 365 * 24 * 3600) {
            return Err(ConfigError::invalid(key("max_ttl"), "max_ttl and max_lifetime_cap must be at most 100 years"));
        }
        if let Some(lifetime) = self.default_max_lifetime
            && !(self.min_ttl..=self.max_lifetime_cap).contains(&lifetime)
        {
            return Err(ConfigError::invalid(
                key("default_max_lifetime"),
                "must lie between min_ttl and max_lifetime_cap",
            ));
        }
        Ok(())
    }

    /// Checks a requested idle TTL at `field`.
    pub fn check_ttl(&self, field: &str, ttl: Duration) -> Result<(), SessionError> {
        if ttl < self.min_ttl {
            return Err(over(field, format!("ttl is {ttl:?}; limits.min_ttl is {:?}", self.min_ttl)));
        }
        if ttl > self.max_ttl {
            return Err(over(field, format!("ttl is {ttl:?}; limits.max_ttl is {:?}", self.max_ttl)));
        }
        Ok(())
    }

    /// Checks a requested maximum lifetime at `field`.
    pub fn check_max_lifetime(&self, field: &str, lifetime: Duration) -> Result<(), SessionError> {
        if lifetime < self.min_ttl {
            return Err(over(field, format!("max_lifetime is {lifetime:?}; limits.min_ttl is {:?}", self.min_ttl)));
        }
        if lifetime > self.max_lifetime_cap {
            return Err(over(
                field,
                format!("max_lifetime is {lifetime:?}; limits.max_lifetime_cap is {:?}", self.max_lifetime_cap),
            ));
        }
        Ok(())
    }

    /// Checks each name and value written through the map named `map` (`attributes` or
    /// `set`), one by one, before the session is read.
    pub fn check_writes(&self, map: &str, writes: &HashMap<String, Vec<u8>>) -> Result<(), SessionError> {
        for (name, value) in writes {
            self.check_name(&format!("{map}[{name:?}]"), name)?;
            if value.len() > self.max_value_bytes {
                return Err(over(
                    &format!("{map}[{name:?}]"),
                    format!("value is {} bytes; limits.max_value_bytes is {}", value.len(), self.max_value_bytes),
                ));
            }
        }
        Ok(())
    }

    /// Checks the names in a `remove` list: an over-long name cannot exist, so it is a
    /// caller's mistake worth reporting rather than a no-op.
    pub fn check_removals(&self, removals: &[String]) -> Result<(), SessionError> {
        removals.iter().enumerate().try_for_each(|(index, name)| self.check_name(&format!("remove[{index}]"), name))
    }

    /// Checks the whole session as it would be stored, after a write through `map`.
    pub fn check_session(&self, map: &str, attributes: &HashMap<String, Vec<u8>>) -> Result<(), SessionError> {
        if attributes.len() > self.max_attributes {
            return Err(over(
                map,
                format!(
                    "the session would have {} attributes; limits.max_attributes is {}",
                    attributes.len(),
                    self.max_attributes
                ),
            ));
        }
        let bytes = session_bytes(attributes);
        if bytes > self.max_session_bytes {
            return Err(over(
                map,
                format!("the session would be {bytes} bytes; limits.max_session_bytes is {}", self.max_session_bytes),
            ));
        }
        Ok(())
    }

    fn check_name(&self, field: &str, name: &str) -> Result<(), SessionError> {
        if name.is_empty() {
            return Err(over(field, "attribute names must not be empty"));
        }
        if name.len() > self.max_name_bytes {
            return Err(over(
                field,
                format!("name is {} bytes; limits.max_name_bytes is {}", name.len(), self.max_name_bytes),
            ));
        }
        Ok(())
    }
}

/// What `max_session_bytes` counts: names and values, not the encoding around them.
pub fn session_bytes(attributes: &HashMap<String, Vec<u8>>) -> usize {
    attributes.iter().map(|(name, value)| name.len() + value.len()).sum()
}

fn over(field: &str, description: impl Into<String>) -> SessionError {
    SessionError::InvalidArgument { field: field.to_owned(), description: description.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<(), SessionError>) -> Option<String> {
        match result {
            Err(SessionError::InvalidArgument { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn the_defaults_are_valid() {
        assert!(Limits::default().validate("limits").is_ok());
    }

    #[test]
    fn contradicting_limits_name_the_key() {
        let limits = Limits { default_ttl: Duration::from_millis(10), ..Limits::default() };
        let error = limits.validate("limits").err().map(|error| error.to_string()).unwrap_or_default();
        assert!(error.contains("limits.default_ttl"), "{error}");

        let limits = Limits { max_value_bytes: 2 << 20, ..Limits::default() };
        let error = limits.validate("limits").err().map(|error| error.to_string()).unwrap_or_default();
        assert!(error.contains("limits.max_value_bytes"), "{error}");
    }

    #[test]
    fn an_oversized_value_names_its_attribute_and_the_limit() {
        let limits = Limits::default();
        let writes = HashMap::from([("cart".to_owned(), vec![0; 70_000])]);
        let Err(SessionError::InvalidArgument { field, description }) = limits.check_writes("set", &writes) else {
            panic!("a 70000-byte value passed");
        };
        assert_eq!(field, "set[\"cart\"]");
        assert_eq!(description, "value is 70000 bytes; limits.max_value_bytes is 65536");
    }

    #[test]
    fn names_must_be_present_and_short() {
        let limits = Limits { max_name_bytes: 4, ..Limits::default() };
        let empty = HashMap::from([(String::new(), vec![])]);
        assert_eq!(field_of(limits.check_writes("attributes", &empty)).as_deref(), Some("attributes[\"\"]"));
        let long = HashMap::from([("abcde".to_owned(), vec![])]);
        assert_eq!(field_of(limits.check_writes("set", &long)).as_deref(), Some("set[\"abcde\"]"));
        assert_eq!(field_of(limits.check_removals(&["ok".into(), "abcde".into()])).as_deref(), Some("remove[1]"));
    }

    #[test]
    fn the_whole_session_is_bounded_by_count_and_bytes() {
        let limits = Limits { max_attributes: 2, max_session_bytes: 10, ..Limits::default() };
        let three = HashMap::from([("a".into(), vec![]), ("b".into(), vec![]), ("c".into(), vec![])]);
        assert_eq!(field_of(limits.check_session("set", &three)).as_deref(), Some("set"));
        let big = HashMap::from([("a".into(), vec![0; 10])]);
        assert_eq!(field_of(limits.check_session("attributes", &big)).as_deref(), Some("attributes"));
        let fits = HashMap::from([("a".into(), vec![0; 9])]);
        assert!(limits.check_session("set", &fits).is_ok());
    }

    #[test]
    fn ttls_outside_the_range_are_refused() {
        let limits = Limits::default();
        assert!(limits.check_ttl("ttl", Duration::from_millis(999)).is_err());
        assert!(limits.check_ttl("ttl", Duration::from_secs(1)).is_ok());
        assert!(limits.check_ttl("ttl", limits.max_ttl + Duration::from_secs(1)).is_err());
        assert!(limits.check_max_lifetime("max_lifetime", Duration::from_secs(400 * 24 * 3600)).is_err());
    }
}
