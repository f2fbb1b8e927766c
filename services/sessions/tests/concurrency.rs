//! Concurrent writers of one session never lose each other's changes.

#[macro_use]
mod support;

use std::time::Duration;

use ficus_proto::sessions::v1::UpdateSessionRequest;
use ficus_sessions_client::RetryPolicy;
use futures::future::join_all;
use support::{Backend, Harness, attributes};

const WRITERS: u64 = 50;
const INCREMENTS: u64 = 20;

on_both_backends!(fifty_writers_incrementing_with_compare_and_set_reach_exactly_one_thousand);
on_both_backends!(unconditional_updates_of_different_attributes_keep_every_write);

/// Every writer does read-increment-write through the client's `update`, which retries
/// on ABORTED; a lost update would leave the counter short of 1000.
async fn fifty_writers_incrementing_with_compare_and_set_reach_exactly_one_thousand(backend: Backend) {
    let harness = Harness::start(backend).await;
    // Fifty writers on one key is far beyond what one user's requests cause, so the test
    // allows many more attempts than the default; it must still succeed within them.
    let retry =
        RetryPolicy { max_attempts: 500, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(50) };
    let client = harness.client().with_retry(retry);
    let mut session = client.create().await.expect("a new session");
    client.update(&mut session, |session| session.set("counter", "0")).await.expect("the counter starts at 0");
    let id = session.id().to_owned();

    let writers = (0..WRITERS).map(|_| {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut session = client.load(&id).await.expect("GetSession").expect("the session exists");
            for _ in 0..INCREMENTS {
                client
                    .update(&mut session, |session| {
                        let counter: u64 = session.get_str("counter").and_then(|v| v.parse().ok()).unwrap_or(0);
                        session.set("counter", (counter + 1).to_string());
                    })
                    .await
                    .expect("the increment lands within the retry budget");
            }
        })
    });
    for writer in join_all(writers).await {
        writer.expect("the writer finished");
    }

    let session = client.load(&id).await.expect("GetSession").expect("the session exists");
    assert_eq!(session.get_str("counter"), Some("1000"));
    let conflicts = harness.counter("ficus_session_update_conflicts_total").await;
    assert!(conflicts > 0, "fifty writers never collided, so the test proved nothing");
}

/// With `expected_version` 0 the service itself makes sure a write that races another
/// neither fails nor loses the other, so writers of different attributes all land.
async fn unconditional_updates_of_different_attributes_keep_every_write(backend: Backend) {
    let harness = Harness::start(backend).await;
    let replica = match backend {
        Backend::Redis => Some(harness.replica().await),
        Backend::Embedded => None,
    };
    let mut grpc = harness.grpc();
    let session = support::create(&mut grpc, attributes(&[]), None).await;

    // On Redis, half the writers go through a second replica, so writes also race
    // between processes and not only within one.
    let writers = (0..8).map(|writer| {
        let mut grpc = match &replica {
            Some(replica) if writer % 2 == 1 => replica.grpc(),
            _ => harness.grpc(),
        };
        let id = session.id.clone();
        tokio::spawn(async move {
            for round in 0..5 {
                let request = UpdateSessionRequest {
                    id: id.clone(),
                    set: attributes(&[(&format!("writer-{writer}"), round.to_string().as_bytes())]),
                    ..UpdateSessionRequest::default()
                };
                grpc.update_session(request).await.expect("an unconditional update succeeds");
            }
        })
    });
    for writer in join_all(writers).await {
        writer.expect("the writer finished");
    }

    let stored = support::get(&mut grpc, &session.id).await.expect("GetSession");
    let expected = (0..8).map(|writer| (format!("writer-{writer}"), b"4".to_vec())).collect();
    assert_eq!(stored.attributes, expected);
}
