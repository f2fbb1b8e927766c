//! The Prometheus HTTP API as a metric source: an instant query per side, or a range
//! query over the window when the check asks for a resolution.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ficus_proto::analysis::v1::{self as proto, prometheus_metric::ValueKind};
use serde::{Deserialize, Serialize};

use crate::observation::{Observation, Observed};

/// How to reach Prometheus, the `prometheus` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrometheusConfig {
    /// Base URL, e.g. `http://prometheus:9090`; checks may name their own.
    pub address: String,
    /// Longest wait for one query.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer ...` when set, only ever to `address`.
    pub bearer_token: Option<String>,
    /// Other Prometheus servers a check may name as its `address`, as base URLs. Any other
    /// address is refused: a template is the caller's, and without a list anyone who may
    /// start a run could make analysis request any URL it can reach. They get no token.
    pub allowed_addresses: Vec<String>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:9090".into(),
            timeout: Duration::from_secs(5),
            bearer_token: None,
            allowed_addresses: Vec::new(),
        }
    }
}

/// Which Prometheus server a check's address is (see [`PrometheusSource::reach`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The configured server, which gets the bearer token.
    Configured,
    /// One of `allowed_addresses`, which gets no token.
    AllowListed,
}

/// Queries Prometheus.
#[derive(Clone, Debug)]
pub struct PrometheusSource {
    http: reqwest::Client,
    config: PrometheusConfig,
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum ApiData {
    Vector(Vec<Sample>),
    Scalar((f64, String)),
    Matrix(Vec<Series>),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Sample {
    value: (f64, String),
}

#[derive(Deserialize)]
struct Series {
    values: Vec<(f64, String)>,
}

impl PrometheusSource {
    /// A source with `config`; fails only if the HTTP client cannot be built.
    pub fn new(config: PrometheusConfig) -> Result<Self, reqwest::Error> {
        ficus_kit::tls::install_crypto_provider();
        let http = reqwest::Client::builder().timeout(config.timeout).connect_timeout(config.timeout).build()?;
        Ok(Self { http, config })
    }

    /// Both sides' values of `metric` for `target` over `window`.
    pub async fn observe(
        &self,
        metric: &proto::PrometheusMetric,
        target: &proto::Target,
        window: Duration,
    ) -> Result<Observed, String> {
        let baseline = self.side(metric, &target.route, &target.baseline, window).await?;
        Ok(Observed::new(baseline, self.side(metric, &target.route, &target.canary, window).await?))
    }

    async fn side(
        &self,
        metric: &proto::PrometheusMetric,
        route: &str,
        backend: &str,
        window: Duration,
    ) -> Result<Observation, String> {
        let step = metric.step.and_then(|step| Duration::try_from(step).ok()).filter(|step| !step.is_zero());
        let query = render(&metric.query, route, backend, window);
        let (value, points) = self.query(&metric.address, &query, window, step).await?;
        let samples = if metric.samples_query.is_empty() {
            if step.is_some() { points } else { 0 }
        } else {
            let samples = self
                .query(&metric.address, &render(&metric.samples_query, route, backend, window), window, None)
                .await?
                .0;
            if !(samples.is_finite() && samples >= 0.0) {
                return Err(format!("samples query for `{backend}` returned {samples}"));
            }
            samples.round() as u64
        };
        match ValueKind::try_from(metric.value_kind) {
            Ok(ValueKind::Rate) => {
                if !(0.0..=1.0).contains(&value) {
                    return Err(format!("rate for `{backend}` is {value}, not a proportion"));
                }
                Ok(Observation::Proportion { failures: (value * samples as f64).round() as u64, trials: samples })
            }
            _ => Ok(Observation::Value { value, samples }),
        }
    }

    /// Whether a check may query `address` (empty: the configured server), and so whether
    /// it gets the token: the configured server does; an allow-listed one may be queried
    /// without it; any other is refused with the reason.
    pub fn reach(&self, address: &str) -> Result<Reach, String> {
        let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
        if address.is_empty() || same(address, &self.config.address) {
            Ok(Reach::Configured)
        } else if self.config.allowed_addresses.iter().any(|allowed| same(address, allowed)) {
            Ok(Reach::AllowListed)
        } else {
            Err(format!(
                "`{address}` is neither the configured Prometheus server nor in `prometheus.allowed_addresses`"
            ))
        }
    }

    /// One value (the mean over points for range queries) and the number of points.
    async fn query(
        &self,
        address: &str,
        query: &str,
        window: Duration,
        step: Option<Duration>,
    ) -> Result<(f64, u64), String> {
        let reach = self.reach(address)?;
        let base = if address.is_empty() { &self.config.address } else { address };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let mut request = match step {
            None => self
                .http
                .get(format!("{}/api/v1/query", base.trim_end_matches('/')))
                .query(&[("query", query.to_owned()), ("time", format!("{now:.3}"))]),
            Some(step) => self.http.get(format!("{}/api/v1/query_range", base.trim_end_matches('/'))).query(&[
                ("query", query.to_owned()),
                ("start", format!("{:.3}", now - window.as_secs_f64())),
                ("end", format!("{now:.3}")),
                ("step", format!("{}ms", step.as_millis().max(1))),
            ]),
        };
        if let (Reach::Configured, Some(token)) = (reach, &self.config.bearer_token) {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|error| format!("Prometheus at {base} unreachable: {error}"))?;
        let status = response.status();
        let body: ApiResponse = response
            .json()
            .await
            .map_err(|error| format!("Prometheus answered {status} with an unreadable body: {error}"))?;
        if body.status != "success" {
            return Err(format!("Prometheus query failed: {}", body.error.unwrap_or_else(|| status.to_string())));
        }
        let points: Vec<String> = match body.data {
            Some(ApiData::Vector(samples)) => samples.into_iter().map(|sample| sample.value.1).collect(),
            Some(ApiData::Scalar((_, value))) => vec![value],
            Some(ApiData::Matrix(series)) => {
                series.into_iter().flat_map(|series| series.values).map(|point| point.1).collect()
            }
            Some(ApiData::String(_)) | None => return Err("Prometheus returned no number".to_owned()),
        };
        if step.is_none() && points.len() > 1 {
            return Err(format!(
                "query `{query}` returned {} series; aggregate it to one (e.g. with sum)",
                points.len()
            ));
        }
        let values: Vec<f64> = points.iter().map(|point| point.parse::<f64>().unwrap_or(f64::NAN)).collect();
        if values.is_empty() {
            return Err(format!("query `{query}` returned no data"));
        }
        if values.iter().any(|value| value.is_nan()) {
            return Err(format!("query `{query}` returned NaN"));
        }
        Ok((values.iter().sum::<f64>() / values.len() as f64, values.len() as u64))
    }
}

/// Fills `{{route}}`, `{{backend}}` and `{{window}}` (a PromQL duration in seconds).
fn render(template: &str, route: &str, backend: &str, window: Duration) -> String {
    template
        .replace("{{route}}", route)
        .replace("{{backend}}", backend)
        .replace("{{window}}", &format!("{}s", window.as_secs().max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_the_configured_server_and_others_need_the_allow_list() {
        let config = PrometheusConfig {
            address: "http://prometheus:9090/".into(),
            bearer_token: Some("secret".into()),
            allowed_addresses: vec!["http://thanos:9090".into()],
            ..PrometheusConfig::default()
        };
        let source = PrometheusSource::new(config).expect("client");
        assert_eq!(source.reach(""), Ok(Reach::Configured));
        assert_eq!(source.reach("http://prometheus:9090"), Ok(Reach::Configured), "a trailing slash is the same");
        assert_eq!(source.reach("http://thanos:9090/"), Ok(Reach::AllowListed));
        for elsewhere in ["http://169.254.169.254", "http://prometheus:9091", "http://attacker.example"] {
            let refused = source.reach(elsewhere).expect_err(elsewhere);
            assert!(refused.contains("prometheus.allowed_addresses"), "{refused}");
        }
    }

    #[test]
    fn templates_fill_route_backend_and_window() {
        let query = "sum(rate(x_total{route=\"{{route}}\",backend=\"{{backend}}\"}[{{window}}]))";
        assert_eq!(
            render(query, "checkout", "k8s", Duration::from_millis(90_500)),
            "sum(rate(x_total{route=\"checkout\",backend=\"k8s\"}[90s]))"
        );
    }
}
