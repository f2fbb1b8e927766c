//! The chart installed with `helm install` into a real API server: every rendered object,
//! with the default values and with each example values file, passes the server's own
//! validation and admission, and is there afterwards as rendered.

use std::path::PathBuf;
use std::process::Command;

use ficus_testkit::KubeApiServer;
use ficus_testkit::kube::service_monitor_crds;
use ficus_tests::manifest::{self, Object};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};

fn helm(server: &KubeApiServer) -> Command {
    let mut helm = manifest::helm();
    helm.arg("--kubeconfig").arg(server.kubeconfig());
    helm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_of_every_example_is_accepted_by_the_api_server() {
    let server = KubeApiServer::start().await;
    server.install_crds(&service_monitor_crds()).await;
    let mut value_sets: Vec<Option<PathBuf>> = vec![None];
    value_sets.extend(manifest::example_values().into_iter().map(Some));
    for (index, values) in value_sets.iter().enumerate() {
        let namespace = format!("ficus-{index}");
        let mut install = helm(&server);
        install.args(["install", "ficus"]).arg(manifest::chart_dir());
        install.args(["--namespace", &namespace, "--create-namespace"]);
        if let Some(values) = values {
            install.arg("--values").arg(values);
        }
        let output = install.output().expect("run helm install");
        assert!(
            output.status.success(),
            "helm install with {values:?} refused:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // What helm created is what the chart renders for this server's version.
        let files: Vec<&std::path::Path> = values.iter().map(PathBuf::as_path).collect();
        let rendered = manifest::render(&files, &[]).expect("render");
        let client = server.client().await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
        let mut installed: Vec<String> = deployments
            .list(&ListParams::default())
            .await
            .expect("list deployments")
            .items
            .into_iter()
            .filter_map(|deployment| deployment.metadata.name)
            .collect();
        installed.sort();
        let mut expected: Vec<String> = rendered
            .iter()
            .filter_map(|object| match object {
                Object::Deployment(deployment) => deployment.metadata.name.clone(),
                _ => None,
            })
            .collect();
        expected.sort();
        assert_eq!(installed, expected, "{values:?}");
        let services: Api<Service> = Api::namespaced(client, &namespace);
        let proxy = services.get("ficus-proxy").await.expect("the proxy's Service");
        assert!(proxy.spec.and_then(|spec| spec.cluster_ip).is_some(), "the server allocated the proxy an address");
    }
}

/// Whether the real API server lets `account` (in namespace `ficus`) do `verb` on `resource`.
async fn allowed(server: &KubeApiServer, account: &str, verb: &str, group: &str, resource: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let user = format!("system:serviceaccount:ficus:{account}");
    let client = server.client_as(&user, &["system:serviceaccounts", "system:serviceaccounts:ficus"]).await;
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, sub)) => (resource.to_owned(), Some(sub.to_owned())),
        None => (resource.to_owned(), None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some("ficus".into()),
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource),
                subresource,
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client);
    let answer = reviews.create(&kube::api::PostParams::default(), &review).await.expect("access review");
    answer.status.is_some_and(|status| status.allowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_account_may_do_what_its_service_does_and_nothing_else() {
    let server = KubeApiServer::start().await;
    let mut install = helm(&server);
    install.args(["install", "ficus"]).arg(manifest::chart_dir()).args(["--namespace", "ficus", "--create-namespace"]);
    install.arg("--values").arg(manifest::chart_dir().join("ci/kubernetes-values.yaml"));
    let output = install.output().expect("run helm install");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let cases = [
        ("ficus-planner", "patch", "ficus.dev", "rollouts/status", true),
        ("ficus-planner", "watch", "ficus.dev", "rollouts", true),
        ("ficus-planner", "patch", "apps", "deployments/scale", true),
        ("ficus-planner", "create", "coordination.k8s.io", "leases", true),
        ("ficus-planner", "delete", "ficus.dev", "rollouts", false),
        ("ficus-planner", "patch", "apps", "deployments", false),
        ("ficus-planner", "list", "", "secrets", false),
        ("ficus-traffic", "patch", "gateway.networking.k8s.io", "httproutes", true),
        ("ficus-traffic", "create", "networking.k8s.io", "ingresses", true),
        ("ficus-traffic", "patch", "networking.istio.io", "virtualservices", true),
        ("ficus-traffic", "list", "", "pods", false),
        ("ficus-traffic", "delete", "", "services", false),
        ("ficus-analysis", "list", "", "pods", true),
        ("ficus-analysis", "patch", "", "services", false),
        ("ficus-analysis", "get", "", "secrets", false),
        ("ficus-sessions", "list", "", "pods", false),
        // Checking callers' tokens.
        ("ficus-sessions", "create", "authentication.k8s.io", "tokenreviews", true),
        ("ficus-traffic", "create", "authentication.k8s.io", "tokenreviews", true),
        ("ficus-sessions", "get", "", "secrets", false),
    ];
    for (account, verb, group, resource, expected) in cases {
        assert_eq!(
            allowed(&server, account, verb, group, resource).await,
            expected,
            "{account} {verb} {resource}.{group}"
        );
    }
}
