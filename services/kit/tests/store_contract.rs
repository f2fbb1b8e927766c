//! The store contract, checked against both backends.
//!
//! Every function in the first part takes a [`Fixture`] and is run once against an
//! embedded store in a temporary directory and once against a real `redis-server`
//! (see the `contract!` invocation), so the two backends cannot drift apart. The second
//! part covers what only one backend has: reopening a file, restarting or losing Redis,
//! passwords, and several replicas.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ficus_kit::store::{Announce, Change, Entry, Expect, RedisStore, Store, StoreError};
use ficus_testkit::{RedisServer, eventually};
use tempfile::TempDir;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;
use tokio_util::sync::CancellationToken;

/// Generous bound for things that should happen within a second or two (a TTL passing,
/// the sweeper running, a notification arriving), so that a loaded CI machine does not
/// make the suite flaky; the waits end as soon as the condition holds.
const PATIENCE: Duration = Duration::from_secs(10);

/// How fast an operation must fail while Redis is down.
const OUTAGE_BOUND: Duration = Duration::from_secs(3);

const NAMESPACE: &str = "contract";

/// One backend to run a contract test against, and what keeps it alive.
struct Fixture {
    store: Store,
    location: String,
    _dir: Option<TempDir>,
    _redis: Option<RedisServer>,
}

impl Fixture {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let location = dir.path().to_str().expect("UTF-8 temporary path").to_owned();
        let store = Store::open(&location, NAMESPACE).await.expect("open the embedded store");
        assert!(matches!(store, Store::Embedded(_)));
        Self { store, location, _dir: Some(dir), _redis: None }
    }

    async fn redis() -> Self {
        let server = RedisServer::new();
        let location = server.url();
        let store = Store::open(&location, NAMESPACE).await.expect("open the redis store");
        assert!(matches!(store, Store::Redis(_)));
        Self { store, location, _dir: None, _redis: Some(server) }
    }

    /// Another namespace on the same backend, as another service would have.
    async fn open(&self, namespace: &str) -> Store {
        Store::open(&self.location, namespace).await.expect("open another namespace")
    }
}

/// Runs each listed contract test against both backends.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Fixture::embedded().await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Fixture::redis().await).await;
                }
            )*
        }
    };
}

contract!(
    writes_follow_every_expectation,
    deletes_follow_every_expectation,
    versions_grow_and_are_never_reused,
    expired_entries_are_never_returned,
    expire_moves_the_deadline_but_keeps_the_version,
    put_extending_keeps_a_later_expiry,
    scan_orders_by_key_and_matches_the_prefix_literally,
    namespaces_are_isolated,
    watch_reports_puts_deletes_and_expiry,
    unannounced_writes_reach_no_watcher,
    followers_start_with_a_resync_and_stop_on_shutdown,
    concurrent_compare_and_set_loses_no_update,
    bad_namespaces_are_refused,
);

async fn unannounced_writes_reach_no_watcher(f: Fixture) {
    let quiet = Store::open_announcing(&f.location, "quiet", Announce::Nothing).await.unwrap();
    let mut changes = quiet.watch().await;
    let version = quiet.put("k", b"v".to_vec(), Expect::Absent, None).await.unwrap();
    assert_eq!(quiet.get("k").await.unwrap().unwrap().version, version);
    assert!(quiet.delete("k", Expect::Version(version)).await.unwrap());
    assert_eq!(changes.recv().await, Err(broadcast::error::RecvError::Closed), "watching a quiet store ends at once");
}

async fn followers_start_with_a_resync_and_stop_on_shutdown(f: Fixture) {
    let shutdown = CancellationToken::new();
    let mut follower = f.store.follow(shutdown.clone());
    // Written before the follower subscribed: only the Resync covers it.
    f.store.put("before", Vec::new(), Expect::Absent, None).await.unwrap();
    assert_eq!(follower.next().await, Some(Change::Resync));
    let version = f.store.put("after", Vec::new(), Expect::Absent, None).await.unwrap();
    let put = tokio::time::timeout(PATIENCE, follower.next()).await.expect("a change within the patience");
    assert_eq!(put, Some(Change::Put { key: "after".into(), version }));
    shutdown.cancel();
    assert_eq!(follower.next().await, None);

    let quiet = Store::open_announcing(&f.location, "quiet", Announce::Nothing).await.unwrap();
    let mut follower = quiet.follow(CancellationToken::new());
    assert_eq!(follower.next().await, Some(Change::Resync));
    assert_eq!(follower.next().await, None, "a quiet store has nothing more to follow");
}

