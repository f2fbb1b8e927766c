//! Metric analysis: judges a canary against its baseline from traffic's request statistics
//! or Prometheus, with thresholds and statistical tests: PASS, FAIL or INCONCLUSIVE.
//!
//! Sources, checks and runs arrive with the analysis issue; this
//! crate already serves the v1 contract with health, reflection, metrics and its store.

use ficus_kit::{
    client::{self, AddressError, Peer},
    config::{self, ConfigError, ServiceConfig},
    server::{Running, ServeError, Server, ServerConfig},
    store::{Store, StoreError},
};
use ficus_proto::analysis::v1::analysis_server::{Analysis, AnalysisServer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Configuration of the analysis service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Listen addresses and shutdown grace.
    pub server: ServerConfig,
    /// Where runs are kept: a directory or a Redis URL.
    pub store: String,
    /// Address of the traffic service, whose request statistics are the built-in metric source.
    pub traffic: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { server: ServerConfig::on_ports(7002, 9002), store: "data/analysis".into(), traffic: "127.0.0.1:7003".into() }
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        config::check_store("store", &self.store)?;
        config::check_peer("traffic", &self.traffic)
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

/// The `Analysis` service.
#[derive(Clone, Debug, Default)]
pub struct AnalysisService;

impl Analysis for AnalysisService {}

/// How long one call to a peer service may take.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the store and serves until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let store = Store::open(&config.store, "analysis").await?;
    let routes = tonic::service::Routes::new(AnalysisServer::new(AnalysisService));
    let traffic = client::connect(&config.traffic, PEER_TIMEOUT)?;
    let server = Server::new(ficus_proto::service_names::ANALYSIS, config.server, routes).depends_on(store)
        .depends_on(Peer::new(ficus_proto::service_names::TRAFFIC, traffic));
    Ok(server.start(shutdown).await?)
}
