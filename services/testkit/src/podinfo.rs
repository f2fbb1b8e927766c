//! A real podinfo for tests: an HTTP server written by someone else, so an A/A test
//! measures the proxy against a backend whose behaviour nobody here chose.
//!
//! podinfo can add its own random delay (`--random-delay`, with `--random-delay-unit`,
//! `--random-delay-min` and `--random-delay-max`) and answer a third of the requests with
//! 400, 409 or 500 (`--random-error`); both apply to every routed request, `/readyz`
//! included, which is why readiness is polled until a 200 rather than checked once.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::{free_port, tool};

/// How long a start may take. Generous because CI machines are shared and because a
/// `--random-delay` in seconds slows every readiness probe; the wait ends at the first 200.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often to probe `/readyz` while podinfo is not answering yet.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How many fresh ports to try when the free one was taken before podinfo bound it.
const PORT_ATTEMPTS: usize = 5;

/// podinfo's log (it logs JSON lines to stderr), in the server's directory.
const LOG: &str = "podinfo.log";

/// The flags this helper owns: the listen address must stay the one [`Podinfo::addr`]
/// reports.
const RESERVED_FLAGS: [&str; 2] = ["--host", "--port"];

/// A podinfo process serving plain HTTP/1.1 on a loopback port, with its own working
/// directory; its gRPC, HTTPS and metrics listeners are off, so it opens no other port.
///
/// podinfo's cheapest route is `/healthz` (or `/readyz`): a fixed `{"status": "OK"}`.
/// `GET /` answers a JSON description of the process unless the `User-Agent` starts with
/// `Mozilla`, which gets an HTML page instead.
///
/// The process is killed (SIGKILL) and reaped when this value is dropped: its graceful
/// shutdown waits three seconds for load balancers, which a test does not need.
#[derive(Debug)]
pub struct Podinfo {
    addr: SocketAddr,
    dir: TempDir,
    child: Child,
}

impl Podinfo {
    /// Starts podinfo with its defaults (no delay, no errors) and waits until `/readyz`
    /// answers 200.
    ///
    /// # Panics
    ///
    /// As [`start_with`](Self::start_with).
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts podinfo with `flags` added, e.g. `["--random-delay", "--random-delay-unit=ms",
    /// "--random-delay-min=5", "--random-delay-max=20"]`, and waits until `/readyz` answers
    /// 200.
    ///
    /// The flags come after the ones this helper sets, so they may override any of them
    /// but the listen address. podinfo's own `PODINFO_*` environment variables are not
    /// passed on, so the flags alone decide how it behaves.
    ///
    /// # Panics
    ///
    /// Panics when `podinfo` is not installed (the message says to run
    /// `scripts/install-test-tools.sh`), when `flags` set `--host` or `--port`, or when
    /// podinfo exits or is not ready in time (the message ends with its log).
    pub async fn start_with(flags: &[&str]) -> Self {
        for flag in flags {
            let name = flag.split_once('=').map_or(*flag, |(name, _)| name);
            assert!(!RESERVED_FLAGS.contains(&name), "{flag}: Podinfo chooses the listen address itself");
        }
        let binary = tool("podinfo");
        let mut last_error = String::new();
        // The port was free when picked but may be taken by the time podinfo binds it;
        // a fresh port is the fix.
        for _ in 0..PORT_ATTEMPTS {
            match Self::launch(&binary, flags).await {
                Ok(server) => return server,
                Err(PortTaken(log)) => last_error = log,
            }
        }
        panic!("podinfo did not start after {PORT_ATTEMPTS} attempts:\n{last_error}");
    }

    async fn launch(binary: &Path, flags: &[&str]) -> Result<Self, PortTaken> {
        let dir = tempfile::Builder::new()
            .prefix("ficus-podinfo-")
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a directory for podinfo: {error}"));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let log = std::fs::File::create(dir.path().join(LOG))
            .unwrap_or_else(|error| panic!("cannot create the podinfo log: {error}"));
        let mut command = Command::new(binary);
        // Its working directory is its own: podinfo reads `config.yaml` from there when
        // the file exists.
        command
            .current_dir(dir.path())
            .arg(format!("--host={}", addr.ip()))
            .arg(format!("--port={}", addr.port()))
            // 0 turns each of these listeners off; the metrics and gRPC ones would bind
            // every interface.
            .args(["--secure-port=0", "--grpc-port=0", "--port-metrics=0"])
            .arg(format!("--data-path={}", dir.path().display()))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // podinfo reads any flag from a `PODINFO_*` variable too; one left in a
        // developer's shell would change the server under the test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PODINFO_") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot start {} ({error}); run scripts/install-test-tools.sh", binary.display())
        });
        let mut server = Self { addr, dir, child };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Polls `/readyz` until it answers 200: a random error (400, 409, 500) or a 503 from
    /// a server that is still starting only means another probe.
    async fn wait_ready(&mut self) -> Result<(), PortTaken> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log();
                if log.contains("address already in use") {
                    return Err(PortTaken(log));
                }
                panic!("podinfo exited ({status}):\n{log}");
            }
            // A probe may wait out podinfo's random delay, but never past the deadline.
            match tokio::time::timeout_at(deadline, readyz(self.addr)).await {
                Ok(Ok(200)) => return Ok(()),
                // An empty reply: a handler panicked. podinfo draws its delay with
                // rand.Intn(max - min), which panics on 0, so then every request would.
                Ok(Err(error)) if error.kind() == ErrorKind::InvalidData => {
                    let log = self.log();
                    assert!(
                        !log.contains("invalid argument to Intn"),
                        "podinfo fails every request: --random-delay-min must be below --random-delay-max\n{log}"
                    );
                }
                _ => {}
            }
            assert!(Instant::now() < deadline, "podinfo not ready within {START_TIMEOUT:?}:\n{}", self.log());
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The address podinfo listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:12345`, for clients and for [`Wrk`](crate::Wrk).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The end of podinfo's log, for failure messages; podinfo logs a handler's panic
    /// there, and the client sees only a closed connection.
    pub fn log(&self) -> String {
        let mut log = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join(LOG)) {
            let _ = file.read_to_string(&mut log);
        }
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Podinfo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of `GET /readyz` at `addr`.
async fn readyz(addr: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, format!("not HTTP: {response:?}")))
}

/// podinfo could not bind its port; the log says so.
struct PortTaken(String);
