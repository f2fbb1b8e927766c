//! The nginx adapter: ficus routes on a team's existing front nginx.
//!
//! Many migrations start with a monolith behind a front nginx. Rather than putting the ficus
//! proxy in front of it, such a team can let ficus manage one include file of that nginx:
//! [`render`] turns the route table into nginx configuration and
//! [`NginxAdapter::apply`] installs it.
//!
//! The operator includes the file from the `http` block of their `nginx.conf` and gives
//! ficus a `listen` address of its own ([`RenderOptions::listen`]):
//!
//! ```nginx
//! http {
//!     include /etc/nginx/conf.d/ficus.conf;
//! }
//! ```
//!
//! # What the file holds
//!
//! - Per route, `upstream ficus_<route>`: every endpoint of every backend with a non-zero
//!   weight, with `weight=` from the basis points. nginx's upstream round-robin *is* smooth
//!   weighted round-robin, so shares are exact and evenly spread, as in the ficus proxy. A
//!   backend's weight is split among its endpoints exactly (through the least common
//!   multiple of the endpoint counts, then reduced by the greatest common divisor).
//! - Per route and backend, `upstream ficus_<route>_<backend>`, which rules, sticky cohorts
//!   and the mirror send to.
//! - Rules as a chain of `map`s on `$http_<name>` or on a cookie read from `$http_cookie`,
//!   compared by case-sensitive regexes; the first match names its backend's upstream, and
//!   the end of the chain falls through to the cohort or the weighted upstream.
//! - Sticky cohorts as `split_clients` over the user key, one basis point being exactly
//!   nginx's finest step (0.01%), laid out in declaration order so that a growing backend
//!   only takes users from the edge of its neighbour: users move one way only. Requests
//!   without the key header follow the weights; requests without the key cookie get
//!   `$request_id` as their key and a `Set-Cookie` with it, as the ficus proxy does.
//! - Mirroring with `mirror` to an internal location that proxies to the shadow backend;
//!   below 100% a `split_clients` on `$request_id` makes most copies return at once.
//! - One `server` per set of host names and a default server, all on the `listen`
//!   addresses, with `location`s that pick routes as the ficus proxy does: the longest path
//!   prefix (on a segment boundary), then routes naming the host, then by name; 404 when
//!   none matches.
//!
//! # Applying
//!
//! Applying never puts nginx on a configuration it has not accepted. The new text is
//! written beside the managed file and renamed over it (a reader sees the whole old file
//! or the whole new one, never a half-written one), the whole configuration is tested
//! with `nginx -t`, and only then is nginx told to reload. If the test or the reload fails,
//! the previous file is renamed back in place the same way, so nginx keeps serving the old
//! configuration and a later reload by anyone loads it again.
//!
//! # Limits
//!
//! - Host names in endpoints are resolved once per apply (see [`NginxConfig::resolve`]), as
//!   nginx itself resolves them only when it loads a configuration; a name that does not
//!   resolve fails the apply, and the old configuration stays.
//! - Header regexes are written in Rust's `regex` syntax and compiled by PCRE; the rare
//!   pattern PCRE refuses (e.g. `\x{1F600}` outside UTF mode) fails `nginx -t`, and the old
//!   configuration stays.
//! - nginx cannot tell an empty header or cookie from a missing one, reads only the first
//!   of repeated headers, and drops headers whose names have characters other than letters,
//!   digits and `-`: rules on such names are left out, with a comment.
//! - nginx matches locations against the decoded, normalised path (`%2F`, `//`, `..`),
//!   the ficus proxy against the path as sent.
//! - Sticky cohorts hash with MurmurHash2 (`split_clients`), not the xxh3 buckets of the
//!   ficus proxy: the shares are the same, but a user may be in another cohort on each.
//!   The sticky cookie is also set on requests a rule sent elsewhere, and its `add_header`
//!   hides any `add_header` inherited from the `http` level in that route's locations.
//! - With several endpoints per backend, backend shares are exact over every full cycle
//!   of the weighted upstream but spread less evenly within it than in the ficus proxy
//!   (which picks a backend first, then an endpoint).
//! - A partial mirror copies a random share of requests, not an exact count.
//! - nginx retries a failed connection on the next upstream server, which may belong to
//!   the other backend: users are spared the error, and the split shifts while it lasts.
//! - A failure that only shows when nginx applies the reload (say a `listen` address in
//!   use) leaves nginx on the old configuration with the new file on disk; nginx logs it.
//! - Many routes or long host names may need a larger `variables_hash_max_size` or
//!   `server_names_hash_bucket_size` in `nginx.conf`; `nginx -t` says so, and nothing
//!   changes until they are raised.