async fn writes_follow_every_expectation(f: Fixture) {
    let store = &f.store;
    assert_eq!(store.get("k").await.unwrap(), None);

    // Values are bytes, not text.
    let value = vec![0, 159, 146, 150, 255];
    let v1 = store.put("k", value.clone(), Expect::Absent, None).await.unwrap();
    let entry = store.get("k").await.unwrap().expect("entry after put");
    assert_eq!(entry, Entry { key: "k".into(), value, version: v1, expires_at: None });

    assert_conflict(store.put("k", b"x".to_vec(), Expect::Absent, None).await, "k", Some(v1));

    let v2 = store.put("k", b"two".to_vec(), Expect::Version(v1), None).await.unwrap();
    assert!(v2 > v1);
    assert_conflict(store.put("k", b"stale".to_vec(), Expect::Version(v1), None).await, "k", Some(v2));
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"two");

    assert_conflict(store.put("missing", b"x".to_vec(), Expect::Version(v2), None).await, "missing", None);
    assert_eq!(store.get("missing").await.unwrap(), None);

    let v3 = store.put("k", Vec::new(), Expect::Any, None).await.unwrap();
    assert!(v3 > v2);
    let entry = store.get("k").await.unwrap().unwrap();
    assert_eq!((entry.value, entry.version), (Vec::new(), v3));

    let v4 = store.put("fresh", b"x".to_vec(), Expect::Any, None).await.unwrap();
    assert!(v4 > v3);
}

async fn deletes_follow_every_expectation(f: Fixture) {
    let store = &f.store;
    let v1 = store.put("k", b"x".to_vec(), Expect::Absent, None).await.unwrap();

    assert_conflict(store.delete("k", Expect::Absent).await, "k", Some(v1));
    assert_conflict(store.delete("k", Expect::Version(v1 + 100)).await, "k", Some(v1));
    assert!(store.get("k").await.unwrap().is_some(), "a failed delete must not delete");

    assert!(store.delete("k", Expect::Version(v1)).await.unwrap());
    assert_eq!(store.get("k").await.unwrap(), None);

    assert!(!store.delete("k", Expect::Any).await.unwrap(), "nothing left to delete");
    assert!(!store.delete("k", Expect::Absent).await.unwrap());
    assert_conflict(store.delete("k", Expect::Version(v1)).await, "k", None);

    store.put("k", b"x".to_vec(), Expect::Absent, None).await.unwrap();
    assert!(store.delete("k", Expect::Any).await.unwrap());
    assert_eq!(store.get("k").await.unwrap(), None);
}

async fn versions_grow_and_are_never_reused(f: Fixture) {
    let store = &f.store;
    let mut seen = Vec::new();
    for round in 0..3 {
        for key in ["a", "b", "c"] {
            seen.push(store.put(key, vec![round], Expect::Any, None).await.unwrap());
        }
        for key in ["a", "b", "c"] {
            assert!(store.delete(key, Expect::Any).await.unwrap());
        }
    }
    // Recreating deleted keys must not hand out an old version again (no ABA).
    seen.push(store.put("a", b"again".to_vec(), Expect::Absent, None).await.unwrap());
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "versions must strictly increase: {seen:?}");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
}

