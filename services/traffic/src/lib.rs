//! Traffic control: owns routes and their weights, rules and sticky cohorts, applies them
//! to the data plane, and measures every request.
//!
//! - [`route`]: the route model and its validation;
//! - [`balance`]: smooth weighted round-robin and sticky cohorts;
//! - [`table`]: the live route table the data plane reads;
//! - [`registry`]: routes in the store, followed across replicas;
//! - [`proxy`]: the embedded HTTP/1.1 and HTTP/2 data plane;
//! - [`adapters`]: other data planes kept in step with the routes (nginx);
//! - [`stats`]: request counts and latency histograms over a sliding window;
//! - [`grpc`]: the `TrafficControl` API on top.

pub mod adapters;
pub mod balance;
mod error;
pub mod grpc;
pub mod proxy;
pub mod registry;
pub mod route;
pub mod stats;
pub mod table;

use std::{sync::Arc, time::Duration};

use ficus_kit::{
    config::{self, ConfigError, ServiceConfig},
    server::{Running, ServeError, Server, ServerConfig},
    store::Store,
};
use ficus_proto::traffic::v1::traffic_control_server::TrafficControlServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use self::error::Error;
use self::{
    grpc::TrafficService,
    proxy::ProxyConfig,
    registry::Registry,
    stats::{Stats, cluster::Cluster},
    table::LiveTable,
};

/// Configuration of the traffic service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Listen addresses and shutdown grace.
    pub server: ServerConfig,
    /// Where routes are kept: a directory or a Redis URL.
    pub store: String,
    /// The embedded data plane.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// How much request history is kept for `GetTrafficStats`.
    #[serde(with = "humantime_serde", default = "default_stats_retention")]
    pub stats_retention: Duration,
    /// A front nginx to keep in step with the routes, for teams that keep theirs.
    #[serde(default)]
    pub nginx: Option<adapters::NginxSettings>,
    /// The cluster whose ingress, Gateway API, Istio or Service objects routes may target.
    #[serde(default)]
    pub kubernetes: Option<adapters::kubernetes::KubernetesSettings>,
}

fn default_stats_retention() -> Duration {
    Duration::from_secs(15 * 60)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(7003, 9003),
            store: "data/traffic".into(),
            proxy: ProxyConfig::default(),
            stats_retention: default_stats_retention(),
            nginx: None,
            kubernetes: None,
        }
    }
}

impl Config {
    /// Loopback on kernel-chosen ports, for services embedded in tests and demos.
    pub fn ephemeral(store: impl Into<String>) -> Self {
        let mut config = Self { server: ServerConfig::ephemeral(), store: store.into(), ..Self::default() };
        config.proxy.listen = ([127, 0, 0, 1], 0).into();
        config
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        config::check_store("store", &self.store)?;
        if self.proxy.listen.port() != 0
            && (self.proxy.listen == self.server.grpc_addr || self.proxy.listen == self.server.admin_addr)
        {
            return Err(ConfigError::invalid("proxy.listen", "must differ from the gRPC and admin addresses"));
        }
        if self.proxy.request_timeout.is_zero() {
            return Err(ConfigError::invalid("proxy.request_timeout", "must be positive"));
        }
        if self.proxy.connect_timeout.is_zero() {
            return Err(ConfigError::invalid("proxy.connect_timeout", "must be positive"));
        }
        if self.proxy.workers.is_some_and(|workers| workers.get() > MAX_PROXY_WORKERS) {
            return Err(ConfigError::invalid("proxy.workers", format!("must be at most {MAX_PROXY_WORKERS}")));
        }
        if let Some(kubernetes) = &self.kubernetes
            && (kubernetes.resync < Duration::from_millis(100) || kubernetes.resync > Duration::from_secs(3600))
        {
            return Err(ConfigError::invalid("kubernetes.resync", "must be between 100ms and 1h"));
        }
        if self.stats_retention < Duration::from_secs(1) || self.stats_retention > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::invalid("stats_retention", "must be between 1s and 24h"));
        }
        Ok(())
    }
}

/// Most proxy worker threads: far more than cores only adds contention.
const MAX_PROXY_WORKERS: usize = 1024;

/// The name under which [`Running::addr`] reports the data plane's address.
pub const DATA_PLANE: &str = "proxy";

/// Opens the store, loads the routes, and serves the API and the data plane until
/// `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let store = Store::open(&config.store, "traffic").await.map_err(Error::Store)?;
    let stats = Stats::new(config.stats_retention);
    let table = Arc::new(LiveTable::new(stats.clone()));
    let registry = Registry::open(store.clone(), table.clone()).await?;
    tokio::spawn(registry.clone().follow(shutdown.clone()));
    if let Some(settings) = &config.nginx {
        let adapter = Arc::new(adapters::nginx::NginxAdapter::new(settings.into()));
        tokio::spawn(adapters::follow_nginx(adapter, table.clone(), shutdown.clone()));
    }

    let kubernetes = match &config.kubernetes {
        Some(settings) => {
            let client = ficus_kit::kubernetes::client(settings.kubeconfig.as_deref()).await?;
            let ledger = Arc::new(adapters::kubernetes::Ledger::default());
            let follow = adapters::kubernetes::follow_kubernetes(
                client,
                table.clone(),
                ledger.clone(),
                settings.resync,
                shutdown.clone(),
            );
            tokio::spawn(follow);
            Some(ledger)
        }
        None => None,
    };
    // A std listener: the proxy's worker threads each register it with their own event loop.
    let listener = std::net::TcpListener::bind(config.proxy.listen)
        .map_err(|source| ServeError::Bind { addr: config.proxy.listen, source })?;
    let proxy_addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.proxy.listen, source })?;
    let mut service =
        TrafficService::new(registry, stats.clone(), config.stats_retention, kubernetes, shutdown.clone());
    if store.is_shared() {
        // Replicas on one Redis report requests over all of them; an embedded store has
        // one replica.
        let cluster = Cluster::join(&config.store, &stats).await.map_err(Error::Cluster)?;
        tokio::spawn(cluster.clone().publish(stats.clone(), shutdown.clone()));
        service = service.with_cluster(cluster);
    }
    let routes = tonic::service::Routes::new(TrafficControlServer::new(service));
    // Fail static: the proxy serves the routes it loaded whether or not the store answers
    // now, so a store outage must not take it out of its Service.
    let mut server = Server::new(ficus_proto::service_names::TRAFFIC, config.server, routes).reports(store);
    stats.register(server.registry());
    let proxy_metrics = proxy::ProxyMetrics::register(server.registry());
    let running = server.start(shutdown.clone()).await?;
    let proxy = Arc::new(proxy::Proxy::new(table, config.proxy, proxy_metrics));
    tracing::info!(%proxy_addr, "data plane listening");
    let task = proxy.start(listener, shutdown).map_err(|source| ServeError::Listener { name: DATA_PLANE, source })?;
    Ok(running.attach(DATA_PLANE, proxy_addr, task))
}
