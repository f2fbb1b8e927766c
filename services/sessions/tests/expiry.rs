//! Idle expiry, sliding expiry and the maximum lifetime.

#[macro_use]
mod support;

use std::time::{Duration, Instant, SystemTime};

use ficus_proto::sessions::v1::{CreateSessionRequest, GetSessionRequest, Session, TouchSessionRequest};
use ficus_testkit::eventually;
use support::{Backend, Harness, attributes, expires_at};
use tonic::Code;

on_both_backends!(
    an_idle_session_expires_and_is_never_returned_after,
    touching_keeps_a_session_alive_past_its_original_expiry_without_changing_its_version,
    the_maximum_lifetime_ends_a_session_however_often_it_is_touched,
    an_explicit_ttl_sets_the_expiry_and_an_update_keeps_it,
);

/// How often the simulated user makes a request in the touch tests.
const USER_PACE: Duration = Duration::from_millis(150);

async fn an_idle_session_expires_and_is_never_returned_after(backend: Backend) {
    let harness = Harness::start(backend).await;
    let mut grpc = harness.grpc();
    let session = support::create(&mut grpc, attributes(&[("user", b"ada")]), Some(Duration::from_millis(600))).await;
    // The store's deadline, as a read reports it; the create's answer was computed a
    // moment before the store computed its own.
    let deadline = expires_at(&support::get(&mut grpc, &session.id).await.expect("a fresh session is there"));
    assert!(deadline >= expires_at(&session));

    // Poll until it is gone; every successful read must have been asked before the deadline.
    eventually(Duration::from_secs(10), || {
        let mut grpc = grpc.clone();
        let id = session.id.clone();
        async move {
            let asked = SystemTime::now();
            match support::get(&mut grpc, &id).await {
                Ok(found) => {
                    assert!(asked < deadline, "read at {asked:?}, after its expiry {deadline:?}");
                    assert_eq!(found.attributes, attributes(&[("user", b"ada")]));
                    false
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::NotFound, "{status:?}");
                    true
                }
            }
        }
    })
    .await;
    assert!(SystemTime::now() >= deadline - Duration::from_millis(5), "the session vanished before its expiry");
    // Touching or updating an expired session does not bring it back.
    let touched = grpc.touch_session(TouchSessionRequest { id: session.id.clone(), ttl: None }).await;
    support::assert_code(touched, Code::NotFound);
    let read = grpc.get_session(GetSessionRequest { id: session.id.clone(), touch: true }).await;
    support::assert_code(read, Code::NotFound);
}

async fn touching_keeps_a_session_alive_past_its_original_expiry_without_changing_its_version(backend: Backend) {
    let harness = Harness::start(backend).await;
    let mut grpc = harness.grpc();
    let ttl = Duration::from_millis(800);
    let session = support::create(&mut grpc, attributes(&[("user", b"ada")]), Some(ttl)).await;
    let original_expiry = expires_at(&session);

    // A user active every 150 ms for three TTLs, alternating both ways of touching.
    let mut last = session.clone();
    let mut pace = tokio::time::interval(USER_PACE);
    let mut touches = 0;
    while SystemTime::now() < original_expiry + 2 * ttl {
        pace.tick().await;
        let touched: Session = if touches % 2 == 0 {
            grpc.get_session(GetSessionRequest { id: session.id.clone(), touch: true }).await
        } else {
            grpc.touch_session(TouchSessionRequest { id: session.id.clone(), ttl: None }).await
        }
        .expect("a session in use stays alive")
        .into_inner();
        assert_eq!(touched.version, session.version, "a touch changed the version");
        assert_eq!(touched.attributes, session.attributes);
        assert!(expires_at(&touched) >= expires_at(&last), "a touch moved the expiry backwards");
        last = touched;
        touches += 1;
    }
    let read = support::get(&mut grpc, &session.id).await.expect("alive well past its original expiry");
    assert_eq!(read.version, session.version);
    assert!(expires_at(&read) > original_expiry + ttl);

    // Once the user stops, it expires one TTL after the last touch.
    let stopped = Instant::now();
    eventually(Duration::from_secs(10), || {
        let mut grpc = grpc.clone();
        let id = session.id.clone();
        async move { support::get(&mut grpc, &id).await.is_err_and(|status| status.code() == Code::NotFound) }
    })
    .await;
    assert!(stopped.elapsed() < ttl + Duration::from_secs(2), "it outlived its TTL by far");
}

