//! A real Prometheus for tests, scraping the targets a test names every second.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::{free_port, http, wait_until};

/// A Prometheus on a free loopback port with its own data directory, killed when dropped.
#[derive(Debug)]
pub struct PrometheusServer {
    addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every second and
    /// waits until it is ready.
    ///
    /// # Panics
    ///
    /// Panics when `prometheus` is not installed (`scripts/install-test-tools.sh` installs
    /// it) or does not become ready in time.
    pub async fn start(targets: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("cannot create a directory: {error}"));
        let targets: Vec<String> = targets.iter().map(|target| format!("'{target}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: test\n    \
             static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap_or_else(|error| panic!("cannot write the config: {error}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start prometheus ({error}); run scripts/install-test-tools.sh to install it")
            });
        let server = Self { addr, child, _dir: dir };
        wait_until(Duration::from_secs(30), || async move {
            matches!(http::get(addr, "/-/ready").await, Ok((200, _))).then_some(())
        })
        .await;
        server
    }

    /// Its base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
