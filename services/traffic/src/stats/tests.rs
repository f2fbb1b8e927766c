use std::{thread, time::UNIX_EPOCH};

use prometheus_client::encoding::text::encode;

use super::*;

const WALL: Duration = Duration::from_secs(1_700_000_000);

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The instant `offset` after the start of the second the stats were made in (or, on a
/// machine up for less than the retention, as long after it as the retention).
fn at(stats: &Stats, offset: Duration) -> Instant {
    stats.inner.origin + Duration::from_secs(stats.inner.retention_secs) + offset
}

fn snapshot(stats: &Stats, backends: &[&str], window: Duration, now: Duration) -> proto::TrafficStats {
    let backends: Vec<String> = backends.iter().map(|b| (*b).to_owned()).collect();
    stats.snapshot_at(
        "shop",
        &backends,
        Query::window(window),
        at(stats, now),
        UNIX_EPOCH + WALL + now,
        &Remote::default(),
    )
}

fn only(stats: &proto::TrafficStats) -> &proto::BackendStats {
    assert_eq!(stats.backends.len(), 1);
    &stats.backends[0]
}

fn class(backend: &proto::BackendStats, class: &str) -> u64 {
    backend.responses_by_class[class]
}

fn histogram_total(backend: &proto::BackendStats) -> u64 {
    backend.histogram.as_ref().unwrap().buckets.iter().map(|b| b.count).sum()
}

#[test]
fn counts_every_class_exactly() {
    let stats = Stats::default();
    let stable = stats.recorder("shop", "stable");
    let now = at(&stats, ms(500));
    for (status, times) in [(101, 1), (200, 7), (204, 3), (302, 2), (404, 4), (500, 5), (503, 1)] {
        for _ in 0..times {
            stable.record_at(now, Outcome::Status(status), ms(10));
        }
    }
    stable.record_at(now, Outcome::ConnectionError, ms(3000));
    stable.record_at(now, Outcome::ConnectionError, ms(5));

    let got = snapshot(&stats, &["stable"], Duration::from_secs(60), ms(900));
    let backend = only(&got);
    assert_eq!(backend.backend, "stable");
    assert_eq!(backend.requests, 25);
    assert_eq!(
        [class(backend, "1xx"), class(backend, "2xx"), class(backend, "3xx"), class(backend, "4xx")],
        [1, 10, 2, 4]
    );
    assert_eq!(class(backend, "5xx"), 6);
    assert_eq!(backend.connection_errors, 2);
    assert_eq!(backend.errors, 8, "5xx responses plus connection errors");
}

#[test]
fn a_status_outside_the_known_classes_counts_as_a_server_error() {
    let stats = Stats::default();
    let recorder = stats.recorder("shop", "canary");
    recorder.record_at(at(&stats, ms(0)), Outcome::Status(600), ms(1));
    recorder.record_at(at(&stats, ms(0)), Outcome::Status(42), ms(1));
    recorder.record_at(at(&stats, ms(0)), Outcome::from(http::StatusCode::OK), ms(1));

    let backend = only(&snapshot(&stats, &["canary"], Duration::from_secs(1), ms(0))).clone();
    assert_eq!((backend.requests, class(&backend, "5xx"), backend.errors, class(&backend, "2xx")), (3, 2, 2, 1));
}

#[test]
fn the_window_covers_the_current_second_and_the_ones_before_it() {
    let stats = Stats::default();
    let recorder = stats.recorder("shop", "stable");
    recorder.record_at(at(&stats, ms(500)), Outcome::Status(200), ms(1)); // second 0
    recorder.record_at(at(&stats, ms(5_500)), Outcome::Status(200), ms(1)); // second 5
    recorder.record_at(at(&stats, ms(10_100)), Outcome::Status(200), ms(1)); // second 10

    let requests =
        |window_secs: u64| only(&snapshot(&stats, &["stable"], Duration::from_secs(window_secs), ms(10_200))).requests;
    assert_eq!(requests(1), 1, "only the current second");
    assert_eq!(requests(5), 1, "seconds 6 to 10");
    assert_eq!(requests(6), 2, "seconds 5 to 10");
    assert_eq!(requests(10), 2, "second 0 is older than the window");
    assert_eq!(requests(11), 3);
}

#[test]
fn the_window_says_which_stretch_it_covered() {
    let stats = Stats::default();
    let got = snapshot(&stats, &[], Duration::from_secs(10), ms(30_250));
    let start = got.start.unwrap();
    let end = got.end.unwrap();
    // Seconds 21 to 30, the last one partial.
    assert_eq!((start.seconds, start.nanos), (1_700_000_021, 0));
    assert_eq!((end.seconds, end.nanos), (1_700_000_030, 250_000_000));
    assert_eq!(got.route, "shop");
    assert!(got.backends.is_empty());
}

#[test]
fn a_partial_second_window_rounds_up_and_a_longer_one_is_capped_at_retention() {
    let stats = Stats::new(Duration::from_secs(60));
    assert_eq!(stats.retention(), Duration::from_secs(60));
    let recorder = stats.recorder("shop", "stable");
    for second in 0..200 {
        recorder.record_at(at(&stats, Duration::from_secs(second)), Outcome::Status(200), ms(1));
    }
    let now = Duration::from_secs(199);
    assert_eq!(only(&snapshot(&stats, &["stable"], ms(1500), now)).requests, 2);
    assert_eq!(only(&snapshot(&stats, &["stable"], Duration::ZERO, now)).requests, 1);
    let capped = snapshot(&stats, &["stable"], Duration::from_secs(3600), now);
    assert_eq!(only(&capped).requests, 60);
    assert_eq!(capped.start.unwrap().seconds, 1_700_000_140);
}

#[test]
fn seconds_expire_from_the_window_but_not_from_the_totals() {
    let stats = Stats::new(Duration::from_secs(10));
    let recorder = stats.recorder("shop", "stable");
    recorder.record_at(at(&stats, ms(0)), Outcome::Status(200), ms(1));
    recorder.record_at(at(&stats, ms(0)), Outcome::Status(500), ms(1));
    recorder.record_at(at(&stats, Duration::from_secs(60)), Outcome::Status(200), ms(1));

    let backend = only(&snapshot(&stats, &["stable"], Duration::from_secs(60), Duration::from_secs(60))).clone();
    assert_eq!((backend.requests, backend.errors), (1, 0));
    let metrics = scrape(&stats);
    assert!(metrics.contains(r#"ficus_traffic_requests_total{route="shop",backend="stable",class="2xx"} 2"#));
    assert!(metrics.contains(r#"ficus_traffic_requests_total{route="shop",backend="stable",class="5xx"} 1"#));
}

#[test]
fn quantiles_of_a_known_distribution_are_within_the_histogram_precision() {
    let stats = Stats::default();
    let recorder = stats.recorder("shop", "stable");
    // 1 ms to 1000 ms, once each, spread over 20 seconds so closed and live seconds merge.
    for i in 1..=1000 {
        recorder.record_at(at(&stats, ms(i * 20)), Outcome::Status(200), ms(i));
    }
    let backend = only(&snapshot(&stats, &["stable"], Duration::from_secs(60), Duration::from_secs(20))).clone();
    let latency = backend.latency.unwrap();
    for (got, exact) in [
        (latency.p50_seconds, 0.500),
        (latency.p90_seconds, 0.900),
        (latency.p95_seconds, 0.950),
        (latency.p99_seconds, 0.990),
    ] {
        // An upper bucket bound: never below the true quantile, at most 1/128 above it.
        assert!(got >= exact && got <= exact * (1.0 + 1.0 / 128.0), "{got} vs {exact}");
    }
    assert_eq!(latency.max_seconds, 1.0);
    assert!((latency.mean_seconds - 0.5005).abs() < 1e-9, "{}", latency.mean_seconds);
}

#[test]
fn quantiles_never_exceed_the_exact_maximum() {
    let stats = Stats::default();
    let recorder = stats.recorder("shop", "stable");
    recorder.record_at(at(&stats, ms(0)), Outcome::Status(200), Duration::from_micros(1234));
    let latency = only(&snapshot(&stats, &["stable"], Duration::from_secs(1), ms(0))).latency.unwrap();
    assert_eq!((latency.p50_seconds, latency.p99_seconds, latency.max_seconds), (0.001234, 0.001234, 0.001234));
}

#[test]
fn an_idle_backend_reports_zeros() {
    let stats = Stats::default();
    stats.recorder("shop", "stable");
    let got = snapshot(&stats, &["stable", "canary"], Duration::from_secs(60), Duration::from_secs(5));
    assert_eq!(got.backends.iter().map(|b| b.backend.as_str()).collect::<Vec<_>>(), ["stable", "canary"]);
    for backend in &got.backends {
        assert_eq!((backend.requests, backend.errors, histogram_total(backend)), (0, 0, 0));
        assert_eq!(backend.latency, Some(proto::LatencyQuantiles::default()));
        assert_eq!(backend.responses_by_class.len(), 5);
    }
}

#[test]
fn the_histogram_counts_every_request_including_connection_errors() {
    let stats = Stats::default();
    let recorder = stats.recorder("shop", "canary");
    for i in 0..500_u64 {
        let outcome = if i % 10 == 0 { Outcome::ConnectionError } else { Outcome::Status(200) };
        recorder.record_at(at(&stats, ms(i * 7)), outcome, Duration::from_micros(i * i + 1));
    }
    let backend = only(&snapshot(&stats, &["canary"], Duration::from_secs(60), ms(3500))).clone();
    assert_eq!((backend.requests, backend.connection_errors), (500, 50));
    assert_eq!(histogram_total(&backend), 500);
    let bounds: Vec<f64> = backend.histogram.unwrap().buckets.iter().map(|b| b.upper_bound_seconds).collect();
    assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]), "ascending and non-empty only");
}

#[test]
fn a_timeout_beyond_the_histogram_range_lands_in_its_last_bucket() {
    let stats = Stats::default();
    let recorder = stats.recorder("shop", "canary");
    recorder.record_at(at(&stats, ms(0)), Outcome::ConnectionError, Duration::from_secs(90));
    let backend = only(&snapshot(&stats, &["canary"], Duration::from_secs(1), ms(0))).clone();
    let buckets = backend.histogram.unwrap().buckets;
    assert_eq!(buckets.len(), 1);
    assert!(buckets[0].upper_bound_seconds >= MAX_TRACKED_LATENCY.as_secs_f64());
    assert_eq!(backend.latency.unwrap().max_seconds, 90.0, "the maximum stays exact");
}

#[test]
fn backends_share_bucket_bounds() {
    let stats = Stats::default();
    let (stable, canary) = (stats.recorder("shop", "stable"), stats.recorder("shop", "canary"));
    // The stable second is closed (sparse), the canary one live (dense); the canary's
    // latencies differ by 1 µs but stay within the same buckets.
    for micros in [37, 1_001, 12_345, 250_000, 3_000_000] {
        stable.record_at(at(&stats, ms(0)), Outcome::Status(200), Duration::from_micros(micros));
        let same_bucket = if micros < 1000 { micros } else { micros + 1 };
        canary.record_at(at(&stats, ms(1500)), Outcome::Status(200), Duration::from_micros(same_bucket));
    }
    stable.record_at(at(&stats, ms(1500)), Outcome::Status(200), Duration::from_micros(37));
    let got = snapshot(&stats, &["stable", "canary"], Duration::from_secs(5), ms(1500));
    let bounds = |backend: &proto::BackendStats| -> Vec<f64> {
        backend.histogram.as_ref().unwrap().buckets.iter().map(|b| b.upper_bound_seconds).collect()
    };
    assert_eq!(bounds(&got.backends[0]), bounds(&got.backends[1]));
}

#[test]
fn an_empty_backend_list_reports_every_backend_with_a_series_by_name() {
    let stats = Stats::default();
    stats.recorder("shop", "stable").record_at(at(&stats, ms(0)), Outcome::Status(200), ms(1));
    stats.recorder("shop", "canary");
    stats.recorder("other", "stable");
    let got = snapshot(&stats, &[], Duration::from_secs(5), ms(0));
    assert_eq!(got.backends.iter().map(|b| b.backend.as_str()).collect::<Vec<_>>(), ["canary", "stable"]);
}

#[test]
fn recorders_of_the_same_backend_share_one_series() {
    let stats = Stats::default();
    stats.recorder("shop", "stable").record_at(at(&stats, ms(0)), Outcome::Status(200), ms(1));
    stats.recorder("shop", "stable").record_at(at(&stats, ms(0)), Outcome::Status(200), ms(1));
    assert_eq!(only(&snapshot(&stats, &["stable"], Duration::from_secs(5), ms(0))).requests, 2);
}

#[test]
fn forgetting_a_route_drops_its_stats_and_metrics() {
    let stats = Stats::default();
    stats.recorder("shop", "stable").record_at(at(&stats, ms(0)), Outcome::Status(200), ms(1));
    stats.recorder("blog", "stable").record_at(at(&stats, ms(0)), Outcome::Status(200), ms(1));

    stats.forget_route("shop");
    assert_eq!(only(&snapshot(&stats, &["stable"], Duration::from_secs(5), ms(0))).requests, 0);
    let metrics = scrape(&stats);
    assert!(!metrics.contains(r#"route="shop""#), "{metrics}");
    assert!(metrics.contains(r#"route="blog""#), "{metrics}");
}

fn scrape(stats: &Stats) -> String {
    // The registry ficus-kit gives services: prefixed `ficus`.
    let mut registry = Registry::with_prefix("ficus");
    stats.register(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    text
}

#[test]
fn metrics_export_labelled_counters_and_a_histogram() {
    let stats = Stats::default();
    let canary = stats.recorder("shop", "canary");
    for latency in [ms(3), ms(3), ms(40), ms(700)] {
        canary.record_at(at(&stats, ms(0)), Outcome::Status(200), latency);
    }
    canary.record_at(at(&stats, ms(0)), Outcome::Status(503), ms(2));
    canary.record_at(at(&stats, ms(0)), Outcome::ConnectionError, Duration::from_secs(61));

    let metrics = scrape(&stats);
    let lines: Vec<&str> = metrics.lines().collect();
    for expected in [
        "# TYPE ficus_traffic_requests counter",
        r#"ficus_traffic_requests_total{route="shop",backend="canary",class="1xx"} 0"#,
        r#"ficus_traffic_requests_total{route="shop",backend="canary",class="2xx"} 4"#,
        r#"ficus_traffic_requests_total{route="shop",backend="canary",class="5xx"} 1"#,
        r#"ficus_traffic_requests_total{route="shop",backend="canary",class="connection_error"} 1"#,
        "# TYPE ficus_traffic_connection_errors counter",
        r#"ficus_traffic_connection_errors_total{route="shop",backend="canary"} 1"#,
        "# TYPE ficus_traffic_request_duration_seconds histogram",
        r#"ficus_traffic_request_duration_seconds_count{route="shop",backend="canary"} 6"#,
        r#"ficus_traffic_request_duration_seconds_sum{route="shop",backend="canary"} 61.748"#,
        r#"ficus_traffic_request_duration_seconds_bucket{le="0.001",route="shop",backend="canary"} 0"#,
        r#"ficus_traffic_request_duration_seconds_bucket{le="0.0025",route="shop",backend="canary"} 1"#,
        r#"ficus_traffic_request_duration_seconds_bucket{le="0.005",route="shop",backend="canary"} 3"#,
        r#"ficus_traffic_request_duration_seconds_bucket{le="0.05",route="shop",backend="canary"} 4"#,
        r#"ficus_traffic_request_duration_seconds_bucket{le="1.0",route="shop",backend="canary"} 5"#,
        r#"ficus_traffic_request_duration_seconds_bucket{le="60.0",route="shop",backend="canary"} 5"#,
        r#"ficus_traffic_request_duration_seconds_bucket{le="+Inf",route="shop",backend="canary"} 6"#,
    ] {
        assert!(lines.contains(&expected), "missing {expected} in\n{metrics}");
    }
}

#[test]
fn concurrent_recording_loses_no_counts() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 20_000;
    let stats = Stats::default();
    thread::scope(|scope| {
        for t in 0..THREADS {
            let recorder = stats.recorder("shop", "stable");
            let stats = &stats;
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    // Seconds advance per thread at different paces, so rotations race with
                    // records of other threads.
                    let now = at(stats, Duration::from_micros(i * 50 * (t + 1)));
                    let outcome = if i % 100 == 0 { Outcome::ConnectionError } else { Outcome::Status(200) };
                    recorder.record_at(now, outcome, Duration::from_micros(i % 5000 + 1));
                }
            });
        }
        // Snapshots and scrapes while recording must not disturb the counts.
        for _ in 0..20 {
            snapshot(&stats, &["stable"], Duration::from_secs(60), Duration::from_secs(8));
            scrape(&stats);
        }
    });
    let backend = only(&snapshot(&stats, &["stable"], Duration::from_secs(60), Duration::from_secs(8))).clone();
    assert_eq!(backend.requests, THREADS * PER_THREAD);
    assert_eq!(backend.connection_errors, THREADS * PER_THREAD / 100);
    assert_eq!(class(&backend, "2xx"), THREADS * PER_THREAD * 99 / 100);
    assert_eq!(histogram_total(&backend), THREADS * PER_THREAD);
    let metrics = scrape(&stats);
    let total = format!(r#"ficus_traffic_request_duration_seconds_count{{route="shop",backend="stable"}} {}"#, 160_000);
    assert!(metrics.lines().any(|line| line == total), "{metrics}");
}

#[test]
fn recording_with_the_real_clock_shows_up_in_a_real_snapshot() {
    let stats = Stats::default();
    stats.recorder("shop", "stable").record(Half::random(), Outcome::Status(200), ms(12));
    let got = stats.snapshot("shop", &["stable".to_owned()], Query::window(Duration::from_secs(60)));
    assert_eq!(only(&got).requests, 1);
    assert!(got.start.unwrap().seconds <= got.end.unwrap().seconds);
}

#[test]
fn periods_cut_the_window_on_one_grid_for_every_backend() {
    let stats = Stats::default();
    let stable = stats.recorder("shop", "stable");
    let canary = stats.recorder("shop", "canary");
    // Seconds 0 to 6: stable every second, canary in seconds 1 and 5; second 3 is slow.
    for second in 0..7_u64 {
        let when = at(&stats, Duration::from_secs(second) + ms(100));
        let latency = if second == 3 { ms(40) } else { ms(2) };
        // One request in each half: the periods add the halves up.
        stable.record_half_at(when, Half::First, Outcome::Status(200), latency);
        stable.record_half_at(when, Half::Second, Outcome::Status(if second == 4 { 503 } else { 200 }), latency);
        if second == 1 || second == 5 {
            canary.record_at(when, Outcome::Status(200), latency);
        }
    }
    let backends = ["stable".to_owned(), "canary".to_owned()];
    let now = at(&stats, Duration::from_secs(6) + ms(500));
    // Six seconds (1 to 6) in periods of 2: grid periods [0,1] (second 1 only), [2,3], [4,5], [6].
    let got = stats.snapshot_at(
        "shop",
        &backends,
        Query { window: Duration::from_secs(6), period: Some(ms(1500)), halves: false },
        now,
        UNIX_EPOCH + WALL + Duration::from_secs(6) + ms(500),
        &Remote::default(),
    );
    let starts = |backend: &proto::BackendStats| -> Vec<i64> {
        backend.periods.iter().map(|period| period.start.as_ref().unwrap().seconds - WALL.as_secs() as i64).collect()
    };
    let (stable, canary) = (&got.backends[0], &got.backends[1]);
    assert_eq!(starts(stable), [0, 2, 4, 6]);
    assert_eq!(starts(canary), [0, 4], "the same grid, only periods with requests");
    let requests: Vec<u64> = stable.periods.iter().map(|period| period.requests).collect();
    assert_eq!(requests, [2, 4, 4, 2], "only the window's seconds of the first period count");
    assert_eq!(requests.iter().sum::<u64>(), stable.requests);
    let errors: Vec<u64> = stable.periods.iter().map(|period| period.errors).collect();
    assert_eq!(errors, [0, 0, 1, 0]);
    // The slow second's requests land in the period [2, 3], with the window's bucket bounds.
    let window_bounds: Vec<f64> =
        stable.histogram.as_ref().unwrap().buckets.iter().map(|bucket| bucket.upper_bound_seconds).collect();
    let slow = &stable.periods[1].histogram.as_ref().unwrap().buckets;
    assert_eq!(slow.len(), 2, "{slow:?}");
    assert_eq!(slow.iter().map(|bucket| bucket.count).collect::<Vec<_>>(), [2, 2]);
    assert!(slow.iter().all(|bucket| window_bounds.contains(&bucket.upper_bound_seconds)));
    assert!(slow[1].upper_bound_seconds >= 0.040);
    // Without a period, no breakdown.
    let plain = snapshot(&stats, &["stable"], Duration::from_secs(6), Duration::from_secs(6) + ms(500));
    assert!(only(&plain).periods.is_empty());
}

#[test]
fn halves_split_a_backend_and_add_up_to_it() {
    let stats = Stats::default();
    let stable = stats.recorder("shop", "stable");
    let now = at(&stats, ms(500));
    for i in 0..10_u64 {
        stable.record_half_at(now, Half::First, Outcome::Status(200), ms(1 + i));
    }
    for i in 0..6_u64 {
        let status = if i < 2 { 503 } else { 200 };
        stable.record_half_at(now, Half::Second, Outcome::Status(status), ms(20 + i));
    }
    let query = Query { window: Duration::from_secs(60), period: Some(Duration::from_secs(1)), halves: true };
    let got = stats.snapshot_at(
        "shop",
        &["stable".to_owned()],
        query,
        at(&stats, ms(900)),
        UNIX_EPOCH + WALL,
        &Remote::default(),
    );
    let backend = only(&got);
    assert_eq!(backend.requests, 16);
    let [first, second] = backend.halves.as_slice() else { panic!("two halves: {:?}", backend.halves) };
    assert_eq!((first.requests, first.errors), (10, 0));
    assert_eq!((second.requests, second.errors), (6, 2));
    assert_eq!((first.backend.as_str(), second.backend.as_str()), ("stable", "stable"));
    assert_eq!(histogram_total(first) + histogram_total(second), histogram_total(backend));
    assert!(first.latency.unwrap().max_seconds < 0.011 && second.latency.unwrap().p50_seconds >= 0.020);
    assert!(first.periods.is_empty() && second.periods.is_empty(), "halves carry no periods");
    assert_eq!(backend.periods.iter().map(|period| period.requests).sum::<u64>(), 16);
    // `/metrics` counts the backend once, both halves together.
    let metrics = scrape(&stats);
    let total = r#"ficus_traffic_request_duration_seconds_count{route="shop",backend="stable"} 16"#;
    assert!(metrics.lines().any(|line| line == total), "{metrics}");
    // Without asking, no halves.
    assert!(only(&snapshot(&stats, &["stable"], Duration::from_secs(60), ms(900))).halves.is_empty());
}

#[test]
fn random_halves_are_even_and_sticky_buckets_alternate() {
    let firsts = (0..10_000).filter(|_| Half::random() == Half::First).count();
    // Binomial(10000, 1/2): 4700..5300 is more than six standard deviations.
    assert!((4700..5300).contains(&firsts), "{firsts} of 10000 in the first half");
    assert_eq!(Half::of_bucket(0), Half::First);
    assert_eq!(Half::of_bucket(7), Half::Second);
    // A cohort's range of buckets splits evenly, whatever its bounds.
    let cohort = 500..1000;
    assert_eq!(cohort.clone().filter(|&bucket| Half::of_bucket(bucket) == Half::First).count(), cohort.len() / 2);
}
