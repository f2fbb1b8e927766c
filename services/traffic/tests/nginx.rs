//! The nginx adapter against a real nginx: exact splits, rules, sticky cohorts, mirroring,
//! host and path routing, reloads, and a refused configuration that changes nothing.

use std::{net::SocketAddr, time::Duration};

use ficus_proto::traffic::v1 as proto;
use ficus_testkit::{BACKEND_HEADER, Backend, NginxServer, eventually};
use ficus_traffic::{
    adapters::nginx::{NginxAdapter, NginxConfig, NginxError, Reload},
    route::Route,
};
use futures::{StreamExt, stream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long nginx may take to replace its workers after a reload.
const ROLLOVER: Duration = Duration::from_secs(15);

/// What nginx answered.
#[derive(Debug)]
struct Reply {
    status: u16,
    backend: Option<String>,
    set_cookie: Option<String>,
}

/// GET `path` for `host` with `headers`, on a fresh connection, so that after a reload it
/// reaches a current worker rather than an old one finishing a keepalive connection.
async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("nginx answers within 10s")
        .unwrap_or_else(|error| panic!("request to nginx failed: {error}"));
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("an HTTP status line");
    let header = |wanted: &str| {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.trim().to_owned())
    };
    Reply { status, backend: header(BACKEND_HEADER), set_cookie: header("set-cookie") }
}

/// The backend that served `path` with `headers` on the default host.
async fn served_by(nginx: &NginxServer, headers: &[(&str, &str)]) -> String {
    let reply = get(nginx.addr(), "shop.example", "/", headers).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", nginx.error_log());
    reply.backend.expect("the backend names itself")
}

/// Which backend served each of `count` requests in a row.
async fn sequence(nginx: &NginxServer, count: usize) -> Vec<String> {
    let mut served = Vec::with_capacity(count);
    for _ in 0..count {
        served.push(served_by(nginx, &[]).await);
    }
    served
}

fn canaries(served: &[String]) -> usize {
    served.iter().filter(|backend| *backend == "canary").count()
}

fn backend(name: &str, servers: &[&Backend]) -> proto::Backend {
    proto::Backend { name: name.into(), endpoints: servers.iter().map(|server| server.addr().to_string()).collect() }
}

/// A route with a `stable` and a `canary` backend, `canary_weight` basis points to the canary.
fn two_way(stable: &[&Backend], canary: &[&Backend], canary_weight: u32) -> proto::Route {
    proto::Route {
        name: "checkout".into(),
        backends: vec![backend("stable", stable), backend("canary", canary)],
        weights: [("stable".to_owned(), 10_000 - canary_weight), ("canary".to_owned(), canary_weight)].into(),
        ..Default::default()
    }
}

fn built(route: &proto::Route) -> Route {
    Route::from_proto(route, "route", 1).expect("a valid route")
}

/// An adapter managing the include file of `nginx`, rendering servers on its address.
fn adapter(nginx: &NginxServer) -> NginxAdapter {
    let mut config = NginxConfig::new(nginx.include_path());
    config.main_config = Some(nginx.conf_path());
    config.global_args = vec!["-e".into(), nginx.dir().join("error.log").into()];
    config.render.listen = vec![nginx.addr().to_string()];
    NginxAdapter::new(config)
}

/// Applies `routes` and waits until every worker runs the new configuration, so that the
/// next request is balanced by it from a fresh state.
async fn apply(nginx: &NginxServer, adapter: &NginxAdapter, routes: &[proto::Route]) {
    let old_workers = nginx.worker_pids();
    let routes: Vec<Route> = routes.iter().map(built).collect();
    if let Err(error) = adapter.apply(&routes).await {
        panic!("apply failed: {error}\n--- error.log ---\n{}", nginx.error_log());
    }
    eventually(ROLLOVER, || async {
        let workers = nginx.worker_pids();
        !workers.is_empty() && workers.iter().all(|worker| !old_workers.contains(worker))
    })
    .await;
}

fn header_rule(name: &str, value: proto::header_match::Value, backend: &str) -> proto::Rule {
    proto::Rule {
        r#match: Some(proto::rule::Match::Header(proto::HeaderMatch { name: name.into(), value: Some(value) })),
        backend: backend.into(),
    }
}

