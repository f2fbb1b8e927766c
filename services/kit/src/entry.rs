//! The body of every service binary: read flags and configuration, start telemetry,
//! serve until a signal, and exit 0 after a clean shutdown.

use std::{future::Future, path::PathBuf, process::ExitCode};

use figment::Figment;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{self, ConfigError, ServiceConfig},
    server::Running,
    telemetry::{self, TelemetryConfig},
};

/// Flags every service binary takes.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServiceArgs {
    /// Configuration file (TOML); default `ficus.toml` if present.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the service keeps its state: a directory, or a redis:// or rediss:// URL.
    #[arg(long, value_name = "DIR|URL")]
    pub store: Option<String>,
}

impl ServiceArgs {
    /// The configuration layers with these flags on top of file and environment.
    pub fn layers(&self) -> Result<Figment, ConfigError> {
        let layers = config::sources(self.config.as_deref())?;
        Ok(match &self.store {
            Some(store) => layers.merge(("store", store)),
            None => layers,
        })
    }
}

/// Loads the `telemetry` section from `layers`.
pub fn telemetry_config(layers: &Figment) -> Result<TelemetryConfig, ConfigError> {
    let config: TelemetryConfig = match layers.find_value("telemetry") {
        Ok(_) => layers.extract_inner("telemetry")?,
        Err(_) => TelemetryConfig::default(),
    };
    config.validate()?;
    Ok(config)
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: ServiceArgs,
}

/// Runs one service as a process: `name` names its traces, `start` builds and starts it.
/// Exit code 0 after a clean shutdown, 2 on bad configuration, 1 on any other failure.
pub fn main<C, F, Fut, E>(name: &'static str, start: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<Running, E>>,
    E: std::fmt::Display,
{
    let label = format!("ficus-{name}");
    let cli = <Cli as clap::Parser>::parse();
    let loaded =
        cli.args.layers().and_then(|layers| Ok((config::extract::<C>(&layers, None)?, telemetry_config(&layers)?)));
    let (config, telemetry) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{label}: {error}");
            return ExitCode::from(2);
        }
    };
    run(&label, &telemetry, |shutdown| async move {
        let running = start(config, shutdown).await.map_err(|error| error.to_string())?;
        running.wait().await.map_err(|error| error.to_string())
    })
}

/// Runs `body` as the whole process: builds the runtime, starts telemetry (traces named
/// `label`), hands `body` a token cancelled on SIGTERM or SIGINT, and turns its result
/// into the exit code, printing a one-line error on failure.
pub fn run<F, Fut>(label: &str, telemetry: &TelemetryConfig, body: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{label}: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match telemetry::init(telemetry, label) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("{label}: {error}");
                return ExitCode::FAILURE;
            }
        };
        match body(crate::shutdown::on_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "stopped with an error");
                eprintln!("{label}: {error}");
                ExitCode::FAILURE
            }
        }
    })
}