async fn expired_entries_are_never_returned(f: Fixture) {
    let store = &f.store;
    let before = SystemTime::now();
    store.put("t/short", b"s".to_vec(), Expect::Absent, Some(Duration::from_millis(300))).await.unwrap();
    store.put("t/long", b"l".to_vec(), Expect::Absent, Some(Duration::from_secs(600))).await.unwrap();
    store.put("t/forever", b"f".to_vec(), Expect::Absent, None).await.unwrap();
    let after = SystemTime::now();

    let short = store.get("t/short").await.unwrap().expect("not expired yet");
    let expires_at = short.expires_at.expect("a ttl sets expires_at");
    assert_near(expires_at, before + Duration::from_millis(300), after + Duration::from_millis(300));
    assert_eq!(keys(&store.scan("t/").await.unwrap()), ["t/forever", "t/long", "t/short"]);

    eventually(PATIENCE, || async { store.get("t/short").await.unwrap().is_none() }).await;
    assert_eq!(keys(&store.scan("t/").await.unwrap()), ["t/forever", "t/long"]);

    // An expired entry counts as absent for compare-and-set too.
    let version = store.put("t/short", b"new".to_vec(), Expect::Absent, None).await.unwrap();
    let revived = store.get("t/short").await.unwrap().unwrap();
    assert_eq!((revived.version, revived.value, revived.expires_at), (version, b"new".to_vec(), None));
}

async fn expire_moves_the_deadline_but_keeps_the_version(f: Fixture) {
    let store = &f.store;
    let version =
        store.put("lease", b"holder".to_vec(), Expect::Absent, Some(Duration::from_millis(300))).await.unwrap();
    assert!(store.expire("lease", Duration::from_secs(600)).await.unwrap());
    let lease = store.get("lease").await.unwrap().unwrap();
    assert_eq!((lease.version, lease.value.as_slice()), (version, b"holder".as_slice()));
    assert!(lease.expires_at.unwrap() > SystemTime::now() + Duration::from_secs(500));

    // A permanent entry can be given a deadline, which then applies.
    let permanent = store.put("permanent", b"p".to_vec(), Expect::Absent, None).await.unwrap();
    assert!(store.expire("permanent", Duration::from_millis(200)).await.unwrap());
    assert_eq!(store.get("permanent").await.unwrap().map(|e| e.version), Some(permanent));

    // Once an entry that expired later than the original 300 ms would have is gone, the
    // extended lease must still be there.
    store.put("marker", Vec::new(), Expect::Absent, Some(Duration::from_millis(400))).await.unwrap();
    eventually(PATIENCE, || async {
        store.get("marker").await.unwrap().is_none() && store.get("permanent").await.unwrap().is_none()
    })
    .await;
    assert_eq!(store.get("lease").await.unwrap().map(|e| e.version), Some(version));

    assert!(!store.expire("permanent", Duration::from_secs(1)).await.unwrap(), "nothing live to extend");
    assert!(!store.expire("never-written", Duration::from_secs(1)).await.unwrap());
}

