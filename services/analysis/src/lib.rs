//! Metric analysis: judges a canary against its baseline from traffic's request statistics
//! or Prometheus, with thresholds and statistical tests: PASS, FAIL or INCONCLUSIVE.
//!
//! - [`source`]: where values come from (traffic, Prometheus, fixed);
//! - [`observation`]: what a source hands the judge;
//! - [`statistics`]: the tests, pure functions;
//! - [`judge`]: templates, checks, scores and verdicts, with sequential testing so that
//!   judging again and again does not inflate false failures;
//! - [`runs`]: judging a stage every interval; [`grpc`]: the `Analysis` API on top.

mod error;
pub mod grpc;
pub mod judge;
pub mod observation;
mod request;
pub mod runs;
pub mod source;
pub mod statistics;

use ficus_kit::{
    client::{self, AddressError, Peer},
    config::{self, ConfigError, ServiceConfig},
    server::{Running, ServeError, Server, ServerConfig},
    store::{Store, StoreError},
};
use ficus_proto::analysis::v1::analysis_server::AnalysisServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use self::error::Error as AnalysisError;
use self::{
    grpc::AnalysisService,
    runs::Runs,
    source::{PodSource, PrometheusConfig, PrometheusSource, Sources, TrafficSource, WebConfig, WebSource},
};

/// Configuration of the analysis service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Listen addresses and shutdown grace.
    pub server: ServerConfig,
    /// Where runs are kept: a directory or a Redis URL.
    pub store: String,
    /// Address of the traffic service, whose request statistics are the built-in metric source.
    pub traffic: String,
    /// The Prometheus server checks query by default.
    #[serde(default)]
    pub prometheus: PrometheusConfig,
    /// Which HTTP endpoints web metrics may request, and where their secret headers are.
    #[serde(default)]
    pub web: WebConfig,
    /// The cluster whose pods pod-health checks read; those checks are refused without it.
    #[serde(default)]
    pub kubernetes: Option<ficus_kit::kubernetes::ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(7002, 9002),
            store: "data/analysis".into(),
            traffic: "127.0.0.1:7003".into(),
            prometheus: PrometheusConfig::default(),
            web: WebConfig::default(),
            kubernetes: None,
        }
    }
}

impl Config {
    /// Loopback on kernel-chosen ports, reading statistics from `traffic`.
    pub fn ephemeral(store: impl Into<String>, traffic: impl Into<String>) -> Self {
        Self { server: ServerConfig::ephemeral(), store: store.into(), traffic: traffic.into(), ..Self::default() }
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        config::check_store("store", &self.store)?;
        config::check_peer("traffic", &self.traffic)?;
        if !(self.prometheus.address.starts_with("http://") || self.prometheus.address.starts_with("https://")) {
            return Err(ConfigError::invalid("prometheus.address", "must be an http:// or https:// URL"));
        }
        if self.prometheus.timeout.is_zero() {
            return Err(ConfigError::invalid("prometheus.timeout", "must be positive"));
        }
        Ok(())
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
    /// What this service presents to its peers (`server.auth.peer_token_file`,
    /// `server.peer_tls`) cannot be used.
    #[error("peer credentials: {0}")]
    PeerCredentials(#[from] ficus_kit::client::CredentialsError),
    /// The HTTP client for Prometheus could not be built.
    #[error("cannot build the Prometheus client: {0}")]
    Prometheus(#[from] reqwest::Error),
    /// Stored runs could not be read.
    #[error(transparent)]
    Runs(#[from] AnalysisError),
    /// The server could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The configured cluster cannot be reached.
    #[error("kubernetes: {0}")]
    Kubernetes(#[from] ficus_kit::kubernetes::KubernetesError),
}

/// How long one call to a peer service may take.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the store, resumes runs, and serves until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let store = Store::open(&config.store, "analysis").await?;
    let credentials = config.server.peer_credentials()?;
    let traffic = client::connect_with(&config.traffic, PEER_TIMEOUT, &credentials)?;
    let pods = match &config.kubernetes {
        Some(cluster) => Some(PodSource::new(ficus_kit::kubernetes::client(cluster.kubeconfig.as_deref()).await?)),
        None => None,
    };
    let sources = Sources {
        traffic: TrafficSource::new(traffic.clone()),
        prometheus: PrometheusSource::new(config.prometheus)?,
        pods,
        web: WebSource::new(config.web)?,
    };
    let runs = Runs::open(store.clone(), sources, shutdown.clone()).await?;
    let routes = tonic::service::Routes::new(AnalysisServer::new(AnalysisService::new(runs, shutdown.clone())));
    let server = Server::new(ficus_proto::service_names::ANALYSIS, config.server, routes)
        .depends_on(store)
        .reports(Peer::new(ficus_proto::service_names::TRAFFIC, traffic));
    Ok(server.start(shutdown).await?)
}
