//! `ficus health`: the gRPC health check of one service, as an exit code.
//!
//! Container health checks and the chart's test hook run it in exec form, so the runtime
//! image needs no shell, curl or grpc_health_probe: the binary they already ship asks.

use std::{process::ExitCode, time::Duration};

use crate::commands::TlsArgs;

use ficus_kit::client::Credentials;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Which service to ask, and how long to wait.
#[derive(Clone, Debug, clap::Args)]
pub struct HealthOptions {
    /// gRPC address of the service.
    #[arg(long, default_value = "127.0.0.1:7001", value_name = "HOST:PORT")]
    pub addr: String,
    /// The service name in the health protocol; empty asks about the server as a whole,
    /// which follows its readiness.
    #[arg(long, default_value = "", value_name = "NAME")]
    pub service: String,
    /// Longest wait for the answer, connection included.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub timeout: Duration,
    /// TLS to the service; the health check itself needs no credential.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Why a service does not count as healthy.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    /// The address is not one a channel can be built for.
    #[error(transparent)]
    Address(#[from] ficus_kit::client::AddressError),
    /// The TLS files cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] ficus_kit::tls::TlsError),
    /// The call failed: refused, timed out, or the service is unknown.
    #[error("{code:?}: {message}", code = .0.code(), message = .0.message())]
    Call(#[from] tonic::Status),
    /// The service answered, with a status other than SERVING.
    #[error("{0}")]
    NotServing(&'static str),
}

/// Asks `options.addr` for its health once.
pub async fn check(options: &HealthOptions) -> Result<(), Unhealthy> {
    let credentials = Credentials { token: None, tls: options.tls.load()? };
    let channel = ficus_kit::client::connect_with(&options.addr, options.timeout, &credentials)?;
    let request = HealthCheckRequest { service: options.service.clone() };
    let status = tokio::time::timeout(options.timeout, HealthClient::new(channel).check(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded(format!("no answer within {:?}", options.timeout)))??
        .into_inner()
        .status();
    match status {
        ServingStatus::Serving => Ok(()),
        other => Err(Unhealthy::NotServing(other.as_str_name())),
    }
}

/// `ficus health` as a process: exit 0 when SERVING, 1 with a one-line reason otherwise.
pub fn main(options: &HealthOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ficus health: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(check(options)) {
        Ok(()) => {
            println!("{}: SERVING", options.addr);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ficus health: {}: {error}", options.addr);
            ExitCode::FAILURE
        }
    }
}