async fn put_extending_keeps_a_later_expiry(f: Fixture) {
    let store = &f.store;
    let minute = Duration::from_secs(60);

    // Nothing there yet: the TTL decides, and the reply says what the store keeps.
    let before = SystemTime::now();
    let first = store.put_extending("session", b"a".to_vec(), Expect::Absent, 10 * minute).await.unwrap();
    let after = SystemTime::now();
    let ten = first.expires_at.expect("a ttl sets an expiry");
    assert_near(ten, before + 10 * minute, after + 10 * minute);
    let stored = store.get("session").await.unwrap().unwrap();
    assert_eq!((stored.version, stored.expires_at), (first.version, first.expires_at));

    // A shorter TTL leaves the later expiry alone; the value and version still change.
    let second = store.put_extending("session", b"b".to_vec(), Expect::Version(first.version), minute).await.unwrap();
    assert!(second.version > first.version);
    assert_eq!(second.expires_at, Some(ten));
    let stored = store.get("session").await.unwrap().unwrap();
    assert_eq!((stored.version, stored.value, stored.expires_at), (second.version, b"b".to_vec(), Some(ten)));

    // A longer one moves it.
    let third = store.put_extending("session", b"c".to_vec(), Expect::Any, 20 * minute).await.unwrap();
    let twenty = third.expires_at.unwrap();
    assert!(twenty >= ten + 9 * minute, "{twenty:?} should be about 20 minutes from now");
    assert_eq!(store.get("session").await.unwrap().unwrap().expires_at, Some(twenty));

    // A plain put replaces the expiry, shorter or not.
    let exact = store.put("session", b"d".to_vec(), Expect::Any, Some(minute)).await.unwrap();
    let stored = store.get("session").await.unwrap().unwrap();
    assert_eq!(stored.version, exact);
    assert!(stored.expires_at.unwrap() < ten, "a plain put shortens the expiry");

    // A permanent entry stays permanent: never is the latest expiry of all.
    store.put("permanent", b"p".to_vec(), Expect::Absent, None).await.unwrap();
    let kept = store.put_extending("permanent", b"q".to_vec(), Expect::Any, minute).await.unwrap();
    assert_eq!(kept.expires_at, None);
    assert_eq!(store.get("permanent").await.unwrap().unwrap().expires_at, None);

    // A refused write changes nothing, expiry included.
    assert_conflict(
        store.put_extending("session", b"e".to_vec(), Expect::Version(first.version), 30 * minute).await,
        "session",
        Some(exact),
    );
    assert_eq!(store.get("session").await.unwrap().unwrap().expires_at, stored.expires_at);

    // An expired entry's expiry is not kept: it is gone.
    store.put("brief", b"x".to_vec(), Expect::Absent, Some(Duration::from_millis(100))).await.unwrap();
    eventually(PATIENCE, || async { store.get("brief").await.unwrap().is_none() }).await;
    let revived = store.put_extending("brief", b"y".to_vec(), Expect::Absent, minute).await.unwrap();
    assert!(revived.expires_at.unwrap() > SystemTime::now() + minute / 2);
}

async fn scan_orders_by_key_and_matches_the_prefix_literally(f: Fixture) {
    let store = &f.store;
    for key in ["b/2", "a/1", "b/10", "b/1", "b", "c", "x*1", "x?2", "x[3]", "xa", "x\\y", "x*"] {
        store.put(key, key.as_bytes().to_vec(), Expect::Absent, None).await.unwrap();
    }
    assert_eq!(keys(&store.scan("b/").await.unwrap()), ["b/1", "b/10", "b/2"]);
    assert_eq!(keys(&store.scan("b").await.unwrap()), ["b", "b/1", "b/10", "b/2"]);
    assert_eq!(keys(&store.scan("x*").await.unwrap()), ["x*", "x*1"]);
    assert_eq!(keys(&store.scan("x?").await.unwrap()), ["x?2"]);
    assert_eq!(keys(&store.scan("x[").await.unwrap()), ["x[3]"]);
    assert_eq!(keys(&store.scan("x\\").await.unwrap()), ["x\\y"]);
    assert_eq!(keys(&store.scan("nothing").await.unwrap()), Vec::<String>::new());
    let all = store.scan("").await.unwrap();
    assert_eq!(keys(&all), ["a/1", "b", "b/1", "b/10", "b/2", "c", "x*", "x*1", "x?2", "x[3]", "x\\y", "xa"]);
    for entry in &all {
        assert_eq!(entry.value, entry.key.as_bytes(), "scan returns each key's own value");
        assert!(entry.version > 0);
    }

    // Many keys, to cross the backends' batch sizes.
    for i in 0..600 {
        store.put(&format!("many/{i:05}"), Vec::new(), Expect::Absent, None).await.unwrap();
    }
    let many = store.scan("many/").await.unwrap();
    assert_eq!(many.len(), 600);
    assert!(many.windows(2).all(|pair| pair[0].key < pair[1].key));
}