mod render;

use std::{
    collections::HashMap,
    ffi::OsString,
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{io::AsyncWriteExt, process::Command, sync::Mutex};

pub use self::render::{RenderOptions, render, render_with};
use crate::route::{Endpoint, Route};

/// How long `nginx -t` or a reload may take: testing a large configuration resolves every
/// upstream host name, which can be slow, but a hung command must not hang route changes.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Tells apart the temporary files of concurrent writes within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How the adapter reaches nginx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxConfig {
    /// The include file ficus owns, e.g. `/etc/nginx/conf.d/ficus.conf`.
    pub path: PathBuf,
    /// The nginx binary.
    pub binary: PathBuf,
    /// The main configuration, passed as `-c`; `None` uses the one nginx was built with.
    pub main_config: Option<PathBuf>,
    /// Options given to every nginx command before the action, e.g. `-p <prefix>` or
    /// `-e <error log>` for an nginx started with them.
    pub global_args: Vec<OsString>,
    /// How to make nginx load the new configuration.
    pub reload: Reload,
    /// Listen addresses and keepalive of the render.
    pub render: RenderOptions,
    /// How long each nginx command or host name lookup may take.
    pub command_timeout: Duration,
    /// Resolve endpoint host names when applying and give nginx the addresses. nginx turns
    /// a name with several addresses (a cloud load balancer's, say) into one server per
    /// address, each with the endpoint's weight, which would inflate that endpoint's share;
    /// resolved here, the endpoint's share is split among its addresses instead. nginx
    /// itself resolves names only when it loads its configuration, so this is no staler.
    pub resolve: bool,
}

impl NginxConfig {
    /// Manages `path` with the `nginx` on `PATH`, its built-in main configuration, and
    /// `nginx -s reload`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            binary: PathBuf::from("nginx"),
            main_config: None,
            global_args: Vec::new(),
            reload: Reload::Signal,
            render: RenderOptions::default(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            resolve: true,
        }
    }
}

/// How nginx is told to reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    /// `nginx -s reload` with the same options as the test, which finds the master through
    /// the `pid` directive of the main configuration.
    Signal,
    /// SIGHUP to the pid in this file, for an nginx whose configuration the adapter cannot
    /// parse the same way (e.g. started with other `-g` directives).
    PidFile(PathBuf),
}

