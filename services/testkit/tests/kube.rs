//! The test API server is a real one: it stores pods and their status, validates custom
//! resources against the published CRDs, and enforces RBAC.

use ficus_testkit::KubeApiServer;
use ficus_testkit::kube::{gateway_api_crds, istio_crds};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};

#[tokio::test]
async fn stores_pods_and_the_status_tests_write() {
    let server = KubeApiServer::start().await;
    server.create_namespace("shop").await;
    let pods: Api<Pod> = Api::namespaced(server.client().await, "shop");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:2"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
    let status = serde_json::json!({"status": {"containerStatuses": [{
        "name": "web", "image": "web:2", "imageID": "", "ready": false, "restartCount": 4,
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-01-01T00:00:00Z"}},
        "state": {"waiting": {"reason": "CrashLoopBackOff"}}
    }]}});
    pods.patch_status("web-1", &PatchParams::default(), &Patch::Merge(&status)).await.expect("write status");
    let stored: PodStatus = pods.get("web-1").await.expect("get").status.expect("status");
    let container = &stored.container_statuses.expect("containers")[0];
    assert_eq!(container.restart_count, 4);
    let last = container.last_state.as_ref().and_then(|s| s.terminated.as_ref()).expect("terminated");
    assert_eq!(last.reason.as_deref(), Some("OOMKilled"));
}

#[tokio::test]
async fn validates_gateway_api_and_istio_objects_against_their_crds() {
    let server = KubeApiServer::start().await;
    server.install_crds(&gateway_api_crds()).await;
    server.install_crds(&istio_crds()).await;
    server.create_namespace("shop").await;
    let client = server.client().await;

    let route_gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), "shop", &ApiResource::from_gvk(&route_gvk));
    let route: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "shop"},
        "spec": {"rules": [{"backendRefs": [{"name": "legacy", "port": 80, "weight": 90}, {"name": "new", "port": 80, "weight": 10}]}]}
    }))
    .expect("route");
    routes.create(&PostParams::default(), &route).await.expect("a valid HTTPRoute is accepted");
    let mut invalid = route.clone();
    invalid.metadata.name = Some("invalid".into());
    invalid.data["spec"]["rules"][0]["backendRefs"][0]["weight"] = serde_json::json!(-1);
    let refused = routes.create(&PostParams::default(), &invalid).await;
    assert!(matches!(refused, Err(kube::Error::Api(ref status)) if status.code == 422), "{refused:?}");

    let vs_gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
    let services: Api<DynamicObject> = Api::namespaced_with(client, "shop", &ApiResource::from_gvk(&vs_gvk));
    let service: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "shop"},
        "spec": {"hosts": ["shop"], "http": [{"route": [{"destination": {"host": "legacy"}, "weight": 100}]}]}
    }))
    .expect("virtual service");
    services.create(&PostParams::default(), &service).await.expect("a valid VirtualService is accepted");
    let mut invalid = service.clone();
    invalid.metadata.name = Some("invalid".into());
    invalid.data["spec"]["http"][0]["route"][0]["weight"] = serde_json::json!("heavy");
    let refused = services.create(&PostParams::default(), &invalid).await;
    assert!(matches!(refused, Err(kube::Error::Api(ref status)) if status.code == 422), "{refused:?}");
}

#[tokio::test]
async fn enforces_rbac() {
    let server = KubeApiServer::start().await;
    server.create_namespace("shop").await;
    let stranger = server.client_as("system:serviceaccount:shop:nobody", &["system:serviceaccounts"]).await;
    let pods: Api<Pod> = Api::namespaced(stranger, "shop");
    let forbidden = pods.list(&Default::default()).await;
    assert!(matches!(forbidden, Err(kube::Error::Api(ref status)) if status.code == 403), "{forbidden:?}");
    let admin: Api<Pod> = Api::namespaced(server.client().await, "shop");
    assert!(admin.list(&Default::default()).await.is_ok());
}
