//! Every limit and malformed input gets its documented code, names the field, and
//! leaves the stored sessions exactly as they were.

#[macro_use]
mod support;

use std::time::Duration;

use ficus_proto::sessions::v1::{
    CreateSessionRequest, DeleteSessionRequest, GetSessionRequest, Session, TouchSessionRequest, UpdateSessionRequest,
    session_store_client::SessionStoreClient,
};
use ficus_sessions::Limits;
use support::{Backend, Harness, assert_code, assert_invalid, attributes};
use tonic::{Code, transport::Channel};

on_both_backends!(
    creating_over_a_limit_is_refused_and_creates_nothing,
    updating_over_a_limit_is_refused_and_changes_nothing,
    a_stale_expected_version_is_aborted_with_the_current_version,
    malformed_ids_are_invalid_and_unknown_ids_not_found,
    deleting_a_session_is_idempotent,
);

/// Small limits, so that going over them takes few bytes.
fn small_limits() -> Limits {
    Limits {
        max_attributes: 3,
        max_name_bytes: 8,
        max_value_bytes: 16,
        max_session_bytes: 40,
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(3600),
        default_ttl: Duration::from_secs(600),
        default_max_lifetime: None,
        max_lifetime_cap: Duration::from_secs(86_400),
    }
}

async fn creating_over_a_limit_is_refused_and_creates_nothing(backend: Backend) {
    let harness = Harness::with_limits(backend, small_limits()).await;
    let mut grpc = harness.grpc();
    let created_before = harness.counter("ficus_sessions_created_total").await;
    let create = |attributes, ttl: Option<Duration>, max_lifetime: Option<Duration>| CreateSessionRequest {
        attributes,
        ttl: ttl.map(Into::into),
        max_lifetime: max_lifetime.map(Into::into),
    };

    let big_value = attributes(&[("cart", &[0; 17])]);
    assert_invalid(grpc.create_session(create(big_value, None, None)).await, "attributes[\"cart\"]");
    let long_name = attributes(&[("123456789", b"")]);
    assert_invalid(grpc.create_session(create(long_name, None, None)).await, "attributes[\"123456789\"]");
    let empty_name = attributes(&[("", b"x")]);
    assert_invalid(grpc.create_session(create(empty_name, None, None)).await, "attributes[\"\"]");
    let too_many = attributes(&[("a", b""), ("b", b""), ("c", b""), ("d", b"")]);
    assert_invalid(grpc.create_session(create(too_many, None, None)).await, "attributes");
    let too_big = attributes(&[("a", &[0; 16]), ("b", &[0; 16]), ("c", &[0; 6])]);
    assert_invalid(grpc.create_session(create(too_big, None, None)).await, "attributes");
    let short_ttl = Some(Duration::from_millis(999));
    assert_invalid(grpc.create_session(create(attributes(&[]), short_ttl, None)).await, "ttl");
    let long_ttl = Some(Duration::from_secs(3601));
    assert_invalid(grpc.create_session(create(attributes(&[]), long_ttl, None)).await, "ttl");
    let long_life = Some(Duration::from_secs(86_401));
    assert_invalid(grpc.create_session(create(attributes(&[]), None, long_life)).await, "max_lifetime");
    let negative = CreateSessionRequest {
        ttl: Some(pbjson_types::Duration { seconds: -5, nanos: 0 }),
        ..CreateSessionRequest::default()
    };
    assert_invalid(grpc.create_session(negative).await, "ttl");

    // The message names the limit, and exactly at the limits a session is accepted.
    let status = grpc.create_session(create(attributes(&[("cart", &[0; 17])]), None, None)).await.expect_err("refused");
    assert!(status.message().contains("limits.max_value_bytes is 16"), "{}", status.message());
    assert_eq!(harness.counter("ficus_sessions_created_total").await, created_before, "a refused create wrote");
    let at_limits = attributes(&[("a", &[0; 16]), ("b", &[0; 16]), ("c", &[0; 5])]);
    let life = Some(Duration::from_secs(86_400));
    grpc.create_session(create(at_limits, Some(Duration::from_secs(1)), life)).await.expect("exactly at the limits");
    assert_eq!(harness.counter("ficus_sessions_created_total").await, created_before + 1);
}

async fn updating_over_a_limit_is_refused_and_changes_nothing(backend: Backend) {
    let harness = Harness::with_limits(backend, small_limits()).await;
    let mut grpc = harness.grpc();
    let session = support::create(&mut grpc, attributes(&[("user", b"ada"), ("cart", b"1 item")]), None).await;
    let update = |set, remove: &[&str]| UpdateSessionRequest {
        id: session.id.clone(),
        expected_version: session.version,
        set,
        remove: remove.iter().map(|name| (*name).to_owned()).collect(),
        ttl: None,
        omit_attributes: false,
    };

    let refusals = [
        (update(attributes(&[("cart", &[0; 17])]), &[]), "set[\"cart\"]"),
        (update(attributes(&[("123456789", b"")]), &[]), "set[\"123456789\"]"),
        (update(attributes(&[("", b"")]), &[]), "set[\"\"]"),
        (update(attributes(&[("theme", b"dark"), ("lang", b"en")]), &[]), "set"),
        (update(attributes(&[("cart", &[0; 16]), ("theme", &[0; 16])]), &[]), "set"),
        (update(attributes(&[]), &["user", "123456789"]), "remove[1]"),
        (UpdateSessionRequest { ttl: Some(Duration::from_millis(10).into()), ..update(attributes(&[]), &[]) }, "ttl"),
    ];
    for (request, field) in refusals {
        assert_invalid(grpc.update_session(request).await, field);
        assert_unchanged(&mut grpc, &session).await;
    }

    // Removing one attribute makes room for another in the same update.
    let request = update(attributes(&[("theme", b"dark"), ("lang", b"en")]), &["cart"]);
    let updated = grpc.update_session(request).await.expect("within the limits after the removal").into_inner();
    assert_eq!(updated.attributes, attributes(&[("user", b"ada"), ("theme", b"dark"), ("lang", b"en")]));
}

