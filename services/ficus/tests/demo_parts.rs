//! The demo in separate processes, as the Compose file runs it: `ficus up` for the
//! control plane, `ficus demo app` for each application, `ficus demo drive` playing the
//! migration and the rollback against them, and `ficus health` as the health check.

use std::{net::SocketAddr, process::Output, time::Duration};

use ficus_proto::service_names::{PLANNER, TRAFFIC};
use ficus_testkit::{ServiceProcess, free_port, wait_until};

const FICUS: &str = env!("CARGO_BIN_EXE_ficus");

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

async fn ficus(args: &[&str], within: Duration) -> Output {
    let run = tokio::process::Command::new(FICUS).args(args).kill_on_drop(true).output();
    tokio::time::timeout(within, run)
        .await
        .unwrap_or_else(|_| panic!("ficus {args:?} ran past {within:?}"))
        .expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_parts_play_the_migration_and_the_rollback_against_running_services() {
    let data = tempfile::tempdir().expect("temp dir");
    let (planner, analysis, traffic, sessions, proxy) = (loopback(), loopback(), loopback(), loopback(), loopback());
    let mut env = vec![("FICUS_TRAFFIC__PROXY__LISTEN".to_owned(), proxy.to_string())];
    for (section, addr) in [("PLANNER", planner), ("ANALYSIS", analysis), ("TRAFFIC", traffic), ("SESSIONS", sessions)]
    {
        env.push((format!("FICUS_{section}__SERVER__GRPC_ADDR"), addr.to_string()));
        env.push((format!("FICUS_{section}__SERVER__ADMIN_ADDR"), loopback().to_string()));
    }
    env.push(("FICUS_PLANNER__TRAFFIC".into(), traffic.to_string()));
    env.push(("FICUS_PLANNER__ANALYSIS".into(), analysis.to_string()));
    env.push(("FICUS_ANALYSIS__TRAFFIC".into(), traffic.to_string()));
    let env: Vec<(&str, String)> = env.iter().map(|(key, value)| (key.as_str(), value.clone())).collect();
    let data_dir = data.path().display().to_string();
    let _plane = ServiceProcess::spawn_with_args(FICUS, &["up", "--data-dir", &data_dir], &env);
    ServiceProcess::wait_serving_at(planner, PLANNER, Duration::from_secs(30)).await;
    ServiceProcess::wait_serving_at(traffic, TRAFFIC, Duration::from_secs(30)).await;

    let (legacy, new) = (loopback(), loopback());
    let sessions_flag = sessions.to_string();
    let app = |version: &str, listen: SocketAddr| {
        let listen = listen.to_string();
        ServiceProcess::spawn_with_args(
            FICUS,
            &["demo", "app", "--version", version, "--listen", &listen, "--sessions", &sessions_flag],
            &[],
        )
    };
    let _v1 = app("v1", legacy);
    let _v2 = app("v2", new);
    for addr in [legacy, new] {
        wait_until(Duration::from_secs(20), || async move { tokio::net::TcpStream::connect(addr).await.ok() }).await;
    }

    let args = [
        "demo",
        "drive",
        "--planner",
        &planner.to_string(),
        "--traffic",
        &traffic.to_string(),
        "--proxy",
        &proxy.to_string(),
        "--legacy",
        &legacy.to_string(),
        "--new",
        &new.to_string(),
        "--users",
        "60",
        "--stage-window",
        "2s",
        "--prefix",
        "parts",
    ]
    .map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let driven = ficus(&args, Duration::from_secs(240)).await;
    let stdout = String::from_utf8_lossy(&driven.stdout);
    assert!(driven.status.success(), "drive failed:\n{stdout}\n{}", String::from_utf8_lossy(&driven.stderr));
    assert!(stdout.contains("promises kept"), "{stdout}");
    assert!(stdout.contains("faulty release:               ROLLED_BACK"), "{stdout}");

    // The rollouts have the names the Compose file's watcher follows.
    let watched =
        ficus(&["rollout", "watch", "parts-migration", "--planner", &planner.to_string()], Duration::from_secs(30))
            .await;
    assert!(watched.status.success(), "{}", String::from_utf8_lossy(&watched.stderr));
    assert!(
        String::from_utf8_lossy(&watched.stdout).contains("SUCCEEDED"),
        "{}",
        String::from_utf8_lossy(&watched.stdout)
    );
}

#[tokio::test]
async fn health_exits_zero_only_for_a_serving_service() {
    let data = tempfile::tempdir().expect("temp dir");
    let up = loopback();
    let data_dir = data.path().display().to_string();
    let env = [("FICUS_SESSIONS__SERVER__GRPC_ADDR", up.to_string())];
    let _plane = ServiceProcess::spawn_with_args(FICUS, &["up", "--data-dir", &data_dir], &env);
    ServiceProcess::wait_serving_at(up, ficus_proto::service_names::SESSIONS, Duration::from_secs(30)).await;

    let serving = ficus(&["health", "--addr", &up.to_string()], Duration::from_secs(10)).await;
    assert!(serving.status.success(), "{}", String::from_utf8_lossy(&serving.stderr));
    assert!(String::from_utf8_lossy(&serving.stdout).contains("SERVING"));

    let by_name = ficus(
        &["health", "--addr", &up.to_string(), "--service", "ficus.sessions.v1.SessionStore"],
        Duration::from_secs(10),
    )
    .await;
    assert!(by_name.status.success(), "{}", String::from_utf8_lossy(&by_name.stderr));

    let unknown =
        ficus(&["health", "--addr", &up.to_string(), "--service", "no.such.Service"], Duration::from_secs(10)).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    let closed = loopback();
    let down = ficus(&["health", "--addr", &closed.to_string(), "--timeout", "1s"], Duration::from_secs(10)).await;
    assert_eq!(down.status.code(), Some(1), "a closed port is not healthy");
    let message = String::from_utf8_lossy(&down.stderr);
    assert!(message.starts_with("ficus health: ") && message.contains(&closed.to_string()), "{message}");
}
