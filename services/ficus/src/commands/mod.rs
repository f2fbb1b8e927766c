//! The operator commands: `ficus rollout`, `plan`, `route` and `session`, each a thin
//! client of one service's gRPC API.
//!
//! Every command is a plain async function from its parsed arguments to output written on
//! a `Write`, so tests can call them without a process; [`main`] is the process around them:
//! a runtime, standard output, one line on standard error and the exit code on failure.
//!
//! Exit codes: 0 on success; 1 when a server refused or could not be reached, or a watched
//! rollout ended badly; 2 when the input is wrong (arguments, a spec file, or a spec the
//! planner refuses as INVALID_ARGUMENT).

pub mod plan;
pub mod rollout;
pub mod route;
pub mod session;

use std::{
    error::Error as _,
    io::{self, IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use ficus_kit::{
    client::{self, BearerToken, Credentials, TracedChannel},
    tls::{ClientTls, ClientTlsConfig, TlsError},
};
use tonic::{Code, Status};

use crate::{output::Format, spec_file::SpecError};

/// How long one call may take before the command gives up; streams (`rollout watch`) are
/// only bounded until their first response.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the services are and how to print, shared by every operator command.
#[derive(Clone, Debug, clap::Args)]
pub struct Globals {
    /// Planner gRPC address (`host:port` or `http://host:port`).
    #[arg(long, global = true, help_heading = "Global options", value_name = "ADDR", env = "FICUS_PLANNER_ADDR")]
    pub planner: Option<String>,
    /// Traffic gRPC address.
    #[arg(long, global = true, help_heading = "Global options", value_name = "ADDR", env = "FICUS_TRAFFIC_ADDR")]
    pub traffic: Option<String>,
    /// Sessions gRPC address.
    #[arg(long, global = true, help_heading = "Global options", value_name = "ADDR", env = "FICUS_SESSIONS_ADDR")]
    pub sessions: Option<String>,
    /// Bearer token presented to the services (`authorization: Bearer <token>`).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "TOKEN",
        env = "FICUS_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A file holding the bearer token (e.g. a projected ServiceAccount token), read when
    /// `--token` is not given.
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE", env = "FICUS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS to the services.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Output: human tables, or the proto3 JSON mapping as JSON or YAML.
    #[arg(short, long, global = true, help_heading = "Global options", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Service addresses and credentials from the configuration file (`[client]` in
/// `ficus.toml`, or `FICUS_CLIENT__PLANNER` and so on), used when neither a flag nor its
/// environment variable gives one.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    planner: Option<String>,
    traffic: Option<String>,
    sessions: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    tls: ClientTlsConfig,
}

impl Globals {
    /// Fills the addresses not given by flag or environment from the configuration file
    /// `file` (or `ficus.toml`); a broken file is an error, a missing default file is not.
    pub fn with_config(mut self, file: Option<&std::path::Path>) -> Result<Self, ficus_kit::config::ConfigError> {
        let layers = ficus_kit::config::sources(file)?;
        let client: ClientConfig = match layers.find_value("client") {
            Ok(_) => layers.extract_inner("client")?,
            Err(_) => ClientConfig::default(),
        };
        self.planner = self.planner.or(client.planner);
        self.traffic = self.traffic.or(client.traffic);
        self.sessions = self.sessions.or(client.sessions);
        self.token = self.token.or(client.token);
        self.token_file = self.token_file.or(client.token_file);
        self.tls.ca_cert = self.tls.ca_cert.or(client.tls.ca_cert);
        if self.tls.cert.is_none() {
            self.tls.cert = client.tls.cert;
            self.tls.key = client.tls.key;
        }
        Ok(self)
    }

    /// The token and TLS settings every command presents.
    pub fn credentials(&self) -> Result<Credentials, CliError> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => {
                Some(BearerToken::new(token).map_err(|error| CliError::Usage(format!("--token: {error}")))?)
            }
            (None, Some(path)) => {
                Some(BearerToken::from_file(path).map_err(|error| CliError::Usage(format!("--token-file: {error}")))?)
            }
            (None, None) => None,
        };
        let tls = self.tls.load().map_err(|error| CliError::Usage(format!("TLS: {error}")))?;
        Ok(Credentials { token, tls })
    }

    /// The planner's address.
    pub fn planner(&self) -> &str {
        self.planner.as_deref().unwrap_or("127.0.0.1:7001")
    }

    /// The traffic service's address.
    pub fn traffic(&self) -> &str {
        self.traffic.as_deref().unwrap_or("127.0.0.1:7003")
    }

    /// The session store's address.
    pub fn sessions(&self) -> &str {
        self.sessions.as_deref().unwrap_or("127.0.0.1:7004")
    }
}

