//! A rollout that scales its Deployments with the weight, against a real API server: the
//! canary grows and is ready before traffic moves, the stable shrinks after, and the pod
//! count never leaves the maxSurge / maxUnavailable budget. Pods becoming ready is played
//! by writing the Deployments' status, as a kubelet and the Deployment controller would.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
    time::Duration,
};

use ficus_planner::kubernetes::KubernetesSettings;
use ficus_proto::planner::v1::{self as proto, Phase};
use ficus_testkit::{KubeApiServer, wait_until};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::Peers;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "shop";

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "web", "image": "shop"}]}}}
    }))
    .expect("deployment")
}

/// Marks every pod a Deployment asks for as ready, until `stop`; records the most pods
/// the two Deployments ever asked for together.
async fn kubelet(api: Api<Deployment>, stop: CancellationToken, most: Arc<AtomicI32>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !stop.is_cancelled() && tokio::time::Instant::now() < deadline {
        let mut total = 0;
        for name in ["shop-v1", "shop-v2"] {
            let Ok(deployment) = api.get(name).await else { continue };
            let replicas = deployment.spec.and_then(|spec| spec.replicas).unwrap_or(0);
            total += replicas;
            let status =
                json!({"status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}});
            let _ = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await;
        }
        most.fetch_max(total, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployments_follow_the_weight_within_the_surge_budget() {
    let server = KubeApiServer::start().await;
    server.create_namespace(NAMESPACE).await;
    let deployments: Api<Deployment> = Api::namespaced(server.client().await, NAMESPACE);
    deployments.create(&PostParams::default(), &deployment("shop-v1", 10)).await.expect("stable");
    deployments.create(&PostParams::default(), &deployment("shop-v2", 0)).await.expect("canary");
    let stop = CancellationToken::new();
    let most = Arc::new(AtomicI32::new(0));
    tokio::spawn(kubelet(deployments.clone(), stop.clone(), most.clone()));

    let peers = Peers::start().await;
    let kubeconfig = server.kubeconfig().to_path_buf();
    let store = peers.data.path().join("planner").display().to_string();
    let (_planner, mut api, _halt) = peers
        .planner_with(&store, |config| {
            config.kubernetes = Some(KubernetesSettings { kubeconfig: Some(kubeconfig), ..Default::default() });
        })
        .await;
    let spec = proto::RolloutSpec {
        route: "checkout".into(),
        stable_backend: "legacy".into(),
        canary_backend: "k8s".into(),
        strategy: Some(proto::rollout_spec::Strategy::Canary(proto::CanaryStrategy {
            steps: vec![
                proto::CanaryStep { step: Some(proto::canary_step::Step::SetWeight(20.0)) },
                proto::CanaryStep { step: Some(proto::canary_step::Step::SetWeight(50.0)) },
                proto::CanaryStep { step: Some(proto::canary_step::Step::Pause(proto::PauseStep { duration: None })) },
            ],
        })),
        scaling: Some(proto::Scaling {
            replicas: 10,
            max_surge: "25%".into(),
            max_unavailable: "0".into(),
            deployments: Some(proto::ScaledDeployments {
                namespace: NAMESPACE.into(),
                stable: "shop-v1".into(),
                canary: "shop-v2".into(),
            }),
        }),
        ..Default::default()
    };
    let created = api
        .create_rollout(proto::CreateRolloutRequest { spec: Some(spec), id: "scaled".into() })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.id, "scaled");
    wait_until(Duration::from_secs(90), || {
        let mut api = api.clone();
        async move {
            let rollout = api.get_rollout(proto::GetRolloutRequest { id: "scaled".into() }).await.ok()?.into_inner();
            (rollout.phase() == Phase::Paused).then_some(())
        }
    })
    .await;
    let replicas = |name: &'static str| {
        let deployments = deployments.clone();
        async move { deployments.get(name).await.expect("get").spec.and_then(|spec| spec.replicas) }
    };
    wait_until(Duration::from_secs(30), || async {
        (replicas("shop-v1").await == Some(5) && replicas("shop-v2").await == Some(5)).then_some(())
    })
    .await;
    assert_eq!(peers.canary_weight().await, 5_000);

    // Aborted: traffic back on stable at once, then the Deployments back to 10 and 0.
    api.abort(proto::AbortRequest { id: "scaled".into(), reason: "test".into() }).await.expect("abort");
    wait_until(Duration::from_secs(10), || async { (peers.canary_weight().await == 0).then_some(()) }).await;
    wait_until(Duration::from_secs(60), || async {
        (replicas("shop-v1").await == Some(10) && replicas("shop-v2").await == Some(0)).then_some(())
    })
    .await;
    stop.cancel();
    assert!(
        most.load(Ordering::SeqCst) <= 13,
        "the pods exceeded replicas + maxSurge: {}",
        most.load(Ordering::SeqCst)
    );
}
