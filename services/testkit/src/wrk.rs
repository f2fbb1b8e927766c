//! Load from `wrk`, the generator the benchmarks use, so load tests and benchmarks see
//! the same client.
//!
//! wrk has no machine-readable output without a Lua script; its text summary is stable
//! and carries the totals a test checks, so that is what is parsed.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::tool;

/// How long wrk may run past its duration before it counts as hung: it stops at the
/// duration, but starting its threads and connecting take a moment on a loaded machine.
const GRACE: Duration = Duration::from_secs(10);

/// The longest run allowed, so a mistyped duration cannot stall a suite.
const MAX_DURATION: Duration = Duration::from_secs(120);

/// One wrk run against a loopback URL: a bounded duration, a fixed number of threads and
/// open connections, and optionally one extra request header.
///
/// ```no_run
/// # async fn demo(url: &str) {
/// use std::time::Duration;
///
/// let report = ficus_testkit::Wrk::new(url).duration(Duration::from_secs(2)).connections(8).run().await;
/// assert!(report.requests > 0);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Wrk {
    url: String,
    duration: Duration,
    threads: u32,
    connections: u32,
    header: Option<String>,
    timeout: Option<Duration>,
}

/// What wrk counted in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WrkReport {
    /// Responses completed, whatever their status.
    pub requests: u64,
    /// Responses with a status of 400 or above (wrk's "Non-2xx or 3xx responses").
    pub non_2xx_3xx: u64,
    /// Requests that got no response.
    pub socket_errors: SocketErrors,
    /// How long wrk measured for, which is at least the requested duration.
    pub elapsed: Duration,
}

/// wrk's socket errors by kind: a proxy that drops connections shows up as `read` errors,
/// one that stalls as `timeout`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketErrors {
    /// Connections that could not be opened.
    pub connect: u64,
    /// Connections closed or reset before a complete response.
    pub read: u64,
    /// Requests that could not be written.
    pub write: u64,
    /// Requests without a response within wrk's timeout.
    pub timeout: u64,
}

impl SocketErrors {
    /// All socket errors together.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

impl Wrk {
    /// A run against `url` for one second with one thread and ten connections.
    ///
    /// # Panics
    ///
    /// Panics when `url` is not an `http://` URL on a loopback address: load is only ever
    /// sent to servers the test started.
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        assert!(is_loopback_http(&url), "wrk is only run against http:// URLs on loopback addresses, not {url}");
        Self { url, duration: Duration::from_secs(1), threads: 1, connections: 10, header: None, timeout: None }
    }

    /// How long to send load; wrk counts in whole seconds, so this is rounded up.
    ///
    /// # Panics
    ///
    /// Panics above two minutes, which no test needs.
    pub fn duration(mut self, duration: Duration) -> Self {
        assert!(duration <= MAX_DURATION, "a wrk run of {duration:?} is longer than {MAX_DURATION:?}");
        self.duration = duration;
        self
    }

    /// How many threads wrk sends from.
    pub fn threads(mut self, threads: u32) -> Self {
        self.threads = threads;
        self
    }

    /// How many connections wrk keeps open, spread over its threads; each sends its next
    /// request as soon as the previous response arrives.
    pub fn connections(mut self, connections: u32) -> Self {
        self.connections = connections;
        self
    }

    /// An extra header on every request, as `Name: value`, e.g. to pin a session.
    pub fn header(mut self, header: impl Into<String>) -> Self {
        self.header = Some(header.into());
        self
    }

