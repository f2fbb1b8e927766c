//! A real nginx for tests.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::port::free_port;

/// The binary the OS package installs; `scripts/install-test-tools.sh` installs it.
const NGINX: &str = "nginx";

/// How long a start may take. Generous because CI machines are shared; the wait ends as
/// soon as nginx answers.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long nginx may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often to check whether nginx answers yet.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How many fresh ports to try when the free one was taken before nginx bound it.
const PORT_ATTEMPTS: usize = 5;

/// An nginx on a loopback port, in the foreground, with everything it writes (pid file,
/// logs, temporary bodies) in its own temporary directory, so it runs without root.
///
/// Its `http` block includes [`include_path`](Self::include_path), which at first holds one
/// server on [`addr`](Self::addr) answering 404; a test replaces that file (e.g. through
/// the ficus nginx adapter, with [`conf_path`](Self::conf_path) as the main
/// configuration) and reloads. It runs one worker process, so upstream balancing state is
/// the same for every request, as the exact split tests need.
///
/// nginx is stopped when this value is dropped (SIGTERM, then SIGKILL), and the directory
/// removed.
#[derive(Debug)]
pub struct NginxServer {
    addr: SocketAddr,
    dir: TempDir,
    child: Child,
}

impl NginxServer {
    /// Starts nginx and waits until it answers HTTP.
    ///
    /// # Panics
    ///
    /// Panics when `nginx` is not installed (the message says how to get it) or does not
    /// answer in time.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ficus-nginx-")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a directory for nginx: {err}"));
        // Workers drop root privileges when the tests run as root; they must still reach
        // the temporary-body directories inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|err| panic!("cannot open up {}: {err}", dir.path().display()));
        for sub in ["conf.d", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap_or_else(|err| panic!("cannot create {sub}: {err}"));
        }
        let mut last_error = String::new();
        // The port was free when picked but may be taken by the time nginx binds it.
        for _ in 0..PORT_ATTEMPTS {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            write_config(dir.path(), addr);
            match spawn_ready(dir.path(), addr) {
                Ok(child) => return Self { addr, dir, child },
                Err(error) => last_error = error,
            }
        }
        panic!("nginx did not start after {PORT_ATTEMPTS} attempts: {last_error}");
    }

    /// The address nginx listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The main configuration, for `nginx -t -c` and `nginx -s reload -c`.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    /// The file the `http` block includes (`conf.d/ficus.conf`); the glob that includes it
    /// (`conf.d/*.conf`) is the one operators use.
    pub fn include_path(&self) -> PathBuf {
        self.dir.path().join("conf.d").join("ficus.conf")
    }

    /// The pid file of the master process.
    pub fn pid_path(&self) -> PathBuf {
        self.dir.path().join("nginx.pid")
    }

    /// The directory holding the configuration, logs and temporary files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The error log so far, for failure messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The pids of the worker processes now alive. A reload replaces them all; a test
    /// that needs every request served by the new configuration waits until none of the
    /// old ones is left.
    pub fn worker_pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        let mut workers: Vec<u32> = entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
                // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
                let Some((_, rest)) = stat.rsplit_once(')') else { return false };
                let mut fields = rest.split_whitespace();
                let state = fields.next();
                let parent = fields.next().and_then(|ppid| ppid.parse::<u32>().ok());
                parent == Some(master) && state != Some("Z")
            })
            .collect();
        workers.sort_unstable();
        workers
    }
}

impl Default for NginxServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NginxServer {
    fn drop(&mut self) {
        let workers = self.worker_pids();
        // SIGTERM makes the master stop its workers before it exits; SIGKILL would leave
        // them running, holding the port.
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(POLL_INTERVAL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for worker in workers {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &worker.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Writes the main configuration and the initial include for a server on `addr`.
fn write_config(dir: &Path, addr: SocketAddr) {
    let d = dir.display();
    let main = format!(
        r#"# A private nginx for one test, written by ficus-testkit.
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{
    worker_connections 1024;
}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/conf.d/*.conf;
}}
"#
    );
    let include = format!(
        r#"server {{
    listen {addr} default_server;
    return 404 "ficus-testkit: nothing configured yet\n";
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap_or_else(|err| panic!("cannot write nginx.conf: {err}"));
    std::fs::write(dir.join("conf.d").join("ficus.conf"), include)
        .unwrap_or_else(|err| panic!("cannot write conf.d/ficus.conf: {err}"));
}

/// Runs nginx and waits until it answers; on failure the process is gone and the error
/// carries its log.
fn spawn_ready(dir: &Path, addr: SocketAddr) -> Result<Child, String> {
    let mut command = Command::new(NGINX);
    // `-e` keeps nginx from opening its built-in error log (often under /var/log, which
    // needs root) before it has read the configuration.
    command
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) if err.kind() == ErrorKind::NotFound => panic!(
            "`{NGINX}` is not installed; run the tests through scripts/test.sh, which installs it \
             (or `apt-get install -y nginx`)"
        ),
        Err(err) => panic!("cannot run `{NGINX}`: {err}"),
    };
    match wait_ready(&mut child, addr) {
        Ok(()) => Ok(child),
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            Err(format!("{error}\n--- error.log ---\n{log}"))
        }
    }
}

/// Polls with an HTTP request until nginx answers, exits, or time is up.
fn wait_ready(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            return Err(format!("nginx exited with {status}: {stderr}"));
        }
        if answers_http(addr) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("no HTTP answer within {START_TIMEOUT:?}"));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Whether a worker answers: a bare connect succeeds as soon as the master has bound the
/// port, before any worker accepts.
fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = [0_u8; 5];
    stream.read_exact(&mut reply).is_ok() && &reply == b"HTTP/"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_one_worker_answers_and_stops_on_drop() {
        let nginx = NginxServer::new();
        assert!(answers_http(nginx.addr()));
        assert_eq!(nginx.worker_pids().len(), 1, "{}", nginx.error_log());
        assert!(nginx.pid_path().exists());
        let addr = nginx.addr();
        drop(nginx);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(), "nginx still listens");
    }
}
