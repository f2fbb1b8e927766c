//! Test support shared by the ficus test suites.
//!
//! Tests here run against real processes rather than mocks, because what breaks in
//! production is the behaviour of the real thing: a Redis that restarts, replays its
//! append-only file or refuses connections. This crate starts such processes on free
//! loopback ports, each with its own temporary directory, and offers polling helpers so
//! that no test synchronises with a fixed sleep.

mod backend;
pub mod grpc;
pub mod http;
pub mod kube;
mod nginx;
mod podinfo;
mod port;
mod process;
mod prometheus;
mod redis;
pub mod route;
mod tool;
mod wait;
mod wrk;

pub use self::backend::{BACKEND_HEADER, Backend};
pub use self::kube::KubeApiServer;
pub use self::nginx::NginxServer;
pub use self::podinfo::Podinfo;
pub use self::port::free_port;
pub use self::process::{ServiceProcess, check_binary_lifecycle};
pub use self::prometheus::PrometheusServer;
pub use self::redis::RedisServer;
pub use self::tool::tool;
pub use self::wait::{eventually, wait_until};
pub use self::wrk::{SocketErrors, Wrk, WrkReport};
