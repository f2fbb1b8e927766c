//! Exact splits, sticky cohorts, rules and mirroring through the embedded data plane.

mod support;

use std::time::{Duration, Instant};

use ficus_proto::traffic::v1 as proto;
use ficus_testkit::{Backend, eventually};
use futures::{StreamExt, stream};
use support::{Traffic, route};

#[tokio::test]
async fn five_percent_without_a_sticky_key_is_exactly_every_twentieth_request() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    traffic.put(route("checkout", stable.addr(), canary.addr(), 500)).await;
    let mut sides = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let answer = traffic.get("/", &[]).await;
        assert_eq!(answer.status, 200);
        sides.push(answer.backend.expect("backend named") == "canary");
    }
    assert_eq!(sides.iter().filter(|canary| **canary).count(), 500);
    assert_eq!(canary.hits(), 500);
    for run in sides.windows(20) {
        assert!(run.iter().filter(|canary| **canary).count() <= 1, "two canary requests within 20");
    }
    traffic.stop().await;
}

#[tokio::test]
async fn worker_threads_share_one_exact_split() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let data = tempfile::tempdir().expect("temp dir");
    let mut traffic =
        Traffic::start_configured(data, |config| config.proxy.workers = std::num::NonZeroUsize::new(4)).await;
    traffic.put(route("checkout", stable.addr(), canary.addr(), 500)).await;
    // 32 requests in flight over as many connections, which the workers accept between them.
    let answers: Vec<_> = stream::iter(0..10_000).map(|_| traffic.get("/", &[])).buffer_unordered(32).collect().await;
    assert!(answers.iter().all(|answer| answer.status == 200));
    let on_canary = answers.iter().filter(|answer| answer.backend.as_deref() == Some("canary")).count();
    assert_eq!((on_canary, canary.hits(), stable.hits()), (500, 500, 9_500));
    traffic.stop().await;
}

async fn sides(traffic: &Traffic, users: std::ops::Range<usize>) -> Vec<bool> {
    stream::iter(users)
        .map(|user| async move {
            let user = format!("user-{user}");
            let answer = traffic.get("/", &[("x-user-id", &user)]).await;
            answer.backend.expect("backend named") == "canary"
        })
        .buffered(32)
        .collect()
        .await
}

#[tokio::test]
async fn sticky_cohorts_hold_the_share_and_move_users_one_way() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    let mut checkout = route("checkout", stable.addr(), canary.addr(), 2_000);
    checkout.sticky = Some(proto::StickyKey { source: Some(proto::sticky_key::Source::Header("x-user-id".into())) });
    traffic.put(checkout).await;

    let at20 = sides(&traffic, 0..10_000).await;
    let share = at20.iter().filter(|canary| **canary).count();
    assert!((1_900..=2_100).contains(&share), "{share} of 10000 users on the canary at 20%");
    for _ in 0..9 {
        assert_eq!(sides(&traffic, 0..1_000).await, at20[..1_000], "a user changed side while the weight stayed");
    }

    traffic.set_weights("checkout", &[("stable", 5_000), ("canary", 5_000)]).await;
    let at50 = sides(&traffic, 0..10_000).await;
    assert!(at20.iter().zip(&at50).all(|(before, after)| !*before || *after), "a canary user moved back at 50%");
    let share = at50.iter().filter(|canary| **canary).count();
    assert!((4_900..=5_100).contains(&share), "{share} of 10000 users on the canary at 50%");

    traffic.set_weights("checkout", &[("stable", 10_000), ("canary", 0)]).await;
    assert!(sides(&traffic, 0..10_000).await.iter().all(|canary| !canary), "at 0% everyone is on stable");
    traffic.stop().await;
}

#[tokio::test]
async fn a_request_without_the_sticky_cookie_gets_one_and_keeps_its_side() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    let mut checkout = route("checkout", stable.addr(), canary.addr(), 5_000);
    checkout.sticky = Some(proto::StickyKey { source: Some(proto::sticky_key::Source::Cookie("ficus-user".into())) });
    traffic.put(checkout).await;
    for _ in 0..20 {
        let first = traffic.get("/", &[]).await;
        let cookie = first.set_cookie.expect("a new user gets a key");
        let pair = cookie.split(';').next().expect("name=value").to_owned();
        assert!(pair.starts_with("ficus-user="));
        for _ in 0..5 {
            let again = traffic.get("/", &[("cookie", &pair)]).await;
            assert_eq!(again.backend, first.backend, "the user kept their side");
            assert!(again.set_cookie.is_none(), "a known user is not given a new key");
        }
    }
    traffic.stop().await;
}

