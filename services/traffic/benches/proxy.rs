//! Throughput and latency of the embedded data plane against nginx with the same
//! two-backend weighted split, and against one backend directly, in one run on one
//! machine, measured by wrk. Not a test: it prints a table of ratios per worker count.
//!
//! Every contestant gets the same CPU budget: as many nginx workers as proxy workers for
//! ficus (`proxy.workers`, and one thread for its control plane, as nginx has its master),
//! at 1 and 2 workers. The backends are nginx itself returning a fixed 200, so the proxies'
//! own cost dominates. ficus runs twice: on an embedded store, and on Redis, where its
//! replicas exchange per-second statistics (cluster-wide `GetTrafficStats`); the ratio of
//! the two is what the exchange costs the data plane.
//! Run with `scripts/bench.sh` (which installs wrk) or `cargo bench -p ficus-traffic --bench proxy`.

use std::{
    net::SocketAddr,
    process::{Child, Command},
    time::Duration,
};

use ficus_proto::traffic::v1 as proto;
use ficus_testkit::{ServiceProcess, free_port};
use ficus_traffic::{
    adapters::nginx::{RenderOptions, render_with},
    route::Route,
};

const CONNECTIONS: &str = "64";
const DURATION: &str = "10s";
const WARMUP: &str = "2s";
/// Rounds of the three contestants, each round in a rotated order, so that a noisy
/// neighbour or a warming machine does not favour whoever runs last; medians are reported.
const ROUNDS: usize = 3;

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is not installed: scripts/bench.sh installs it (apt-get install wrk)");
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGTERM first: an nginx master stops its workers; SIGKILL would orphan them,
        // still holding the ports and this process's output.
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

async fn wait_for_port(addr: SocketAddr) {
    ficus_testkit::eventually(
        Duration::from_secs(15),
        || async move { tokio::net::TcpStream::connect(addr).await.is_ok() },
    )
    .await;
}

struct Measured {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk(url: &str, duration: &str) -> Measured {
    let output = Command::new("wrk")
        .args(["-t1", "-c", CONNECTIONS, "-d", duration, "--latency", url])
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    let millis = |value: Option<String>| -> f64 {
        let value = value.unwrap_or_default();
        if let Some(us) = value.strip_suffix("us") {
            us.parse::<f64>().unwrap_or(f64::NAN) / 1000.0
        } else if let Some(ms) = value.strip_suffix("ms") {
            ms.parse().unwrap_or(f64::NAN)
        } else if let Some(s) = value.strip_suffix('s') {
            s.parse::<f64>().unwrap_or(f64::NAN) * 1000.0
        } else {
            f64::NAN
        }
    };
    let errors = text.lines().find(|line| line.contains("Non-2xx") || line.contains("Socket errors"));
    if let Some(errors) = errors {
        eprintln!("{url}: {}", errors.trim());
    }
    Measured {
        requests_per_second: field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
        p50_ms: millis(field("50%")),
        p99_ms: millis(field("99%")),
    }
}

/// Each figure's median over the rounds.
fn median(rounds: &[Measured]) -> Measured {
    let of = |figure: fn(&Measured) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Measured {
        requests_per_second: of(|measured| measured.requests_per_second),
        p50_ms: of(|measured| measured.p50_ms),
        p99_ms: of(|measured| measured.p99_ms),
    }
}

fn two_backend_route(stable: SocketAddr, canary: SocketAddr) -> proto::Route {
    let (stable, canary) = (stable.to_string(), canary.to_string());
    ficus_testkit::route::two_backends("bench", ("stable", &stable), ("canary", &canary), 2_000)
}

/// An nginx prefix directory `dir` running `http` with `workers` worker processes.
fn nginx(dir: &std::path::Path, workers: usize, http: &str) -> Killed {
    std::fs::create_dir_all(dir).expect("nginx directory");
    let d = dir.display();
    let main = format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/cb;\n proxy_temp_path {d}/px;\n fastcgi_temp_path {d}/fc;\n \
         uwsgi_temp_path {d}/uw;\n scgi_temp_path {d}/sc;\n {http}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main).expect("write nginx.conf");
    let child = Command::new("nginx")
        .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c", &format!("{d}/nginx.conf")])
        .spawn()
        .expect("nginx starts (scripts/install-test-tools.sh installs it)");
    Killed(child)
}

/// The backends: one nginx worker answering 200 with a short body on both addresses.
fn start_backends(dir: &std::path::Path, addresses: [SocketAddr; 2]) -> Killed {
    let servers: String = addresses
        .iter()
        .map(|addr| format!("server {{ listen {addr}; keepalive_requests 100000; location / {{ return 200 \"hello from the backend\\n\"; }} }}\n"))
        .collect();
    nginx(dir, 1, &servers)
}

