//! The runtime every ficus service shares.
//!
//! A service crate is a library that builds its gRPC routes; `kit` does the rest the same
//! way for all four: configuration ([`config`]), logs and traces ([`telemetry`]), serving
//! gRPC with health, reflection, metrics and an admin port, and shutting down gracefully
//! ([`server`], [`shutdown`]), who may call what ([`auth`]), TLS from certificates that
//! rotate ([`tls`]), calling other services with trace context and credentials
//! ([`client`]), turning errors into gRPC statuses ([`status`]), and durable state
//! ([`store`]), and the time of day from one [`clock`] that tests can pause.
//! [`main`] ties these together so each binary is a few lines.

pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
mod entry;
pub mod kubernetes;
mod reload;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use entry::{ServiceArgs, main, run, telemetry_config};
