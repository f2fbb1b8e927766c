//! The chart's authentication and TLS, end to end: `helm install` into a real API server,
//! then the four services run here from the configuration the release holds, with the
//! files their pods would mount (the generated token Secret, projected ServiceAccount
//! tokens minted by the API server for each pod's audience, and for TLS a certificate
//! made here), as a kubelet would provide them. The `helm test` hook's commands then pass
//! with the hook's own identity, the planner and analysis reach traffic with their own,
//! and an anonymous caller is refused.

use std::{collections::BTreeMap, path::Path, process::ExitCode, time::Duration};

use ficus_kit::{
    client::{self, BearerToken, Credentials},
    tls::{ClientTls, ClientTlsConfig},
};
use ficus_proto::{
    analysis::v1 as analysis, analysis::v1::analysis_client::AnalysisClient, planner::v1 as planner,
    planner::v1::planner_client::PlannerClient, traffic::v1 as traffic,
    traffic::v1::traffic_control_client::TrafficControlClient,
};
use ficus_testkit::KubeApiServer;
use ficus_tests::manifest;
use figment::{Figment, providers::Format};
use k8s_openapi::api::{
    apps::v1::Deployment,
    authentication::v1::TokenRequest,
    core::v1::{ConfigMap, Pod, PodSpec, Secret, ServiceAccount},
};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const NAMESPACE: &str = "ficus";

/// The audience of the projected ServiceAccount token a pod mounts.
fn projected_audience(pod: &PodSpec) -> String {
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|volume| volume.projected.as_ref())
        .flat_map(|projected| projected.sources.iter().flatten())
        .find_map(|source| source.service_account_token.as_ref())
        .and_then(|token| token.audience.clone())
        .expect("the pod mounts a projected ServiceAccount token with an audience")
}

/// A token of ServiceAccount `account` bound to `audience`, as the kubelet mints it.
async fn minted(server: &KubeApiServer, account: &str, audience: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(server.client().await, NAMESPACE);
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"audiences": [audience], "expirationSeconds": 3600}}))
            .expect("token request");
    let answer = accounts.create_token_request(account, &PostParams::default(), &request).await.expect("token");
    answer.status.and_then(|status| status.token).expect("a minted token")
}

fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    path
}

/// The configuration of `component` as its ConfigMap holds it, for `C`.
async fn rendered<C: ficus_kit::config::ServiceConfig>(server: &KubeApiServer, component: &str) -> C {
    let maps: Api<ConfigMap> = Api::namespaced(server.client().await, NAMESPACE);
    let map = maps.get(&format!("ficus-{component}")).await.expect("the ConfigMap");
    let toml = map.data.and_then(|data| data.get("ficus.toml").cloned()).expect("ficus.toml");
    ficus_kit::config::extract(&Figment::from(figment::providers::Toml::string(&toml)), None)
        .unwrap_or_else(|error| panic!("{component}: {error}"))
}

/// Points `server` at loopback and the files the pod would mount at those in `dir`.
fn as_mounted(
    server: &mut ficus_kit::server::ServerConfig,
    kube: &KubeApiServer,
    files: &BTreeMap<&str, std::path::PathBuf>,
) {
    server.grpc_addr = "127.0.0.1:0".parse().expect("address");
    server.admin_addr = "127.0.0.1:0".parse().expect("address");
    let mounted = |path: &mut Option<std::path::PathBuf>| {
        if let Some(inside) = path.as_ref() {
            let outside =
                files.get(inside.to_str().unwrap_or_default()).unwrap_or_else(|| panic!("{inside:?} is mounted"));
            *path = Some(outside.clone());
        }
    };
    mounted(&mut server.auth.token_file);
    mounted(&mut server.auth.peer_token_file);
    if let Some(tls) = server.tls.as_mut() {
        for path in [&mut tls.cert, &mut tls.key] {
            let mut moved = Some(path.clone());
            mounted(&mut moved);
            *path = moved.expect("mounted");
        }
    }
    if let Some(tls) = server.peer_tls.as_mut() {
        mounted(&mut tls.ca_cert);
    }
    let review = server.auth.token_review.as_mut().expect("the chart turns TokenReview on");
    // In the pod, the in-cluster ServiceAccount (allowed by its auth-delegator binding).
    review.kubeconfig = Some(kube.kubeconfig().to_owned());
}

