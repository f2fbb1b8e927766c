//! Routes applied to Kubernetes data planes in a real API server: an ingress-nginx canary
//! Ingress, a Gateway API HTTPRoute and an Istio VirtualService validated by their
//! published CRDs, and a Service selector switch. Each adapter writes only its fields,
//! notices when someone changes them, and puts them back when the route says so.

mod support;

use std::time::Duration;

use ficus_kit::status::invalid_field;
use ficus_proto::traffic::v1::{self as proto, kubernetes_target::Kind};
use ficus_testkit::kube::{gateway_api_crds, istio_crds};
use ficus_testkit::{KubeApiServer, eventually, wait_until};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use support::Traffic;
use tonic::Code;

const NAMESPACE: &str = "shop";

/// The platform team's own writes, as another field manager.
fn team() -> PatchParams {
    PatchParams::apply("platform-team").force()
}

/// A hand edit, as `kubectl edit` makes it.
async fn edit_by_hand(api: &Api<DynamicObject>, name: &str, change: Value) {
    let params = PatchParams { field_manager: Some("kubectl-edit".into()), ..PatchParams::default() };
    api.patch(name, &params, &Patch::Merge(&change)).await.expect("hand edit");
}

async fn cluster() -> (KubeApiServer, Traffic) {
    let server = KubeApiServer::start().await;
    server.install_crds(&gateway_api_crds()).await;
    server.install_crds(&istio_crds()).await;
    server.create_namespace(NAMESPACE).await;
    let kubeconfig = server.kubeconfig().to_path_buf();
    let traffic = Traffic::start_configured(tempfile::tempdir().expect("temp dir"), move |config| {
        config.kubernetes = Some(ficus_traffic::adapters::kubernetes::KubernetesSettings {
            kubeconfig: Some(kubeconfig),
            resync: Duration::from_millis(200),
        });
    })
    .await;
    (server, traffic)
}

fn api(client: &kube::Client, group: &str, version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), NAMESPACE, &resource)
}

async fn create(api: &Api<DynamicObject>, object: Value) {
    let object: DynamicObject = serde_json::from_value(object).expect("object");
    let name = object.metadata.name.clone().expect("name");
    api.patch(&name, &team(), &Patch::Apply(&object)).await.expect("the team creates its object");
}

/// A two-backend route targeting `kind`/`name`.
fn route(kind: Kind, name: &str, canary_weight: u32, restore_drift: bool) -> proto::Route {
    let backend = |service: &str, track: &str| proto::KubernetesBackend {
        service: service.into(),
        port: 80,
        selector: [("app".to_owned(), "shop".to_owned()), ("track".to_owned(), track.to_owned())].into(),
    };
    proto::Route {
        name: format!("shop-{}", kind.as_str_name().to_lowercase().replace('_', "-")),
        r#match: Some(proto::RouteMatch { hosts: vec![format!("{name}.example")], path_prefix: String::new() }),
        backends: vec![
            proto::Backend { name: "stable".into(), endpoints: vec!["127.0.0.1:1".into()] },
            proto::Backend { name: "canary".into(), endpoints: vec!["127.0.0.1:2".into()] },
        ],
        weights: [("stable".to_owned(), 10_000 - canary_weight), ("canary".to_owned(), canary_weight)].into(),
        kubernetes: Some(proto::KubernetesTarget {
            kind: kind.into(),
            namespace: NAMESPACE.into(),
            name: name.into(),
            backends: [
                ("stable".to_owned(), backend("shop-v1", "blue")),
                ("canary".to_owned(), backend("shop-v2", "green")),
            ]
            .into(),
            restore_drift,
        }),
        ..Default::default()
    }
}

fn header_rule(value: &str) -> proto::Rule {
    proto::Rule {
        r#match: Some(proto::rule::Match::Header(proto::HeaderMatch {
            name: "x-canary".into(),
            value: Some(proto::header_match::Value::Exact(value.into())),
        })),
        backend: "canary".into(),
    }
}

async fn field(api: &Api<DynamicObject>, name: &str, pointer: &str) -> Option<Value> {
    let object = api.get_opt(name).await.ok()??;
    serde_json::to_value(object).ok()?.pointer(pointer).cloned()
}