/// Why an apply failed. In every case but [`NginxError::Restore`], the file on disk is the
/// previous one and nginx serves the previous configuration.
#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    /// The managed file or its temporary sibling could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// What was being done, e.g. `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A command could not be started, e.g. nginx is not installed.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A command did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout {
        /// The command line.
        command: String,
        /// The limit it exceeded.
        timeout: Duration,
    },
    /// `nginx -t` refused the configuration with the new file in place.
    #[error("nginx refused the configuration (`{command}`, {status}): {stderr}")]
    Rejected {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What nginx said, naming the offending file and line.
        stderr: String,
    },
    /// The reload command failed, e.g. nginx is not running.
    #[error("nginx could not be reloaded (`{command}`, {status}): {stderr}")]
    Reload {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What the command said.
        stderr: String,
    },
    /// An endpoint's host name did not resolve; nginx would refuse it too.
    #[error("cannot resolve endpoint {endpoint}: {source}")]
    Resolve {
        /// The endpoint, `host:port`.
        endpoint: String,
        /// The lookup error.
        #[source]
        source: std::io::Error,
    },
    /// The pid file of [`Reload::PidFile`] could not be read or holds no pid.
    #[error("pid file {}: {reason}", path.display())]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An apply failed and putting the previous file back failed too: the untested new
    /// file is on disk, though nginx still serves the old configuration.
    #[error("{failure}; putting back the previous {} also failed: {source}", path.display())]
    Restore {
        /// Why the apply failed.
        failure: Box<NginxError>,
        /// The managed file.
        path: PathBuf,
        /// Why it could not be put back.
        #[source]
        source: std::io::Error,
    },
}

/// Keeps an nginx include file in step with the route table.
#[derive(Debug)]
pub struct NginxAdapter {
    config: NginxConfig,
    /// One apply at a time: two interleaved applies could restore each other's files.
    applying: Mutex<()>,
}

impl NginxAdapter {
    /// An adapter for `config`; nothing is touched until [`apply`](Self::apply).
    pub fn new(config: NginxConfig) -> Self {
        Self { config, applying: Mutex::new(()) }
    }

    /// Its configuration.
    pub fn config(&self) -> &NginxConfig {
        &self.config
    }

    /// Renders `routes`, installs the render if `nginx -t` accepts it, and reloads nginx.
    ///
    /// Does nothing when the file already holds this render, so that re-applying a table
    /// nginx would see no difference in (a generation bump, say) does not reload nginx and
    /// restart its balancing. On error the previous file is back in place (see
    /// [`NginxError`]). Concurrent applies are serialised; callers that care which table
    /// ends up installed apply one after another, as changes arrive.
    pub async fn apply(&self, routes: &[Route]) -> Result<(), NginxError> {
        let text = if self.config.resolve {
            let resolved = resolve(routes, self.config.command_timeout).await?;
            let addresses = |endpoint: &Endpoint| resolved.get(endpoint).cloned().unwrap_or_default();
            render::render_resolved(routes, &self.config.render, &addresses)
        } else {
            render_with(routes, &self.config.render)
        };
        self.apply_text(&text).await
    }

