//! Command-line parsing and dispatch.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    commands::{self, Operation},
    up,
};

/// ficus moves production traffic from an old environment to a new one in observed,
/// reversible stages.
#[derive(Debug, Parser)]
#[command(
    name = "ficus",
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  ficus up\n  ficus route apply -f examples/route.yaml\n  ficus plan preview -f examples/strangler.yaml\n  ficus rollout apply -f examples/strangler.yaml --id checkout-migration\n  ficus rollout watch checkout-migration\n  FICUS_PLANNER_ADDR=planner.internal:7001 ficus rollout list --active -o json"
)]
pub struct Cli {
    /// Configuration file (TOML); default `ficus.toml` if present.
    #[arg(long, global = true, value_name = "FILE", env = "FICUS_CONFIG")]
    config: Option<PathBuf>,
    /// Service addresses and output format of the operator commands.
    #[command(flatten)]
    globals: crate::commands::Globals,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch a whole migration, end to end, in about two minutes.
    ///
    /// Starts the control plane embedded, two small applications (legacy v1 and new v2,
    /// sharing sessions through the session store) behind the traffic proxy, and a population
    /// of users with stable ids. A strangler migration moves them 5/20/50/80/100% to v2,
    /// judged at every stage; then a second release of v2 turns faulty after its 20% stage
    /// and is rolled back automatically. Exits non-zero if a promise in the summary breaks.
    #[command(
        after_help = "Examples:\n  ficus demo\n  ficus demo --users 50 --stage-window 3s --fault-percent 20\n  ficus demo app --version v1 --listen 0.0.0.0:8080 --sessions sessions:7004\n  ficus demo drive --planner planner:7001 --traffic traffic:7003 --proxy traffic:8080 --legacy legacy:8080 --new new:8080"
    )]
    Demo(DemoArgs),
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
    /// Start, follow and steer rollouts (planner).
    #[command(
        subcommand,
        after_help = "Examples:\n  ficus rollout apply -f examples/strangler.yaml --id checkout-v2\n  ficus rollout watch checkout-v2\n  ficus rollout promote checkout-v2\n  ficus rollout abort checkout-v2 --reason \"errors in checkout\""
    )]
    Rollout(crate::commands::rollout::RolloutCommand),
    /// Preview the steps of a rollout spec (planner).
    #[command(subcommand, after_help = "Examples:\n  ficus plan preview -f examples/canary.yaml")]
    Plan(crate::commands::plan::PlanCommand),
    /// Create and read routes, and set their weights by hand (traffic).
    #[command(
        subcommand,
        after_help = "Examples:\n  ficus route apply -f examples/route.yaml\n  ficus route list\n  ficus route set-weights checkout legacy=9500 k8s=500"
    )]
    Route(crate::commands::route::RouteCommand),
    /// Ask one service whether it serves: exit 0 when SERVING (the gRPC health protocol).
    ///
    /// For container health checks and probes that cannot run a shell.
    #[command(
        after_help = "Examples:\n  ficus health --addr traffic:7003\n  ficus health --addr 127.0.0.1:7004 --timeout 1s"
    )]
    Health(crate::health::HealthOptions),
    /// Read user sessions (sessions).
    #[command(subcommand, after_help = "Examples:\n  ficus session get \"$SESSION_ID\"")]
    Session(crate::commands::session::SessionCommand),
}

/// `ficus demo`: embedded as a whole, or its parts on their own (as Compose runs them).
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct DemoArgs {
    #[command(flatten)]
    options: crate::demo::DemoOptions,
    #[command(subcommand)]
    part: Option<DemoPart>,
}

#[derive(Debug, Subcommand)]
enum DemoPart {
    /// Serve one of the demo's applications (legacy v1 or new v2) on its own; it keeps
    /// sessions in the session store at `--sessions`.
    App(crate::demo::AppOptions),
    /// Play the demo against a control plane and applications that already run: create
    /// the route, start the users, migrate, then roll back a faulty release. Exits
    /// non-zero if a promise breaks.
    Drive(crate::demo::DriveOptions),
}

impl Cli {
    /// Runs the command; the exit code says whether it succeeded.
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Up { data_dir } => up::main(self.config.as_deref(), &data_dir),
            Command::Demo(DemoArgs { part: None, options }) => demo_main(options),
            Command::Demo(DemoArgs { part: Some(part), .. }) => {
                match self.globals.clone().with_config(self.config.as_deref()) {
                    Ok(globals) => demo_part(&globals, part),
                    Err(error) => {
                        eprintln!("ficus: {error}");
                        ExitCode::from(2)
                    }
                }
            }
            Command::Health(options) => crate::health::main(&options),
            Command::Rollout(command) => operate(&self.globals, self.config.as_deref(), Operation::Rollout(command)),
            Command::Plan(command) => operate(&self.globals, self.config.as_deref(), Operation::Plan(command)),
            Command::Route(command) => operate(&self.globals, self.config.as_deref(), Operation::Route(command)),
            Command::Session(command) => operate(&self.globals, self.config.as_deref(), Operation::Session(command)),
        }
    }
}

/// Runs an operator command with the addresses resolved: flag, environment, then the
/// `[client]` section of the configuration file, then the defaults.
fn operate(globals: &crate::commands::Globals, config: Option<&std::path::Path>, operation: Operation) -> ExitCode {
    match globals.clone().with_config(config) {
        Ok(globals) => commands::main(&globals, operation),
        Err(error) => {
            eprintln!("ficus: {error}");
            ExitCode::from(2)
        }
    }
}

/// `ficus demo` as a process: quiet logs, live progress, the summary, and exit 1 when a
/// promise broke.
fn demo_main(options: crate::demo::DemoOptions) -> ExitCode {
    ficus_kit::run(
        "ficus demo",
        &demo_telemetry(),
        |_shutdown| async move { summarize(crate::demo::run(options).await) },
    )
}

/// `ficus demo app` and `ficus demo drive` as processes.
fn demo_part(globals: &crate::commands::Globals, part: DemoPart) -> ExitCode {
    match part {
        DemoPart::App(options) => {
            let sessions = globals.sessions().to_owned();
            let credentials = globals.credentials();
            ficus_kit::run("ficus demo app", &demo_telemetry(), |shutdown| async move {
                let credentials = credentials.map_err(|error| error.to_string())?;
                crate::demo::serve_app(options, &sessions, &credentials, shutdown)
                    .await
                    .map_err(|error| error.to_string())
            })
        }
        DemoPart::Drive(options) => {
            let (planner, traffic) = (globals.planner().to_owned(), globals.traffic().to_owned());
            let credentials = globals.credentials();
            ficus_kit::run("ficus demo drive", &demo_telemetry(), |_shutdown| async move {
                let credentials = credentials.map_err(|error| error.to_string())?;
                summarize(crate::demo::drive(options, &planner, &traffic, &credentials).await)
            })
        }
    }
}

fn demo_telemetry() -> ficus_kit::telemetry::TelemetryConfig {
    ficus_kit::telemetry::TelemetryConfig { log_level: "warn".into(), ..Default::default() }
}

/// Prints the summary; an error when the demo failed or a promise broke.
fn summarize(result: Result<crate::demo::Summary, crate::demo::DemoError>) -> Result<(), String> {
    let summary = result.map_err(|error| error.to_string())?;
    println!("{summary}");
    if summary.promises_kept() { Ok(()) } else { Err("a promise of the demo broke".to_owned()) }
}