async fn the_maximum_lifetime_ends_a_session_however_often_it_is_touched(backend: Backend) {
    let harness = Harness::start(backend).await;
    let mut grpc = harness.grpc();
    let request = CreateSessionRequest {
        attributes: attributes(&[]),
        ttl: Some(Duration::from_millis(800).into()),
        max_lifetime: Some(Duration::from_millis(2000).into()),
    };
    let session = grpc.create_session(request).await.expect("CreateSession").into_inner();
    let max_expires_at = support::time(session.max_expires_at.expect("max_expires_at is set"));
    let created_at = support::time(session.created_at.expect("created_at is set"));
    assert_eq!(max_expires_at.duration_since(created_at).ok(), Some(Duration::from_millis(2000)));

    let mut pace = tokio::time::interval(USER_PACE);
    let ended = loop {
        pace.tick().await;
        let asked = SystemTime::now();
        match grpc.get_session(GetSessionRequest { id: session.id.clone(), touch: true }).await {
            Ok(touched) => {
                let touched = touched.into_inner();
                assert!(asked < max_expires_at, "returned after its maximum lifetime");
                assert!(expires_at(&touched) <= max_expires_at, "touched beyond its maximum lifetime");
            }
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
                break SystemTime::now();
            }
        }
        assert!(SystemTime::now() < max_expires_at + Duration::from_secs(5), "touches kept it alive past its maximum");
    };
    // Touches kept it alive past its first idle expiry, until the maximum ended it.
    assert!(ended >= max_expires_at, "it ended before its maximum lifetime");
    let touched = grpc.touch_session(TouchSessionRequest { id: session.id.clone(), ttl: None }).await;
    support::assert_code(touched, Code::NotFound);
}

async fn an_explicit_ttl_sets_the_expiry_and_an_update_keeps_it(backend: Backend) {
    let harness = Harness::start(backend).await;
    let mut grpc = harness.grpc();
    let session = support::create(&mut grpc, attributes(&[]), Some(Duration::from_secs(60))).await;

    // TouchSession with a TTL sets the expiry that far from now, even shorter.
    let asked = SystemTime::now();
    let request = TouchSessionRequest { id: session.id.clone(), ttl: Some(Duration::from_secs(5).into()) };
    let touched = grpc.touch_session(request).await.expect("TouchSession").into_inner();
    assert_eq!(touched.version, session.version);
    let expiry = expires_at(&touched);
    // Deadlines are whole milliseconds, rounded down.
    let earliest = asked + Duration::from_secs(5) - Duration::from_millis(1);
    assert!(expiry >= earliest && expiry < asked + Duration::from_secs(7), "{expiry:?}");

    // UpdateSession with a TTL keeps it as the session's TTL: later touches slide by it.
    let request = ficus_proto::sessions::v1::UpdateSessionRequest {
        id: session.id.clone(),
        ttl: Some(Duration::from_secs(600).into()),
        ..Default::default()
    };
    let updated = grpc.update_session(request).await.expect("UpdateSession").into_inner();
    assert!(updated.version > session.version, "an update gets a new version");
    let asked = SystemTime::now();
    let touched = grpc.touch_session(TouchSessionRequest { id: session.id.clone(), ttl: None }).await;
    let expiry = expires_at(&touched.expect("TouchSession").into_inner());
    assert!(expiry >= asked + Duration::from_secs(599), "the new TTL was not kept: {expiry:?}");
}
