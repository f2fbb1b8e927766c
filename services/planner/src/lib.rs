//! Stage planning: turns a rollout spec into stages and drives them: set weights, observe,
//! judge, then promote, pause or roll back, durably.
//!
//! Plans and the state machine arrive with the planner issue; this
//! crate already serves the v1 contract with health, reflection, metrics and its store.

pub mod plan;
pub mod replicas;
pub mod spec;

use ficus_kit::{
    client::{self, AddressError, Peer},
    config::{self, ConfigError, ServiceConfig},
    server::{Running, ServeError, Server, ServerConfig},
    store::{Store, StoreError},
};
use ficus_proto::planner::v1::planner_server::{Planner, PlannerServer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Configuration of the planner service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Listen addresses and shutdown grace.
    pub server: ServerConfig,
    /// Where rollouts are kept: a directory or a Redis URL.
    pub store: String,
    /// Address of the traffic service, whose weights rollouts move.
    pub traffic: String,
    /// Address of the analysis service, which judges each stage.
    pub analysis: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { server: ServerConfig::on_ports(7001, 9001),
            store: "data/planner".into(),
            traffic: "127.0.0.1:7003".into(),
            analysis: "127.0.0.1:7002".into(),
        }
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        config::check_store("store", &self.store)?;
        config::check_peer("traffic", &self.traffic)?;
        config::check_peer("analysis", &self.analysis)
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A peer address is malformed.
    #[error(transparent)]
    Peer(#[from] AddressError),
    /// The server could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// The `Planner` service.
#[derive(Clone, Debug, Default)]
pub struct PlannerService;

impl Planner for PlannerService {}

/// How long one call to a peer service may take.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the store and serves until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let store = Store::open(&config.store, "planner").await?;
    let routes = tonic::service::Routes::new(PlannerServer::new(PlannerService));
    let traffic = client::connect(&config.traffic, PEER_TIMEOUT)?;
    let analysis = client::connect(&config.analysis, PEER_TIMEOUT)?;
    let server = Server::new(ficus_proto::service_names::PLANNER, config.server, routes).depends_on(store)
        .depends_on(Peer::new(ficus_proto::service_names::TRAFFIC, traffic))
        .depends_on(Peer::new(ficus_proto::service_names::ANALYSIS, analysis));
    Ok(server.start(shutdown).await?)
}
