//! The `TrafficControl` API: validation, conflicts, watching, durability and statistics.

mod support;

use std::time::Duration;

use ficus_kit::status::{conflict_version, invalid_field};
use ficus_proto::traffic::v1 as proto;
use ficus_testkit::Backend;
use futures::StreamExt;
use support::{Traffic, route};
use tonic::Code;

async fn assert_invalid(traffic: &mut Traffic, route: proto::Route, field: &str) {
    let status = traffic
        .api
        .put_route(proto::PutRouteRequest { route: Some(route), expected_generation: 0 })
        .await
        .expect_err("invalid route accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(invalid_field(&status).as_deref(), Some(field), "{status:?}");
    assert!(status.message().starts_with(field), "the message names the field: {}", status.message());
}

#[tokio::test]
async fn bad_routes_are_refused_with_the_field_path_and_change_nothing() {
    let mut traffic = Traffic::start().await;
    let good = route("checkout", "127.0.0.1:1".parse().expect("addr"), "127.0.0.1:2".parse().expect("addr"), 500);
    let before = traffic.put(good.clone()).await;

    let mut bad = good.clone();
    bad.weights.insert("canary".into(), 600);
    assert_invalid(&mut traffic, bad, "route.weights").await;
    let mut bad = good.clone();
    bad.rules.push(proto::Rule {
        r#match: Some(proto::rule::Match::Cookie(proto::CookieMatch { name: "canary".into(), value: "always".into() })),
        backend: "elsewhere".into(),
    });
    assert_invalid(&mut traffic, bad, "route.rules[0].backend").await;
    let mut bad = good.clone();
    bad.rules.push(proto::Rule {
        r#match: Some(proto::rule::Match::Header(proto::HeaderMatch {
            name: "x-canary".into(),
            value: Some(proto::header_match::Value::Regex("[".into())),
        })),
        backend: "canary".into(),
    });
    assert_invalid(&mut traffic, bad, "route.rules[0].header.regex").await;
    let mut bad = good.clone();
    bad.backends[0].endpoints = vec!["legacy.internal".into()];
    assert_invalid(&mut traffic, bad, "route.backends[0].endpoints[0]").await;
    let mut bad = good.clone();
    bad.name = "other".into();
    assert_invalid(&mut traffic, bad, "route.match").await;

    let status = traffic
        .api
        .set_weights(proto::SetWeightsRequest {
            route: "checkout".into(),
            weights: [("stable".to_owned(), 1), ("canary".to_owned(), 1)].into(),
            expected_generation: 0,
            fencing_token: 0,
        })
        .await
        .expect_err("bad weights accepted");
    assert_eq!(invalid_field(&status).as_deref(), Some("weights"));

    let after =
        traffic.api.get_route(proto::GetRouteRequest { name: "checkout".into() }).await.expect("route").into_inner();
    assert_eq!(after, before, "rejected requests changed nothing");
    let listed = traffic.api.list_routes(proto::ListRoutesRequest {}).await.expect("list").into_inner();
    assert_eq!(listed.routes, vec![before]);
    traffic.stop().await;
}

#[tokio::test]
async fn a_stale_generation_is_aborted_with_the_current_one() {
    let mut traffic = Traffic::start().await;
    let created = traffic
        .put(route("checkout", "127.0.0.1:1".parse().expect("addr"), "127.0.0.1:2".parse().expect("addr"), 0))
        .await;
    let moved = traffic.set_weights("checkout", &[("stable", 9_500), ("canary", 500)]).await;
    assert!(moved.generation > created.generation, "every change bumps the generation");
    let status = traffic
        .api
        .set_weights(proto::SetWeightsRequest {
            route: "checkout".into(),
            weights: [("stable".to_owned(), 0), ("canary".to_owned(), 10_000)].into(),
            expected_generation: created.generation,
            fencing_token: 0,
        })
        .await
        .expect_err("stale write accepted");
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(conflict_version(&status), Some(moved.generation));
    let current = traffic.api.get_route(proto::GetRouteRequest { name: "checkout".into() }).await.expect("route");
    assert_eq!(current.into_inner().weights["canary"], 500, "the losing write changed nothing");
    let status =
        traffic.api.get_route(proto::GetRouteRequest { name: "nope".into() }).await.expect_err("unknown route found");
    assert_eq!(status.code(), Code::NotFound);
    traffic.stop().await;
}

