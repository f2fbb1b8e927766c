//! A Redis outage: calls fail fast with UNAVAILABLE, the service reports itself not
//! ready, and both recover by themselves when Redis is back.

mod support;

use std::time::{Duration, Instant};

use ficus_proto::sessions::v1::{CreateSessionRequest, GetSessionRequest, UpdateSessionRequest};
use ficus_sessions_client::Error;
use ficus_testkit::{eventually, http};
use support::{Backend, Harness, attributes};
use tonic::Code;

/// How fast a call must fail while Redis is down: well under a client's patience, and
/// what the store's two-second round-trip deadline allows.
const FAIL_FAST: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_redis_is_down_and_recover_when_it_is_back() {
    let mut harness = Harness::start(Backend::Redis).await;
    let mut grpc = harness.grpc();
    // The application client, whose calls share one Pipeline stream.
    let client = harness.client();
    let admin = harness.admin_addr();
    let session = support::create(&mut grpc, attributes(&[("user", b"ada")]), None).await;
    assert_eq!(http::get(admin, "/readyz").await.expect("/readyz answers").0, 200);

    harness.redis().stop();

    let started = Instant::now();
    let read = grpc.get_session(GetSessionRequest { id: session.id.clone(), touch: true }).await;
    assert!(started.elapsed() < FAIL_FAST, "GetSession took {:?}", started.elapsed());
    support::assert_code(read, Code::Unavailable);

    let started = Instant::now();
    let request = UpdateSessionRequest {
        id: session.id.clone(),
        expected_version: session.version,
        set: attributes(&[("cart", b"1 item")]),
        ..UpdateSessionRequest::default()
    };
    let update = grpc.update_session(request).await;
    assert!(started.elapsed() < FAIL_FAST, "UpdateSession took {:?}", started.elapsed());
    support::assert_code(update, Code::Unavailable);

    let started = Instant::now();
    let create = grpc.create_session(CreateSessionRequest::default()).await;
    assert!(started.elapsed() < FAIL_FAST, "CreateSession took {:?}", started.elapsed());
    support::assert_code(create, Code::Unavailable);

    let started = Instant::now();
    let pipelined = client.peek(&session.id).await;
    assert!(started.elapsed() < FAIL_FAST, "a pipelined read took {:?}", started.elapsed());
    assert!(matches!(&pipelined, Err(Error::Rpc(status)) if status.code() == Code::Unavailable), "{pipelined:?}");

    eventually(Duration::from_secs(10), || async move { matches!(http::get(admin, "/readyz").await, Ok((503, _))) })
        .await;

    harness.redis().start();

    eventually(Duration::from_secs(10), || {
        let mut grpc = grpc.clone();
        let id = session.id.clone();
        async move { support::get(&mut grpc, &id).await.is_ok() }
    })
    .await;
    eventually(Duration::from_secs(10), || async move { matches!(http::get(admin, "/readyz").await, Ok((200, _))) })
        .await;
    // Same service, same session, and writes work again.
    let stored = support::get(&mut grpc, &session.id).await.expect("GetSession after the outage");
    assert_eq!(stored.attributes, session.attributes);
    let request = UpdateSessionRequest {
        id: session.id.clone(),
        expected_version: stored.version,
        set: attributes(&[("cart", b"1 item")]),
        ..UpdateSessionRequest::default()
    };
    grpc.update_session(request).await.expect("UpdateSession after the outage");
    // The same application client works again, on the same stream.
    let mut pipelined = client.peek(&session.id).await.expect("a pipelined read").expect("the session is there");
    pipelined.set("theme", "dark");
    client.save(&mut pipelined).await.expect("a pipelined save after the outage");
    support::create(&mut grpc, attributes(&[]), None).await;
}
