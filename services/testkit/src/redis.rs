//! A real `redis-server` for tests.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::port::free_port;

/// The binary the OS package installs; `scripts/test.sh` installs that package.
const REDIS_SERVER: &str = "redis-server";

/// How long a start may take, including replaying the append-only file after a restart.
/// Generous because CI machines are shared; the wait ends as soon as PING answers.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How often to check whether the server answers yet.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How many fresh ports to try when the free one was taken before the server bound it.
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` process on a loopback port, with its own data directory.
///
/// It persists every write before acknowledging it (`appendonly yes`, `appendfsync
/// always`) and has RDB snapshots off, so a test can kill it with [`stop`](Self::stop),
/// [`start`](Self::start) it again on the same port and directory, and expect every
/// acknowledged write back; between the two, clients see a real outage (connection
/// refused). Expired-key events are enabled (`notify-keyspace-events Ex`), which the
/// ficus Redis store uses to report expiry to watchers.
///
/// The process is killed when this value is dropped; the data directory is removed then.
///
/// The API is blocking so that it works the same from sync and async tests; starting
/// takes a few milliseconds.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server that accepts any client.
    ///
    /// # Panics
    ///
    /// Panics when `redis-server` is not installed (the message says how to get it) or
    /// does not answer PING in time.
    pub fn new() -> Self {
        Self::launch(None)
    }

    /// Starts a server that requires `password` (`requirepass`), to test authenticated
    /// URLs; [`url`](Self::url) includes it.
    ///
    /// # Panics
    ///
    /// As [`new`](Self::new).
    pub fn with_password(password: &str) -> Self {
        Self::launch(Some(password.to_owned()))
    }

    fn launch(password: Option<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ficus-redis-")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a data directory for redis-server: {err}"));
        let mut last_error = String::new();
        // The port was free when picked but may be taken by the time redis binds it; a
        // fresh port is the fix, which only the first start can do.
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match spawn_ready(port, password.as_deref(), dir.path()) {
                Ok(child) => {
                    return Self { port, password, dir, child: Some(child) };
                }
                Err(error) => last_error = error,
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} attempts: {last_error}");
    }

    /// A `redis://` URL for this server, with the password if there is one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The loopback port; it stays the same across [`stop`](Self::stop) and
    /// [`start`](Self::start), so clients can reconnect to the same address.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory, which holds the append-only file and the server log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running (between [`start`](Self::start) and
    /// [`stop`](Self::stop)).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL, as a crash would) and waits for it to exit, keeping
    /// the data directory. Does nothing if it is already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Killing a process that already exited fails; waiting reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory, and waits until it
    /// answers PING, which is after it has replayed its append-only file. Does nothing if
    /// it is running.
    ///
    /// # Panics
    ///
    /// Panics when it does not come up in time.
    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        match spawn_ready(self.port, self.password.as_deref(), self.dir.path()) {
            Ok(child) => self.child = Some(child),
            Err(error) => panic!("redis-server did not restart on port {}: {error}", self.port),
        }
    }

    /// Stops and starts the server, as in a restart for maintenance.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }
}

impl Default for RedisServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `redis-server` and waits until it answers; on failure the process is gone and the
/// error carries its log.
fn spawn_ready(port: u16, password: Option<&str>, dir: &Path) -> Result<Child, String> {
    let mut command = Command::new(REDIS_SERVER);
    command
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--save", ""])
        .args(["--notify-keyspace-events", "Ex"])
        .args(["--daemonize", "no"])
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(password) = password {
        command.args(["--requirepass", password]);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) if err.kind() == ErrorKind::NotFound => panic!(
            "`{REDIS_SERVER}` is not installed; run the tests through scripts/test.sh, \
             which installs it (or `apt-get install -y redis-server`)"
        ),
        Err(err) => panic!("cannot run `{REDIS_SERVER}`: {err}"),
    };
    match wait_ready(&mut child, port, password) {
        Ok(()) => Ok(child),
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            Err(format!("{error}\n--- redis.log ---\n{log}"))
        }
    }
}

/// Polls with PING until the server answers PONG, the process exits, or time is up.
fn wait_ready(child: &mut Child, port: u16, password: Option<&str>) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            return Err(format!("redis-server exited with {status}: {stderr}"));
        }
        if answers_ping(port, password, child.id()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("no PONG within {START_TIMEOUT:?}"));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Whether our process answers PING on `port`. It checks the process id too: if the port
/// was taken after [`free_port`] picked it, the answer may come from another test's server
/// while ours is still failing to bind.
fn answers_ping(port: u16, password: Option<&str>, pid: u32) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = String::new();
    if let Some(password) = password {
        request.push_str(&resp_command(&["AUTH", password]));
    }
    request.push_str(&resp_command(&["PING"]));
    request.push_str(&resp_command(&["INFO", "server"]));
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // While it replays the append-only file, redis answers -LOADING instead of +PONG; INFO
    // answers either way and ends the reply we wait for.
    let mut reply = Vec::new();
    let mut buf = [0_u8; 1024];
    let reported_pid = loop {
        let text = String::from_utf8_lossy(&reply);
        if let Some((_, rest)) = text.split_once("\r\nprocess_id:")
            && let Some((pid, _)) = rest.split_once("\r\n")
        {
            break pid.parse::<u32>().ok();
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    };
    let text = String::from_utf8_lossy(&reply);
    text.split("\r\n").any(|line| line == "+PONG") && reported_pid == Some(pid)
}

/// Encodes a command in RESP, the protocol redis speaks.
fn resp_command(parts: &[&str]) -> String {
    let mut out = format!("*{}\r\n", parts.len());
    for part in parts {
        out.push_str(&format!("${}\r\n{part}\r\n", part.len()));
    }
    out
}
