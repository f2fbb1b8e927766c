//! Serving one ficus service: its gRPC routes with health, reflection, tracing and
//! metrics on one port, and the admin HTTP endpoints on another.
//!
//! Shutdown is graceful: once the token is cancelled the service reports NOT_SERVING and
//! not ready, stops accepting, and lets calls in flight finish within the grace period.

mod admin;
mod observe;
mod readiness;

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};

pub(crate) use self::observe::response_code;
use self::observe::{CallMetrics, ObserveLayer};
pub use self::readiness::Dependency;
use self::readiness::{Need, Readiness, Watched};
use crate::{
    auth::{AuthConfig, AuthError, AuthLayer, Authenticator},
    client::{BearerToken, Credentials, CredentialsError},
    config::ConfigError,
    tls::{ClientTls, ClientTlsConfig, ServerTls, ServerTlsConfig, TlsError},
};

/// How often dependencies are probed to keep gRPC health current.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Where a service listens and how it stops; the `server` section of its configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listen address (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// How long calls in flight may run after shutdown starts.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// Who may call the gRPC API (see [`crate::auth`]).
    #[serde(default)]
    pub auth: AuthConfig,
    /// TLS for the gRPC port, mutual with a client CA; plaintext when unset.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// TLS for this service's calls to its peers (planner to traffic and analysis,
    /// analysis to traffic); plaintext when unset.
    #[serde(default)]
    pub peer_tls: Option<ClientTlsConfig>,
}

impl ServerConfig {
    /// Listens on all interfaces at the given ports, with a 10 s grace period.
    pub fn on_ports(grpc_port: u16, admin_port: u16) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], grpc_port)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], admin_port)),
            grace_period: Duration::from_secs(10),
            auth: AuthConfig::default(),
            tls: None,
            peer_tls: None,
        }
    }

    /// Listens on loopback at ports the kernel picks, for services embedded in tests and
    /// demos; [`Running`] reports the bound addresses.
    pub fn ephemeral() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            grace_period: Duration::from_secs(10),
            auth: AuthConfig::default(),
            tls: None,
            peer_tls: None,
        }
    }

    /// Refuses settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.grpc_addr.port() != 0 && self.grpc_addr == self.admin_addr {
            return Err(ConfigError::invalid("server.admin_addr", "must differ from server.grpc_addr"));
        }
        if self.grace_period > Duration::from_secs(3600) {
            return Err(ConfigError::invalid("server.grace_period", "must be at most 1h"));
        }
        let client_ca = self.tls.as_ref().and_then(|tls| tls.client_ca.as_ref());
        if self.tls.as_ref().is_some_and(|tls| tls.client_cert_optional) && client_ca.is_none() {
            return Err(ConfigError::invalid(
                "server.tls.client_cert_optional",
                "only means something with server.tls.client_ca, which client certificates are checked against",
            ));
        }
        if !self.auth.mtls_roles.is_empty() && client_ca.is_none() {
            return Err(ConfigError::invalid(
                "server.auth.mtls_roles",
                "needs server.tls.client_ca, the CA client certificates are checked against",
            ));
        }
        Ok(())
    }

    /// What this service presents to its peers: `server.auth.peer_token_file` and
    /// `server.peer_tls`, the latter kept current as its files change.
    pub fn peer_credentials(&self) -> Result<Credentials, CredentialsError> {
        Ok(Credentials {
            token: self.auth.peer_token_file.as_deref().map(BearerToken::follow_file).transpose()?,
            tls: self.peer_tls.as_ref().map(ClientTls::follow).transpose()?,
        })
    }
}

/// Why a service could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address is taken or not allowed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The reflection service could not read the descriptors.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The admin server failed.
    #[error("admin server failed: {0}")]
    Admin(std::io::Error),
    /// An attached listener failed.
    #[error("{name} failed: {source}")]
    Listener {
        /// Which listener.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A serving task panicked or was cancelled.
    #[error("serving task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Authentication cannot be set up as `server.auth` says.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// TLS cannot be set up as `server.tls` says.
    #[error("server.tls: {0}")]
    Tls(#[from] TlsError),
    /// The gRPC port would be open beyond this host to anyone.
    #[error(
        "refusing to serve gRPC on {0} without authentication: set server.auth.token_file, \
         server.auth.token_review, or server.tls.client_ca with server.auth.mtls_roles; or listen on \
         loopback; or, only behind something that authenticates callers, set \
         server.auth.allow_unauthenticated = true"
    )]
    Unprotected(SocketAddr),
}

/// A service ready to serve.
pub struct Server {
    service: &'static str,
    config: ServerConfig,
    routes: Routes,
    dependencies: Vec<Watched>,
    registry: Registry,
}

impl Server {
    /// Serves `routes` as the gRPC service named `service` (e.g. `ficus.sessions.v1.SessionStore`).
    pub fn new(service: &'static str, config: ServerConfig, routes: Routes) -> Self {
        Self { service, config, routes, dependencies: Vec::new(), registry: Registry::with_prefix("ficus") }
    }

    /// Marks the service not ready while `dependency` is down.
    pub fn depends_on(mut self, dependency: impl Dependency) -> Self {
        self.dependencies.push(Watched { dependency: Box::new(dependency), need: Need::Required });
        self
    }

