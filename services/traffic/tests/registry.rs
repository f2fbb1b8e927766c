//! Replicas' route tables follow each other through the shared store, including what was
//! written while a replica was starting.

use std::{sync::Arc, time::Duration};

use ficus_kit::store::Store;
use ficus_proto::traffic::v1 as proto;
use ficus_testkit::{RedisServer, eventually};
use ficus_traffic::{registry::Registry, stats::Stats, table::LiveTable};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sees_routes_written_between_its_load_and_its_first_change() {
    let redis = RedisServer::new();
    let replica = || async {
        let store = Store::open(&redis.url(), "traffic").await.expect("the store opens");
        Registry::open(store, Arc::new(LiveTable::new(Stats::default()))).await.expect("the registry loads")
    };
    let writer = replica().await;
    let follower = replica().await;

    // Written after the follower loaded its table and before it follows the store, so no
    // change notification can tell it.
    let route = |weights: &[(&str, u32)]| proto::Route {
        name: "checkout".into(),
        backends: ["stable", "canary"]
            .map(|name| proto::Backend { name: name.into(), endpoints: vec!["127.0.0.1:9".into()] })
            .into(),
        weights: weights.iter().map(|(name, weight)| ((*name).to_owned(), *weight)).collect(),
        ..Default::default()
    };
    writer.put(&route(&[("stable", 10_000)]), 0).await.expect("the route is written");
    assert!(follower.table().load().get("checkout").is_none());

    let shutdown = CancellationToken::new();
    tokio::spawn(follower.clone().follow(shutdown.clone()));
    let canary_weight = |registry: &Registry| {
        let table = registry.table().load();
        table.get("checkout").map(|route| route.to_proto().weights.get("canary").copied().unwrap_or(0))
    };
    eventually(Duration::from_secs(10), || std::future::ready(canary_weight(&follower) == Some(0))).await;

    // Later writes arrive as changes.
    writer.put(&route(&[("stable", 9_000), ("canary", 1_000)]), 0).await.expect("the weights change");
    eventually(Duration::from_secs(10), || std::future::ready(canary_weight(&follower) == Some(1_000))).await;
    shutdown.cancel();
}