async fn wait_field(api: &Api<DynamicObject>, name: &str, pointer: &str, expected: Value) {
    let within = Duration::from_secs(20);
    let (api, name, pointer) = (api.clone(), name.to_owned(), pointer.to_owned());
    eventually(within, || {
        let (api, name, pointer, expected) = (api.clone(), name.clone(), pointer.clone(), expected.clone());
        async move { field(&api, &name, &pointer).await == Some(expected) }
    })
    .await;
}

async fn status(traffic: &mut Traffic, route: &str) -> proto::KubernetesStatus {
    let route = traffic.api.get_route(proto::GetRouteRequest { name: route.into() }).await.expect("get").into_inner();
    route.kubernetes_status.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_canary_follows_the_route_and_drift_is_reported_not_undone() {
    let (server, mut traffic) = cluster().await;
    let client = server.client().await;
    let ingresses = api(&client, "networking.k8s.io", "v1", "Ingress", "ingresses");
    create(
        &ingresses,
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "shop", "namespace": NAMESPACE, "annotations": {"team": "checkout"}},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": "shop.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "shop-v1", "port": {"number": 80}}}}
            ]}}]}
        }),
    )
    .await;
    let mut canary = route(Kind::IngressNginx, "shop", 500, false);
    canary.rules.push(header_rule("always"));
    let name = canary.name.clone();
    traffic.put(canary).await;

    let weight = "/metadata/annotations/nginx.ingress.kubernetes.io~1canary-weight";
    wait_field(&ingresses, "shop-canary", weight, json!("500")).await;
    let canary_ingress = field(&ingresses, "shop-canary", "").await.expect("canary Ingress");
    assert_eq!(
        canary_ingress.pointer("/metadata/annotations/nginx.ingress.kubernetes.io~1canary"),
        Some(&json!("true"))
    );
    assert_eq!(
        canary_ingress.pointer("/metadata/annotations/nginx.ingress.kubernetes.io~1canary-weight-total"),
        Some(&json!("10000"))
    );
    assert_eq!(
        canary_ingress.pointer("/metadata/annotations/nginx.ingress.kubernetes.io~1canary-by-header"),
        Some(&json!("x-canary"))
    );
    assert_eq!(
        canary_ingress.pointer("/metadata/annotations/nginx.ingress.kubernetes.io~1canary-by-header-value"),
        Some(&json!("always"))
    );
    assert_eq!(canary_ingress.pointer("/spec/rules/0/host"), Some(&json!("shop.example")));
    assert_eq!(canary_ingress.pointer("/spec/rules/0/http/paths/0/backend/service/name"), Some(&json!("shop-v2")));
    assert_eq!(canary_ingress.pointer("/spec/ingressClassName"), Some(&json!("nginx")));

    // The stable Ingress is the team's: untouched, and ficus manages none of its fields.
    let stable = field(&ingresses, "shop", "").await.expect("stable");
    assert_eq!(stable.pointer("/metadata/annotations"), Some(&json!({"team": "checkout"})));
    assert_eq!(stable.pointer("/spec/rules/0/http/paths/0/backend/service/name"), Some(&json!("shop-v1")));
    let managers: Vec<Value> =
        stable.pointer("/metadata/managedFields").and_then(Value::as_array).cloned().unwrap_or_default();
    assert!(managers.iter().all(|entry| entry["manager"] != "ficus"), "{managers:?}");

    traffic.set_weights(&name, &[("stable", 8_000), ("canary", 2_000)]).await;
    wait_field(&ingresses, "shop-canary", weight, json!("2000")).await;

    // Someone sets the weight by hand: reported, and left as they set it.
    let edit = json!({"metadata": {"annotations": {"nginx.ingress.kubernetes.io/canary-weight": "9000"}}});
    edit_by_hand(&ingresses, "shop-canary", edit).await;
    let drifted = wait_until(Duration::from_secs(20), || {
        let mut api = traffic.api.clone();
        let name = name.clone();
        async move {
            let route = api.get_route(proto::GetRouteRequest { name }).await.ok()?.into_inner();
            route.kubernetes_status.filter(|status| !status.in_sync && status.drift_count > 0)
        }
    })
    .await;
    assert!(drifted.drift.contains("canary-weight"), "{drifted:?}");
    assert!(drifted.drift_detected_at.is_some());
    assert_eq!(field(&ingresses, "shop-canary", weight).await, Some(json!("9000")), "drift is not undone unless asked");

    // Deleting the route deletes the canary Ingress ficus made, and only that.
    traffic.api.delete_route(proto::DeleteRouteRequest { name, expected_generation: 0 }).await.expect("delete");
    eventually(Duration::from_secs(20), || {
        let ingresses = ingresses.clone();
        async move { ingresses.get_opt("shop-canary").await.ok().flatten().is_none() }
    })
    .await;
    assert!(ingresses.get_opt("shop").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_rules_are_applied_and_drift_is_restored() {
    let (server, mut traffic) = cluster().await;
    let client = server.client().await;
    let routes = api(&client, "gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes");
    create(
        &routes,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "shop", "namespace": NAMESPACE, "labels": {"team": "checkout"}},
            "spec": {"parentRefs": [{"name": "public"}], "hostnames": ["shop.example"],
                     "rules": [{"backendRefs": [{"name": "shop-v1", "port": 80}]}]}
        }),
    )
    .await;
    let mut gateway = route(Kind::GatewayApi, "shop", 1_000, true);
    gateway.rules.push(header_rule("always"));
    let name = gateway.name.clone();
    traffic.put(gateway).await;

    wait_field(&routes, "shop", "/spec/rules/1/backendRefs/1/weight", json!(1_000)).await;
    let object = field(&routes, "shop", "").await.expect("HTTPRoute");
    assert_eq!(
        object.pointer("/spec/rules/0/matches/0/headers/0"),
        Some(&json!({"type": "Exact", "name": "x-canary", "value": "always"}))
    );
    assert_eq!(object.pointer("/spec/rules/0/backendRefs/0/name"), Some(&json!("shop-v2")));
    assert_eq!(object.pointer("/spec/rules/1/backendRefs/0/name"), Some(&json!("shop-v1")));
    assert_eq!(object.pointer("/spec/rules/1/backendRefs/0/weight"), Some(&json!(9_000)));
    // The team's fields stay theirs.
    assert_eq!(object.pointer("/spec/parentRefs/0/name"), Some(&json!("public")));
    assert_eq!(object.pointer("/spec/hostnames"), Some(&json!(["shop.example"])));
    assert_eq!(object.pointer("/metadata/labels"), Some(&json!({"team": "checkout"})));

    // Someone puts everything back on v1 by hand: ficus notices and restores its split.
    let edit = json!({"spec": {"rules": [{"backendRefs": [{"name": "shop-v1", "port": 80}]}]}});
    edit_by_hand(&routes, "shop", edit).await;
    wait_field(&routes, "shop", "/spec/rules/1/backendRefs/1/weight", json!(1_000)).await;
    let restored = status(&mut traffic, &name).await;
    assert!(restored.drift_count >= 1, "{restored:?}");
    assert_eq!(field(&routes, "shop", "/spec/parentRefs/0/name").await, Some(json!("public")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_routes_weights_rules_and_mirror() {
    let (server, mut traffic) = cluster().await;
    let client = server.client().await;
    let services = api(&client, "networking.istio.io", "v1", "VirtualService", "virtualservices");
    create(&services, json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "shop", "namespace": NAMESPACE},
        "spec": {"hosts": ["shop.example"], "gateways": ["public"], "http": [{"route": [{"destination": {"host": "shop-v1"}}]}]}
    }))
    .await;
    let mut istio = route(Kind::Istio, "shop", 2_000, false);
    istio.rules.push(proto::Rule {
        r#match: Some(proto::rule::Match::Cookie(proto::CookieMatch { name: "canary".into(), value: "always".into() })),
        backend: "canary".into(),
    });
    istio.mirror = Some(proto::Mirror { backend: "canary".into(), basis_points: 250 });
    traffic.put(istio.clone()).await;

    wait_field(&services, "shop", "/spec/http/1/route/1/weight", json!(20)).await;
    let object = field(&services, "shop", "").await.expect("VirtualService");
    assert_eq!(object.pointer("/spec/http/1/route/0/weight"), Some(&json!(80)));
    assert_eq!(object.pointer("/spec/http/1/route/0/destination/host"), Some(&json!("shop-v1")));
    assert_eq!(object.pointer("/spec/http/1/mirror/host"), Some(&json!("shop-v2")));
    assert_eq!(object.pointer("/spec/http/1/mirrorPercentage/value"), Some(&json!(2.5)));
    let cookie =
        object.pointer("/spec/http/0/match/0/headers/cookie/regex").and_then(Value::as_str).expect("cookie match");
    assert!(cookie.contains("canary=always"), "{cookie}");
    assert_eq!(object.pointer("/spec/gateways"), Some(&json!(["public"])));

    // Weights Istio cannot express are refused, naming the field, and change nothing.
    let refused = traffic
        .api
        .set_weights(proto::SetWeightsRequest {
            route: istio.name.clone(),
            weights: [("stable".to_owned(), 9_950), ("canary".to_owned(), 50)].into(),
            expected_generation: 0,
            fencing_token: 0,
        })
        .await
        .expect_err("half a percent accepted for Istio");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(invalid_field(&refused).as_deref(), Some("weights[\"stable\"]"));
    assert_eq!(field(&services, "shop", "/spec/http/1/route/1/weight").await, Some(json!(20)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_selector_switches_atomically_for_blue_green() {
    let (server, mut traffic) = cluster().await;
    let client = server.client().await;
    let services = api(&client, "", "v1", "Service", "services");
    create(
        &services,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "shop", "namespace": NAMESPACE},
            "spec": {"selector": {"app": "shop", "track": "blue"}, "ports": [{"port": 80, "targetPort": 8080}]}
        }),
    )
    .await;
    let blue_green = route(Kind::Service, "shop", 0, true);
    let name = blue_green.name.clone();
    traffic.put(blue_green).await;
    wait_field(&services, "shop", "/spec/selector", json!({"app": "shop", "track": "blue"})).await;
    traffic.set_weights(&name, &[("stable", 0), ("canary", 10_000)]).await;
    wait_field(&services, "shop", "/spec/selector", json!({"app": "shop", "track": "green"})).await;
    assert_eq!(field(&services, "shop", "/spec/ports/0/targetPort").await, Some(json!(8080)), "ports untouched");

    let split = traffic
        .api
        .set_weights(proto::SetWeightsRequest {
            route: name.clone(),
            weights: [("stable".to_owned(), 5_000), ("canary".to_owned(), 5_000)].into(),
            expected_generation: 0,
            fencing_token: 0,
        })
        .await
        .expect_err("a split accepted for a Service switch");
    assert_eq!(split.code(), Code::InvalidArgument);
    assert_eq!(field(&services, "shop", "/spec/selector/track").await, Some(json!("green")));
}