async fn namespaces_are_isolated(f: Fixture) {
    let mine = &f.store;
    let theirs = f.open("other-service").await;
    mine.put("shared/key", b"mine".to_vec(), Expect::Absent, None).await.unwrap();
    // Absent holds in the other namespace although the key exists in mine.
    theirs.put("shared/key", b"theirs".to_vec(), Expect::Absent, None).await.unwrap();
    theirs.put("shared/only-theirs", Vec::new(), Expect::Absent, None).await.unwrap();

    assert_eq!(mine.get("shared/key").await.unwrap().unwrap().value, b"mine");
    assert_eq!(theirs.get("shared/key").await.unwrap().unwrap().value, b"theirs");
    assert_eq!(keys(&mine.scan("shared/").await.unwrap()), ["shared/key"]);
    assert_eq!(keys(&theirs.scan("").await.unwrap()), ["shared/key", "shared/only-theirs"]);

    assert!(theirs.delete("shared/key", Expect::Any).await.unwrap());
    assert_eq!(mine.get("shared/key").await.unwrap().unwrap().value, b"mine");
}

async fn watch_reports_puts_deletes_and_expiry(f: Fixture) {
    let store = &f.store;
    let mut changes = store.watch().await;

    let v1 = store.put("w", b"1".to_vec(), Expect::Absent, None).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Put { key: "w".into(), version: v1 });

    // Failed writes and expiry extensions are not changes.
    assert!(store.put("w", b"x".to_vec(), Expect::Absent, None).await.is_err());
    assert!(store.delete("w", Expect::Version(v1 + 100)).await.is_err());
    assert!(store.expire("w", Duration::from_secs(60)).await.unwrap());
    let v2 = store.put("w", b"2".to_vec(), Expect::Version(v1), None).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Put { key: "w".into(), version: v2 });

    assert!(store.delete("w", Expect::Version(v2)).await.unwrap());
    assert_eq!(next_change(&mut changes).await, Change::Deleted { key: "w".into() });

    let v3 = store.put("lease", Vec::new(), Expect::Absent, Some(Duration::from_millis(200))).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Put { key: "lease".into(), version: v3 });
    assert_eq!(next_change(&mut changes).await, Change::Deleted { key: "lease".into() });

    // Other namespaces' changes are not ours.
    let other = f.open("elsewhere").await;
    other.put("w", Vec::new(), Expect::Any, None).await.unwrap();
    let v4 = store.put("after", Vec::new(), Expect::Any, None).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Put { key: "after".into(), version: v4 });
    assert!(matches!(changes.try_recv(), Err(TryRecvError::Empty)));
}

async fn concurrent_compare_and_set_loses_no_update(f: Fixture) {
    const TASKS: usize = 20;
    const INCREMENTS: usize = 25;
    let store = Arc::new(f.store.clone());
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get("counter").await.unwrap();
                    let (count, expect) = match &current {
                        Some(entry) => (decode(&entry.value), Expect::Version(entry.version)),
                        None => (0, Expect::Absent),
                    };
                    match store.put("counter", (count + 1).to_be_bytes().to_vec(), expect, None).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(error) => panic!("increment failed: {error}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.expect("increment task");
    }
    let counter = store.get("counter").await.unwrap().expect("counter");
    assert_eq!(decode(&counter.value), (TASKS * INCREMENTS) as u64, "after {conflicts} conflicts");
}

async fn bad_namespaces_are_refused(f: Fixture) {
    for namespace in ["", "a:b", "../escape", "a*", "with space"] {
        match Store::open(&f.location, namespace).await {
            Err(StoreError::Invalid(_)) => {}
            other => panic!("namespace {namespace:?} gave {other:?}"),
        }
    }
    f.store.ping().await.unwrap();
}

