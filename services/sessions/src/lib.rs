//! Session storage shared by the old and the new environment, so a user whose traffic
//! moves from one to the other stays logged in.
//!
//! Applications keep their user sessions here instead of in process memory: an opaque,
//! unguessable id (the cookie value) names a map of attributes with a sliding idle expiry
//! and an optional hard maximum lifetime. Writers that race use compare-and-set on the
//! session version, so concurrent requests of one user never lose each other's changes.
//!
//! The service keeps sessions in its [`Store`]: an embedded file for a single replica, or
//! Redis when several replicas (or both environments) share them. How big a session may
//! be and how long it may live are the [`Limits`]. Applications call it through the
//! `ficus-sessions-client` crate.
//!
//! Modules, from the rpc down: `grpc` (the handlers), `pipeline` (many calls on one
//! stream), `service` (the operations), `cache` (records seen lately, so an update need
//! not read first), `record` (the stored form), with `id`, `limits` and `expiry` holding
//! the rules and `error` the one mapping to gRPC statuses.

mod cache;
mod error;
mod expiry;
mod grpc;
mod id;
mod limits;
mod metrics;
mod pipeline;
mod record;
mod service;

use ficus_kit::{
    config::{self, ConfigError, ServiceConfig},
    server::{Running, ServeError, Server, ServerConfig},
    store::{Announce, Store, StoreError},
};
use ficus_proto::sessions::v1::session_store_server::SessionStoreServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use self::limits::Limits;

/// Configuration of the sessions service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Listen addresses and shutdown grace.
    pub server: ServerConfig,
    /// Where sessions are kept: a directory, or a `redis://` / `rediss://` URL to share
    /// them between replicas and environments.
    pub store: String,
    /// Bounds on session size and lifetime.
    #[serde(default)]
    pub limits: Limits,
    /// Bytes of recently read and written session records to keep, so that an update of
    /// one needs a single store round trip instead of a read and a write; 0 keeps none.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
}

/// 64 MiB: a few hundred thousand typical sessions.
fn default_cache_bytes() -> u64 {
    64 * 1024 * 1024
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(7004, 9004),
            store: "data/sessions".into(),
            limits: Limits::default(),
            cache_bytes: default_cache_bytes(),
        }
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        config::check_store("store", &self.store)?;
        self.limits.validate("limits")
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Opens the store and serves `SessionStore` until `shutdown` is cancelled.
///
/// The service is ready while its store answers: when Redis goes away, calls fail fast
/// with UNAVAILABLE and `/readyz` reports it, and both recover by themselves when Redis
/// is back.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    // `kit::main` validates too; this covers services started in-process.
    config.validate()?;
    // Every replica reads sessions from the store when it needs them; nobody follows them.
    let store = Store::open_announcing(&config.store, "sessions", Announce::Nothing).await?;
    let metrics = metrics::Metrics::default();
    let sessions = service::Sessions::new(store.clone(), config.limits, metrics.clone(), config.cache_bytes);
    let routes = tonic::service::Routes::new(SessionStoreServer::new(grpc::SessionStoreService::new(
        sessions,
        shutdown.clone(),
    )));
    let mut server = Server::new(ficus_proto::service_names::SESSIONS, config.server, routes).depends_on(store);
    metrics.register(server.registry());
    Ok(server.start(shutdown).await?)
}