    /// Reports whether `dependency` is up (`/readyz?verbose`, `ficus_dependency_up`)
    /// without ever making the service unready for it: for what the service keeps working
    /// without, as the proxy does without its store.
    pub fn reports(mut self, dependency: impl Dependency) -> Self {
        self.dependencies.push(Watched { dependency: Box::new(dependency), need: Need::Reported });
        self
    }

    /// The registry `/metrics` exports, for the service's own metrics.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Binds both ports and serves until `shutdown` is cancelled.
    pub async fn start(mut self, shutdown: CancellationToken) -> Result<Running, ServeError> {
        let authenticator = Authenticator::start(&self.config.auth, &shutdown).await?;
        if authenticator.is_none() && !self.config.grpc_addr.ip().is_loopback() {
            if !self.config.auth.allow_unauthenticated {
                return Err(ServeError::Unprotected(self.config.grpc_addr));
            }
            tracing::warn!(
                service = self.service,
                grpc_addr = %self.config.grpc_addr,
                "serving gRPC to anyone who reaches it: server.auth.allow_unauthenticated is set"
            );
        }
        let tls = self.config.tls.as_ref().map(|tls| ServerTls::start(tls, &shutdown)).transpose()?;
        let grpc_listener = bind(self.config.grpc_addr).await?;
        let admin_listener = bind(self.config.admin_addr).await?;
        let grpc_addr = local_addr(&grpc_listener, self.config.grpc_addr)?;
        let admin_addr = local_addr(&admin_listener, self.config.admin_addr)?;

        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ficus_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let routes = self.routes.add_service(health_service).add_service(reflection);
        let metrics = CallMetrics::register(&mut self.registry);
        let readiness = Readiness::new(self.dependencies, shutdown.clone(), &mut self.registry);
        set_health(&health, self.service, readiness.check().await.is_ok()).await;

        let admin_stop = CancellationToken::new();
        let admin = axum::serve(admin_listener, admin::router(readiness.clone(), Arc::new(self.registry)))
            .with_graceful_shutdown(admin_stop.clone().cancelled_owned());
        let admin = tokio::spawn(async move { admin.await.map_err(ServeError::Admin) });
        tokio::spawn(follow_readiness(health.clone(), self.service, readiness));

        let router = tonic::transport::Server::builder()
            .layer(ObserveLayer::new(metrics))
            .layer(tower::util::option_layer(authenticator.map(AuthLayer::new)))
            .add_routes(routes);
        let stopped = shutdown.clone().cancelled_owned();
        let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
            Some(tls) => Box::pin(
                router
                    .serve_with_incoming_shutdown(crate::tls::incoming(grpc_listener, tls, shutdown.clone()), stopped),
            ),
            // Replies are small and latency matters more than packet count: no Nagle.
            None => Box::pin(router.serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                stopped,
            )),
        };
        let grace = self.config.grace_period;
        let service = self.service;
        tracing::info!(service, %grpc_addr, %admin_addr, "serving");
        let task = tokio::spawn(async move {
            tokio::pin!(serve);
            let served = tokio::select! {
                result = &mut serve => result.map_err(ServeError::from),
                () = shutdown.cancelled() => {
                    tracing::info!(service, ?grace, "shutting down: finishing calls in flight");
                    match tokio::time::timeout(grace, &mut serve).await {
                        Ok(result) => result.map_err(ServeError::from),
                        Err(_) => {
                            tracing::warn!(service, "grace period over; dropping calls still running");
                            Ok(())
                        }
                    }
                }
            };
            admin_stop.cancel();
            let admin_served = admin.await?;
            tracing::info!(service, "stopped");
            served.and(admin_served)
        });
        Ok(Running { grpc_addr, admin_addr, task, listeners: Vec::new() })
    }
}

/// A started service.
pub struct Running {
    /// The bound gRPC address (useful with port 0).
    pub grpc_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    task: JoinHandle<Result<(), ServeError>>,
    listeners: Vec<Listener>,
}

/// Something else a service serves, such as a data plane, that stops with it.
struct Listener {
    name: &'static str,
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Adds a listener the service runs beside gRPC (e.g. the traffic data plane), bound
    /// at `addr`; [`Running::wait`] waits for it too. It must stop on the same shutdown.
    pub fn attach(mut self, name: &'static str, addr: SocketAddr, task: JoinHandle<std::io::Result<()>>) -> Self {
        self.listeners.push(Listener { name, addr, task });
        self
    }

    /// Where the attached listener called `name` is bound.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|listener| listener.name == name).map(|listener| listener.addr)
    }

    /// Waits until the service and everything attached to it have stopped.
    pub async fn wait(self) -> Result<(), ServeError> {
        let served = self.task.await?;
        for listener in self.listeners {
            listener.task.await?.map_err(|source| ServeError::Listener { name: listener.name, source })?;
        }
        served
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServeError> {
    listener.local_addr().map_err(|source| ServeError::Bind { addr, source })
}

async fn set_health(health: &HealthReporter, service: &str, ready: bool) {
    let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
    health.set_service_status(service, status).await;
    health.set_service_status("", status).await;
}

/// Keeps gRPC health in step with readiness until shutdown, then reports NOT_SERVING.
async fn follow_readiness(health: HealthReporter, service: &'static str, readiness: Readiness) {
    let mut ticks = tokio::time::interval(HEALTH_PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => set_health(&health, service, readiness.check().await.is_ok()).await,
            () = readiness.stopping().cancelled() => break,
        }
    }
    set_health(&health, service, false).await;
}