#[tokio::test]
async fn weights_from_a_superseded_planner_lease_are_refused_and_change_nothing() {
    let mut traffic = Traffic::start().await;
    let created = traffic
        .put(route("checkout", "127.0.0.1:1".parse().expect("addr"), "127.0.0.1:2".parse().expect("addr"), 0))
        .await;
    let weights = |canary: u32| [("stable".to_owned(), 10_000 - canary), ("canary".to_owned(), canary)].into();
    let api = traffic.api.clone();
    let set = move |canary: u32, fencing_token: u64| {
        let request = proto::SetWeightsRequest {
            route: "checkout".into(),
            weights: weights(canary),
            expected_generation: 0,
            fencing_token,
        };
        let mut api = api.clone();
        async move { api.set_weights(request).await }
    };
    let newer = set(2_000, 200).await.expect("the newest leader's weights").into_inner();
    assert_eq!(newer.fencing_token, 200);
    let status = set(500, 100).await.expect_err("a paused old leader's late weights");
    assert_eq!(status.code(), Code::Aborted);
    assert!(status.message().contains("100") && status.message().contains("200"), "{}", status.message());
    // An operator (no token) still moves the route; the fence stays, also over a PutRoute.
    set(3_000, 0).await.expect("an operator's weights");
    let replaced = traffic.put(created.clone()).await;
    assert_eq!(replaced.fencing_token, 200, "a replaced route keeps its fence");
    assert_eq!(set(500, 150).await.expect_err("still stale").code(), Code::Aborted);
    let route =
        traffic.api.get_route(proto::GetRouteRequest { name: "checkout".into() }).await.expect("route").into_inner();
    assert_eq!(route.weights["canary"], created.weights["canary"], "refused weights changed nothing");
    set(5_000, 200).await.expect("the same leader again");
    traffic.stop().await;
}

async fn next(events: &mut tonic::Streaming<proto::RouteEvent>) -> proto::RouteEvent {
    let event = tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("event in time");
    event.expect("stream open").expect("event")
}

#[tokio::test]
async fn watching_streams_the_table_then_every_change() {
    let mut traffic = Traffic::start().await;
    let created = traffic
        .put(route("checkout", "127.0.0.1:1".parse().expect("addr"), "127.0.0.1:2".parse().expect("addr"), 0))
        .await;
    let mut events = traffic.api.watch_routes(proto::WatchRoutesRequest {}).await.expect("watch").into_inner();
    match next(&mut events).await.event {
        Some(proto::route_event::Event::Snapshot(snapshot)) => assert_eq!(snapshot.routes, vec![created]),
        other => panic!("expected a snapshot first, got {other:?}"),
    }
    let moved = traffic.set_weights("checkout", &[("stable", 8_000), ("canary", 2_000)]).await;
    match next(&mut events).await.event {
        Some(proto::route_event::Event::Put(route)) => assert_eq!(route, moved),
        other => panic!("expected the change, got {other:?}"),
    }
    traffic
        .api
        .delete_route(proto::DeleteRouteRequest { name: "checkout".into(), expected_generation: 0 })
        .await
        .expect("delete");
    match next(&mut events).await.event {
        Some(proto::route_event::Event::Deleted(deleted)) => assert_eq!(deleted.name, "checkout"),
        other => panic!("expected the deletion, got {other:?}"),
    }
    traffic.stop().await;
}

#[tokio::test]
async fn routes_survive_a_restart() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    let created = traffic.put(route("checkout", stable.addr(), canary.addr(), 0)).await;
    let moved = traffic.set_weights("checkout", &[("stable", 0), ("canary", 10_000)]).await;
    assert_ne!(created, moved);
    let data = traffic.stop().await;
    let mut traffic = Traffic::start_in(data).await;
    let after =
        traffic.api.get_route(proto::GetRouteRequest { name: "checkout".into() }).await.expect("route").into_inner();
    assert_eq!(after, moved);
    assert_eq!(
        traffic.get("/", &[]).await.backend.as_deref(),
        Some("canary"),
        "the data plane follows the stored route"
    );
    traffic.stop().await;
}

