//! Command-line parsing and dispatch.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::up;

/// ficus moves production traffic from an old environment to a new one in observed,
/// reversible stages.
#[derive(Debug, Parser)]
#[command(name = "ficus", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML); default `ficus.toml` if present.
    #[arg(long, global = true, value_name = "FILE", env = "FICUS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in this process with embedded storage.
    ///
    /// Each service keeps its state in its own directory under the data directory and
    /// listens on its default ports (planner 7001, analysis 7002, traffic 7003,
    /// sessions 7004; admin 9001-9004), unless configured otherwise in the `[planner]`,
    /// `[analysis]`, `[traffic]` and `[sessions]` sections or `FICUS_<SERVICE>__...`.
    #[command(
        after_help = "Examples:\n  ficus up\n  ficus up --data-dir /var/lib/ficus\n  FICUS_TRAFFIC__SERVER__GRPC_ADDR=127.0.0.1:7103 ficus up"
    )]
    Up {
        /// Parent directory of every service's store.
        #[arg(long, value_name = "DIR", default_value = "data")]
        data_dir: PathBuf,
    },
}

impl Cli {
    /// Runs the command; the exit code says whether it succeeded.
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Up { data_dir } => up::main(self.config.as_deref(), &data_dir),
        }
    }
}
