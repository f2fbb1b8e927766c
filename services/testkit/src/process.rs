//! A service binary run as its own process, the way an operator runs it.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{free_port, grpc, wait_until};

/// A running service binary on free loopback ports, killed when dropped.
pub struct ServiceProcess {
    child: Child,
    binary: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Its gRPC address.
    pub grpc_addr: SocketAddr,
    /// Its admin HTTP address.
    pub admin_addr: SocketAddr,
}

impl ServiceProcess {
    /// Starts `binary` with `env` added and its listen addresses set through
    /// `FICUS_SERVER__GRPC_ADDR` and `FICUS_SERVER__ADMIN_ADDR`.
    pub fn spawn(binary: &str, env: &[(&str, String)]) -> Self {
        Self::spawn_with_args(binary, &[], env)
    }

    /// Like [`ServiceProcess::spawn`], with command-line arguments.
    pub fn spawn_with_args(binary: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(key, value)| ((*key).to_owned(), value.clone())).collect();
        let (child, grpc_addr, admin_addr) = start(binary, &args, &env);
        Self { child, binary: binary.to_owned(), args, env, grpc_addr, admin_addr }
    }

    /// Waits until `service` reports SERVING, panicking after `within`. A process that
    /// exits first (its free port was taken in between) is started again on new ports, a
    /// few times.
    pub async fn wait_serving(&mut self, service: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let mut restarts = 3;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(restarts > 0, "{} exited with {status} before serving", self.binary);
                restarts -= 1;
                (self.child, self.grpc_addr, self.admin_addr) = start(&self.binary, &self.args, &self.env);
            }
            if matches!(grpc::health(self.grpc_addr, service).await, Ok(ServingStatus::Serving)) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{service} not serving after {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `service` at `addr` reports SERVING, panicking after `within`.
    pub async fn wait_serving_at(addr: SocketAddr, service: &str, within: Duration) {
        wait_until(within, || async move {
            matches!(grpc::health(addr, service).await, Ok(ServingStatus::Serving)).then_some(())
        })
        .await;
    }

    /// Sends SIGTERM, as an orchestrator does to stop a process.
    pub fn terminate(&self) {
        let Some(pid) = self.child.id() else { panic!("the process has already exited") };
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap_or_else(|error| panic!("cannot run kill: {error}"));
        assert!(status.success(), "kill -TERM {pid} failed: {status}");
    }

    /// Sends SIGKILL, as a crash or an OOM kill would: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Err(error) = self.child.start_kill() {
            panic!("cannot kill the process: {error}");
        }
    }

    /// Waits for the process to exit, panicking after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => panic!("cannot wait for the process: {error}"),
            Err(_) => panic!("the process did not exit within {within:?}"),
        }
    }
}

/// Starts `binary` on fresh loopback ports.
fn start(binary: &str, args: &[String], env: &[(String, String)]) -> (Child, SocketAddr, SocketAddr) {
    let grpc_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut command = Command::new(binary);
    command
        .args(args)
        .env("FICUS_SERVER__GRPC_ADDR", grpc_addr.to_string())
        .env("FICUS_SERVER__ADMIN_ADDR", admin_addr.to_string())
        .envs(env.iter().map(|(key, value)| (key.as_str(), value.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let child = command.spawn().unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
    (child, grpc_addr, admin_addr)
}

/// What every service binary promises: it starts, reports `service` SERVING, lists it
/// through reflection next to the health service, and exits 0 on SIGTERM.
pub async fn check_binary_lifecycle(binary: &str, service: &str, env: &[(&str, String)]) {
    let mut process = ServiceProcess::spawn(binary, env);
    process.wait_serving(service, Duration::from_secs(30)).await;
    let services = grpc::reflected_services(process.grpc_addr)
        .await
        .unwrap_or_else(|status| panic!("reflection failed: {status}"));
    assert!(services.iter().any(|name| name == service), "{service} missing from reflection: {services:?}");
    assert!(
        services.iter().any(|name| name == "grpc.health.v1.Health"),
        "health missing from reflection: {services:?}"
    );
    process.terminate();
    let status = process.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{binary} exited with {status} after SIGTERM");
}
