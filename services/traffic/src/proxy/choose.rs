//! Which backend takes a request: rules, then the sticky cohort, then smooth weighted
//! round-robin.

use http::{HeaderMap, HeaderValue, Response, header};
use rand::RngCore;

use super::ProxyBody;
use crate::{
    balance::{bucket, cohort},
    route::{RuleMatch, StickyKey},
    stats::Half,
    table::ActiveRoute,
};

/// How long a generated sticky key lasts in the browser: a cohort should outlive a
/// migration, which may take weeks.
const STICKY_COOKIE_MAX_AGE_SECS: u64 = 400 * 24 * 3600;

/// The chosen backend, the half of its statistics the request counts in, and a sticky
/// cookie to set when the request had none.
pub(super) struct Choice {
    pub(super) backend: usize,
    pub(super) half: Half,
    pub(super) new_sticky_cookie: Option<String>,
}

/// Chooses the backend for a request with `headers`.
pub(super) fn backend(active: &ActiveRoute, headers: &HeaderMap) -> Option<Choice> {
    let route = &active.route;
    for rule in &route.rules {
        let matched = match &rule.matcher {
            RuleMatch::Header { name, value } => {
                headers.get_all(name).iter().any(|header| header.to_str().is_ok_and(|header| value.matches(header)))
            }
            RuleMatch::Cookie { name, value } => cookie(headers, name).is_some_and(|found| found == value),
        };
        if matched {
            return Some(Choice { backend: rule.backend, half: Half::random(), new_sticky_cookie: None });
        }
    }
    match &route.sticky {
        Some(StickyKey::Header(name)) => {
            if let Some(key) = headers.get(name) {
                return sticky(key.as_bytes(), &route.weights, None);
            }
        }
        Some(StickyKey::Cookie(name)) => {
            if let Some(key) = cookie(headers, name) {
                return sticky(key.as_bytes(), &route.weights, None);
            }
            let key = new_key();
            let cookie = format!("{name}={key}; Path=/; Max-Age={STICKY_COOKIE_MAX_AGE_SECS}; HttpOnly; SameSite=Lax");
            return sticky(key.as_bytes(), &route.weights, Some(cookie));
        }
        None => {}
    }
    let backend = active.weighted.lock().pick(&route.weights)?;
    Some(Choice { backend, half: Half::random(), new_sticky_cookie: None })
}

/// The cohort of sticky `key`, and its half by the same bucket.
fn sticky(key: &[u8], weights: &[u32], new_sticky_cookie: Option<String>) -> Option<Choice> {
    let bucket = bucket(key);
    let backend = cohort(bucket, weights)?;
    Some(Choice { backend, half: Half::of_bucket(bucket), new_sticky_cookie })
}

/// Adds `cookie` to the response so the client keeps its cohort.
pub(super) fn set_cookie(mut response: Response<ProxyBody>, cookie: &str) -> Response<ProxyBody> {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// A fresh random user key: 128 bits, hex.
fn new_key() -> String {
    let mut bytes = [0_u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_several() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; canary=always"));
        headers.append(header::COOKIE, HeaderValue::from_static("user=\"u-7\""));
        assert_eq!(cookie(&headers, "canary"), Some("always"));
        assert_eq!(cookie(&headers, "user"), Some("u-7"));
        assert_eq!(cookie(&headers, "can"), None);
    }

    #[test]
    fn new_keys_are_128_bit_hex() {
        let key = new_key();
        assert_eq!(key.len(), 32);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(key, new_key());
    }
}