async fn stats(traffic: &mut Traffic) -> Vec<proto::BackendStats> {
    let request = proto::GetTrafficStatsRequest { route: "checkout".into(), ..Default::default() };
    traffic.api.get_traffic_stats(request).await.expect("stats").into_inner().backends
}

#[tokio::test]
async fn stats_cut_into_periods_add_up_and_a_bad_period_is_refused_by_name() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    traffic.put(route("checkout", stable.addr(), canary.addr(), 5_000)).await;
    for _ in 0..40 {
        assert_eq!(traffic.get("/", &[]).await.status, 200);
    }
    let request = |period: pbjson_types::Duration, window_secs: i64| proto::GetTrafficStatsRequest {
        route: "checkout".into(),
        window: Some(pbjson_types::Duration { seconds: window_secs, nanos: 0 }),
        period: Some(period),
        ..Default::default()
    };
    let second = pbjson_types::Duration { seconds: 1, nanos: 0 };
    let answer = traffic.api.get_traffic_stats(request(second, 60)).await.expect("stats").into_inner();
    for backend in &answer.backends {
        assert!(!backend.periods.is_empty(), "{backend:?}");
        let requests: u64 = backend.periods.iter().map(|period| period.requests).sum();
        assert_eq!(requests, backend.requests, "the periods add up to the window");
        let counted: u64 = backend
            .periods
            .iter()
            .flat_map(|period| period.histogram.as_ref().expect("histogram").buckets.iter())
            .map(|bucket| bucket.count)
            .sum();
        assert_eq!(counted, backend.requests);
    }
    for (period, window, why) in [
        (pbjson_types::Duration { seconds: 0, nanos: 0 }, 60, "zero"),
        (pbjson_types::Duration { seconds: -1, nanos: 0 }, 60, "negative"),
        (second, 900, "more periods than are served"),
    ] {
        let status = traffic.api.get_traffic_stats(request(period, window)).await.expect_err(why);
        assert_eq!(status.code(), Code::InvalidArgument, "{why}: {status:?}");
        assert_eq!(invalid_field(&status).as_deref(), Some("period"), "{why}: {status:?}");
    }
    traffic.stop().await;
}

#[tokio::test]
async fn stats_split_each_backend_in_halves_and_keep_a_sticky_user_in_one() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    let mut sticky = route("checkout", stable.addr(), canary.addr(), 0);
    sticky.sticky = Some(proto::StickyKey { source: Some(proto::sticky_key::Source::Header("x-user".into())) });
    traffic.put(sticky).await;
    let request = proto::GetTrafficStatsRequest { route: "checkout".into(), halves: true, ..Default::default() };
    let halves = |answer: &proto::TrafficStats| -> Vec<u64> {
        answer.backends[0].halves.iter().map(|half| half.requests).collect()
    };
    // One user: every request in the same half, as it goes to the same side.
    for _ in 0..30 {
        assert_eq!(traffic.get("/", &[("x-user", "u-1")]).await.status, 200);
    }
    let answer = traffic.api.get_traffic_stats(request.clone()).await.expect("stats").into_inner();
    let mut one_user = halves(&answer);
    one_user.sort_unstable();
    assert_eq!(one_user, [0, 30], "a user's requests stay in one half");
    // Anonymous requests spread over both halves, and the halves add up to the backend.
    for _ in 0..200 {
        assert_eq!(traffic.get("/", &[]).await.status, 200);
    }
    let answer = traffic.api.get_traffic_stats(request).await.expect("stats").into_inner();
    let split = halves(&answer);
    assert_eq!(split.iter().sum::<u64>(), answer.backends[0].requests);
    // Binomial(200, 1/2) plus the user's 30: each half far from empty.
    assert!(split.iter().all(|&half| half >= 60), "{split:?}");
    traffic.stop().await;
}

