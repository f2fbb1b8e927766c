//! A traffic service started in-process with real HTTP backends behind it.

#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use ficus_kit::server::Running;
use ficus_proto::traffic::v1::{self as proto, traffic_control_client::TrafficControlClient};
use ficus_testkit::BACKEND_HEADER;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The traffic service under test.
pub struct Traffic {
    pub running: Option<Running>,
    pub shutdown: CancellationToken,
    pub api: TrafficControlClient<Channel>,
    pub proxy: SocketAddr,
    http: Client<HttpConnector, Empty<Bytes>>,
    pub data: tempfile::TempDir,
}

/// What the proxy answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub backend: Option<String>,
    pub set_cookie: Option<String>,
}

impl Traffic {
    pub async fn start() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        Self::start_in(data).await
    }

    pub async fn start_in(data: tempfile::TempDir) -> Self {
        Self::start_configured(data, |_| {}).await
    }

    /// Starts with the ephemeral configuration as `configure` changes it.
    pub async fn start_configured(data: tempfile::TempDir, configure: impl FnOnce(&mut ficus_traffic::Config)) -> Self {
        let shutdown = CancellationToken::new();
        let mut config = ficus_traffic::Config::ephemeral(data.path().display().to_string());
        configure(&mut config);
        let running = ficus_traffic::start(config, shutdown.clone()).await.expect("traffic starts");
        let proxy = running.addr(ficus_traffic::DATA_PLANE).expect("data plane address");
        let api = TrafficControlClient::new(ficus_testkit::grpc::channel(running.grpc_addr));
        let http = Client::builder(TokioExecutor::new()).build_http();
        Self { running: Some(running), shutdown, api, proxy, http, data }
    }

    /// Stops the service and hands back its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await.expect("traffic stops cleanly");
        }
        self.data
    }

    pub async fn put(&mut self, route: proto::Route) -> proto::Route {
        self.api
            .put_route(proto::PutRouteRequest { route: Some(route), expected_generation: 0 })
            .await
            .expect("route accepted")
            .into_inner()
    }

    pub async fn set_weights(&mut self, route: &str, weights: &[(&str, u32)]) -> proto::Route {
        self.api
            .set_weights(proto::SetWeightsRequest {
                route: route.into(),
                weights: weights.iter().map(|(name, weight)| ((*name).to_owned(), *weight)).collect(),
                expected_generation: 0,
                fencing_token: 0,
            })
            .await
            .expect("weights accepted")
            .into_inner()
    }

    /// GET `path` through the proxy with `headers`.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = hyper::Request::builder().uri(format!("http://{}{path}", self.proxy));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::new()).expect("request");
        let response = self.http.request(request).await.expect("proxy answers");
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let backend = header(BACKEND_HEADER);
        let set_cookie = header("set-cookie");
        let _ = response.into_body().collect().await;
        Answer { status, backend, set_cookie }
    }
}

/// A two-backend route `name` with `stable` and `canary` backends at the given canary weight.
pub fn route(name: &str, stable: SocketAddr, canary: SocketAddr, canary_weight: u32) -> proto::Route {
    let (stable, canary) = (stable.to_string(), canary.to_string());
    ficus_testkit::route::two_backends(name, ("stable", &stable), ("canary", &canary), canary_weight)
}
