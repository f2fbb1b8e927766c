//! One client cannot exhaust the data plane: 2000 connections that send nothing do not
//! keep a new client waiting and are closed after the header timeout, and connections
//! over the cap are closed at once and counted.

mod support;

use std::time::Duration;

use ficus_testkit::{Backend, eventually};
use support::{Traffic, route};
use tokio::{io::AsyncReadExt, net::TcpStream};

const IDLE: usize = 2000;
const CAP: usize = IDLE + 50;
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// The value of counter `name` on the admin port's `/metrics`.
async fn counter(traffic: &Traffic, name: &str) -> u64 {
    let admin = traffic.running.as_ref().expect("running").admin_addr;
    let (_, metrics) = ficus_testkit::http::get(admin, "/metrics").await.expect("metrics");
    let line = metrics.lines().find(|line| line.starts_with(&format!("{name} "))).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|value| value.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_block_clients_nor_stay_and_the_cap_refuses_the_excess() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let data = tempfile::tempdir().expect("temp dir");
    let mut traffic = Traffic::start_configured(data, |config| {
        config.proxy.max_connections = CAP;
        config.proxy.header_timeout = HEADER_TIMEOUT;
    })
    .await;
    traffic.put(route("web", stable.addr(), canary.addr(), 0)).await;

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(traffic.proxy).await.expect("connect"));
    }
    // A client arriving now is served, well before the idle ones time out.
    let answer = tokio::time::timeout(HEADER_TIMEOUT, traffic.get("/", &[])).await.expect("served at once");
    assert_eq!((answer.status, answer.backend.as_deref()), (200, Some("stable")));

    // Over the cap: accepted and closed at once.
    let mut excess = Vec::new();
    for _ in 0..100 {
        excess.push(TcpStream::connect(traffic.proxy).await.expect("connect"));
    }
    eventually(Duration::from_secs(10), || async {
        counter(&traffic, "ficus_proxy_connections_refused_total").await >= 40
    })
    .await;

    // Every idle connection is closed by the proxy after the header timeout.
    let deadline = HEADER_TIMEOUT * 5;
    for mut stream in idle {
        let mut byte = [0; 1];
        let read = tokio::time::timeout(deadline, stream.read(&mut byte)).await.expect("closed by the proxy");
        assert!(matches!(read, Ok(0) | Err(_)), "an idle connection got data: {read:?}");
    }
    eventually(Duration::from_secs(10), || async {
        counter(&traffic, "ficus_proxy_connections_silent_total").await >= IDLE as u64
    })
    .await;
    // On a connection of its own: the client's pooled one idled past the header timeout
    // too, and the proxy closed it.
    let (status, _) = ficus_testkit::http::get(traffic.proxy, "/").await.expect("the proxy answers");
    assert_eq!(status, 200, "served after the idle ones left");
    drop(excess);
    traffic.stop().await;
}
