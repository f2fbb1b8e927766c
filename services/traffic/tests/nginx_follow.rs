//! The traffic service keeps a real front nginx in step with its routes.

use std::time::Duration;

use ficus_proto::traffic::v1 as proto;
use ficus_testkit::{BACKEND_HEADER, Backend, NginxServer, eventually};
use ficus_traffic::adapters::NginxSettings;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn route_changes_through_the_api_reach_nginx() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let nginx = NginxServer::new();
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = ficus_traffic::Config::ephemeral(data.path().display().to_string());
    config.nginx = Some(NginxSettings {
        path: nginx.include_path(),
        binary: "nginx".into(),
        main_config: Some(nginx.conf_path()),
        args: vec!["-e".into(), nginx.dir().join("error.log").display().to_string()],
        pid_file: None,
        listen: vec![nginx.addr().to_string()],
    });
    let shutdown = CancellationToken::new();
    let running = ficus_traffic::start(config, shutdown.clone()).await.expect("traffic starts");
    let mut api =
        proto::traffic_control_client::TrafficControlClient::new(ficus_testkit::grpc::channel(running.grpc_addr));
    let route = proto::Route {
        name: "checkout".into(),
        backends: vec![
            proto::Backend { name: "stable".into(), endpoints: vec![stable.addr().to_string()] },
            proto::Backend { name: "canary".into(), endpoints: vec![canary.addr().to_string()] },
        ],
        weights: [("stable".to_owned(), 0), ("canary".to_owned(), 10_000)].into(),
        ..Default::default()
    };
    api.put_route(proto::PutRouteRequest { route: Some(route), expected_generation: 0 }).await.expect("route");

    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let served_by = |http: Client<_, Empty<bytes::Bytes>>| {
        let url = format!("http://{}/", nginx.addr());
        async move {
            let response = http.get(url.parse().expect("uri")).await.ok()?;
            let backend = response.headers().get(BACKEND_HEADER)?.to_str().ok()?.to_owned();
            let _ = response.into_body().collect().await;
            Some(backend)
        }
    };
    eventually(Duration::from_secs(20), || {
        let served = served_by(http.clone());
        async move { served.await.as_deref() == Some("canary") }
    })
    .await;
    api.set_weights(proto::SetWeightsRequest {
        route: "checkout".into(),
        weights: [("stable".to_owned(), 10_000), ("canary".to_owned(), 0)].into(),
        expected_generation: 0,
        fencing_token: 0,
    })
    .await
    .expect("weights");
    eventually(Duration::from_secs(20), || {
        let served = served_by(http.clone());
        async move { served.await.as_deref() == Some("stable") }
    })
    .await;
    shutdown.cancel();
    running.wait().await.expect("traffic stops");
}
