//! Values built from files and rebuilt when the files change: token files, certificates
//! and keys, which Kubernetes Secrets and cert-manager rotate under a running service.
//!
//! Files are polled rather than watched with inotify: a Secret volume swaps a symlink to a
//! new directory, which file watches miss or report as a deletion, while a poll of the
//! files' modification times and lengths sees the swap like any other change.

use std::{
    fmt::Display,
    path::{Path, PathBuf},
    sync::{Arc, Weak},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// How often followed files are checked for changes. A Kubernetes Secret update reaches
/// the pod's volume within about a minute; this adds at most a few seconds to that.
pub(crate) const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// What tells a changed file from an unchanged one: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

/// Files as they were when last read.
#[derive(Clone, Debug)]
pub(crate) struct Watched {
    paths: Vec<PathBuf>,
    seen: Vec<Stamp>,
}

impl Watched {
    /// `paths` as they are now; take this before reading them, so that a change made
    /// between the read and the first check is still seen.
    pub(crate) fn now(paths: Vec<PathBuf>) -> Self {
        let seen = paths.iter().map(|path| stamp(path)).collect();
        Self { paths, seen }
    }

    /// Whether any file changed since the last call (or since [`Watched::now`]).
    fn changed(&mut self) -> bool {
        let now: Vec<Stamp> = self.paths.iter().map(|path| stamp(path)).collect();
        let changed = now != self.seen;
        self.seen = now;
        changed
    }
}

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Builds a value from `files` with `build` and rebuilds it whenever they change (see
/// [`follow`]), until `stop` or until nothing holds the answer any more.
pub(crate) fn load_and_follow<T, E, F>(
    what: &'static str,
    files: Vec<PathBuf>,
    build: F,
    stop: CancellationToken,
) -> Result<Arc<ArcSwap<T>>, E>
where
    T: Send + Sync + 'static,
    E: Display + 'static,
    F: Fn() -> Result<T, E> + Send + 'static,
{
    // Stamped before the first read, so a change made during it is still seen.
    let watched = Watched::now(files);
    let current = Arc::new(ArcSwap::from_pointee(build()?));
    tokio::spawn(follow(what, watched, Arc::downgrade(&current), build, stop));
    Ok(current)
}

/// Rebuilds `current` with `build` whenever a file of `watched` changes, until `stop` or
/// until nothing else holds `current`. A change that does not build is logged and the last
/// good value stays in force, so a half-written file never takes a service's credentials
/// away.
pub(crate) async fn follow<T, E, F>(
    what: &'static str,
    mut watched: Watched,
    current: Weak<ArcSwap<T>>,
    build: F,
    stop: CancellationToken,
) where
    E: Display,
    F: Fn() -> Result<T, E>,
{
    let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(current) = current.upgrade() else { return };
        if !watched.changed() {
            continue;
        }
        match build() {
            Ok(value) => {
                tracing::info!(what, "reloaded");
                current.store(Arc::new(value));
            }
            Err(error) => tracing::error!(what, %error, "not reloaded; the previous one stays in force"),
        }
    }
}
