//! The Rollout resource in a real API server: its CRD (generated from the Rust types and
//! shipped in the chart) validates objects, and the planner's controller starts, steers,
//! aborts and cleans up rollouts as the objects say, mirroring their state into status.

mod support;

use std::time::Duration;

use ficus_planner::kubernetes::{
    KubernetesSettings,
    resource::{Rollout, crd_yaml},
};
use ficus_testkit::{KubeApiServer, wait_until};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::Peers;

const NAMESPACE: &str = "shop";

fn crd_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/ficus/crds/rollouts.ficus.dev.yaml")
}

#[test]
fn the_chart_ships_the_crd_generated_from_the_types() {
    let generated = crd_yaml().expect("crd yaml");
    if std::env::var_os("FICUS_BLESS").is_some() {
        std::fs::write(crd_file(), &generated).expect("write the CRD");
    }
    let shipped = std::fs::read_to_string(crd_file()).unwrap_or_default();
    assert_eq!(shipped, generated, "helm/ficus/crds is stale; regenerate with FICUS_BLESS=1");
}

async fn status(rollouts: &Api<Rollout>, name: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_until(Duration::from_secs(60), || {
        let rollouts = rollouts.clone();
        let name = name.to_owned();
        let check = &check;
        async move {
            let object = rollouts.get_opt(&name).await.ok()??;
            let status = serde_json::to_value(object.status?).ok()?;
            check(&status).then_some(status)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_editing_and_deleting_rollout_objects_drives_the_planner() {
    let server = KubeApiServer::start().await;
    server.install_crds(&crd_file()).await;
    server.create_namespace(NAMESPACE).await;
    let peers = Peers::start().await;
    let kubeconfig = server.kubeconfig().to_path_buf();
    let store = peers.data.path().join("planner").display().to_string();
    let (_planner, _api, _stop) = peers
        .planner_with(&store, |config| {
            config.kubernetes = Some(KubernetesSettings { kubeconfig: Some(kubeconfig), ..Default::default() });
        })
        .await;
    let rollouts: Api<Rollout> = Api::namespaced(server.client().await, NAMESPACE);

    // The schema refuses what the API server can check itself.
    let missing_route: Rollout = serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "broken"},
        "spec": {"stableBackend": "legacy", "canaryBackend": "k8s"}
    }))
    .expect("object");
    let refused = rollouts.create(&PostParams::default(), &missing_route).await;
    assert!(matches!(refused, Err(kube::Error::Api(ref status)) if status.code == 422), "{refused:?}");

    // A canary that waits at 20% for a promotion that never comes.
    let rollout: Rollout = serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "checkout"},
        "spec": {"route": "checkout", "stableBackend": "legacy", "canaryBackend": "k8s",
                 "canary": {"steps": [{"setWeight": 20}, {"pause": {}}]},
                 "failurePolicy": "ABORT_TO_ZERO"}
    }))
    .expect("object");
    rollouts.create(&PostParams::default(), &rollout).await.expect("create the Rollout");
    let paused = status(&rollouts, "checkout", |status| status["phase"] == "PAUSED").await;
    assert_eq!(paused["canaryWeight"], "20%");
    assert_eq!(paused["weights"]["k8s"], 2_000);
    assert!(paused["rolloutId"].as_str().is_some_and(|id| id.starts_with("shop.checkout.")), "{paused}");
    let condition = |status: &serde_json::Value, kind: &str| {
        status["conditions"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["type"] == kind))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(condition(&paused, "SpecValid")["status"], "True");
    assert_eq!(condition(&paused, "Progressing")["status"], "True");
    assert_eq!(peers.canary_weight().await, 2_000);
    let object = rollouts.get("checkout").await.expect("get");
    assert!(object.metadata.finalizers.unwrap_or_default().iter().any(|f| f == "ficus.dev/abort-on-delete"));

    // Git says abort: traffic goes back to the stable backend.
    let abort = json!({"spec": {"abort": true}});
    rollouts.patch("checkout", &PatchParams::default(), &Patch::Merge(&abort)).await.expect("abort");
    let aborted = status(&rollouts, "checkout", |status| status["phase"] == "ABORTED").await;
    assert_eq!(condition(&aborted, "Progressing")["status"], "False");
    assert_eq!(peers.canary_weight().await, 0);

    // Deleting the object lets it go once nothing runs.
    rollouts.delete("checkout", &DeleteParams::default()).await.expect("delete");
    wait_until(Duration::from_secs(30), || {
        let rollouts = rollouts.clone();
        async move { rollouts.get_opt("checkout").await.ok().and_then(|found| found.is_none().then_some(())) }
    })
    .await;

    // A spec the planner refuses is reported, not retried blindly.
    let unknown: Rollout = serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "elsewhere"},
        "spec": {"route": "checkout", "stableBackend": "legacy", "canaryBackend": "nowhere", "strangler": {"window": "10m"}}
    }))
    .expect("object");
    rollouts.create(&PostParams::default(), &unknown).await.expect("create");
    let refused = status(&rollouts, "elsewhere", |status| !condition(status, "SpecValid").is_null()).await;
    let valid = condition(&refused, "SpecValid");
    assert_eq!(valid["status"], "False", "{refused}");
    assert!(valid["message"].as_str().is_some_and(|m| m.contains("nowhere")), "{refused}");

    // The example in the repository is a valid object the planner accepts.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernetes/rollout.yaml");
    let example: Rollout =
        serde_yaml_ng::from_str(&std::fs::read_to_string(example).expect("example")).expect("a Rollout object");
    rollouts.create(&PostParams::default(), &example).await.expect("the API server accepts the example");
    let accepted =
        status(&rollouts, "checkout-migration", |status| condition(status, "SpecValid")["status"] == "True").await;
    assert_eq!(accepted["phase"], "PROGRESSING", "{accepted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_rollout_aborts_it_first() {
    let server = KubeApiServer::start().await;
    server.install_crds(&crd_file()).await;
    server.create_namespace(NAMESPACE).await;
    let peers = Peers::start().await;
    let kubeconfig = server.kubeconfig().to_path_buf();
    let store = peers.data.path().join("planner").display().to_string();
    let (_planner, mut api, _stop) = peers
        .planner_with(&store, |config| {
            config.kubernetes = Some(KubernetesSettings {
                kubeconfig: Some(kubeconfig),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            });
        })
        .await;
    let rollouts: Api<Rollout> = Api::namespaced(server.client().await, NAMESPACE);
    let rollout: Rollout = serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "checkout"},
        "spec": {"route": "checkout", "stableBackend": "legacy", "canaryBackend": "k8s",
                 "canary": {"steps": [{"setWeight": 10}, {"pause": {"duration": "1h"}}]}}
    }))
    .expect("object");
    rollouts.create(&PostParams::default(), &rollout).await.expect("create");
    let running = status(&rollouts, "checkout", |status| status["weights"]["k8s"] == 1_000).await;
    let id = running["rolloutId"].as_str().expect("id").to_owned();
    rollouts.delete("checkout", &DeleteParams::default()).await.expect("delete");
    wait_until(Duration::from_secs(30), || {
        let rollouts = rollouts.clone();
        async move { rollouts.get_opt("checkout").await.ok().and_then(|found| found.is_none().then_some(())) }
    })
    .await;
    let ended = api.get_rollout(ficus_proto::planner::v1::GetRolloutRequest { id }).await.expect("get").into_inner();
    assert_eq!(ended.phase(), ficus_proto::planner::v1::Phase::Aborted);
    assert_eq!(peers.canary_weight().await, 0);
}
