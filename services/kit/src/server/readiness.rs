//! What a service needs before it can take calls.

use futures::future::BoxFuture;

use crate::store::Store;

/// A dependency the service cannot work without, probed for `/readyz` and gRPC health.
pub trait Dependency: Send + Sync + 'static {
    /// Short name shown when the dependency is down, e.g. `store`.
    fn name(&self) -> &str;

    /// Succeeds when the dependency answers; the error says what is wrong.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>>;
}

impl Dependency for Store {
    fn name(&self) -> &str {
        "store"
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.ping().await.map_err(|error| error.to_string()) })
    }
}