async fn a_stale_expected_version_is_aborted_with_the_current_version(backend: Backend) {
    let harness = Harness::start(backend).await;
    let mut grpc = harness.grpc();
    let session = support::create(&mut grpc, attributes(&[("cart", b"empty")]), None).await;
    let first = UpdateSessionRequest {
        id: session.id.clone(),
        expected_version: session.version,
        set: attributes(&[("cart", b"1 item")]),
        ..UpdateSessionRequest::default()
    };
    let current = grpc.update_session(first.clone()).await.expect("the first writer wins").into_inner();

    // A second writer that read the same version loses, and learns the current one.
    let second = UpdateSessionRequest { set: attributes(&[("cart", b"2 items")]), ..first };
    let status = grpc.update_session(second.clone()).await.expect_err("the second writer loses");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(ficus_kit::status::conflict_version(&status), Some(current.version));
    assert_unchanged(&mut grpc, &current).await;

    // Retrying with the version it was told succeeds.
    let retried = UpdateSessionRequest { expected_version: current.version, ..second };
    let updated = grpc.update_session(retried).await.expect("the retry wins").into_inner();
    assert_eq!(updated.attributes, attributes(&[("cart", b"2 items")]));
    assert!(updated.version > current.version);

    // A writer that knows what it leaves can have the attributes left out of the reply;
    // they are stored all the same.
    let quiet = UpdateSessionRequest {
        id: session.id.clone(),
        expected_version: updated.version,
        set: attributes(&[("theme", b"dark")]),
        omit_attributes: true,
        ..UpdateSessionRequest::default()
    };
    let saved = grpc.update_session(quiet).await.expect("the quiet update wins").into_inner();
    assert!(saved.attributes.is_empty(), "{saved:?}");
    assert!(saved.version > updated.version && saved.expires_at.is_some());
    let read = grpc.get_session(GetSessionRequest { id: session.id.clone(), touch: false }).await.unwrap().into_inner();
    assert_eq!(
        (read.version, read.attributes),
        (saved.version, attributes(&[("cart", b"2 items"), ("theme", b"dark")]))
    );
}

async fn malformed_ids_are_invalid_and_unknown_ids_not_found(backend: Backend) {
    let harness = Harness::start(backend).await;
    let mut grpc = harness.grpc();
    let real = support::create(&mut grpc, attributes(&[("user", b"ada")]), None).await;

    let too_long = format!("{}A", real.id);
    let wrong_alphabet = format!("{}+", &real.id[1..]);
    for id in ["", "abc", too_long.as_str(), wrong_alphabet.as_str(), "../../../../../../../etc/passwd"] {
        let id = id.to_owned();
        assert_invalid(grpc.get_session(GetSessionRequest { id: id.clone(), touch: false }).await, "id");
        assert_invalid(grpc.touch_session(TouchSessionRequest { id: id.clone(), ttl: None }).await, "id");
        let update = UpdateSessionRequest { id: id.clone(), ..UpdateSessionRequest::default() };
        assert_invalid(grpc.update_session(update).await, "id");
        assert_invalid(grpc.delete_session(DeleteSessionRequest { id }).await, "id");
    }

    // Well-formed but unknown: never created, so NOT_FOUND everywhere but delete.
    let unknown = format!("{}A", &real.id[1..]);
    assert_code(grpc.get_session(GetSessionRequest { id: unknown.clone(), touch: true }).await, Code::NotFound);
    assert_code(grpc.touch_session(TouchSessionRequest { id: unknown.clone(), ttl: None }).await, Code::NotFound);
    let update = UpdateSessionRequest { id: unknown.clone(), set: attributes(&[("a", b"")]), ..Default::default() };
    assert_code(grpc.update_session(update).await, Code::NotFound);
    assert_code(support::get(&mut grpc, &unknown).await, Code::NotFound);
    assert_unchanged(&mut grpc, &real).await;
}

async fn deleting_a_session_is_idempotent(backend: Backend) {
    let harness = Harness::start(backend).await;
    let mut grpc = harness.grpc();
    let session = support::create(&mut grpc, attributes(&[("user", b"ada")]), None).await;
    let other = support::create(&mut grpc, attributes(&[("user", b"grace")]), None).await;
    let delete = || DeleteSessionRequest { id: session.id.clone() };

    assert!(grpc.delete_session(delete()).await.expect("DeleteSession").into_inner().existed);
    assert!(!grpc.delete_session(delete()).await.expect("deleting again succeeds").into_inner().existed);
    assert_code(support::get(&mut grpc, &session.id).await, Code::NotFound);
    let update = UpdateSessionRequest { id: session.id.clone(), set: attributes(&[("a", b"")]), ..Default::default() };
    assert_code(grpc.update_session(update).await, Code::NotFound);
    assert_unchanged(&mut grpc, &other).await;
    assert_eq!(harness.counter("ficus_sessions_deleted_total").await, 1);
}

/// Asserts that the stored session is still `expected`, attributes and version.
async fn assert_unchanged(grpc: &mut SessionStoreClient<Channel>, expected: &Session) {
    let stored = support::get(grpc, &expected.id).await.expect("the session is still there");
    assert_eq!(stored.version, expected.version, "the version changed");
    assert_eq!(stored.attributes, expected.attributes, "the attributes changed");
}
