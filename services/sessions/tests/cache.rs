//! Updates written from a record the replica had cached, without reading the session
//! first, answer exactly as updates that read it: they keep an expiry someone extended,
//! lose to writes they did not see, and never bring back a deleted or expired session.

#[macro_use]
mod support;

use std::time::{Duration, SystemTime};

use ficus_proto::sessions::v1::{
    CreateSessionRequest, DeleteSessionRequest, Session, TouchSessionRequest, UpdateSessionRequest,
    session_store_client::SessionStoreClient,
};
use support::{Backend, Harness, attributes, expires_at};
use tonic::{Code, transport::Channel};

on_both_backends!(
    an_update_from_the_cache_keeps_an_expiry_a_touch_extended,
    updates_from_the_cache_end_at_the_maximum_lifetime,
);

const FROM_CACHE: &str = "ficus_session_updates_from_cache_total";

/// An update of `id` at `expected_version` that sets `name` to `value`.
fn set(id: &str, expected_version: u64, name: &str, value: &[u8]) -> UpdateSessionRequest {
    UpdateSessionRequest {
        id: id.to_owned(),
        expected_version,
        set: attributes(&[(name, value)]),
        ..UpdateSessionRequest::default()
    }
}

async fn update(
    grpc: &mut SessionStoreClient<Channel>,
    request: UpdateSessionRequest,
) -> Result<Session, tonic::Status> {
    grpc.update_session(request).await.map(tonic::Response::into_inner)
}

async fn an_update_from_the_cache_keeps_an_expiry_a_touch_extended(backend: Backend) {
    let harness = Harness::start(backend).await;
    // On Redis the "remember me" touch comes through another replica, which this one's
    // cache knows nothing of.
    let replica = match backend {
        Backend::Redis => Some(harness.replica().await),
        Backend::Embedded => None,
    };
    let mut grpc = harness.grpc();
    let mut toucher = replica.as_ref().map_or_else(|| harness.grpc(), support::Replica::grpc);
    let session = support::create(&mut grpc, attributes(&[]), Some(Duration::from_secs(60))).await;

    let asked = SystemTime::now();
    let request = TouchSessionRequest { id: session.id.clone(), ttl: Some(Duration::from_secs(3600).into()) };
    let touched = toucher.touch_session(request).await.expect("TouchSession").into_inner();
    assert_eq!(touched.version, session.version, "a touch keeps the version, so the cached record still matches");
    assert!(expires_at(&touched) >= asked + Duration::from_secs(3599));
    // The store's own deadline, computed a moment after the touch's answer.
    let extended = expires_at(&support::get(&mut grpc, &session.id).await.expect("GetSession"));

    let before = harness.counter(FROM_CACHE).await;
    let updated = update(&mut grpc, set(&session.id, session.version, "theme", b"dark")).await.expect("UpdateSession");
    assert_eq!(harness.counter(FROM_CACHE).await, before + 1, "the update was written from the cached record");
    assert!(updated.version > session.version);
    // The update slides by the 60 s TTL, which would cut the touched expiry short.
    assert_eq!(expires_at(&updated), extended, "the update moved the extended expiry");
    let stored = support::get(&mut grpc, &session.id).await.expect("GetSession");
    assert_eq!((stored.version, expires_at(&stored)), (updated.version, expires_at(&updated)));
    assert_eq!(stored.attributes, attributes(&[("theme", b"dark")]));
}

async fn updates_from_the_cache_end_at_the_maximum_lifetime(backend: Backend) {
    let harness = Harness::start(backend).await;
    let mut grpc = harness.grpc();
    let request = CreateSessionRequest {
        attributes: attributes(&[]),
        ttl: Some(Duration::from_millis(800).into()),
        max_lifetime: Some(Duration::from_millis(1500).into()),
    };
    let session = grpc.create_session(request).await.expect("CreateSession").into_inner();
    let max_expires_at = support::time(session.max_expires_at.expect("max_expires_at is set"));

    let before = harness.counter(FROM_CACHE).await;
    let mut version = session.version;
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let ended = loop {
        pace.tick().await;
        let asked = SystemTime::now();
        match update(&mut grpc, set(&session.id, version, "clicks", version.to_string().as_bytes())).await {
            Ok(updated) => {
                assert!(asked < max_expires_at, "updated after its maximum lifetime");
                assert!(expires_at(&updated) <= max_expires_at, "slid beyond its maximum lifetime");
                version = updated.version;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
                break SystemTime::now();
            }
        }
        assert!(SystemTime::now() < max_expires_at + Duration::from_secs(5), "updates kept it alive past its maximum");
    };
    assert!(ended >= max_expires_at, "it ended before its maximum lifetime");
    assert!(harness.counter(FROM_CACHE).await > before + 3, "the updates did not come from the cache");
    support::assert_code(support::get(&mut grpc, &session.id).await, Code::NotFound);
}

/// A replica whose cached record is stale answers as if it had read the session: it loses
/// to the write it did not see, carries that write forward once told of it, and does not
/// bring back a session another replica deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_stale_cached_record_answers_as_if_it_had_read() {
    let harness = Harness::start(Backend::Redis).await;
    let other = harness.replica().await;
    let (mut grpc, mut elsewhere) = (harness.grpc(), other.grpc());
    let session = support::create(&mut grpc, attributes(&[("cart", b"empty")]), None).await;

    // The other replica writes; this one still holds the created record.
    let moved = update(&mut elsewhere, set(&session.id, session.version, "cart", b"1 item")).await.expect("update");
    let status = update(&mut grpc, set(&session.id, session.version, "cart", b"2 items")).await.expect_err("stale");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(ficus_kit::status::conflict_version(&status), Some(moved.version));
    let stored = support::get(&mut grpc, &session.id).await.expect("GetSession");
    assert_eq!((stored.version, stored.attributes), (moved.version, attributes(&[("cart", b"1 item")])));

    // An unconditional update from the stale record goes again on what is stored.
    let request = UpdateSessionRequest {
        id: session.id.clone(),
        set: attributes(&[("user", b"ada")]),
        ..UpdateSessionRequest::default()
    };
    let unconditional = update(&mut grpc, request).await.expect("an unconditional update succeeds");
    assert_eq!(unconditional.attributes, attributes(&[("cart", b"1 item"), ("user", b"ada")]));

    // Deleted elsewhere: the cached record of the last write does not revive it.
    let request = DeleteSessionRequest { id: session.id.clone() };
    assert!(elsewhere.delete_session(request).await.expect("DeleteSession").into_inner().existed);
    let status = update(&mut grpc, set(&session.id, unconditional.version, "cart", b"3 items")).await;
    support::assert_code(status, Code::NotFound);
    let request = UpdateSessionRequest { id: session.id.clone(), ..UpdateSessionRequest::default() };
    support::assert_code(update(&mut grpc, request).await, Code::NotFound);
    support::assert_code(support::get(&mut grpc, &session.id).await, Code::NotFound);
}
