//! What the session service costs over Redis itself.
//!
//! Starts a real redis-server and the sessions service on it, then drives GetSession and
//! UpdateSession (compare-and-set on the version last seen) through gRPC at 1, 16 and 64
//! concurrent clients, and the equivalent operations straight against Redis from the same
//! process: HGETALL of a session hash, and a Lua script that checks the version, sets the
//! attribute, bumps the version and slides the expiry. Each cell runs for a bounded time
//! and count, in rounds that take turns with the other paths' cells of the same row, and
//! reports throughput and latency percentiles.
//!
//! The service is driven two ways: `unary`, one GetSession or UpdateSession rpc per
//! operation on a shared channel, and `pipelined`, through `ficus-sessions-client` as an
//! application would, whose calls share the client's Pipeline streams (as the raw path's
//! share one multiplexed Redis connection).
//!
//! The load generator, the service and redis-server share this machine. The runtime that
//! runs the first two leaves one core to Redis, as a production Redis has cores of its own:
//! with a worker on every core, Redis is preempted in the middle of commands, and whichever
//! path leans on Redis hardest is measured slowest for a reason that is not its own.
//!
//! `cargo bench -p ficus-sessions --bench sessions`

#[path = "support/cell.rs"]
mod cell;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ficus_kit::server::ServerConfig;
use ficus_proto::sessions::v1::{
    CreateSessionRequest, GetSessionRequest, UpdateSessionRequest, session_store_client::SessionStoreClient,
};
use ficus_sessions::Config;
use ficus_sessions_client::SessionClient;
use ficus_testkit::RedisServer;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use self::cell::{CELL_TIME, Cell, ROUNDS, WARM_UP};

// As the service binary does, so its allocations cost what they cost in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Most operations a cell counts.
const CELL_MAX_OPS: u64 = 500_000;
/// Concurrent clients per cell.
const CLIENTS: [usize; 3] = [1, 16, 64];
/// Session idle TTL, for both paths.
const TTL: Duration = Duration::from_secs(1800);

/// The raw equivalent of UpdateSession: compare-and-set on `_ver`, set one attribute,
/// bump the version, slide the expiry. Replies the new version, or -1 on a conflict.
const RAW_UPDATE: &str = r"
local current = redis.call('HGET', KEYS[1], '_ver')
if not current or (ARGV[1] ~= '0' and current ~= ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
local version = redis.call('HINCRBY', KEYS[1], '_ver', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return version
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Get,
    Update,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Raw,
    Unary,
    Pipelined,
}

/// What every client of a cell uses.
#[derive(Clone)]
struct Targets {
    grpc: SessionStoreClient<Channel>,
    client: SessionClient<Channel>,
    redis: MultiplexedConnection,
    script: Arc<redis::Script>,
    /// One service session id and one raw hash key per client.
    session_ids: Arc<Vec<String>>,
    raw_keys: Arc<Vec<String>>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = cores.saturating_sub(1).max(1);
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?.block_on(bench(workers))
}

async fn bench(workers: usize) -> Result<(), Box<dyn std::error::Error>> {
    let redis_server = RedisServer::new();
    let client = redis::Client::open(redis_server.url())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    // The test server fsyncs every write; a session store runs with everysec, and both
    // paths share the setting, so the comparison is of the service, not of the disk.
    let _: () = redis::cmd("CONFIG").arg("SET").arg("appendfsync").arg("everysec").query_async(&mut redis).await?;

    let shutdown = CancellationToken::new();
    let config = Config { server: ServerConfig::ephemeral(), store: redis_server.url(), ..Config::default() };
    let running = ficus_sessions::start(config, shutdown.clone()).await?;
    let channel = Endpoint::from_shared(format!("http://{}", running.grpc_addr))?.tcp_nodelay(true).connect().await?;
    let mut grpc = SessionStoreClient::new(channel);
    let client = SessionClient::connect_lazy(&running.grpc_addr.to_string())?;

    let max_clients = CLIENTS.iter().copied().max().unwrap_or(1);
    let fixture = HashMap::from([
        ("user".to_owned(), b"user-0123456789".to_vec()),
        ("csrf".to_owned(), vec![7; 32]),
        ("cart".to_owned(), vec![42; 200]),
    ]);
    let mut session_ids = Vec::new();
    let mut raw_keys = Vec::new();
    for client in 0..max_clients {
        let request = CreateSessionRequest { attributes: fixture.clone(), ttl: Some(TTL.into()), max_lifetime: None };
        session_ids.push(grpc.create_session(request).await?.into_inner().id);
        let key = format!("bench:session:{client}");
        let mut command = redis::cmd("HSET");
        command.arg(&key).arg("_ver").arg(1);
        for (name, value) in &fixture {
            command.arg(name).arg(value);
        }
        let _: () = command.query_async(&mut redis).await?;
        let _: () = redis::cmd("PEXPIRE").arg(&key).arg(TTL.as_millis() as u64).query_async(&mut redis).await?;
        raw_keys.push(key);
    }
    let targets = Targets {
        grpc,
        client,
        redis,
        script: Arc::new(redis::Script::new(RAW_UPDATE)),
        session_ids: Arc::new(session_ids),
        raw_keys: Arc::new(raw_keys),
    };

    println!(
        "sessions benchmark: {CELL_TIME:?} or {CELL_MAX_OPS} ops per cell in {ROUNDS} rounds, \
         Redis appendfsync everysec, loopback, {workers} runtime worker(s) for load and service"
    );
    println!(
        "{:<8} {:>7} {:<10} {:>10} {:>9} {:>9} {:>7} {:>8}",
        "op", "clients", "path", "ops/s", "p50 µs", "p99 µs", "errors", "vs raw"
    );
    for op in [Op::Get, Op::Update] {
        for clients in CLIENTS {
            let [raw, unary, pipelined] = run_cells(&targets, op, clients).await;
            for (path, cell) in [("raw", &raw), ("unary", &unary), ("pipelined", &pipelined)] {
                let ratio = if path == "raw" {
                    String::new()
                } else {
                    format!("{:.0}%", 100.0 * cell.throughput() / raw.throughput())
                };
                println!(
                    "{:<8} {:>7} {:<10} {:>10.0} {:>9} {:>9} {:>7} {:>8}",
                    format!("{op:?}"),
                    clients,
                    path,
                    cell.throughput(),
                    cell.latency.value_at_quantile(0.5),
                    cell.latency.value_at_quantile(0.99),
                    cell.errors,
                    ratio,
                );
            }
        }
    }

    shutdown.cancel();
    running.wait().await?;
    Ok(())
}

/// Runs `clients` concurrent loops of `op` on each path: a warm-up of each, then the
/// measured cells in [`ROUNDS`] rounds of turns.
async fn run_cells(targets: &Targets, op: Op, clients: usize) -> [Cell; 3] {
    let paths = [Path::Raw, Path::Unary, Path::Pipelined];
    for path in paths {
        run_for(targets, op, path, clients, WARM_UP, u64::MAX).await;
    }
    let mut cells = paths.map(|_| Cell::empty());
    for _ in 0..ROUNDS {
        for (cell, path) in cells.iter_mut().zip(paths) {
            let round = run_for(targets, op, path, clients, CELL_TIME / ROUNDS, CELL_MAX_OPS / u64::from(ROUNDS)).await;
            cell.add(round);
        }
    }
    cells
}

async fn run_for(targets: &Targets, op: Op, path: Path, clients: usize, time: Duration, max_ops: u64) -> Cell {
    let started = Instant::now();
    let end = started + time;
    let issued = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let targets = targets.clone();
            let issued = issued.clone();
            tokio::spawn(async move { client_loop(targets, op, path, client, end, max_ops, issued).await })
        })
        .collect();
    Cell::gather(tasks, started).await
}

