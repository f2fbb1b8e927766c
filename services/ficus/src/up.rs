//! `ficus up`: the whole control plane in one process.
//!
//! The four services run side by side exactly as their own binaries would, each with its
//! own ports and its own store under the data directory, and talk to each other over gRPC
//! on loopback, so nothing changes when they are later split into separate processes.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::ExitCode,
};

use ficus_kit::{
    config::{self, ConfigError},
    server::{Running, ServeError, ServerConfig},
};
use figment::Figment;
use tokio_util::sync::CancellationToken;

/// The configuration of every service, each from its own section.
#[derive(Clone, Debug)]
pub struct Configs {
    /// The `[sessions]` section.
    pub sessions: ficus_sessions::Config,
    /// The `[traffic]` section.
    pub traffic: ficus_traffic::Config,
    /// The `[analysis]` section.
    pub analysis: ficus_analysis::Config,
    /// The `[planner]` section.
    pub planner: ficus_planner::Config,
}

impl Configs {
    /// Every service on free loopback ports with its state in its own directory under
    /// `data_dir`: for a control plane in a test or the demo. The planner's and analysis'
    /// peer addresses are placeholders; [`ControlPlane::start`] points them at the
    /// services it starts.
    pub fn ephemeral(data_dir: &Path) -> Self {
        let store = |name: &str| data_dir.join(name).display().to_string();
        Self {
            sessions: ficus_sessions::Config {
                server: ficus_kit::server::ServerConfig::ephemeral(),
                store: store("sessions"),
                ..Default::default()
            },
            traffic: ficus_traffic::Config::ephemeral(store("traffic")),
            analysis: ficus_analysis::Config::ephemeral(store("analysis"), "127.0.0.1:7003"),
            planner: ficus_planner::Config::ephemeral(store("planner"), "127.0.0.1:7003", "127.0.0.1:7002"),
        }
    }

    /// Reads each service's section from `layers`. A service whose `store` is not set
    /// keeps its state in its own directory under `data_dir`; one whose addresses are not
    /// set listens on loopback, so `ficus up` with nothing configured needs no
    /// authentication and is reachable from this host only.
    pub fn load(layers: &Figment, data_dir: &Path) -> Result<Self, ConfigError> {
        let store_for = |section: &str| -> Option<String> {
            let configured = layers.find_value(&format!("{section}.store")).is_ok();
            (!configured).then(|| data_dir.join(section).display().to_string())
        };
        let mut configs = Self {
            sessions: config::extract(layers, Some("sessions"))?,
            traffic: config::extract(layers, Some("traffic"))?,
            analysis: config::extract(layers, Some("analysis"))?,
            planner: config::extract(layers, Some("planner"))?,
        };
        if let Some(store) = store_for("sessions") {
            configs.sessions.store = store;
        }
        if let Some(store) = store_for("traffic") {
            configs.traffic.store = store;
        }
        if let Some(store) = store_for("analysis") {
            configs.analysis.store = store;
        }
        if let Some(store) = store_for("planner") {
            configs.planner.store = store;
        }
        loopback_unless_set(layers, "sessions", &mut configs.sessions.server);
        loopback_unless_set(layers, "traffic", &mut configs.traffic.server);
        loopback_unless_set(layers, "analysis", &mut configs.analysis.server);
        loopback_unless_set(layers, "planner", &mut configs.planner.server);
        Ok(configs)
    }
}

/// Moves the addresses of `server` that `layers` does not set for `section` to loopback,
/// keeping their ports.
fn loopback_unless_set(layers: &Figment, section: &str, server: &mut ServerConfig) {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if layers.find_value(&format!("{section}.server.grpc_addr")).is_err() {
        server.grpc_addr.set_ip(loopback);
    }
    if layers.find_value(&format!("{section}.server.admin_addr")).is_err() {
        server.admin_addr.set_ip(loopback);
    }
}

/// Why the control plane could not run.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The sessions service failed.
    #[error("sessions: {0}")]
    Sessions(#[from] ficus_sessions::Error),
    /// The traffic service failed.
    #[error("traffic: {0}")]
    Traffic(#[from] ficus_traffic::Error),
    /// The analysis service failed.
    #[error("analysis: {0}")]
    Analysis(#[from] ficus_analysis::Error),
    /// The planner service failed.
    #[error("planner: {0}")]
    Planner(#[from] ficus_planner::Error),
    /// A service stopped with an error.
    #[error("{service}: {source}")]
    Stopped {
        /// Which service.
        service: &'static str,
        /// Why.
        source: ServeError,
    },
}

/// The four running services.
pub struct ControlPlane {
    /// Session storage.
    pub sessions: Running,
    /// Traffic control.
    pub traffic: Running,
    /// Metric analysis.
    pub analysis: Running,
    /// Stage planning.
    pub planner: Running,
}

impl ControlPlane {
    /// Starts every service; planner and analysis are pointed at the traffic and analysis
    /// services started here, wherever they listen.
    pub async fn start(mut configs: Configs, shutdown: CancellationToken) -> Result<Self, UpError> {
        let sessions = ficus_sessions::start(configs.sessions, shutdown.clone()).await?;
        let traffic = ficus_traffic::start(configs.traffic, shutdown.clone()).await?;
        configs.analysis.traffic = dial(traffic.grpc_addr);
        let analysis = ficus_analysis::start(configs.analysis, shutdown.clone()).await?;
        configs.planner.traffic = dial(traffic.grpc_addr);
        configs.planner.analysis = dial(analysis.grpc_addr);
        let planner = ficus_planner::start(configs.planner, shutdown).await?;
        Ok(Self { sessions, traffic, analysis, planner })
    }

    /// Waits until every service has stopped.
    pub async fn wait(self) -> Result<(), UpError> {
        let (sessions, traffic, analysis, planner) =
            tokio::join!(self.sessions.wait(), self.traffic.wait(), self.analysis.wait(), self.planner.wait());
        let stopped =
            |service, result: Result<(), ServeError>| result.map_err(|source| UpError::Stopped { service, source });
        stopped("sessions", sessions)?;
        stopped("traffic", traffic)?;
        stopped("analysis", analysis)?;
        stopped("planner", planner)
    }
}

/// The address a sibling in this process reaches `bound` at: loopback for a wildcard bind.
fn dial(bound: SocketAddr) -> String {
    let ip = match bound.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port()).to_string()
}

/// `ficus up` as a process: serve until SIGTERM or SIGINT, exit 0 after a clean stop.
pub fn main(config_file: Option<&Path>, data_dir: &Path) -> ExitCode {
    let loaded = config::sources(config_file).and_then(|layers| {
        let telemetry = ficus_kit::telemetry_config(&layers)?;
        Ok((Configs::load(&layers, data_dir)?, telemetry))
    });
    let (configs, telemetry) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("ficus up: {error}");
            return ExitCode::from(2);
        }
    };
    ficus_kit::run("ficus", &telemetry, |shutdown| async move {
        let plane = match ControlPlane::start(configs, shutdown.clone()).await {
            Ok(plane) => plane,
            Err(error) => {
                shutdown.cancel();
                return Err(error.to_string());
            }
        };
        tracing::info!(
            planner = %plane.planner.grpc_addr,
            analysis = %plane.analysis.grpc_addr,
            traffic = %plane.traffic.grpc_addr,
            sessions = %plane.sessions.grpc_addr,
            "ficus is up"
        );
        plane.wait().await.map_err(|error| error.to_string())
    })
}
