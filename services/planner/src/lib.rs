//! Stage planning: turns a rollout spec into stages and drives them: set weights, observe,
//! judge, then promote, pause or roll back, durably.
//!
//! - [`spec`]: validating a `RolloutSpec`;
//! - [`plan`]: the steps a spec turns into, and [`replicas`]: rolling-update arithmetic;
//! - [`machine`]: phases and transitions, pure;
//! - [`rollouts`]: rollouts in the store, one active per route, and their transitions;
//! - [`driver`]: the loop that applies weights, runs analysis and acts on verdicts;
//! - [`lease`]: which replica drives which rollout; [`grpc`]: the `Planner` API on top;
//! - [`metrics`]: rollout series on `/metrics`.

pub mod driver;
mod error;
pub mod grpc;
pub mod kubernetes;
pub mod lease;
pub mod machine;
pub mod metrics;
pub mod plan;
pub mod replicas;
pub mod rollouts;
pub mod spec;

use ficus_kit::{
    client::{self, AddressError, Peer},
    clock::Clock,
    config::{self, ConfigError, ServiceConfig},
    server::{Running, ServeError, Server, ServerConfig},
    store::{Store, StoreError},
};
use ficus_proto::{
    analysis::v1::analysis_client::AnalysisClient,
    planner::v1::{planner_client::PlannerClient, planner_server::PlannerServer},
    traffic::v1::traffic_control_client::TrafficControlClient,
};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use self::{
    driver::{Drivers, Peers},
    grpc::PlannerService,
    metrics::RolloutMetrics,
    rollouts::Rollouts,
};

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
    /// How long a replica's lease on a rollout (or, with a Kubernetes Lease, its
    /// leadership) lasts without renewal: about the longest a rollout goes undriven after
    /// its replica dies.
    #[serde(with = "humantime_serde", default = "default_lease_ttl")]
    pub lease_ttl: Duration,
    /// How long one call to traffic or analysis may take before it counts as failed (and
    /// is retried).
    #[serde(with = "humantime_serde", default = "default_peer_timeout")]
    pub peer_timeout: Duration,
    /// The cluster whose Rollout objects the planner reconciles, and its leader Lease.
    #[serde(default)]
    pub kubernetes: Option<kubernetes::KubernetesSettings>,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_peer_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(7001, 9001),
            store: "data/planner".into(),
            traffic: "127.0.0.1:7003".into(),
            analysis: "127.0.0.1:7002".into(),
            lease_ttl: default_lease_ttl(),
            peer_timeout: default_peer_timeout(),
            kubernetes: None,
        }
    }
}

impl Config {
    /// Loopback on kernel-chosen ports, driving the given traffic and analysis services.
    pub fn ephemeral(store: impl Into<String>, traffic: impl Into<String>, analysis: impl Into<String>) -> Self {
        Self {
            server: ServerConfig::ephemeral(),
            store: store.into(),
            traffic: traffic.into(),
            analysis: analysis.into(),
            ..Self::default()
        }
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        config::check_store("store", &self.store)?;
        config::check_peer("traffic", &self.traffic)?;
        config::check_peer("analysis", &self.analysis)?;
        if let Some(kubernetes) = &self.kubernetes {
            if let Some(lease) = &kubernetes.lease {
                let valid = kubernetes.lease().is_some_and(|(namespace, name)| {
                    ficus_kit::status::check_name("", namespace).is_ok()
                        && ficus_kit::status::check_name("", name).is_ok()
                });
                if !valid {
                    return Err(ConfigError::invalid("kubernetes.lease", format!("`{lease}` is not namespace/name")));
                }
            }
            if let Some(namespace) = &kubernetes.namespace
                && ficus_kit::status::check_name("", namespace).is_err()
            {
                return Err(ConfigError::invalid("kubernetes.namespace", format!("`{namespace}` is not a namespace")));
            }
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid("lease_ttl", "must be at least 1s"));
        }
        if self.peer_timeout.is_zero() {
            return Err(ConfigError::invalid("peer_timeout", "must be positive"));
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
    /// The server could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The configured cluster cannot be reached.
    #[error("kubernetes: {0}")]
    Kubernetes(#[from] ficus_kit::kubernetes::KubernetesError),
}

/// Opens the store, starts driving rollouts (its share of them), and serves until
/// `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    start_with_clock(config, Clock::System, shutdown).await
}

/// [`start`], with rollouts timed by `clock` (for tests on tokio's paused time).
pub async fn start_with_clock(config: Config, clock: Clock, shutdown: CancellationToken) -> Result<Running, Error> {
    let store = Store::open(&config.store, "planner").await?;
    let credentials = config.server.peer_credentials()?;
    let traffic = client::connect_with(&config.traffic, config.peer_timeout, &credentials)?;
    let analysis = client::connect_with(&config.analysis, config.peer_timeout, &credentials)?;
    let rollouts = Rollouts::new(store.clone(), clock);
    tokio::spawn(rollouts.clone().follow(shutdown.clone()));
    let cluster = match &config.kubernetes {
        Some(settings) => Some(ficus_kit::kubernetes::client(settings.kubeconfig.as_deref()).await?),
        None => None,
    };
    let drivers = match (&cluster, config.kubernetes.as_ref().and_then(|settings| settings.lease())) {
        (Some(client), Some((namespace, name))) => Drivers::Elected(kubernetes::lease::run(
            client.clone(),
            namespace,
            name,
            replica_name(),
            config.lease_ttl,
            shutdown.clone(),
        )),
        _ => Drivers::Shared(lease::Leases::new(store.clone(), replica_name(), config.lease_ttl, clock)),
    };
    let peers = Peers {
        traffic: TrafficControlClient::new(traffic.clone()),
        analysis: AnalysisClient::new(analysis.clone()),
        scaler: cluster.clone().map(kubernetes::scale::Scaler::new),
    };
    let service = PlannerService::new(rollouts.clone(), peers.traffic.clone(), shutdown.clone());
    let routes = tonic::service::Routes::new(PlannerServer::new(service));
    let mut server = Server::new(ficus_proto::service_names::PLANNER, config.server, routes)
        .depends_on(store)
        .reports(Peer::new(ficus_proto::service_names::TRAFFIC, traffic))
        .reports(Peer::new(ficus_proto::service_names::ANALYSIS, analysis));
    let metrics = RolloutMetrics::register(server.registry());
    tokio::spawn(metrics.clone().follow(rollouts.clone(), shutdown.clone()));
    tokio::spawn(driver::run(rollouts, peers, drivers, metrics, clock, shutdown.clone()));
    let running = server.start(shutdown.clone()).await?;
    if let Some(client) = cluster {
        // The controller goes through this planner's own API, validation included.
        let own = client::connect_with(&running.grpc_addr.to_string(), config.peer_timeout, &credentials)?;
        let namespace = config.kubernetes.and_then(|settings| settings.namespace);
        tokio::spawn(kubernetes::controller::run(client, namespace, PlannerClient::new(own), shutdown));
    }
    Ok(running)
}

/// This replica's name in the lease: the host and a random suffix, unique per start.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "planner".to_owned());
    let mut bytes = [0_u8; 4];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    format!("{host}-{:08x}", u32::from_be_bytes(bytes))
}
