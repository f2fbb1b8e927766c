//! The application client: a session per cookie, and saves that never overwrite
//! someone else's changes.

#[macro_use]
mod support;

use std::time::Duration;

use ficus_sessions_client::{CONNECTIONS, Error, RetryPolicy};
use support::{Backend, Harness};

on_both_backends!(
    a_request_gets_the_cookies_session_or_a_new_one,
    a_save_over_a_newer_version_is_refused_and_keeps_the_changes,
    update_returns_what_the_change_returned_and_gives_up_when_the_session_is_gone,
    the_client_carries_on_over_a_service_restart,
    a_client_spreads_its_calls_over_a_stream_per_connection,
    calls_made_together_go_out_together,
);

async fn calls_made_together_go_out_together(backend: Backend) {
    const CALLERS: usize = 64;
    const ROUNDS: usize = 5;
    const MESSAGES: &str = "ficus_session_pipeline_messages_total";
    let harness = Harness::start(backend).await;
    let client = harness.client();
    let session = client.create().await.expect("created");
    let before = harness.counter(MESSAGES).await;

    // Callers of their own, as an application's request handlers are, that go again as soon
    // as they are answered: after the first round, callers are woken together by a batch
    // of replies.
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (client, id) = (client.clone(), session.id().to_owned());
        callers.spawn(async move {
            for _ in 0..ROUNDS {
                assert!(client.peek(&id).await.expect("GetSession").is_some());
            }
        });
    }
    while let Some(caller) = callers.join_next().await {
        caller.expect("caller");
    }

    let calls = (CALLERS * ROUNDS) as u64;
    let messages = harness.counter(MESSAGES).await - before;
    assert!(messages <= calls / 4, "{calls} calls came in {messages} messages");
}

async fn a_client_spreads_its_calls_over_a_stream_per_connection(backend: Backend) {
    const STREAMS: &str = "ficus_session_pipeline_streams";
    let harness = Harness::start(backend).await;
    assert_eq!(harness.counter(STREAMS).await, 0);

    let client = harness.client();
    let created = futures::future::join_all((0..4 * CONNECTIONS).map(|_| client.create())).await;
    let ids: Vec<String> = created.into_iter().map(|session| session.expect("created").id().to_owned()).collect();
    assert_eq!(harness.counter(STREAMS).await, CONNECTIONS as u64, "one stream per connection, each used");
    // Whichever lane carried a call, its caller got its own answer.
    for id in &ids {
        assert_eq!(client.peek(id).await.expect("GetSession").expect("live").id(), id);
    }

    // A dropped client ends its streams.
    drop(client);
    ficus_testkit::eventually(Duration::from_secs(10), || async { harness.counter(STREAMS).await == 0 }).await;
}

async fn a_request_gets_the_cookies_session_or_a_new_one(backend: Backend) {
    let harness = Harness::start(backend).await;
    let client = harness.client().with_ttl(Duration::from_millis(300));

    let first = client.load_or_create(None).await.expect("a new session without a cookie");
    assert!(first.created);
    let mut session = first.session;
    session.set("user", "ada");
    client.save(&mut session).await.expect("saved");

    let again = client.load_or_create(Some(session.id())).await.expect("the cookie's session");
    assert!(!again.created);
    assert_eq!(again.session.id(), session.id());
    assert_eq!(again.session.get_str("user"), Some("ada"));

    // A forged, empty or unknown cookie gets a fresh session, never an error.
    let unknown = format!("{}A", &session.id()[1..]);
    for cookie in ["", "forged; rm -rf /", unknown.as_str()] {
        let loaded = client.load_or_create(Some(cookie)).await.expect("a new session for a bad cookie");
        assert!(loaded.created, "{cookie:?}");
        assert_ne!(loaded.session.id(), session.id());
        assert_eq!(loaded.session.attributes().count(), 0);
    }

    // So does an expired one. (Polled without touching: `load` would keep it alive.)
    let id = session.id().to_owned();
    ficus_testkit::eventually(Duration::from_secs(10), || {
        let mut grpc = harness.grpc();
        let id = id.clone();
        async move { support::get(&mut grpc, &id).await.is_err_and(|status| status.code() == tonic::Code::NotFound) }
    })
    .await;
    let loaded = client.load_or_create(Some(&id)).await.expect("a new session for an expired cookie");
    assert!(loaded.created);
    assert_ne!(loaded.session.id(), id);
}

async fn a_save_over_a_newer_version_is_refused_and_keeps_the_changes(backend: Backend) {
    let harness = Harness::start(backend).await;
    let client = harness.client();
    let mut mine = client.create().await.expect("a session");
    let mut theirs = client.load(mine.id()).await.expect("GetSession").expect("the session exists");

    theirs.set("cart", "their item");
    client.save(&mut theirs).await.expect("the first save wins");
    assert!(theirs.version() > mine.version());
    assert!(!theirs.is_modified());

    mine.set("cart", "my item");
    let refused = client.save(&mut mine).await;
    assert!(
        matches!(refused, Err(Error::Conflict { current: Some(current) }) if current == theirs.version()),
        "{refused:?}"
    );
    assert!(mine.is_modified(), "the refused changes are still pending");
    assert_eq!(mine.get_str("cart"), Some("my item"));
    let stored = client.load(mine.id()).await.expect("GetSession").expect("the session exists");
    assert_eq!(stored.get_str("cart"), Some("their item"));

    // Nothing to save is not a call, and not a conflict.
    let mut unchanged = stored.clone();
    client.save(&mut unchanged).await.expect("nothing to save");
    assert_eq!(unchanged, stored);
}

async fn update_returns_what_the_change_returned_and_gives_up_when_the_session_is_gone(backend: Backend) {
    let harness = Harness::start(backend).await;
    let client = harness.client().with_retry(RetryPolicy { max_attempts: 3, ..RetryPolicy::default() });
    let mut session = client.create().await.expect("a session");
    let mut stale = session.clone();

    let visits = client
        .update(&mut session, |session| {
            session.set("visits", "1");
            1
        })
        .await
        .expect("the first update");
    assert_eq!(visits, 1);

    // A stale copy re-reads and re-applies its change on the current state.
    let mut applications = 0;
    let visits = client
        .update(&mut stale, |session| {
            applications += 1;
            let visits: u32 = session.get_str("visits").and_then(|v| v.parse().ok()).unwrap_or(0) + 1;
            session.set("visits", visits.to_string());
            visits
        })
        .await
        .expect("the update after a re-read");
    assert_eq!((visits, applications), (2, 2));

    assert!(client.delete(session.id()).await.expect("DeleteSession"));
    let gone = client.update(&mut session, |session| session.set("visits", "9")).await;
    assert!(matches!(gone, Err(Error::NotFound)), "{gone:?}");
    assert!(!client.delete(session.id()).await.expect("deleting again succeeds"));
}

async fn the_client_carries_on_over_a_service_restart(backend: Backend) {
    let mut harness = Harness::start(backend).await;
    let client = harness.client();
    let mut session = client.create().await.expect("a session");
    session.set("user", "ada");
    client.save(&mut session).await.expect("saved");

    // The restart ends the client's stream; its next calls open another, without errors.
    harness.restart_service().await;
    let read = client.peek(session.id()).await.expect("read after the restart").expect("the session is there");
    assert_eq!(read.get_str("user"), Some("ada"));
    assert_eq!(read.version(), session.version());
    let mut read = read;
    read.set("cart", "1 item");
    client.save(&mut read).await.expect("saved after the restart");
}