#[tokio::test]
async fn a_backend_that_goes_down_gives_502s_counted_against_it_then_recovers() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    traffic.put(route("checkout", stable.addr(), canary.addr(), 5_000)).await;
    for _ in 0..100 {
        assert_eq!(traffic.get("/", &[]).await.status, 200);
    }
    let canary_addr = canary.stop().await;
    let statuses: Vec<u16> =
        futures::future::join_all((0..100).map(|_| traffic.get("/", &[]))).await.iter().map(|a| a.status).collect();
    assert_eq!(statuses.iter().filter(|status| **status == 502).count(), 50, "every canary request fails as 502");
    let canary = Backend::start_on("canary", canary_addr).await;
    for _ in 0..100 {
        assert_eq!(traffic.get("/", &[]).await.status, 200, "recovered without a restart");
    }
    assert_eq!(canary.hits(), 50);

    let by_name = stats(&mut traffic).await;
    let canary_stats = by_name.iter().find(|b| b.backend == "canary").expect("canary stats");
    let stable_stats = by_name.iter().find(|b| b.backend == "stable").expect("stable stats");
    assert_eq!(canary_stats.requests, 150);
    assert_eq!(canary_stats.connection_errors, 50);
    assert_eq!(canary_stats.errors, 50);
    assert_eq!(stable_stats.requests, 150);
    assert_eq!(stable_stats.errors, 0);
    assert_eq!(stable_stats.responses_by_class.get("2xx"), Some(&150));
    let latency = stable_stats.latency.expect("latency");
    assert!(latency.p50_seconds > 0.0 && latency.p50_seconds <= latency.p99_seconds);
    let histogram_total: u64 =
        stable_stats.histogram.as_ref().expect("histogram").buckets.iter().map(|b| b.count).sum();
    assert_eq!(histogram_total, 150);
    traffic.stop().await;
}

/// A backend on a raw socket: reads one request head per connection, then answers it with
/// `answer` (nothing at all when `None`) and closes the connection without saying so, as a
/// backend whose keep-alive timeout is zero does.
async fn one_request_per_connection_backend(answer: Option<&'static str>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0_u8; 1024];
                while !head.windows(4).any(|end| end == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                match answer {
                    Some(answer) => {
                        let _ = stream.write_all(answer.as_bytes()).await;
                    }
                    // Hold the connection open without a word until the proxy gives up.
                    None => {
                        let _ = stream.read(&mut buffer).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_never_a_502() {
    let backend =
        one_request_per_connection_backend(Some("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-backend: stable\r\n\r\nok"))
            .await;
    let mut traffic = Traffic::start().await;
    traffic.put(route("checkout", backend, backend, 0)).await;
    // Each connection is closed right after its response: the next request often finds
    // its pooled connection dead before or while it is sent, and must go out on a new one.
    for request in 0..300 {
        assert_eq!(traffic.get("/", &[]).await.status, 200, "request {request}");
    }
    let by_name = stats(&mut traffic).await;
    let stable = by_name.iter().find(|b| b.backend == "stable").expect("stable stats");
    assert_eq!((stable.requests, stable.connection_errors), (300, 0));
    traffic.stop().await;
}

#[tokio::test]
async fn a_backend_that_does_not_answer_in_time_gives_504s_counted_against_it() {
    let (silent, stable) = (one_request_per_connection_backend(None).await, Backend::start("stable").await);
    let data = tempfile::tempdir().expect("temp dir");
    let mut traffic =
        Traffic::start_configured(data, |config| config.proxy.request_timeout = Duration::from_millis(300)).await;
    traffic.put(route("checkout", stable.addr(), silent, 10_000)).await;
    for _ in 0..3 {
        assert_eq!(traffic.get("/", &[]).await.status, 504);
    }
    let by_name = stats(&mut traffic).await;
    let canary = by_name.iter().find(|b| b.backend == "canary").expect("canary stats");
    assert_eq!((canary.requests, canary.connection_errors, canary.errors), (3, 3, 3));
    traffic.stop().await;
}