fn cookie_rule(name: &str, value: &str, backend: &str) -> proto::Rule {
    proto::Rule {
        r#match: Some(proto::rule::Match::Cookie(proto::CookieMatch { name: name.into(), value: value.into() })),
        backend: backend.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_exactly_and_evenly_across_backends_and_their_endpoints() {
    let (stable_a, stable_b) = (Backend::start("stable").await, Backend::start("stable").await);
    let canary = Backend::start("canary").await;
    let nginx = NginxServer::new();
    let adapter = adapter(&nginx);
    apply(&nginx, &adapter, &[two_way(&[&stable_a, &stable_b], &[&canary], 2_000)]).await;

    let served = sequence(&nginx, 1_000).await;
    assert_eq!(canaries(&served), 200);
    assert_eq!(
        (stable_a.hits(), stable_b.hits(), canary.hits()),
        (400, 400, 200),
        "endpoints share their backend's weight"
    );
    for window in served.windows(5) {
        assert!(canaries(window) <= 1, "two canary requests within 5: {window:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_cookie_rules_override_the_weights_in_order() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let nginx = NginxServer::new();
    let adapter = adapter(&nginx);
    let mut route = two_way(&[&stable], &[&canary], 5_000);
    route.rules = vec![
        cookie_rule("canary", "never", "stable"),
        header_rule("X-Canary", proto::header_match::Value::Regex("always|yes".into()), "canary"),
        header_rule("x-gray-tag", proto::header_match::Value::Exact("enable".into()), "canary"),
        cookie_rule("canary", "always", "canary"),
    ];
    apply(&nginx, &adapter, &[route]).await;

    let ruled: [(&[(&str, &str)], &str); 6] = [
        (&[("x-canary", "always")], "canary"),
        (&[("X-CANARY", "yes")], "canary"),
        (&[("x-gray-tag", "enable")], "canary"),
        (&[("cookie", "a=1; canary=always")], "canary"),
        (&[("cookie", "canary=never")], "stable"),
        (&[("cookie", "canary=never"), ("x-canary", "always")], "stable"),
    ];
    for (headers, expected) in ruled {
        for _ in 0..20 {
            assert_eq!(served_by(&nginx, headers).await, expected, "{headers:?}");
        }
    }
    // Values compare case-sensitively and whole, as in the ficus proxy; the rest follow
    // the 50/50 weights, which ruled requests did not disturb.
    let unruled: [&[(&str, &str)]; 4] = [
        &[("x-canary", "ALWAYS")],
        &[("x-gray-tag", "enable2")],
        &[("cookie", "notcanary=always")],
        &[("cookie", "canary=alwaysx")],
    ];
    let mut served = Vec::new();
    for headers in unruled {
        for _ in 0..20 {
            served.push(served_by(&nginx, headers).await);
        }
    }
    assert_eq!(canaries(&served), 40);
}

/// Whether each of `users` is on the canary, asking as `x-user-id: user-<n>`.
async fn cohort_sides(nginx: &NginxServer, users: std::ops::Range<usize>) -> Vec<bool> {
    stream::iter(users)
        .map(|user| async move {
            let user = format!("user-{user}");
            served_by(nginx, &[("x-user-id", &user)]).await == "canary"
        })
        .buffered(16)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_keep_their_side_the_share_holds_and_moves_are_one_way() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let nginx = NginxServer::new();
    let adapter = adapter(&nginx);
    let mut route = two_way(&[&stable], &[&canary], 2_000);
    route.sticky = Some(proto::StickyKey { source: Some(proto::sticky_key::Source::Header("x-user-id".into())) });
    apply(&nginx, &adapter, std::slice::from_ref(&route)).await;

    let at20 = cohort_sides(&nginx, 0..2_000).await;
    let share = at20.iter().filter(|canary| **canary).count();
    assert!((360..=440).contains(&share), "{share} of 2000 users on the canary at 20%");
    assert_eq!(cohort_sides(&nginx, 0..2_000).await, at20, "a user changed side while the weight stayed");
    // Requests without a key follow the weights, exactly.
    assert_eq!(canaries(&sequence(&nginx, 10).await), 2);

    route.weights = [("stable".to_owned(), 5_000), ("canary".to_owned(), 5_000)].into();
    apply(&nginx, &adapter, &[route]).await;
    let at50 = cohort_sides(&nginx, 0..2_000).await;
    assert!(at20.iter().zip(&at50).all(|(before, after)| !*before || *after), "a canary user moved back at 50%");
    let share = at50.iter().filter(|canary| **canary).count();
    assert!((960..=1_040).contains(&share), "{share} of 2000 users on the canary at 50%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_the_sticky_cookie_gets_one_and_keeps_its_side() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let nginx = NginxServer::new();
    let adapter = adapter(&nginx);
    let mut route = two_way(&[&stable], &[&canary], 5_000);
    route.sticky = Some(proto::StickyKey { source: Some(proto::sticky_key::Source::Cookie("ficus-user".into())) });
    apply(&nginx, &adapter, &[route]).await;

    for _ in 0..20 {
        let first = get(nginx.addr(), "shop.example", "/", &[]).await;
        let cookie = first.set_cookie.expect("a new user gets a key");
        let (pair, attributes) = cookie.split_once("; ").expect("name=value; attributes");
        let key = pair.strip_prefix("ficus-user=").expect("the sticky cookie");
        assert!(key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        assert_eq!(attributes, "Path=/; Max-Age=34560000; HttpOnly; SameSite=Lax");
        for _ in 0..5 {
            let again = get(nginx.addr(), "shop.example", "/", &[("cookie", pair)]).await;
            assert_eq!(again.backend, first.backend, "the user changed side");
            assert_eq!(again.set_cookie, None, "a user with a key gets no new one");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_nginx_refuses_leaves_the_old_one_on_disk_and_serving() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let nginx = NginxServer::new();
    let adapter = adapter(&nginx);
    apply(&nginx, &adapter, &[two_way(&[&stable], &[&canary], 2_000)]).await;
    let working = std::fs::read_to_string(nginx.include_path()).expect("the applied file");
    let workers = nginx.worker_pids();

    // Valid for the ficus proxy's regex engine, refused by PCRE outside UTF mode.
    let mut broken = two_way(&[&stable], &[&canary], 5_000);
    broken.rules = vec![header_rule("x-emoji", proto::header_match::Value::Regex(r"\x{1F600}".into()), "canary")];
    let error = adapter.apply(&[built(&broken)]).await.expect_err("nginx -t refuses the render");
    match &error {
        NginxError::Rejected { stderr, .. } => assert!(stderr.contains("pcre2_compile"), "{stderr}"),
        other => panic!("expected a refusal, got {other}"),
    }

    assert_eq!(std::fs::read_to_string(nginx.include_path()).expect("the file"), working);
    let files: Vec<_> = std::fs::read_dir(nginx.include_path().parent().expect("conf.d"))
        .expect("list conf.d")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(files, vec![std::ffi::OsString::from("ficus.conf")], "a temporary file was left behind");
    assert_eq!(nginx.worker_pids(), workers, "nginx was reloaded");
    assert_eq!(canaries(&sequence(&nginx, 1_000).await), 200, "the old weights no longer split");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_reaches_new_requests_after_the_reload() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let nginx = NginxServer::new();
    let mut config = adapter(&nginx).config().clone();
    // Through the pid file this time; the other tests use `nginx -s reload`.
    config.reload = Reload::PidFile(nginx.pid_path());
    let adapter = NginxAdapter::new(config);
    apply(&nginx, &adapter, &[two_way(&[&stable], &[&canary], 2_000)]).await;
    assert_eq!(canaries(&sequence(&nginx, 100).await), 20);

    apply(&nginx, &adapter, &[two_way(&[&stable], &[&canary], 5_000)]).await;
    let served = sequence(&nginx, 1_000).await;
    assert_eq!(canaries(&served), 500);
    assert!(served.windows(2).all(|pair| pair[0] != pair[1]), "50/50 alternates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_copies_its_share_to_the_shadow_whose_answers_are_dropped() {
    let (stable, shadow) = (Backend::start("stable").await, Backend::start("shadow").await);
    let nginx = NginxServer::new();
    let adapter = adapter(&nginx);
    let mut route = proto::Route {
        name: "checkout".into(),
        backends: vec![backend("stable", &[&stable]), backend("shadow", &[&shadow])],
        weights: [("stable".to_owned(), 10_000)].into(),
        mirror: Some(proto::Mirror { backend: "shadow".into(), basis_points: 10_000 }),
        ..Default::default()
    };
    apply(&nginx, &adapter, std::slice::from_ref(&route)).await;
    assert!(sequence(&nginx, 100).await.iter().all(|backend| backend == "stable"));
    assert_eq!(shadow.hits(), 100);

    route.mirror = Some(proto::Mirror { backend: "shadow".into(), basis_points: 2_000 });
    apply(&nginx, &adapter, &[route]).await;
    sequence(&nginx, 1_000).await;
    // nginx finishes a request's mirror before it closes the connection, so the count is
    // final. A random share: 200 expected, the bounds are over five standard deviations.
    let copies = shadow.hits() - 100;
    assert!((130..=270).contains(&copies), "{copies} of 1000 requests mirrored at 20%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_take_the_route_with_the_longest_prefix_then_the_one_naming_the_host() {
    let (shop, api, shop_api) =
        (Backend::start("shop").await, Backend::start("api").await, Backend::start("shop-api").await);
    let nginx = NginxServer::new();
    let adapter = adapter(&nginx);
    let single = |name: &str, server: &Backend, hosts: &[&str], prefix: &str| proto::Route {
        name: name.into(),
        r#match: Some(proto::RouteMatch {
            hosts: hosts.iter().map(|host| (*host).to_owned()).collect(),
            path_prefix: prefix.into(),
        }),
        backends: vec![backend("main", &[server])],
        weights: [("main".to_owned(), 10_000)].into(),
        ..Default::default()
    };
    apply(
        &nginx,
        &adapter,
        &[
            single("shop", &shop, &["shop.example"], ""),
            single("api", &api, &[], "/api"),
            single("shop-api", &shop_api, &["shop.example"], "/api/"),
        ],
    )
    .await;

    let cases = [
        ("shop.example", "/", Some("shop")),
        ("SHOP.example:8080", "/cart", Some("shop")),
        ("shop.example", "/api", Some("shop-api")),
        ("shop.example", "/api/v1?q=1", Some("shop-api")),
        ("shop.example", "/apix", Some("shop")),
        ("other.example", "/api/v1", Some("api")),
        ("other.example", "/apix", None),
        ("other.example", "/", None),
    ];
    for (host, path, expected) in cases {
        let reply = get(nginx.addr(), host, path, &[]).await;
        match expected {
            Some(expected) => assert_eq!(reply.backend.as_deref(), Some(expected), "{host}{path}: {reply:?}"),
            None => assert_eq!(reply.status, 404, "{host}{path}: {reply:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_names_and_values_reach_nginx_intact() {
    let (plain_a, plain_b, odd) =
        (Backend::start("plain").await, Backend::start("plain").await, Backend::start("odd").await);
    let nginx = NginxServer::new();
    let adapter = adapter(&nginx);
    let value = r#"a"b\c$d{e};"#;
    let route = proto::Route {
        name: "odd-one".into(),
        r#match: Some(proto::RouteMatch { hosts: vec!["a.example".into()], path_prefix: "/we\"ird path;{x}/".into() }),
        backends: vec![
            proto::Backend {
                name: "plain".into(),
                // A host name: the adapter resolves it and splits the endpoint's share.
                endpoints: vec![plain_a.addr().to_string(), format!("localhost:{}", plain_b.addr().port())],
            },
            backend("odd", &[&odd]),
            proto::Backend { name: "v6".into(), endpoints: vec!["[::1]:11".into()] },
        ],
        weights: [("plain".to_owned(), 3_333), ("odd".to_owned(), 6_667)].into(),
        rules: vec![
            header_rule("x-v", proto::header_match::Value::Exact(value.into()), "odd"),
            header_rule("x_under", proto::header_match::Value::Exact("left out".into()), "odd"),
            cookie_rule("we.ird$name", "v$1", "plain"),
        ],
        sticky: Some(proto::StickyKey { source: Some(proto::sticky_key::Source::Cookie("sticky$key".into())) }),
        mirror: Some(proto::Mirror { backend: "v6".into(), basis_points: 1 }),
        ..Default::default()
    };
    apply(&nginx, &adapter, &[route]).await;

    let under = "/we%22ird%20path;%7Bx%7D/y";
    let at = "/we%22ird%20path;%7Bx%7D";
    for path in [under, at] {
        let ruled = get(nginx.addr(), "a.example", path, &[("x-v", value)]).await;
        assert_eq!(ruled.backend.as_deref(), Some("odd"), "{path}: {ruled:?}");
        let cookie = get(nginx.addr(), "a.example", path, &[("cookie", "we.ird$name=v$1")]).await;
        assert_eq!(cookie.backend.as_deref(), Some("plain"), "{path}: {cookie:?}");
        let fresh = get(nginx.addr(), "a.example", path, &[]).await;
        assert!(fresh.set_cookie.as_deref().is_some_and(|cookie| cookie.starts_with("sticky$key=")), "{fresh:?}");
    }
    let near_miss = get(nginx.addr(), "a.example", "/we%22ird%20path;%7Bx%7Dy", &[("x-v", value)]).await;
    assert_eq!(near_miss.status, 404, "{near_miss:?}");
}
