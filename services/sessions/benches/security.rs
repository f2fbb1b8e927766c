//! What TLS and authentication cost the session store.
//!
//! Starts the sessions service three times on embedded stores (a session read is served
//! from the record cache, so the service's own cost is what remains): plaintext without
//! authentication, TLS, and TLS with bearer tokens from a token file. Drives GetSession at
//! 16 and 64 concurrent clients over one channel to each, with the same client code, and
//! reports throughput and p99 with ratios to plaintext. Handshakes happen once per
//! connection; what a call pays is record encryption and a token lookup.
//!
//! `cargo bench -p ficus-sessions --bench security`

#[path = "support/cell.rs"]
mod cell;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ficus_kit::{
    client::{self, BearerToken, Credentials, TracedChannel},
    server::ServerConfig,
    tls::{ClientTls, ClientTlsConfig, ServerTlsConfig},
};
use ficus_proto::sessions::v1::{CreateSessionRequest, GetSessionRequest, session_store_client::SessionStoreClient};
use ficus_sessions::Config;
use tokio_util::sync::CancellationToken;

use self::cell::{CELL_TIME, Cell, ROUNDS, WARM_UP};

// As the service binary does, so its allocations cost what they cost in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Most operations a cell counts.
const CELL_MAX_OPS: u64 = 1_000_000;
/// Concurrent clients per cell.
const CLIENTS: [usize; 2] = [16, 64];
/// The setups, in the table's order; the first is what the others are compared with.
const SETUPS: [&str; 3] = ["plaintext", "TLS", "TLS + token"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench())
}

/// One started sessions service and a client of it.
struct Setup {
    grpc: SessionStoreClient<TracedChannel>,
    /// One session per client.
    session_ids: Arc<Vec<String>>,
}

async fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pem = |name: &str, text: String| -> std::io::Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let key = rcgen::KeyPair::generate()?;
    let certificate =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?.self_signed(&key)?;
    let server_tls = ServerTlsConfig {
        cert: pem("server.crt", certificate.pem())?,
        key: pem("server.key", key.serialize_pem())?,
        client_ca: None,
        client_cert_optional: false,
    };
    let client_tls = ClientTls::load(&ClientTlsConfig {
        ca_cert: Some(dir.path().join("server.crt")),
        ..ClientTlsConfig::default()
    })?;
    let tokens = pem("tokens.csv", "bench-token,bench,1,app\n".to_owned())?;

    let shutdown = CancellationToken::new();
    let mut setups = Vec::new();
    for setup in SETUPS {
        let mut server = ServerConfig::ephemeral();
        let mut credentials = Credentials::default();
        if setup != "plaintext" {
            server.tls = Some(server_tls.clone());
            credentials.tls = Some(client_tls.clone());
        }
        if setup == "TLS + token" {
            server.auth.token_file = Some(tokens.clone());
            credentials.token = Some(BearerToken::new("bench-token")?);
        }
        let store = dir.path().join(setup.replace(' ', "-")).display().to_string();
        let running = ficus_sessions::start(Config { server, store, ..Config::default() }, shutdown.clone()).await?;
        let address = format!("localhost:{}", running.grpc_addr.port());
        let mut grpc = SessionStoreClient::new(client::connect_with(&address, Duration::from_secs(10), &credentials)?);
        let mut session_ids = Vec::new();
        for _ in 0..CLIENTS.iter().copied().max().unwrap_or(1) {
            let attributes =
                HashMap::from([("user".to_owned(), b"user-0123456789".to_vec()), ("cart".to_owned(), vec![42; 200])]);
            let request = CreateSessionRequest { attributes, ttl: None, max_lifetime: None };
            session_ids.push(grpc.create_session(request).await?.into_inner().id);
        }
        setups.push(Setup { grpc, session_ids: Arc::new(session_ids) });
    }

    println!(
        "sessions over TLS: GetSession, {CELL_TIME:?} or {CELL_MAX_OPS} calls per cell in {ROUNDS} rounds, \
         embedded store, loopback, one channel per setup"
    );
    println!(
        "{:>7} {:<12} {:>10} {:>9} {:>9} {:>7} {:>13}",
        "clients", "setup", "calls/s", "p50 µs", "p99 µs", "errors", "vs plaintext"
    );
    for clients in CLIENTS {
        for setup in &setups {
            run_for(setup, clients, WARM_UP, u64::MAX).await;
        }
        let mut cells: BTreeMap<usize, Cell> = BTreeMap::new();
        for _ in 0..ROUNDS {
            for (index, setup) in setups.iter().enumerate() {
                let round = run_for(setup, clients, CELL_TIME / ROUNDS, CELL_MAX_OPS / u64::from(ROUNDS)).await;
                cells.entry(index).or_insert_with(Cell::empty).add(round);
            }
        }
        let plaintext = cells[&0].throughput();
        for (index, cell) in &cells {
            println!(
                "{:>7} {:<12} {:>10.0} {:>9} {:>9} {:>7} {:>12.0}%",
                clients,
                SETUPS[*index],
                cell.throughput(),
                cell.latency.value_at_quantile(0.5),
                cell.latency.value_at_quantile(0.99),
                cell.errors,
                100.0 * cell.throughput() / plaintext,
            );
        }
    }
    shutdown.cancel();
    Ok(())
}

async fn run_for(setup: &Setup, clients: usize, time: Duration, max_ops: u64) -> Cell {
    let started = Instant::now();
    let end = started + time;
    let issued = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let mut grpc = setup.grpc.clone();
            let id = setup.session_ids[client].clone();
            let issued = issued.clone();
            tokio::spawn(async move {
                let mut cell = Cell::empty();
                while Instant::now() < end && issued.fetch_add(1, Ordering::Relaxed) < max_ops {
                    let call = Instant::now();
                    let ok = grpc.get_session(GetSessionRequest { id: id.clone(), touch: false }).await.is_ok();
                    cell.record(call.elapsed(), ok);
                }
                cell
            })
        })
        .collect();
    Cell::gather(tasks, started).await
}