/// One client: its own session, its own last-seen version, back-to-back operations.
async fn client_loop(
    mut targets: Targets,
    op: Op,
    path: Path,
    client: usize,
    end: Instant,
    max_ops: u64,
    issued: Arc<AtomicU64>,
) -> Cell {
    let id = targets.session_ids[client].clone();
    let key = targets.raw_keys[client].clone();
    let mut cell = Cell::empty();
    // Unknown at first; 0 makes the first update unconditional, then CAS on what it saw.
    let mut version = 0_u64;
    let mut session = None;
    while Instant::now() < end && issued.fetch_add(1, Ordering::Relaxed) < max_ops {
        let value = (cell.ops + cell.errors).to_string();
        let started = Instant::now();
        let ok = match (op, path) {
            (Op::Get, Path::Pipelined) => targets.client.peek(&id).await.is_ok_and(|session| session.is_some()),
            (Op::Get, Path::Unary) => {
                targets.grpc.get_session(GetSessionRequest { id: id.clone(), touch: false }).await.is_ok()
            }
            (Op::Get, Path::Raw) => {
                let fields: redis::RedisResult<HashMap<String, Vec<u8>>> =
                    redis::cmd("HGETALL").arg(&key).query_async(&mut targets.redis).await;
                fields.is_ok_and(|fields| !fields.is_empty())
            }
            (Op::Update, Path::Pipelined) => {
                let current = match session.take() {
                    Some(current) => Some(current),
                    None => targets.client.peek(&id).await.ok().flatten(),
                };
                match current {
                    Some(mut current) => {
                        current.set("counter", value);
                        let saved = targets.client.save(&mut current).await.is_ok();
                        // A failed save is read again, rather than retried over a stale version.
                        session = saved.then_some(current);
                        saved
                    }
                    None => false,
                }
            }
            (Op::Update, Path::Unary) => {
                let request = UpdateSessionRequest {
                    id: id.clone(),
                    expected_version: version,
                    set: HashMap::from([("counter".to_owned(), value.into_bytes())]),
                    remove: Vec::new(),
                    ttl: None,
                    // Only the version is read back, as the client crate does.
                    omit_attributes: true,
                };
                match targets.grpc.update_session(request).await {
                    Ok(session) => {
                        version = session.into_inner().version;
                        true
                    }
                    Err(_) => false,
                }
            }
            (Op::Update, Path::Raw) => {
                let mut invocation = targets.script.prepare_invoke();
                invocation.key(&key).arg(version).arg(TTL.as_millis() as u64).arg("counter").arg(value);
                let reply: redis::RedisResult<i64> = invocation.invoke_async(&mut targets.redis).await;
                match reply.ok().and_then(|reply| u64::try_from(reply).ok()) {
                    Some(new_version) => {
                        version = new_version;
                        true
                    }
                    None => false,
                }
            }
        };
        cell.record(started.elapsed(), ok);
    }
    cell
}
