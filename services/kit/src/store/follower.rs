//! Following a store's changes from a replica that loaded what it follows first.

use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::{Change, Store};

/// The changes a replica follows, from [`Store::follow`].
#[derive(Debug)]
pub struct Follower {
    store: Store,
    shutdown: CancellationToken,
    /// `None` until the first [`next`](Self::next) subscribes.
    changes: Option<broadcast::Receiver<Change>>,
}

impl Follower {
    pub(super) fn new(store: Store, shutdown: CancellationToken) -> Self {
        Self { store, shutdown, changes: None }
    }

    /// The next change; `None` once shutdown is cancelled or the store announces nothing
    /// more.
    ///
    /// The first change is always [`Change::Resync`]: writes made between the follower's
    /// load and its subscription went unseen. A follower that fell too far behind also
    /// gets [`Change::Resync`]; either way, it should re-read what it follows.
    pub async fn next(&mut self) -> Option<Change> {
        let Some(changes) = &mut self.changes else {
            let changes = tokio::select! {
                changes = self.store.watch() => changes,
                () = self.shutdown.cancelled() => return None,
            };
            self.changes = Some(changes);
            return Some(Change::Resync);
        };
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) => Some(change),
                Err(RecvError::Lagged(_)) => Some(Change::Resync),
                Err(RecvError::Closed) => None,
            },
            () = self.shutdown.cancelled() => None,
        }
    }
}