/// nginx proxying `route` on `listen`, as traffic renders it for a front nginx.
fn start_nginx(dir: &std::path::Path, route: &Route, listen: SocketAddr, workers: usize) -> Killed {
    let include =
        render_with(std::slice::from_ref(route), &RenderOptions { listen: vec![listen.to_string()], keepalive: 64 });
    std::fs::create_dir_all(dir).expect("nginx directory");
    std::fs::write(dir.join("ficus.conf"), include).expect("write include");
    nginx(dir, workers, &format!("include {}/ficus.conf;", dir.display()))
}

/// A traffic process on `store` with `workers` proxy workers, serving `route` on `proxy`.
async fn start_traffic(store: String, proxy: SocketAddr, workers: usize, route: &proto::Route) -> ServiceProcess {
    let env = [
        ("FICUS_STORE", store),
        ("FICUS_PROXY__LISTEN", proxy.to_string()),
        ("FICUS_PROXY__WORKERS", workers.to_string()),
        ("TOKIO_WORKER_THREADS", "1".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let mut traffic = ServiceProcess::spawn(env!("CARGO_BIN_EXE_ficus-traffic"), &env);
    traffic.wait_serving(ficus_proto::service_names::TRAFFIC, Duration::from_secs(30)).await;
    let mut api =
        proto::traffic_control_client::TrafficControlClient::new(ficus_testkit::grpc::channel(traffic.grpc_addr));
    api.put_route(proto::PutRouteRequest { route: Some(route.clone()), expected_generation: 0 }).await.expect("route");
    wait_for_port(proxy).await;
    traffic
}

async fn run() {
    let data = tempfile::tempdir().expect("temp dir");
    let (stable, canary) = (loopback(), loopback());
    let _backends = start_backends(&data.path().join("backends"), [stable, canary]);
    wait_for_port(stable).await;
    wait_for_port(canary).await;
    let redis = ficus_testkit::RedisServer::new();
    let route = two_backend_route(stable, canary);
    let validated = Route::from_proto(&route, "route", 1).expect("valid route");

    for workers in [1, 2] {
        let (embedded_proxy, exchanging_proxy, nginx_addr) = (loopback(), loopback(), loopback());
        let store = data.path().join(format!("traffic-{workers}")).display().to_string();
        let mut embedded = start_traffic(store, embedded_proxy, workers, &route).await;
        let mut exchanging = start_traffic(redis.url(), exchanging_proxy, workers, &route).await;
        let nginx = start_nginx(&data.path().join(format!("nginx-{workers}")), &validated, nginx_addr, workers);
        wait_for_port(nginx_addr).await;

        let contestants = [
            ("direct to one backend", format!("http://{stable}/")),
            ("nginx, 80/20 split", format!("http://{nginx_addr}/")),
            ("ficus proxy, 80/20 split", format!("http://{embedded_proxy}/")),
            ("ficus proxy, statistics exchanged", format!("http://{exchanging_proxy}/")),
        ];
        for (_, url) in &contestants {
            wrk(url, WARMUP);
        }
        let mut rounds: Vec<Vec<Measured>> = contestants.iter().map(|_| Vec::new()).collect();
        for round in 0..ROUNDS {
            for offset in 0..contestants.len() {
                let index = (round + offset) % contestants.len();
                rounds[index].push(wrk(&contestants[index].1, DURATION));
            }
        }
        let results: Vec<(&str, Measured)> =
            contestants.iter().zip(&rounds).map(|((name, _), measured)| (*name, median(measured))).collect();
        let nginx_result = &results[1].1;
        println!(
            "\nwrk -t1 -c{CONNECTIONS} -d{DURATION}, {workers} worker(s) each, nginx backends, same machine; \
             medians of {ROUNDS} rounds in rotated order\n"
        );
        println!("| path | requests/s | p50 ms | p99 ms | throughput vs nginx | p99 vs nginx |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (name, measured) in &results {
            println!(
                "| {name} | {:.0} | {:.3} | {:.3} | {:.2} | {:.2} |",
                measured.requests_per_second,
                measured.p50_ms,
                measured.p99_ms,
                measured.requests_per_second / nginx_result.requests_per_second,
                measured.p99_ms / nginx_result.p99_ms,
            );
        }
        let exchange = results[3].1.requests_per_second / results[2].1.requests_per_second;
        println!("\nstatistics exchange on vs off: {exchange:.2} of the throughput");
        drop(nginx);
        for traffic in [&mut embedded, &mut exchanging] {
            traffic.terminate();
            traffic.wait_exit(Duration::from_secs(20)).await;
        }
    }
}
