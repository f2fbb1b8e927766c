//! SIGTERM during an in-flight call: the call completes and the process exits 0.
//!
//! The server must be a real process receiving a real signal, so this test re-runs its
//! own binary as the server (selected by an environment variable) and signals it.

use std::{
    process::{ExitCode, Stdio},
    time::Duration,
};

use ficus_kit::{
    server::{Server, ServerConfig},
    shutdown,
};
use ficus_proto::sessions::v1::{
    GetSessionRequest, Session,
    session_store_client::SessionStoreClient,
    session_store_server::{SessionStore, SessionStoreServer},
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::{Request, Response, Status};

const CHILD: &str = "FICUS_KIT_SHUTDOWN_TEST_CHILD";
const CALL_TIME: Duration = Duration::from_millis(1500);

/// Answers `GetSession` slowly, announcing on stdout when a call has begun.
struct Slow;

#[tonic::async_trait]
impl SessionStore for Slow {
    async fn get_session(&self, request: Request<GetSessionRequest>) -> Result<Response<Session>, Status> {
        println!("call started");
        tokio::time::sleep(CALL_TIME).await;
        Ok(Response::new(Session { id: request.into_inner().id, version: 7, ..Default::default() }))
    }
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if std::env::var_os(CHILD).is_some() {
        runtime.block_on(serve());
        return ExitCode::SUCCESS;
    }
    match runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), an_in_flight_call_completes_after_sigterm()).await
    }) {
        Ok(()) => {
            println!("graceful_shutdown: 1 passed, 0 failed");
            ExitCode::SUCCESS
        }
        Err(_) => {
            println!("graceful_shutdown: 0 passed, 1 failed (timed out)");
            ExitCode::FAILURE
        }
    }
}

async fn serve() {
    let stop = shutdown::on_signal();
    let routes = tonic::service::Routes::new(SessionStoreServer::new(Slow));
    let running = Server::new("ficus.sessions.v1.SessionStore", ServerConfig::ephemeral(), routes)
        .start(stop)
        .await
        .expect("start");
    println!("listening {}", running.grpc_addr);
    running.wait().await.expect("clean stop");
}

async fn an_in_flight_call_completes_after_sigterm() {
    let exe = std::env::current_exe().expect("own path");
    let mut child = tokio::process::Command::new(exe)
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server process starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines.next_line().await.expect("read stdout").expect("server announces its address");
        if let Some(addr) = line.strip_prefix("listening ") {
            break addr.to_owned();
        }
    };
    let channel = ficus_testkit::grpc::channel(addr.parse().expect("address"));
    let mut client = SessionStoreClient::new(channel);
    let call =
        tokio::spawn(async move { client.get_session(GetSessionRequest { id: "abc".into(), touch: false }).await });
    loop {
        let line = lines.next_line().await.expect("read stdout").expect("server reports the call");
        if line == "call started" {
            break;
        }
    }
    let pid = child.id().expect("running").to_string();
    let signalled = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(signalled.success());

    let response = call.await.expect("call task").expect("the in-flight call completes after SIGTERM");
    assert_eq!(response.into_inner().version, 7);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exits").expect("status");
    assert!(status.success(), "server exited with {status}");
}