async fn backend_for(traffic: &Traffic, headers: &[(&str, &str)]) -> String {
    traffic.get("/", headers).await.backend.expect("backend named")
}

#[tokio::test]
async fn header_and_cookie_rules_override_weights() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    let mut checkout = route("checkout", stable.addr(), canary.addr(), 0);
    checkout.rules = vec![
        proto::Rule {
            r#match: Some(proto::rule::Match::Header(proto::HeaderMatch {
                name: "x-canary".into(),
                value: Some(proto::header_match::Value::Exact("always".into())),
            })),
            backend: "canary".into(),
        },
        proto::Rule {
            r#match: Some(proto::rule::Match::Header(proto::HeaderMatch {
                name: "x-user-type".into(),
                value: Some(proto::header_match::Value::Regex("internal|staff".into())),
            })),
            backend: "canary".into(),
        },
        proto::Rule {
            r#match: Some(proto::rule::Match::Cookie(proto::CookieMatch {
                name: "canary".into(),
                value: "always".into(),
            })),
            backend: "canary".into(),
        },
        proto::Rule {
            r#match: Some(proto::rule::Match::Cookie(proto::CookieMatch {
                name: "canary".into(),
                value: "never".into(),
            })),
            backend: "stable".into(),
        },
    ];
    traffic.put(checkout).await;
    assert_eq!(backend_for(&traffic, &[("x-canary", "always")]).await, "canary");
    assert_eq!(backend_for(&traffic, &[("x-user-type", "staff")]).await, "canary");
    assert_eq!(backend_for(&traffic, &[("x-user-type", "staffer")]).await, "stable", "regexes match the whole value");
    assert_eq!(backend_for(&traffic, &[("cookie", "a=b; canary=always")]).await, "canary");
    assert_eq!(backend_for(&traffic, &[]).await, "stable");
    traffic.set_weights("checkout", &[("stable", 0), ("canary", 10_000)]).await;
    assert_eq!(backend_for(&traffic, &[("cookie", "canary=never")]).await, "stable");
    assert_eq!(backend_for(&traffic, &[]).await, "canary");
    traffic.stop().await;
}

#[tokio::test]
async fn mirroring_copies_the_configured_share_to_the_shadow() {
    let (stable, canary, shadow) =
        (Backend::start("stable").await, Backend::start("canary").await, Backend::start("shadow").await);
    let mut traffic = Traffic::start().await;
    let mut checkout = route("checkout", stable.addr(), canary.addr(), 0);
    checkout.backends.push(proto::Backend { name: "shadow".into(), endpoints: vec![shadow.addr().to_string()] });
    checkout.mirror = Some(proto::Mirror { backend: "shadow".into(), basis_points: 1_000 });
    traffic.put(checkout).await;
    for _ in 0..1_000 {
        assert_eq!(traffic.get("/", &[]).await.backend.as_deref(), Some("stable"), "clients only see the real answer");
    }
    eventually(Duration::from_secs(5), || async { shadow.hits() == 100 }).await;
    assert_eq!(stable.hits(), 1_000);
    traffic.stop().await;
}

#[tokio::test]
async fn a_weight_change_applies_to_the_next_request() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    traffic.put(route("checkout", stable.addr(), canary.addr(), 0)).await;
    assert_eq!(traffic.get("/", &[]).await.backend.as_deref(), Some("stable"));
    traffic.set_weights("checkout", &[("stable", 0), ("canary", 10_000)]).await;
    let returned = Instant::now();
    let answer = traffic.get("/", &[]).await;
    assert_eq!(answer.backend.as_deref(), Some("canary"), "the first request after SetWeights follows it");
    assert!(returned.elapsed() < Duration::from_millis(100), "seen within 100 ms: {:?}", returned.elapsed());
    traffic.stop().await;
}

#[tokio::test]
async fn forwarding_headers_and_trace_context_reach_the_backend() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    let mut checkout = route("checkout", stable.addr(), canary.addr(), 0);
    checkout.r#match = Some(proto::RouteMatch { hosts: vec!["shop.example".into()], path_prefix: "/api".into() });
    traffic.put(checkout).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let answer = traffic.get("/api/cart?id=1", &[("host", "shop.example"), ("traceparent", traceparent)]).await;
    assert_eq!(answer.status, 200);
    let headers = stable.last_headers().expect("request seen");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "shop.example");
    assert_eq!(headers["traceparent"], traceparent);
    assert_eq!(traffic.get("/other", &[("host", "shop.example")]).await.status, 404, "no route takes other paths");
    assert_eq!(traffic.get("/api", &[("host", "else.example")]).await.status, 404, "no route takes other hosts");
    traffic.stop().await;
}