/// TLS to the services: the CA their certificates chain to, and a client certificate for
/// those that require mutual TLS. With either, `host:port` addresses are dialled over TLS.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) the services' certificates must chain to.
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE", env = "FICUS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), for services that require mutual TLS.
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE", env = "FICUS_CERT")]
    pub cert: Option<PathBuf>,
    /// The key (PEM) of `--cert`.
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE", env = "FICUS_KEY")]
    pub key: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS these settings ask for; none when no file is named.
    pub fn load(&self) -> Result<Option<ClientTls>, TlsError> {
        if self.ca_cert.is_none() && self.cert.is_none() && self.key.is_none() {
            return Ok(None);
        }
        let config = ClientTlsConfig {
            ca_cert: self.ca_cert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            server_name: None,
        };
        ClientTls::load(&config).map(Some)
    }
}

/// The service a command talks to, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// `ficus.planner.v1.Planner`.
    Planner,
    /// `ficus.traffic.v1.TrafficControl`.
    Traffic,
    /// `ficus.sessions.v1.SessionStore`.
    Sessions,
}

impl Service {
    /// Its name in messages: `the planner at ...`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Planner => "planner",
            Self::Traffic => "traffic service",
            Self::Sessions => "session store",
        }
    }
}

/// One service's address and a lazily connecting channel to it.
#[derive(Clone, Debug)]
pub struct Remote {
    /// Which service.
    pub service: Service,
    /// Its address as given.
    pub address: String,
    /// The channel; nothing is dialled until the first call.
    pub channel: TracedChannel,
}

impl Remote {
    /// A channel to `service` at `address`, presenting `credentials`.
    pub fn connect(service: Service, address: &str, credentials: &Credentials) -> Result<Self, CliError> {
        let channel = client::connect_with(address, CALL_TIMEOUT, credentials)
            .map_err(|error| CliError::Usage(format!("--{}: {error}", flag(service))))?;
        Ok(Self { service, address: address.to_owned(), channel })
    }

    /// The error for a failed call: unreachable when the status never came from the server.
    pub fn error(&self, status: Status) -> CliError {
        // A status decoded from the server's response has no source; one made up by the
        // client from a connect, transport or timeout failure carries that failure.
        if status.source().is_some() {
            return CliError::Unreachable {
                service: self.service,
                address: self.address.clone(),
                reason: innermost(&status),
            };
        }
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => {
                let message = match ficus_kit::status::invalid_field(&status) {
                    Some(field) if !message.starts_with(&field) => format!("{field}: {message}"),
                    _ => message,
                };
                CliError::Invalid(message)
            }
            Code::Unauthenticated => CliError::Server(format!(
                "the {} did not accept the credential ({message}); pass --token or --token-file, or set FICUS_TOKEN",
                self.service.name()
            )),
            Code::PermissionDenied => CliError::Server(format!("the {} refused: {message}", self.service.name())),
            _ if message.is_empty() => {
                CliError::Server(format!("{} answered {:?}", self.service.name(), status.code()))
            }
            _ => CliError::Server(message),
        }
    }
}

fn flag(service: Service) -> &'static str {
    match service {
        Service::Planner => "planner",
        Service::Traffic => "traffic",
        Service::Sessions => "sessions",
    }
}

