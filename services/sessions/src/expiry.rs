//! When a session expires: sliding expiry under an optional hard maximum.
//!
//! Two rules, kept here as plain arithmetic so they are tested without a store:
//!
//! - Activity (a touching read, a touch without a TTL, an update without a TTL) moves the
//!   expiry to `now + ttl`, but never earlier than it already is: a session that was once
//!   extended further (say a "remember me" touch with a long TTL) is not cut short by the
//!   next ordinary request.
//! - An explicit TTL in a request sets the expiry to exactly `now + ttl`, shorter or longer.
//!
//! Either way the expiry never passes the maximum lifetime; a session whose maximum has
//! come is over, whatever it is touched with.
//!
//! Deadlines are whole milliseconds, rounded down. The store keeps expiry in milliseconds
//! and computes it a moment after this service does, so a deadline rounded down is never
//! later than the one the store keeps: a client told "valid until T" can rely on it.

use std::time::{Duration, SystemTime};

/// Expiry after activity at `now`: `now + ttl`, not before `current`, not after `max`.
/// `None` when the session is already past its maximum lifetime.
pub fn after_activity(
    now: SystemTime,
    ttl: Duration,
    current: Option<SystemTime>,
    max: Option<SystemTime>,
) -> Option<SystemTime> {
    let slid = now.checked_add(ttl)?;
    let later = current.map_or(slid, |current| current.max(slid));
    cap(now, later, max)
}

/// Expiry after an explicit TTL at `now`: `now + ttl`, not after `max`. `None` when the
/// session is already past its maximum lifetime.
pub fn after_explicit_ttl(now: SystemTime, ttl: Duration, max: Option<SystemTime>) -> Option<SystemTime> {
    cap(now, now.checked_add(ttl)?, max)
}

/// The time left until `expires_at`, as the store's TTL; `None` when nothing is left.
pub fn remaining(now: SystemTime, expires_at: SystemTime) -> Option<Duration> {
    expires_at.duration_since(now).ok().filter(|left| !left.is_zero())
}

fn cap(now: SystemTime, expires_at: SystemTime, max: Option<SystemTime>) -> Option<SystemTime> {
    let expires_at = floor_millis(max.map_or(expires_at, |max| expires_at.min(max)));
    (expires_at > now).then_some(expires_at)
}

fn floor_millis(time: SystemTime) -> SystemTime {
    let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    time - Duration::from_nanos(u64::from(since_epoch.subsec_nanos() % 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn at(minutes: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + MINUTE * minutes as u32
    }

    #[test]
    fn activity_slides_the_expiry_forward() {
        assert_eq!(after_activity(at(10), 30 * MINUTE, Some(at(30)), None), Some(at(40)));
    }

    #[test]
    fn activity_never_shortens_an_expiry() {
        assert_eq!(after_activity(at(10), 30 * MINUTE, Some(at(600)), None), Some(at(600)));
    }

    #[test]
    fn an_explicit_ttl_may_shorten_it() {
        assert_eq!(after_explicit_ttl(at(10), 5 * MINUTE, None), Some(at(15)));
    }

    #[test]
    fn the_maximum_lifetime_caps_every_extension() {
        assert_eq!(after_activity(at(50), 30 * MINUTE, Some(at(60)), Some(at(70))), Some(at(70)));
        assert_eq!(after_explicit_ttl(at(50), 30 * MINUTE, Some(at(70))), Some(at(70)));
    }

    #[test]
    fn a_session_past_its_maximum_is_over() {
        assert_eq!(after_activity(at(70), 30 * MINUTE, Some(at(80)), Some(at(70))), None);
        assert_eq!(after_explicit_ttl(at(71), 30 * MINUTE, Some(at(70))), None);
    }

    #[test]
    fn deadlines_are_whole_milliseconds_rounded_down() {
        let now = at(0) + Duration::from_micros(700);
        assert_eq!(after_explicit_ttl(now, Duration::from_millis(600), None), Some(at(0) + Duration::from_millis(600)));
    }

    #[test]
    fn remaining_is_none_once_due() {
        assert_eq!(remaining(at(10), at(12)), Some(2 * MINUTE));
        assert_eq!(remaining(at(12), at(12)), None);
        assert_eq!(remaining(at(13), at(12)), None);
    }
}