// ---- Embedded only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("nested/data");
    let location = location.to_str().unwrap();
    let (kept, highest) = {
        let store = Store::open(location, NAMESPACE).await.unwrap();
        let clone = store.clone();
        let kept = store.put("kept", b"value".to_vec(), Expect::Absent, Some(Duration::from_secs(600))).await.unwrap();
        store.put("permanent", b"p".to_vec(), Expect::Absent, None).await.unwrap();
        // The highest version goes away before closing; it must still not come back.
        let highest = clone.put("deleted", Vec::new(), Expect::Absent, None).await.unwrap();
        assert!(clone.delete("deleted", Expect::Any).await.unwrap());
        (kept, highest)
    };
    assert!(dir.path().join("nested/data").join(format!("{NAMESPACE}.redb")).is_file());

    let store = Store::open(location, NAMESPACE).await.expect("reopen after the last clone is dropped");
    let entry = store.get("kept").await.unwrap().expect("kept survives");
    assert_eq!((entry.value.as_slice(), entry.version), (b"value".as_slice(), kept));
    assert!(entry.expires_at.is_some());
    assert!(store.get("permanent").await.unwrap().is_some());
    assert_eq!(store.get("deleted").await.unwrap(), None);
    let next = store.put("deleted", Vec::new(), Expect::Absent, None).await.unwrap();
    assert!(next > highest, "version {next} reused after reopen (highest was {highest})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_file_is_exclusive_to_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().to_str().unwrap();
    let _store = Store::open(location, NAMESPACE).await.unwrap();
    match Store::open(location, NAMESPACE).await {
        Err(StoreError::Invalid(message)) => assert!(message.contains("already open"), "{message}"),
        other => panic!("a second open of the same file gave {other:?}"),
    }
    // Another namespace is another file.
    Store::open(location, "other").await.unwrap();
}