/// The most specific message in a client-side failure, e.g. `Connection refused (os error
/// 111)` rather than tonic's `transport error`.
fn innermost(status: &Status) -> String {
    let mut reason = status.message().to_owned();
    let mut source = status.source();
    while let Some(error) = source {
        let text = error.to_string();
        if !text.is_empty() {
            reason = text;
        }
        source = error.source();
    }
    reason
}

/// Why a command failed; each variant has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The service could not be reached at all (exit 1).
    #[error("cannot reach the {} at {address}: {reason}", service.name())]
    Unreachable {
        /// Which service.
        service: Service,
        /// The address tried.
        address: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The server answered with an error (exit 1).
    #[error("{0}")]
    Server(String),
    /// The server refused the request as INVALID_ARGUMENT, naming the field (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// The spec file is unreadable or malformed (exit 2).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// An argument is malformed (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A watched rollout ended rolled back, aborted or failed (exit 1).
    #[error("rollout `{id}` ended {phase}: {message}")]
    RolloutEnded {
        /// The rollout.
        id: String,
        /// Its final phase, as the API names it.
        phase: &'static str,
        /// Why, as the planner put it.
        message: String,
    },
    /// Standard output could not be written (exit 1).
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Invalid(_) | Self::Spec(_) | Self::Usage(_) => 2,
            Self::Unreachable { .. } | Self::Server(_) | Self::RolloutEnded { .. } | Self::Output(_) => 1,
        }
    }
}

/// One operator command, parsed.
#[derive(Debug)]
pub enum Operation {
    /// `ficus rollout ...`.
    Rollout(rollout::RolloutCommand),
    /// `ficus plan ...`.
    Plan(plan::PlanCommand),
    /// `ficus route ...`.
    Route(route::RouteCommand),
    /// `ficus session ...`.
    Session(session::SessionCommand),
}

/// What a command may know about where its output goes.
#[derive(Clone, Copy, Debug)]
pub struct Terminal {
    /// Whether standard output is a terminal, so a live view can redraw in place.
    pub interactive: bool,
}

/// Runs `operation` with `globals`, writing to `out`.
pub async fn run(
    globals: &Globals,
    operation: Operation,
    out: &mut (dyn Write + Send),
    terminal: Terminal,
) -> Result<(), CliError> {
    match operation {
        Operation::Rollout(command) => rollout::run(globals, command, out, terminal).await,
        Operation::Plan(command) => plan::run(globals, command, out).await,
        Operation::Route(command) => route::run(globals, command, out).await,
        Operation::Session(command) => session::run(globals, command, out).await,
    }
}

/// An operator command as a process: prints to standard output, reports a failure as one
/// line on standard error, and turns it into the exit code.
pub fn main(globals: &Globals, operation: Operation) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ficus: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let terminal = Terminal { interactive: io::stdout().is_terminal() };
    let mut out = io::stdout();
    let result = runtime.block_on(run(globals, operation, &mut out, terminal)).and_then(|()| Ok(out.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`ficus rollout list | head -1`): nothing left to say.
        Err(CliError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ficus: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_statuses_keep_their_message_and_field() {
        let remote = Remote::connect(Service::Planner, "127.0.0.1:1", &Credentials::default()).expect("address");
        let error = remote.error(Status::not_found("rollout `x` not found"));
        assert_eq!((error.to_string(), error.exit_code()), ("rollout `x` not found".to_owned(), 1));
        let error = remote.error(ficus_kit::status::invalid_argument("spec.route", "required"));
        assert_eq!((error.to_string(), error.exit_code()), ("spec.route: required".to_owned(), 2));
    }

    #[test]
    fn unreachable_names_the_service_and_address() {
        let error = CliError::Unreachable {
            service: Service::Planner,
            address: "127.0.0.1:7001".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(error.to_string(), "cannot reach the planner at 127.0.0.1:7001: connection refused");
        assert_eq!(error.exit_code(), 1);
    }
}
