//! Waiting on a condition with a deadline instead of sleeping.
//!
//! A fixed sleep is either too short on a loaded CI machine (a flaky test) or too long
//! everywhere else (a slow suite). Polling until a deadline is both fast and patient.

use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout_at};

/// How long to wait between two polls: short enough to keep tests fast, long enough not
/// to spin a core that the code under test needs.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` until it returns true, and panics if it has not by `within`.
///
/// A poll that is still running at the deadline counts as a failure too, so a condition
/// that hangs cannot hang the test. The panic names the caller's line, since the closure
/// itself has no useful name.
///
/// ```no_run
/// # async fn demo(counter: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
/// use std::sync::atomic::Ordering;
/// use std::time::Duration;
///
/// ficus_testkit::eventually(Duration::from_secs(5), || async {
///     counter.load(Ordering::SeqCst) == 3
/// })
/// .await;
/// # }
/// ```
#[track_caller]
pub fn eventually<F, Fut>(within: Duration, mut condition: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let caller = Location::caller();
    async move {
        poll(within, caller, || {
            let check = condition();
            async move { check.await.then_some(()) }
        })
        .await;
    }
}

/// Polls `probe` until it returns `Some`, returns that value, and panics if it has not
/// by `within`.
///
/// Use this rather than [`eventually`] when the test needs what it waited for, e.g. the
/// first change a watcher reports.
#[track_caller]
pub fn wait_until<T, F, Fut>(within: Duration, probe: F) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = Location::caller();
    poll(within, caller, probe)
}

async fn poll<T, F, Fut>(within: Duration, caller: &'static Location<'static>, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        match timeout_at(deadline, probe()).await {
            Ok(Some(value)) => return value,
            Ok(None) if Instant::now() < deadline => sleep(POLL_INTERVAL).await,
            Ok(None) => panic!("condition at {caller} still false after {within:?}"),
            Err(_) => panic!("condition at {caller} still being checked after {within:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let polls = Arc::new(AtomicUsize::new(0));
        eventually(Duration::from_secs(5), || {
            let polls = polls.clone();
            async move { polls.fetch_add(1, Ordering::SeqCst) >= 2 }
        })
        .await;
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn wait_until_hands_back_the_value() {
        let polls = AtomicUsize::new(0);
        let value = wait_until(Duration::from_secs(5), || async {
            let n = polls.fetch_add(1, Ordering::SeqCst);
            (n == 1).then_some("ready")
        })
        .await;
        assert_eq!(value, "ready");
    }

    #[tokio::test]
    #[should_panic(expected = "still false")]
    async fn panics_after_the_deadline() {
        eventually(Duration::from_millis(50), || async { false }).await;
    }

    #[tokio::test]
    #[should_panic(expected = "still being checked")]
    async fn a_hanging_condition_fails_too() {
        eventually(Duration::from_millis(50), std::future::pending::<bool>).await;
    }
}