/// Runs `ficus` with `args` as a process would, on a thread of its own (it starts its own
/// runtime).
async fn ficus(args: Vec<String>) -> ExitCode {
    let (done, exited) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let code = match <ficus::cli::Cli as clap::Parser>::try_parse_from(args) {
            Ok(cli) => cli.run(),
            Err(error) => {
                eprintln!("{error}");
                ExitCode::from(2)
            }
        };
        let _ = done.send(code);
    });
    exited.await.expect("the command finishes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_hook_and_the_services_authenticate_with_the_default_values() {
    installed_and_called(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_hook_and_the_services_authenticate_over_tls() {
    installed_and_called(Some("ci/tls-values.yaml")).await;
}

/// The serving certificate (for loopback, where the services run here) and its CA, as
/// the chart's TLS Secret holds them.
fn serving_certificate(dir: &Path) -> [(&'static str, std::path::PathBuf); 3] {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).expect("CA").pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let certificate = leaf.signed_by(&key, &issuer).expect("certificate").pem();
    [
        ("/etc/ficus/tls/tls.crt", write(dir, "tls.crt", &certificate)),
        ("/etc/ficus/tls/tls.key", write(dir, "tls.key", &key.serialize_pem())),
        ("/etc/ficus/tls/ca.crt", write(dir, "ca.crt", &ca_pem)),
    ]
}

async fn installed_and_called(values: Option<&str>) {
    let kube = KubeApiServer::start().await;
    let mut install = manifest::helm();
    install.arg("--kubeconfig").arg(kube.kubeconfig());
    install.args(["install", "ficus"]).arg(manifest::chart_dir()).args([
        "--namespace",
        NAMESPACE,
        "--create-namespace",
    ]);
    if let Some(values) = values {
        install.arg("--values").arg(manifest::chart_dir().join(values));
    }
    let output = install.output().expect("run helm install");
    assert!(output.status.success(), "helm install: {}", String::from_utf8_lossy(&output.stderr));

    // What the kubelet would mount: the token Secret and each pod's projected token.
    let dir = tempfile::tempdir().expect("temp dir");
    let client = kube.client().await;
    let secret = Api::<Secret>::namespaced(client.clone(), NAMESPACE).get("ficus-auth").await.expect("token Secret");
    let data = secret.data.expect("Secret data");
    let tokens = String::from_utf8(data["tokens.csv"].0.clone()).expect("utf-8");
    let admin = String::from_utf8(data["admin-token"].0.clone()).expect("utf-8");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let planner_pod = deployments.get("ficus-planner").await.expect("planner").spec.expect("spec").template.spec;
    let audience = projected_audience(&planner_pod.expect("pod"));
    let mut files = BTreeMap::from([
        ("/etc/ficus/auth/tokens.csv", write(dir.path(), "tokens.csv", &tokens)),
        ("/planner/token", write(dir.path(), "planner-token", &minted(&kube, "ficus-planner", &audience).await)),
        ("/analysis/token", write(dir.path(), "analysis-token", &minted(&kube, "ficus-analysis", &audience).await)),
    ]);
    let tls = values.is_some();
    if tls {
        files.extend(serving_certificate(dir.path()));
    }
    let with_peer_token = |component: &str| {
        let mut files = files.clone();
        files.insert("/var/run/secrets/ficus/token", files[format!("/{component}/token").as_str()].clone());
        files
    };

    // The four services, from the release's configuration.
    let shutdown = CancellationToken::new();
    let store = |name: &str| dir.path().join(name).display().to_string();
    let mut sessions: ficus_sessions::Config = rendered(&kube, "sessions").await;
    as_mounted(&mut sessions.server, &kube, &files);
    sessions.store = store("sessions");
    let sessions = ficus_sessions::start(sessions, shutdown.clone()).await.expect("sessions starts");
    let mut traffic_config: ficus_traffic::Config = rendered(&kube, "traffic").await;
    as_mounted(&mut traffic_config.server, &kube, &files);
    traffic_config.store = store("traffic");
    traffic_config.proxy.listen = "127.0.0.1:0".parse().expect("address");
    let traffic = ficus_traffic::start(traffic_config, shutdown.clone()).await.expect("traffic starts");
    let mut analysis_config: ficus_analysis::Config = rendered(&kube, "analysis").await;
    as_mounted(&mut analysis_config.server, &kube, &with_peer_token("analysis"));
    analysis_config.store = store("analysis");
    analysis_config.traffic = traffic.grpc_addr.to_string();
    let analysis = ficus_analysis::start(analysis_config, shutdown.clone()).await.expect("analysis starts");
    let mut planner_config: ficus_planner::Config = rendered(&kube, "planner").await;
    as_mounted(&mut planner_config.server, &kube, &with_peer_token("planner"));
    planner_config.store = store("planner");
    planner_config.traffic = traffic.grpc_addr.to_string();
    planner_config.analysis = analysis.grpc_addr.to_string();
    let planner = ficus_planner::start(planner_config, shutdown.clone()).await.expect("planner starts");
    let address = |component: &str| {
        match component {
            "planner" => planner.grpc_addr,
            "analysis" => analysis.grpc_addr,
            "traffic" => traffic.grpc_addr,
            _ => sessions.grpc_addr,
        }
        .to_string()
    };

    // The hook's commands, with the service names and the hook's own token as mounted.
    let hooks = manifest::helm()
        .arg("--kubeconfig")
        .arg(kube.kubeconfig())
        .args(["get", "hooks", "ficus", "--namespace", NAMESPACE])
        .output()
        .expect("helm get hooks");
    let hook: Pod = serde_yaml_ng::Deserializer::from_slice(&hooks.stdout)
        .filter_map(|document| serde::Deserialize::deserialize(document).ok())
        .find(|pod: &Pod| pod.metadata.name.as_deref() == Some("ficus-test"))
        .expect("the test hook Pod");
    let hook_spec = hook.spec.expect("hook spec");
    let account = hook_spec.service_account_name.clone().expect("the hook runs as its own ServiceAccount");
    let hook_token = write(dir.path(), "hook-token", &minted(&kube, &account, &projected_audience(&hook_spec)).await);
    let mut authenticated = 0;
    for container in &hook_spec.containers {
        let mut args = vec!["ficus".to_owned()];
        for arg in container.command.iter().flatten().skip(1).chain(container.args.iter().flatten()) {
            let arg = match arg.as_str() {
                "/var/run/secrets/ficus/token" => {
                    authenticated += 1;
                    hook_token.display().to_string()
                }
                mounted if files.contains_key(mounted) => files[mounted].display().to_string(),
                other => match other.strip_prefix("ficus-").and_then(|rest| rest.split_once(':')) {
                    Some((component, _port)) => address(component),
                    None => other.to_owned(),
                },
            };
            args.push(arg);
        }
        assert_eq!(ficus(args.clone()).await, ExitCode::SUCCESS, "{}: {args:?}", container.name);
    }
    assert!(authenticated >= 2, "the hook calls the APIs with its token, not only health checks");

    // Anonymous callers are refused; the generated admin token is accepted.
    let client_tls = tls.then(|| {
        let ca = files["/etc/ficus/tls/ca.crt"].clone();
        ClientTls::load(&ClientTlsConfig { ca_cert: Some(ca), ..ClientTlsConfig::default() }).expect("client TLS")
    });
    let anonymous = Credentials { token: None, tls: client_tls.clone() };
    let anonymous = client::connect_with(&address("traffic"), Duration::from_secs(10), &anonymous).expect("address");
    let refused = TrafficControlClient::new(anonymous).list_routes(traffic::ListRoutesRequest::default()).await;
    assert_eq!(refused.expect_err("no credential").code(), Code::Unauthenticated);
    let credentials = Credentials { token: Some(BearerToken::new(admin.trim()).expect("token")), tls: client_tls };
    let channel = |component: &str| {
        client::connect_with(&address(component), Duration::from_secs(10), &credentials).expect("address")
    };
    let route = ficus_testkit::route::two_backends("web", ("stable", "127.0.0.1:9"), ("canary", "127.0.0.1:10"), 0);
    TrafficControlClient::new(channel("traffic"))
        .put_route(traffic::PutRouteRequest { route: Some(route), expected_generation: 0 })
        .await
        .expect("the admin puts a route");

    // The planner checks the route with traffic and sets its weights as itself (operator).
    let spec = planner::RolloutSpec {
        route: "web".into(),
        stable_backend: "stable".into(),
        canary_backend: "canary".into(),
        strategy: Some(planner::rollout_spec::Strategy::Canary(planner::CanaryStrategy {
            steps: vec![
                planner::CanaryStep { step: Some(planner::canary_step::Step::SetWeight(25.0)) },
                planner::CanaryStep { step: Some(planner::canary_step::Step::Pause(Default::default())) },
            ],
        })),
        ..Default::default()
    };
    PlannerClient::new(channel("planner"))
        .create_rollout(planner::CreateRolloutRequest { id: "web-1".into(), spec: Some(spec) })
        .await
        .expect("the planner reads the route from traffic as itself");
    let mut traffic = TrafficControlClient::new(channel("traffic"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let route = traffic.get_route(traffic::GetRouteRequest { name: "web".into() }).await.expect("route");
        let canary = route.into_inner().weights.get("canary").copied();
        if canary == Some(2_500) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the planner never set the weights: canary at {canary:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Analysis reads traffic's statistics as itself (viewer).
    let target = analysis::Target { route: "web".into(), baseline: "stable".into(), canary: "canary".into() };
    AnalysisClient::new(channel("analysis"))
        .analyze(analysis::AnalyzeRequest { target: Some(target), ..Default::default() })
        .await
        .expect("analysis reads traffic's statistics as itself");
    shutdown.cancel();
}