    /// Installs `text` as the managed file the way [`apply`](Self::apply) does; the seam
    /// that lets tests install text that no route renders to.
    pub(crate) async fn apply_text(&self, text: &str) -> Result<(), NginxError> {
        let _one_at_a_time = self.applying.lock().await;
        let path = &self.config.path;
        let previous = match tokio::fs::read(path).await {
            Ok(previous) => Some(previous),
            Err(error) if error.kind() == ErrorKind::NotFound => None,
            Err(source) => return Err(NginxError::File { action: "read", path: path.clone(), source }),
        };
        if previous.as_deref() == Some(text.as_bytes()) {
            return Ok(());
        }
        write_atomically(path, text.as_bytes()).await?;
        let outcome = match self.test().await {
            Ok(()) => self.reload().await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(path = %path.display(), "nginx reloaded with the new routes");
                Ok(())
            }
            Err(failure) => Err(self.restore(previous, failure).await),
        }
    }

    /// Puts `previous` back (or removes the file if there was none) after `failure`.
    async fn restore(&self, previous: Option<Vec<u8>>, failure: NginxError) -> NginxError {
        let path = &self.config.path;
        let restored = match previous {
            Some(previous) => write_atomically(path, &previous).await.map_err(|error| match error {
                NginxError::File { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            }),
            None => tokio::fs::remove_file(path).await,
        };
        match restored {
            Ok(()) => {
                tracing::warn!(path = %path.display(), %failure, "nginx configuration not applied; previous file restored");
                failure
            }
            Err(source) => NginxError::Restore { failure: Box::new(failure), path: path.clone(), source },
        }
    }

    /// `nginx -t` with the new file in place.
    async fn test(&self) -> Result<(), NginxError> {
        let (command, status, stderr) = self.run_nginx(&["-t"]).await?;
        if !status.success() {
            return Err(NginxError::Rejected { command, status, stderr });
        }
        if stderr.contains("[warn]") {
            tracing::warn!(%stderr, "nginx accepted the configuration with warnings");
        }
        Ok(())
    }

    async fn reload(&self) -> Result<(), NginxError> {
        let (command, status, stderr) = match &self.config.reload {
            Reload::Signal => self.run_nginx(&["-s", "reload"]).await?,
            Reload::PidFile(pid_file) => {
                let pid = read_pid(pid_file).await?;
                let mut kill = Command::new("kill");
                kill.args(["-s", "HUP", &pid.to_string()]);
                run(kill, format!("kill -s HUP {pid}"), self.config.command_timeout).await?
            }
        };
        if status.success() { Ok(()) } else { Err(NginxError::Reload { command, status, stderr }) }
    }

    /// Runs nginx with the global options, `-c` and `action`.
    async fn run_nginx(&self, action: &[&str]) -> Result<(String, ExitStatus, String), NginxError> {
        let mut command = Command::new(&self.config.binary);
        command.args(&self.config.global_args);
        if let Some(main_config) = &self.config.main_config {
            command.arg("-c").arg(main_config);
        }
        command.args(action);
        let line = std::iter::once(self.config.binary.as_os_str())
            .chain(command.as_std().get_args())
            .map(|part| part.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        run(command, line, self.config.command_timeout).await
    }
}

/// Runs `command` to completion within `timeout`; returns its line, status and stderr.
async fn run(
    mut command: Command,
    line: String,
    timeout: Duration,
) -> Result<(String, ExitStatus, String), NginxError> {
    // Dropped on timeout, which kills it: a hung nginx must not linger.
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = command.spawn().map_err(|source| NginxError::Spawn { command: line.clone(), source })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            Ok((line, output.status, stderr))
        }
        Ok(Err(source)) => Err(NginxError::Spawn { command: line, source }),
        Err(_) => Err(NginxError::Timeout { command: line, timeout }),
    }
}

/// The addresses of every endpoint given by host name, sorted so that a render changes
/// only when the addresses do.
async fn resolve(routes: &[Route], timeout: Duration) -> Result<HashMap<Endpoint, Vec<String>>, NginxError> {
    let mut resolved = HashMap::new();
    let endpoints = routes.iter().flat_map(|route| &route.backends).flat_map(|backend| &backend.endpoints);
    for endpoint in endpoints {
        if endpoint.host.parse::<IpAddr>().is_ok() || resolved.contains_key(endpoint) {
            continue;
        }
        let lookup = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port));
        let mut addresses: Vec<SocketAddr> = match tokio::time::timeout(timeout, lookup).await {
            Ok(Ok(addresses)) => addresses.collect(),
            Ok(Err(source)) => return Err(NginxError::Resolve { endpoint: endpoint.to_string(), source }),
            Err(_) => return Err(NginxError::Timeout { command: format!("resolving {endpoint}"), timeout }),
        };
        addresses.sort_unstable();
        addresses.dedup();
        if addresses.is_empty() {
            let source = std::io::Error::new(ErrorKind::NotFound, "no addresses");
            return Err(NginxError::Resolve { endpoint: endpoint.to_string(), source });
        }
        resolved.insert(endpoint.clone(), addresses.iter().map(ToString::to_string).collect());
    }
    Ok(resolved)
}

async fn read_pid(path: &Path) -> Result<u32, NginxError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|error| NginxError::PidFile { path: path.to_owned(), reason: error.to_string() })?;
    text.trim()
        .parse()
        .map_err(|_| NginxError::PidFile { path: path.to_owned(), reason: format!("`{}` is not a pid", text.trim()) })
}

