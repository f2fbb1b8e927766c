//! Session ids: 192 random bits from a CSPRNG, written as 32 URL-safe base64 characters.
//!
//! A session id is a bearer credential: whoever presents it is the user. So it must be
//! unguessable (far more than the 128 bits the contract promises, from a generator fit for
//! keys) and it is never written to logs or error messages. The text form goes into
//! cookies and URLs unescaped, hence base64url without padding.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;

/// Random bytes per id; 24 bytes encode to exactly 32 characters with no padding, so every
/// string of 32 base64url characters is a well-formed id and validation needs no decoding.
const RANDOM_BYTES: usize = 24;

/// Length of the text form.
pub const ID_LEN: usize = RANDOM_BYTES / 3 * 4;

/// A well-formed session id; it may still name no session.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh random id.
    pub fn generate() -> Self {
        let mut bytes = [0_u8; RANDOM_BYTES];
        // ThreadRng is a ChaCha-based CSPRNG reseeded from the OS, suitable for secrets,
        // and avoids a system call per session.
        rand::rng().fill_bytes(&mut bytes);
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts `text` when it has the shape of an id this service hands out.
    pub fn parse(text: &str) -> Result<Self, MalformedId> {
        let well_formed =
            text.len() == ID_LEN && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if well_formed { Ok(Self(text.to_owned())) } else { Err(MalformedId) }
    }

    /// The text form, which is also the store key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text form, by value.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Redacted: ids are credentials and must not end up in logs through `{:?}`.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}…)", &self.0[..4])
    }
}

/// A string that cannot be a session id; deliberately does not carry the string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must be {ID_LEN} URL-safe base64 characters (A-Z, a-z, 0-9, '-', '_')")]
pub struct MalformedId;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generated_ids_are_well_formed_and_distinct() {
        let ids: HashSet<String> = (0..1000).map(|_| SessionId::generate().into_string()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(SessionId::parse(id).map(SessionId::into_string).as_deref(), Ok(id.as_str()));
        }
    }

    #[test]
    fn ids_carry_192_random_bits() {
        let id = SessionId::generate();
        let decoded = URL_SAFE_NO_PAD.decode(id.as_str()).unwrap_or_default();
        assert_eq!(decoded.len() * 8, 192);
    }

    #[test]
    fn malformed_ids_are_refused() {
        let valid = SessionId::generate().into_string();
        let too_short = &valid[1..];
        let too_long = format!("{valid}A");
        let padded = format!("{}=", &valid[1..]);
        let standard_alphabet = format!("{}+", &valid[1..]);
        let non_ascii = format!("{}é", &valid[2..]);
        for text in ["", too_short, &too_long, &padded, &standard_alphabet, &non_ascii, "../../etc/passwd"] {
            assert_eq!(SessionId::parse(text), Err(MalformedId), "{text:?}");
        }
    }

    #[test]
    fn debug_output_does_not_reveal_the_id() {
        let id = SessionId::generate();
        let shown = format!("{id:?}");
        assert!(!shown.contains(id.as_str()));
    }
}
