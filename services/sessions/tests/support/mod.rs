//! What the session tests share: the service started in-process on either backend, and
//! short ways to call it.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code, unused_macros)]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use ficus_kit::server::{Running, ServerConfig};
use ficus_proto::sessions::v1::{
    CreateSessionRequest, GetSessionRequest, Session, session_store_client::SessionStoreClient,
};
use ficus_sessions::{Config, Limits};
use ficus_sessions_client::SessionClient;
use ficus_testkit::RedisServer;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, transport::Channel};

/// Runs `$test(backend)` once per backend, as `$test::embedded` and `$test::redis`.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$test(super::support::Backend::Embedded).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$test(super::support::Backend::Redis).await;
            }
        }
    )*};
}

/// Where the service under test keeps its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A redb file in a temporary directory.
    Embedded,
    /// A real redis-server of its own.
    Redis,
}

/// Limits for tests: the defaults, but TTLs as short as 100 ms so expiry takes moments.
pub fn test_limits() -> Limits {
    Limits { min_ttl: Duration::from_millis(100), ..Limits::default() }
}

/// The sessions service running in this process on one backend.
pub struct Harness {
    /// Its backend.
    pub backend: Backend,
    /// The redis-server, on the Redis backend.
    pub redis: Option<RedisServer>,
    config: Config,
    running: Option<(Running, CancellationToken)>,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    _dir: Option<TempDir>,
}

impl Harness {
    /// Starts the service on `backend` with [`test_limits`].
    pub async fn start(backend: Backend) -> Self {
        Self::with_limits(backend, test_limits()).await
    }

    /// Starts the service on `backend` with `limits`.
    pub async fn with_limits(backend: Backend, limits: Limits) -> Self {
        let (store, redis, dir) = match backend {
            Backend::Embedded => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                (dir.path().display().to_string(), None, Some(dir))
            }
            Backend::Redis => {
                let redis = RedisServer::new();
                (redis.url(), Some(redis), None)
            }
        };
        let server = ServerConfig { grace_period: Duration::from_secs(2), ..ServerConfig::ephemeral() };
        let config = Config { server, store, limits, ..Config::default() };
        let (running, shutdown) = launch(&config).await;
        Self {
            backend,
            redis,
            config,
            grpc_addr: running.grpc_addr,
            admin_addr: running.admin_addr,
            running: Some((running, shutdown)),
            _dir: dir,
        }
    }

    /// A raw gRPC client of the service.
    pub fn grpc(&self) -> SessionStoreClient<Channel> {
        SessionStoreClient::new(ficus_testkit::grpc::channel(self.grpc_addr))
    }

    /// The application client of the service.
    pub fn client(&self) -> SessionClient {
        SessionClient::connect_lazy(&self.grpc_addr.to_string()).expect("a valid address")
    }

    /// The admin HTTP address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The redis-server; panics on the embedded backend.
    pub fn redis(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("a Redis backend")
    }

    /// Stops the service gracefully and starts a new one on the same store and the same
    /// addresses, as a restarted process behind a fixed address would be.
    pub async fn restart_service(&mut self) {
        if let Some((running, shutdown)) = self.running.take() {
            shutdown.cancel();
            running.wait().await.expect("a clean shutdown");
        }
        self.config.server.grpc_addr = self.grpc_addr;
        self.config.server.admin_addr = self.admin_addr;
        let (running, shutdown) = launch(&self.config).await;
        self.grpc_addr = running.grpc_addr;
        self.admin_addr = running.admin_addr;
        self.running = Some((running, shutdown));
    }

    /// Another replica of the service on the same store (Redis only: an embedded store
    /// is one process's), stopped when the returned value is dropped.
    pub async fn replica(&self) -> Replica {
        assert_eq!(self.backend, Backend::Redis, "only Redis is shared between replicas");
        let (running, shutdown) = launch(&self.config).await;
        Replica { grpc_addr: running.grpc_addr, _shutdown: shutdown.drop_guard() }
    }

    /// The value of the counter `name` on `/metrics`.
    pub async fn counter(&self, name: &str) -> u64 {
        let (status, body) = ficus_testkit::http::get(self.admin_addr, "/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
    }
}

/// A second replica of the service.
pub struct Replica {
    grpc_addr: SocketAddr,
    _shutdown: tokio_util::sync::DropGuard,
}

impl Replica {
    /// A raw gRPC client of this replica.
    pub fn grpc(&self) -> SessionStoreClient<Channel> {
        SessionStoreClient::new(ficus_testkit::grpc::channel(self.grpc_addr))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some((_, shutdown)) = &self.running {
            shutdown.cancel();
        }
    }
}

async fn launch(config: &Config) -> (Running, CancellationToken) {
    let shutdown = CancellationToken::new();
    let running = ficus_sessions::start(config.clone(), shutdown.clone()).await.expect("the service starts");
    (running, shutdown)
}

/// Attributes from name/value pairs.
pub fn attributes(pairs: &[(&str, &[u8])]) -> HashMap<String, Vec<u8>> {
    pairs.iter().map(|(name, value)| ((*name).to_owned(), value.to_vec())).collect()
}

/// Creates a session with `attributes` and the idle `ttl` (the default when `None`).
pub async fn create(
    grpc: &mut SessionStoreClient<Channel>,
    attributes: HashMap<String, Vec<u8>>,
    ttl: Option<Duration>,
) -> Session {
    let request = CreateSessionRequest { attributes, ttl: ttl.map(Into::into), max_lifetime: None };
    grpc.create_session(request).await.expect("CreateSession").into_inner()
}

/// Reads a session without touching it.
pub async fn get(grpc: &mut SessionStoreClient<Channel>, id: &str) -> Result<Session, Status> {
    grpc.get_session(GetSessionRequest { id: id.to_owned(), touch: false }).await.map(tonic::Response::into_inner)
}

/// Asserts that `result` failed with INVALID_ARGUMENT at `field`.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = result.expect_err("the request is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(ficus_kit::status::invalid_field(&status).as_deref(), Some(field), "{status:?}");
}

/// Asserts that `result` failed with `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) {
    let status = result.expect_err("the request fails");
    assert_eq!(status.code(), code, "{status:?}");
}

/// The `expires_at` of a session as a `SystemTime`.
pub fn expires_at(session: &Session) -> std::time::SystemTime {
    time(session.expires_at.expect("expires_at is set"))
}

/// A protobuf timestamp as a `SystemTime`.
pub fn time(timestamp: pbjson_types::Timestamp) -> std::time::SystemTime {
    std::time::SystemTime::UNIX_EPOCH
        + Duration::new(timestamp.seconds.try_into().expect("after 1970"), timestamp.nanos.try_into().expect("nanos"))
}