/// Replaces `path` with `bytes` through a temporary file in the same directory and a
/// rename, so readers see the old file or the new one, never a mix. The temporary name
/// starts with `.`, which nginx's `include *.conf` globs skip.
async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), NginxError> {
    fn file_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NginxError {
        let path = path.to_owned();
        move |source| NginxError::File { action, path, source }
    }
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let serial = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".{name}.ficus-{}-{serial}.tmp", std::process::id()));
    let written = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(file_error("create", &temp))?;
        file.write_all(bytes).await.map_err(file_error("write", &temp))?;
        // On disk before the rename, so a crash cannot leave an empty file under the name.
        file.sync_all().await.map_err(file_error("sync", &temp))?;
        // Keep the mode the operator gave the file, e.g. readable by the nginx user.
        if let Ok(metadata) = tokio::fs::metadata(path).await {
            tokio::fs::set_permissions(&temp, metadata.permissions()).await.map_err(file_error("chmod", &temp))?;
        }
        tokio::fs::rename(&temp, path).await.map_err(file_error("rename into", path))
    };
    let result = written.await;
    if result.is_err() {
        // Best effort: the temporary file is hidden from globs, but should not pile up.
        let _ = tokio::fs::remove_file(&temp).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn atomic_writes_replace_the_file_and_leave_no_temporary_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ficus.conf");
        write_atomically(&path, b"first").await.expect("first write");
        write_atomically(&path, b"second").await.expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("list").map(|entry| entry.expect("entry").file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ficus.conf")]);
    }

    #[tokio::test]
    async fn host_names_resolve_to_sorted_addresses_and_ip_literals_are_left_alone() {
        let input = ficus_proto::traffic::v1::Route {
            name: "checkout".into(),
            backends: vec![ficus_proto::traffic::v1::Backend {
                name: "stable".into(),
                endpoints: vec!["localhost:8080".into(), "127.0.0.1:8081".into()],
            }],
            weights: [("stable".to_owned(), 10_000)].into(),
            ..Default::default()
        };
        let route = Route::from_proto(&input, "route", 1).expect("valid route");
        let resolved = resolve(&[route], Duration::from_secs(10)).await.expect("localhost resolves");
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        let localhost = &resolved[&Endpoint { host: "localhost".into(), port: 8080 }];
        assert!(localhost.contains(&"127.0.0.1:8080".to_owned()), "{localhost:?}");
        assert!(localhost.is_sorted());
    }

    #[tokio::test]
    async fn a_missing_nginx_is_an_error_and_the_file_is_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ficus.conf");
        std::fs::write(&path, "# old\n").expect("seed");
        let mut config = NginxConfig::new(&path);
        config.binary = dir.path().join("no-such-nginx");
        let adapter = NginxAdapter::new(config);
        let error = adapter.apply_text("# new\n").await.expect_err("no nginx");
        assert!(matches!(error, NginxError::Spawn { .. }), "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "# old\n");
    }

    #[tokio::test]
    async fn a_file_that_did_not_exist_is_removed_again_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ficus.conf");
        let mut config = NginxConfig::new(&path);
        config.binary = PathBuf::from("false");
        let adapter = NginxAdapter::new(config);
        let error = adapter.apply_text("# new\n").await.expect_err("nginx -t fails");
        assert!(matches!(error, NginxError::Rejected { .. }), "{error}");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_hung_command_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("slow-nginx");
        std::fs::write(&script, "#!/bin/sh\nsleep 30\n").expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let mut config = NginxConfig::new(dir.path().join("ficus.conf"));
        config.binary = script;
        config.command_timeout = Duration::from_millis(200);
        let error = NginxAdapter::new(config).apply_text("# new\n").await.expect_err("times out");
        assert!(matches!(error, NginxError::Timeout { .. }), "{error}");
    }
}