#[tokio::test]
async fn routes_a_data_plane_cannot_express_are_refused_by_field() {
    let (_server, mut traffic) = cluster().await;
    let mut sticky = route(Kind::GatewayApi, "shop", 500, false);
    sticky.sticky = Some(proto::StickyKey { source: Some(proto::sticky_key::Source::Header("x-user".into())) });
    let mut three = route(Kind::IngressNginx, "shop", 500, false);
    three.backends.push(proto::Backend { name: "third".into(), endpoints: vec!["127.0.0.1:3".into()] });
    let third = proto::KubernetesBackend { service: "shop-v3".into(), port: 80, ..Default::default() };
    three.kubernetes.as_mut().expect("target").backends.insert("third".into(), third);
    let mut no_port = route(Kind::GatewayApi, "shop", 500, false);
    no_port.kubernetes.as_mut().expect("target").backends.get_mut("canary").expect("canary").port = 0;
    let mut unmapped = route(Kind::Istio, "shop", 500, false);
    unmapped.kubernetes.as_mut().expect("target").backends.remove("canary");
    let mut no_kind = route(Kind::Istio, "shop", 500, false);
    no_kind.kubernetes.as_mut().expect("target").kind = 0;
    for (route, path) in [
        (sticky, "route.sticky"),
        (three, "route.backends"),
        (no_port, "route.kubernetes.backends[\"canary\"].port"),
        (unmapped, "route.kubernetes.backends[\"canary\"]"),
        (no_kind, "route.kubernetes.kind"),
    ] {
        let refused = traffic
            .api
            .put_route(proto::PutRouteRequest { route: Some(route), expected_generation: 0 })
            .await
            .expect_err("accepted");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(invalid_field(&refused).as_deref(), Some(path), "{refused:?}");
    }
    let listed = traffic.api.list_routes(proto::ListRoutesRequest {}).await.expect("list").into_inner();
    assert!(listed.routes.is_empty(), "a refused route changed nothing");
}

#[tokio::test]
async fn without_a_cluster_a_kubernetes_route_is_a_failed_precondition() {
    let mut traffic = Traffic::start().await;
    let refused = traffic
        .api
        .put_route(proto::PutRouteRequest {
            route: Some(route(Kind::Istio, "shop", 500, false)),
            expected_generation: 0,
        })
        .await
        .expect_err("accepted");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("[kubernetes]"), "{}", refused.message());
}
