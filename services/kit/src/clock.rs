//! Where a service reads the time of day.
//!
//! Services take a [`Clock`] rather than calling `SystemTime::now()`, so that what they
//! decide by the time (a step's window, a deadline) can be tested on tokio's paused time:
//! [`Clock::following_tokio`] reads the time of day off tokio's clock, which a paused
//! runtime advances straight to the next timer. A two-day rollout then runs in seconds,
//! and its timestamps still say two days.

use std::time::{Duration, SystemTime};

/// The source of the time of day; cheap to copy.
#[derive(Clone, Copy, Debug, Default)]
pub enum Clock {
    /// The system's clock.
    #[default]
    System,
    /// The time of day when the clock was made, moved on by tokio's clock since.
    FollowingTokio {
        /// The time of day at `at`.
        origin: SystemTime,
        /// When, on tokio's clock, the time of day was `origin`.
        at: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's, paused or not, from the system's time of day now.
    pub fn following_tokio() -> Self {
        Self::FollowingTokio { origin: SystemTime::now(), at: tokio::time::Instant::now() }
    }

    /// The time of day.
    pub fn now(&self) -> SystemTime {
        match self {
            Self::System => SystemTime::now(),
            Self::FollowingTokio { origin, at } => *origin + at.elapsed(),
        }
    }

    /// The tokio instant at which this clock reads `time` (now, if that has passed): what
    /// to sleep until for a time of day.
    pub fn instant_at(&self, time: SystemTime) -> tokio::time::Instant {
        let ahead = time.duration_since(self.now()).unwrap_or(Duration::ZERO);
        // Beyond what an Instant can hold is never.
        tokio::time::Instant::now().checked_add(ahead).unwrap_or_else(far_future)
    }
}

/// An instant no sleep reaches: about thirty years from now.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_clock_following_paused_tokio_moves_with_its_timers() {
        let clock = Clock::following_tokio();
        let start = clock.now();
        tokio::time::sleep(Duration::from_secs(2 * 24 * 3600)).await;
        assert_eq!(clock.now().duration_since(start).expect("later"), Duration::from_secs(2 * 24 * 3600));
        let in_an_hour = clock.now() + Duration::from_secs(3600);
        assert_eq!(clock.instant_at(in_an_hour) - tokio::time::Instant::now(), Duration::from_secs(3600));
        assert_eq!(clock.instant_at(start), tokio::time::Instant::now(), "a past time is now");
    }
}