// ---- Redis only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_data_survives_a_server_restart() {
    let mut server = RedisServer::new();
    let store = Store::open(&server.url(), NAMESPACE).await.unwrap();
    let kept = store.put("kept", b"value".to_vec(), Expect::Absent, None).await.unwrap();
    store.put("lease", Vec::new(), Expect::Absent, Some(Duration::from_secs(600))).await.unwrap();
    let highest = store.put("deleted", Vec::new(), Expect::Absent, None).await.unwrap();
    assert!(store.delete("deleted", Expect::Any).await.unwrap());

    server.restart();

    // The same store object carries on; the first call after the restart already works,
    // even a write, which is not retried blindly.
    let next = store.put("deleted", Vec::new(), Expect::Absent, None).await.expect("put after the restart");
    assert!(next > highest, "version {next} reused after the restart (highest was {highest})");
    let entry = store.get("kept").await.unwrap().expect("kept survives the restart");
    assert_eq!((entry.value.as_slice(), entry.version), (b"value".as_slice(), kept));
    assert!(store.get("lease").await.unwrap().unwrap().expires_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_that_stops_answering_fails_calls_fast_and_answers_again() {
    let server = RedisServer::new();
    let store = Store::open(&server.url(), NAMESPACE).await.unwrap();
    let version = store.put("k", b"v".to_vec(), Expect::Absent, None).await.unwrap();
    let mut admin = ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();

    // The connection stays up; Redis just holds every command (a stalled or overloaded
    // server looks like this) for longer than two calls may wait, then goes on.
    let () = ::redis::cmd("CLIENT").arg("PAUSE").arg(5000).arg("ALL").query_async(&mut admin).await.unwrap();
    assert_unavailable("get", store.get("k")).await;
    assert_unavailable("put", store.put("k", b"w".to_vec(), Expect::Version(version), None)).await;

    // The put that timed out may still have been applied once Redis went on; either way
    // the store answers again, on the same connection.
    let entry = store.get("k").await.expect("get once redis answers again").expect("k is kept");
    assert!(entry.version == version || entry.version == version + 1, "version {} after {version}", entry.version);
    store.put("k", b"x".to_vec(), Expect::Version(entry.version), None).await.expect("put once redis answers again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_recovers() {
    let mut server = RedisServer::new();
    let store = Store::open(&server.url(), NAMESPACE).await.unwrap();
    let version = store.put("k", b"v".to_vec(), Expect::Absent, None).await.unwrap();
    let mut changes = store.watch().await;

    server.stop();
    assert_unavailable("get", store.get("k")).await;
    assert_unavailable("put", store.put("k", b"w".to_vec(), Expect::Version(version), None)).await;
    assert_unavailable("delete", store.delete("k", Expect::Any)).await;
    assert_unavailable("expire", store.expire("k", Duration::from_secs(5))).await;
    assert_unavailable("scan", store.scan("")).await;
    assert_unavailable("ping", store.ping()).await;
    // Opening while Redis is down succeeds, and fast, so a service can start unready.
    let started = Instant::now();
    let late = Store::open(&server.url(), NAMESPACE).await.expect("open while redis is down");
    assert!(started.elapsed() < OUTAGE_BOUND, "open took {:?}", started.elapsed());
    assert_unavailable("ping on a store opened during the outage", late.ping()).await;

    server.start();
    // The first call after Redis is back already works, even a compare-and-set write.
    let next = store.put("k", b"w".to_vec(), Expect::Version(version), None).await.expect("put after the outage");
    store.ping().await.expect("ping after redis is back");
    let entry = store.get("k").await.unwrap().expect("data kept through the outage");
    assert_eq!(entry.version, next);
    late.ping().await.expect("the store opened during the outage connects too");
    assert_eq!(late.get("k").await.unwrap().unwrap().version, next);

    // Watchers learn that they may have missed changes, then follow again.
    let resynced = tokio::time::timeout(PATIENCE, async {
        loop {
            match changes.recv().await {
                Ok(Change::Resync) => return,
                Ok(_) => {}
                Err(error) => panic!("watch channel: {error}"),
            }
        }
    });
    resynced.await.expect("a resync after the change feed came back");
    let after = store.put("after", Vec::new(), Expect::Any, None).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Put { key: "after".into(), version: after });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replicas_share_state_and_changes() {
    let server = RedisServer::new();
    let first = Store::open(&server.url(), NAMESPACE).await.unwrap();
    let second = Store::open(&server.url(), NAMESPACE).await.unwrap();
    let mut seen_by_first = first.watch().await;

    let version = second.put("shared", b"from second".to_vec(), Expect::Absent, None).await.unwrap();
    assert_eq!(next_change(&mut seen_by_first).await, Change::Put { key: "shared".into(), version });
    assert_eq!(first.get("shared").await.unwrap().unwrap().value, b"from second");
    assert_conflict(first.put("shared", Vec::new(), Expect::Absent, None).await, "shared", Some(version));
    let next = first.put("other", Vec::new(), Expect::Any, None).await.unwrap();
    assert!(next > version, "replicas share one version counter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replicas_subscribe_to_changes_only_once_they_watch() {
    let server = RedisServer::new();
    let writer = Store::open(&server.url(), NAMESPACE).await.unwrap();
    let watcher = Store::open(&server.url(), NAMESPACE).await.unwrap();
    let admin = ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let channel = format!("ficus:{NAMESPACE}:changes");
    let subscribers = |mut admin: ::redis::aio::MultiplexedConnection| {
        let channel = channel.clone();
        async move {
            let counts: Vec<(String, u64)> =
                ::redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query_async(&mut admin).await.unwrap();
            counts.first().map_or(0, |(_, count)| *count)
        }
    };

    writer.put("before", Vec::new(), Expect::Any, None).await.unwrap();
    assert_eq!(subscribers(admin.clone()).await, 0, "nobody watches yet, so nobody is subscribed");

    let mut changes = watcher.watch().await;
    assert_eq!(subscribers(admin.clone()).await, 1, "the first watch subscribes before it returns");
    let _second = watcher.watch().await;
    assert_eq!(subscribers(admin.clone()).await, 1, "watchers of one replica share its subscription");
    let version = writer.put("after", Vec::new(), Expect::Any, None).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Put { key: "after".into(), version });

    // The feed ends with the last clone of the store.
    drop(watcher);
    eventually(PATIENCE, || {
        let count = subscribers(admin.clone());
        async move { count.await == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_watchers_that_start_during_an_outage_are_told_to_resync() {
    let mut server = RedisServer::new();
    server.stop();
    let store = Store::open(&server.url(), NAMESPACE).await.unwrap();
    let started = Instant::now();
    let mut changes = store.watch().await;
    assert!(started.elapsed() < OUTAGE_BOUND, "watch held up for {:?} while redis was down", started.elapsed());

    server.start();
    let resync = tokio::time::timeout(PATIENCE, changes.recv()).await;
    assert!(matches!(resync, Ok(Ok(Change::Resync))), "expected a resync once the feed is there, got {resync:?}");
    let version = store.put("k", Vec::new(), Expect::Any, None).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Put { key: "k".into(), version });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replicas_hear_nothing_of_a_quiet_replicas_writes() {
    let server = RedisServer::new();
    let quiet = Store::open_announcing(&server.url(), NAMESPACE, Announce::Nothing).await.unwrap();
    let loud = Store::open(&server.url(), NAMESPACE).await.unwrap();
    let mut changes = loud.watch().await;

    let version = quiet.put("quiet", Vec::new(), Expect::Absent, None).await.unwrap();
    assert!(quiet.delete("quiet", Expect::Version(version)).await.unwrap());
    // Changes arrive in order, so the loud replica's own write is the first it hears of.
    let marker = loud.put("loud", Vec::new(), Expect::Absent, None).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Put { key: "loud".into(), version: marker });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passwords_are_used_and_checked() {
    let server = RedisServer::with_password("s3cret-pw");
    let store = Store::open(&server.url(), NAMESPACE).await.unwrap();
    let mut changes = store.watch().await;
    let version = store.put("k", Vec::new(), Expect::Absent, None).await.unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Put { key: "k".into(), version });

    let port = server.port();
    for url in [format!("redis://:wrong@127.0.0.1:{port}/"), format!("redis://127.0.0.1:{port}/")] {
        let store = Store::open(&url, NAMESPACE).await.unwrap();
        match store.ping().await {
            Err(StoreError::Invalid(message)) => assert!(!message.contains("s3cret"), "{message}"),
            other => panic!("{url}: expected an authentication error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_urls_are_checked() {
    match RedisStore::open("redis://:pw@[::1", NAMESPACE, Announce::Writes).await {
        Err(StoreError::Invalid(message)) => assert!(!message.contains("pw"), "{message}"),
        other => panic!("a malformed URL gave {other:?}"),
    }
    // TLS against a plain-text server: the handshake fails, cleanly and quickly.
    let server = RedisServer::new();
    let store = Store::open(&format!("rediss://127.0.0.1:{}/", server.port()), NAMESPACE).await.unwrap();
    let started = Instant::now();
    assert!(store.ping().await.is_err());
    assert!(started.elapsed() < OUTAGE_BOUND, "the failed handshake took {:?}", started.elapsed());
}

// ---- Helpers ----

/// The next change, skipping [`Change::Resync`], which a backend may send at any time.
async fn next_change(changes: &mut broadcast::Receiver<Change>) -> Change {
    loop {
        match tokio::time::timeout(PATIENCE, changes.recv()).await {
            Ok(Ok(Change::Resync)) => continue,
            Ok(Ok(change)) => return change,
            Ok(Err(error)) => panic!("watch channel: {error}"),
            Err(_) => panic!("no change within {PATIENCE:?}"),
        }
    }
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, key: &str, current: Option<u64>) {
    match result {
        Err(StoreError::Conflict { key: k, current: c }) => assert_eq!((k.as_str(), c), (key, current)),
        other => panic!("expected a conflict on {key} at {current:?}, got {other:?}"),
    }
}

async fn assert_unavailable<T: std::fmt::Debug>(what: &str, operation: impl Future<Output = Result<T, StoreError>>) {
    let started = Instant::now();
    let result = operation.await;
    let elapsed = started.elapsed();
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{what} during an outage gave {result:?}");
    assert!(elapsed < OUTAGE_BOUND, "{what} took {elapsed:?} to fail");
}

fn assert_near(actual: SystemTime, earliest: SystemTime, latest: SystemTime) {
    // Millisecond rounding (and, on Redis, the server's clock) allow a little slack.
    let slack = Duration::from_millis(50);
    assert!(
        actual + slack >= earliest && actual <= latest + slack,
        "{actual:?} is not between {earliest:?} and {latest:?}"
    );
}

fn keys(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|entry| entry.key.clone()).collect()
}

fn decode(value: &[u8]) -> u64 {
    u64::from_be_bytes(value.try_into().expect("an 8-byte counter"))
}
