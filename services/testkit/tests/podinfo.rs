//! The A/A backend is a real podinfo: it answers on its loopback port, its random errors
//! are real 5xx responses, and wrk can load it.

use std::time::Duration;

use ficus_testkit::{Podinfo, Wrk, http};

/// Enough requests that podinfo's random errors (one in three, a third of those 500)
/// cannot all miss: the chance of no 5xx in 300 is (8/9)^300, about 4e-16.
const REQUESTS: usize = 300;

#[tokio::test]
async fn answers_fails_at_random_when_asked_and_takes_load() {
    let (plain, flaky) = tokio::join!(Podinfo::start(), Podinfo::start_with(&["--random-error"]));
    assert_ne!(plain.addr(), flaky.addr());

    let (status, body) = http::get(plain.addr(), "/").await.expect("GET /");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\""), "{body}");

    let mut server_errors = 0;
    for _ in 0..REQUESTS {
        let (status, _) = http::get(flaky.addr(), "/healthz").await.expect("GET /healthz");
        assert!(matches!(status, 200 | 400 | 409 | 500), "unexpected status {status}");
        if status >= 500 {
            server_errors += 1;
        }
    }
    assert!(server_errors > 0, "no 5xx in {REQUESTS} requests\n{}", flaky.log());
    assert!(server_errors < REQUESTS, "every request failed\n{}", flaky.log());

    let report = Wrk::new(format!("{}/healthz", plain.url()))
        .duration(Duration::from_secs(2))
        .threads(1)
        .connections(4)
        .header("X-Ficus-Test: podinfo")
        .run()
        .await;
    assert!(report.requests > 0, "{report:?}");
    assert_eq!(report.non_2xx_3xx, 0, "{report:?}");
    assert_eq!(report.socket_errors.total(), 0, "{report:?}");
}

/// podinfo draws its delay from [min, max) and drops every connection when the range is
/// empty; that must fail the start at once, not after the readiness timeout.
#[tokio::test]
#[should_panic(expected = "--random-delay-min must be below --random-delay-max")]
async fn an_empty_delay_range_fails_the_start() {
    Podinfo::start_with(&["--random-delay", "--random-delay-unit=ms", "--random-delay-min=5", "--random-delay-max=5"])
        .await;
}
