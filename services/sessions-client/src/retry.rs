//! How [`update`](crate::SessionClient::update) retries a compare-and-set that lost.
//!
//! Writers that lose a race back off for a random time in a window that doubles with
//! each loss (exponential backoff with full jitter): without the randomness, writers that
//! collided once collide again on every retry.

use std::time::Duration;

/// Bounds on retrying a conflicting update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least one is always made.
    pub max_attempts: u32,
    /// Backoff window after the first loss.
    pub base_delay: Duration,
    /// Largest backoff window.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Ten attempts, backing off from 2 ms up to 100 ms: ample for the few concurrent
    /// requests one user makes, and a bounded wait when something is badly contended.
    fn default() -> Self {
        Self { max_attempts: 10, base_delay: Duration::from_millis(2), max_delay: Duration::from_millis(100) }
    }
}

impl RetryPolicy {
    /// The backoff window after `losses` lost attempts (1 for the first).
    pub(crate) fn window(&self, losses: u32) -> Duration {
        let factor = 1_u32.checked_shl(losses.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// A random pause within the window after `losses` lost attempts.
    pub(crate) fn backoff(&self, losses: u32) -> Duration {
        let window = self.window(losses);
        window.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_doubles_up_to_the_maximum() {
        let policy = RetryPolicy::default();
        let windows: Vec<u128> = (1..=8).map(|losses| policy.window(losses).as_millis()).collect();
        assert_eq!(windows, [2, 4, 8, 16, 32, 64, 100, 100]);
        assert_eq!(policy.window(200), policy.max_delay);
    }

    #[test]
    fn backoff_stays_within_the_window() {
        let policy = RetryPolicy::default();
        for losses in 1..20 {
            assert!(policy.backoff(losses) <= policy.window(losses));
        }
    }
}