    /// How long a request may wait for its response before wrk counts a timeout (wrk's
    /// default is two seconds); rounded up to whole seconds.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs wrk and returns its totals.
    ///
    /// # Panics
    ///
    /// Panics when `wrk` is not installed (the message says to run
    /// `scripts/install-test-tools.sh`), when it fails (e.g. nothing listens at the URL),
    /// when it runs well past its duration, or when its output cannot be read.
    pub async fn run(&self) -> WrkReport {
        assert!(
            self.threads >= 1 && self.connections >= self.threads,
            "wrk needs at least one thread and no fewer connections than threads, not {} and {}",
            self.threads,
            self.connections
        );
        let seconds = whole_seconds(self.duration);
        let mut command = Command::new(tool("wrk"));
        command
            .arg(format!("--threads={}", self.threads))
            .arg(format!("--connections={}", self.connections))
            .arg(format!("--duration={seconds}s"));
        if let Some(timeout) = self.timeout {
            command.arg(format!("--timeout={}s", whole_seconds(timeout)));
        }
        if let Some(header) = &self.header {
            command.arg("--header").arg(header);
        }
        command.arg(&self.url).stdin(Stdio::null()).kill_on_drop(true);
        let limit = Duration::from_secs(seconds) + GRACE;
        let output = tokio::time::timeout(limit, command.output())
            .await
            .unwrap_or_else(|_| panic!("wrk against {} still running after {limit:?}", self.url))
            .unwrap_or_else(|error| panic!("cannot run wrk: {error}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "wrk against {} failed ({}):\n{stdout}{stderr}", self.url, output.status);
        parse(&stdout).unwrap_or_else(|| panic!("cannot read wrk's summary:\n{stdout}{stderr}"))
    }
}

/// Whether `url` is `http://` on a loopback IP or `localhost`.
fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or("", |(host, _)| host),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `duration` in whole seconds, rounded up, at least one.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_millis().div_ceil(1000).max(1).try_into().unwrap_or(u64::MAX)
}

/// Reads the totals from wrk's summary, e.g.
///
/// ```text
///   15816 requests in 1.00s, 2.19MB read
///   Socket errors: connect 0, read 3, write 0, timeout 0
///   Non-2xx or 3xx responses: 5390
/// ```
///
/// The last two lines only appear when their counts are not zero.
fn parse(output: &str) -> Option<WrkReport> {
    let mut report = WrkReport::default();
    let mut found_requests = false;
    for line in output.lines().map(str::trim) {
        if let Some((requests, rest)) = line.split_once(" requests in ") {
            report.requests = requests.trim().parse().ok()?;
            let elapsed = rest.split(',').next()?.trim();
            report.elapsed = parse_elapsed(elapsed)?;
            found_requests = true;
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx_3xx = count.trim().parse().ok()?;
        } else if let Some(counts) = line.strip_prefix("Socket errors:") {
            for part in counts.split(',') {
                let (kind, count) = part.trim().split_once(' ')?;
                let count: u64 = count.trim().parse().ok()?;
                match kind {
                    "connect" => report.socket_errors.connect = count,
                    "read" => report.socket_errors.read = count,
                    "write" => report.socket_errors.write = count,
                    "timeout" => report.socket_errors.timeout = count,
                    _ => return None,
                }
            }
        }
    }
    found_requests.then_some(report)
}

/// wrk's elapsed time: `2.00s`, `1.00m`, `1.00h`, and `999.00ms` or `12.00us` in theory.
fn parse_elapsed(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_totals_of_a_run_with_errors() {
        let output = "Running 1s test @ http://127.0.0.1:18081/healthz
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   480.16us  775.51us   7.74ms   89.99%
    Req/Sec    15.85k     4.05k   22.58k    70.00%
  15816 requests in 1.00s, 2.19MB read
  Socket errors: connect 0, read 3, write 1, timeout 7
  Non-2xx or 3xx responses: 5390
Requests/sec:  15771.76
Transfer/sec:      2.19MB
";
        let report = parse(output).expect("a summary");
        assert_eq!(report.requests, 15816);
        assert_eq!(report.non_2xx_3xx, 5390);
        assert_eq!(report.socket_errors, SocketErrors { connect: 0, read: 3, write: 1, timeout: 7 });
        assert_eq!(report.socket_errors.total(), 11);
        assert_eq!(report.elapsed, Duration::from_secs(1));
    }

    #[test]
    fn absent_lines_count_zero_and_a_missing_summary_is_none() {
        let report = parse("  0 requests in 2.00s, 0.00B read\n").expect("a summary");
        assert_eq!(report, WrkReport { elapsed: Duration::from_secs(2), ..WrkReport::default() });
        assert_eq!(parse("unable to connect to 127.0.0.1:1 Connection refused\n"), None);
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        for url in ["http://127.0.0.1:8080/", "http://localhost:80", "http://[::1]:9/x", "http://127.1.2.3"] {
            assert!(is_loopback_http(url), "{url}");
        }
        for url in ["http://10.0.0.1:80/", "https://127.0.0.1/", "http://example.com/", "127.0.0.1:80"] {
            assert!(!is_loopback_http(url), "{url}");
        }
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
    }
}
