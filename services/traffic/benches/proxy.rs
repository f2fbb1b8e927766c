//! Throughput and latency of the embedded data plane against nginx with the same
//! two-backend weighted split, and against one backend directly, in one run on one
//! machine, measured by wrk. Not a test: it prints a table of ratios.
//!
//! Every contestant gets the same CPU budget: one nginx worker, one proxy worker for ficus
//! (`proxy.workers = 1`, and one thread for its control plane, as nginx has its master),
//! and the same backend program in its own process.
//! Run with `scripts/bench.sh` (which installs wrk) or `cargo bench -p ficus-traffic --bench proxy`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use bytes::Bytes;
use ficus_proto::traffic::v1 as proto;
use ficus_testkit::{ServiceProcess, free_port};
use ficus_traffic::{
    adapters::nginx::{RenderOptions, render_with},
    route::Route,
};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

const BACKEND_ENV: &str = "FICUS_BENCH_BACKEND";
const CONNECTIONS: &str = "64";
const DURATION: &str = "10s";
const WARMUP: &str = "2s";
/// Rounds of the three contestants, each round in a rotated order, so that a noisy
/// neighbour or a warming machine does not favour whoever runs last; medians are reported.
const ROUNDS: usize = 3;

fn main() {
    if let Ok(addr) = std::env::var(BACKEND_ENV) {
        serve_backend(&addr);
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is not installed: scripts/bench.sh installs it (apt-get install wrk)");
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}

/// The same tiny backend behind every contestant: 200 with a short body.
fn serve_backend(addr: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("backend binds");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"hello from the backend\n",
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
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

fn spawn_backend(addr: SocketAddr) -> Killed {
    let exe = std::env::current_exe().expect("own path");
    let child =
        Command::new(exe).env(BACKEND_ENV, addr.to_string()).stdout(Stdio::null()).spawn().expect("backend starts");
    Killed(child)
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

fn start_nginx(dir: &std::path::Path, route: &Route, listen: SocketAddr) -> Killed {
    let d = dir.display();
    let include =
        render_with(std::slice::from_ref(route), &RenderOptions { listen: vec![listen.to_string()], keepalive: 64 });
    std::fs::write(dir.join("ficus.conf"), include).expect("write include");
    let main = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/cb;\n proxy_temp_path {d}/px;\n fastcgi_temp_path {d}/fc;\n \
         uwsgi_temp_path {d}/uw;\n scgi_temp_path {d}/sc;\n include {d}/ficus.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main).expect("write nginx.conf");
    let child = Command::new("nginx")
        .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c", &format!("{d}/nginx.conf")])
        .spawn()
        .expect("nginx starts (scripts/install-test-tools.sh installs it)");
    Killed(child)
}

async fn run() {
    let (stable, canary) = (loopback(), loopback());
    let _backends = [spawn_backend(stable), spawn_backend(canary)];
    wait_for_port(stable).await;
    wait_for_port(canary).await;

    let data = tempfile::tempdir().expect("temp dir");
    let proxy = loopback();
    let env = [
        ("FICUS_STORE", data.path().join("traffic").display().to_string()),
        ("FICUS_PROXY__LISTEN", proxy.to_string()),
        ("FICUS_PROXY__WORKERS", "1".to_owned()),
        ("TOKIO_WORKER_THREADS", "1".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let mut traffic = ServiceProcess::spawn(env!("CARGO_BIN_EXE_ficus-traffic"), &env);
    traffic.wait_serving(ficus_proto::service_names::TRAFFIC, Duration::from_secs(30)).await;
    let route = two_backend_route(stable, canary);
    let mut api =
        proto::traffic_control_client::TrafficControlClient::new(ficus_testkit::grpc::channel(traffic.grpc_addr));
    api.put_route(proto::PutRouteRequest { route: Some(route.clone()), expected_generation: 0 }).await.expect("route");

    let nginx_addr = loopback();
    let validated = Route::from_proto(&route, "route", 1).expect("valid route");
    let _nginx = start_nginx(data.path(), &validated, nginx_addr);
    wait_for_port(nginx_addr).await;

    let contestants = [
        ("direct to one backend", format!("http://{stable}/")),
        ("nginx, 80/20 split", format!("http://{nginx_addr}/")),
        ("ficus proxy, 80/20 split", format!("http://{proxy}/")),
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
    let nginx = &results[1].1;
    println!(
        "\nwrk -t1 -c{CONNECTIONS} -d{DURATION}, one worker each, same machine and backend program; \
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
            measured.requests_per_second / nginx.requests_per_second,
            measured.p99_ms / nginx.p99_ms,
        );
    }
    traffic.terminate();
    traffic.wait_exit(Duration::from_secs(20)).await;
}
