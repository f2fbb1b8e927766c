//! Fail static: three traffic replicas on one Redis keep serving their last routes while
//! Redis is down, stay ready throughout, refuse route changes they cannot store, and pick
//! up a change made after Redis returns.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use ficus_proto::traffic::v1 as proto;
use ficus_testkit::{Backend, RedisServer, eventually};
use support::{Traffic, route};
use tonic::Code;

/// How long Redis stays down.
const OUTAGE: Duration = Duration::from_secs(20);

/// Requests each load loop sends at most, so a stuck run still ends.
const MAX_REQUESTS: u64 = 200_000;

fn weights(canary: u32) -> proto::SetWeightsRequest {
    proto::SetWeightsRequest {
        route: "web".into(),
        weights: [("stable".to_owned(), 10_000 - canary), ("canary".to_owned(), canary)].into(),
        expected_generation: 0,
        fencing_token: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_their_last_routes_and_stay_ready_while_redis_is_down() {
    let mut redis = RedisServer::new();
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let url = redis.url();
        let data = tempfile::tempdir().expect("temp dir");
        replicas.push(Traffic::start_configured(data, move |config| config.store = url).await);
    }
    replicas[0].put(route("web", stable.addr(), canary.addr(), 2_000)).await;
    for replica in &replicas {
        eventually(Duration::from_secs(10), || {
            let mut api = replica.api.clone();
            async move { api.get_route(proto::GetRouteRequest { name: "web".into() }).await.is_ok() }
        })
        .await;
    }

    // Load through every replica until told to stop; any answer not from a backend counts.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let replicas = Arc::new(replicas);
    let loads: Vec<_> = (0..replicas.len())
        .map(|index| {
            let (replicas, stop, answered, failed) = (replicas.clone(), stop.clone(), answered.clone(), failed.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) && sent < MAX_REQUESTS {
                    sent += 1;
                    let answer = replicas[index].get("/", &[]).await;
                    if answer.status == 200 && answer.backend.is_some() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    redis.stop();
    let outage_ends = tokio::time::Instant::now() + OUTAGE;
    let mut refused_change = false;
    while tokio::time::Instant::now() < outage_ends {
        for replica in replicas.iter() {
            let admin = replica.running.as_ref().expect("running").admin_addr;
            let (code, body) = ficus_testkit::http::get(admin, "/readyz").await.expect("readyz answers");
            assert_eq!(code, 200, "a replica went unready without its store: {body}");
        }
        if !refused_change {
            let change = replicas[0].api.clone().set_weights(weights(5_000)).await;
            assert_eq!(change.expect_err("no store, no change").code(), Code::Unavailable);
            refused_change = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let admin = replicas[1].running.as_ref().expect("running").admin_addr;
    let (_, verbose) = ficus_testkit::http::get(admin, "/readyz?verbose").await.expect("readyz answers");
    assert!(verbose.contains("store (reported): down"), "the outage is reported: {verbose}");
    let (_, metrics) = ficus_testkit::http::get(admin, "/metrics").await.expect("metrics");
    assert!(metrics.contains("ficus_dependency_up{dependency=\"store\"} 0"), "{metrics}");
    redis.start();

    // A change made once Redis is back reaches every replica.
    eventually(Duration::from_secs(20), || {
        let mut api = replicas[1].api.clone();
        async move { api.set_weights(weights(7_000)).await.is_ok() }
    })
    .await;
    for replica in replicas.iter() {
        eventually(Duration::from_secs(20), || {
            let mut api = replica.api.clone();
            async move {
                let route = api.get_route(proto::GetRouteRequest { name: "web".into() }).await;
                route.is_ok_and(|route| route.into_inner().weights.get("canary") == Some(&7_000))
            }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for load in loads {
        load.await.expect("load loop");
    }
    let (answered, failed) = (answered.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(answered > 100, "load went through: {answered}");
    assert_eq!(failed, 0, "every request was answered by a backend ({answered} were)");
}
