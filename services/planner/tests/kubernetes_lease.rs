//! Leadership through a real `coordination.k8s.io` Lease: exactly one planner leads; a
//! stopping leader hands over at once; a vanished one is replaced once its Lease expires.

use std::time::{Duration, Instant};

use ficus_planner::kubernetes::lease;
use ficus_testkit::{KubeApiServer, wait_until};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leads_and_the_other_takes_over_when_it_stops() {
    let server = KubeApiServer::start().await;
    server.create_namespace("ficus").await;
    let client = server.client().await;
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a = lease::run(client.clone(), "ficus", "planner", "a".into(), TTL, stop_a.clone());
    let b = lease::run(client.clone(), "ficus", "planner", "b".into(), TTL, stop_b.clone());
    let leader = wait_until(Duration::from_secs(10), || {
        let (a, b) = (a.clone(), b.clone());
        async move {
            match (*a.borrow(), *b.borrow()) {
                (Some(_), None) => Some("a"),
                (None, Some(_)) => Some("b"),
                _ => None,
            }
        }
    })
    .await;
    // It stays one: watch a few renewals.
    let until = Instant::now() + TTL * 2;
    while Instant::now() < until {
        assert!(!(a.borrow().is_some() && b.borrow().is_some()), "two leaders");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (stop, other) = if leader == "a" { (stop_a, b) } else { (stop_b, a) };
    stop.cancel();
    let started = Instant::now();
    wait_until(Duration::from_secs(10), || {
        let other = other.clone();
        async move { other.borrow().map(|_| ()) }
    })
    .await;
    assert!(started.elapsed() < TTL * 2, "handed over in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_by_a_dead_holder_is_taken_only_after_it_expires() {
    let server = KubeApiServer::start().await;
    server.create_namespace("ficus").await;
    let client = server.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "ficus");
    let now = k8s_openapi::jiff::Timestamp::now();
    let ghost: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "planner"},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 3, "renewTime": now.to_string(), "leaseTransitions": 4}
    }))
    .expect("lease");
    leases.create(&PostParams::default(), &ghost).await.expect("create");
    let started = Instant::now();
    let stop = CancellationToken::new();
    let leadership = lease::run(client, "ficus", "planner", "heir".into(), TTL, stop.clone());
    wait_until(Duration::from_secs(15), || {
        let leadership = leadership.clone();
        async move { leadership.borrow().map(|_| ()) }
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(2_500), "took a live lease after {:?}", started.elapsed());
    let held = leases.get("planner").await.expect("get").spec.expect("spec");
    assert_eq!(held.holder_identity.as_deref(), Some("heir"));
    assert_eq!(held.lease_transitions, Some(5));
    stop.cancel();
}
