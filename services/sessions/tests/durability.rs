//! Sessions survive a restart: of the service on the embedded store, of redis-server
//! (append-only, fsync on every write) on Redis.

#[macro_use]
mod support;

use std::time::Duration;

use ficus_proto::sessions::v1::{Session, UpdateSessionRequest};
use ficus_testkit::wait_until;
use support::{Backend, Harness, attributes};

on_both_backends!(sessions_and_their_versions_survive_a_restart);

async fn sessions_and_their_versions_survive_a_restart(backend: Backend) {
    let mut harness = Harness::start(backend).await;
    let mut grpc = harness.grpc();
    let mut sessions = Vec::new();
    for user in ["ada", "grace", "edsger"] {
        let session = support::create(&mut grpc, attributes(&[("user", user.as_bytes())]), None).await;
        let request = UpdateSessionRequest {
            id: session.id.clone(),
            expected_version: session.version,
            set: attributes(&[("cart", b"2 items")]),
            ..UpdateSessionRequest::default()
        };
        sessions.push(grpc.update_session(request).await.expect("UpdateSession").into_inner());
    }
    let deleted = support::create(&mut grpc, attributes(&[("user", b"gone")]), None).await;
    let request = ficus_proto::sessions::v1::DeleteSessionRequest { id: deleted.id.clone() };
    assert!(grpc.delete_session(request).await.expect("DeleteSession").into_inner().existed);

    match backend {
        // Stops gracefully and opens the same directory again.
        Backend::Embedded => harness.restart_service().await,
        // Killed like a crash; the service stays up and reconnects by itself.
        Backend::Redis => harness.redis().restart(),
    }

    let mut grpc = harness.grpc();
    for before in &sessions {
        let after: Session = wait_until(Duration::from_secs(10), || {
            let mut grpc = grpc.clone();
            let id = before.id.clone();
            async move { support::get(&mut grpc, &id).await.ok() }
        })
        .await;
        assert_eq!(after.attributes, before.attributes);
        assert_eq!(after.version, before.version);
        assert_eq!(after.created_at, before.created_at);
        assert_eq!(after.max_expires_at, before.max_expires_at);
    }
    support::assert_code(support::get(&mut grpc, &deleted.id).await, tonic::Code::NotFound);

    // The versions read before the restart still work for compare-and-set.
    let first = &sessions[0];
    let request = UpdateSessionRequest {
        id: first.id.clone(),
        expected_version: first.version,
        set: attributes(&[("cart", b"3 items")]),
        ..UpdateSessionRequest::default()
    };
    let updated = grpc.update_session(request).await.expect("UpdateSession after the restart").into_inner();
    assert!(updated.version > first.version);
    // And a new session never reuses a version from before the restart.
    let fresh = support::create(&mut grpc, attributes(&[]), None).await;
    assert!(sessions.iter().all(|before| fresh.version > before.version));
}
