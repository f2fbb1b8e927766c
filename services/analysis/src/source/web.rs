//! Any HTTP endpoint that answers JSON as a metric source: one request per side, the
//! value picked from the answer by a JSONPath.
//!
//! A template is the caller's, so what it may make analysis do is bounded here: only URLs
//! under the configured `web.allowed_urls`, header values from files only inside
//! `web.secrets_dir` (by bare name), at most [`MAX_TIMEOUT`] per request and
//! [`MAX_ANSWER`] bytes of answer.

use std::{path::PathBuf, time::Duration};

use ficus_proto::analysis::v1::{self as proto, web_header::Value as HeaderValue, web_metric::Method};
use jsonpath_rust::JsonPath;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::observation::{Observation, Observed};

/// Wait for an answer when the metric sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait a metric may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest answer read; a longer one makes the check INCONCLUSIVE.
pub const MAX_ANSWER: usize = 1 << 20;

/// The `web` section of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebConfig {
    /// URL prefixes web metrics may request, e.g. `https://checks.internal/`; none by
    /// default, which refuses every web metric.
    pub allowed_urls: Vec<String>,
    /// The directory whose files headers may take their values from (`from_file`).
    pub secrets_dir: Option<PathBuf>,
}

/// Requests web metrics.
#[derive(Clone, Debug)]
pub struct WebSource {
    http: reqwest::Client,
    config: WebConfig,
}

impl WebSource {
    /// A source with `config`; fails only if the HTTP client cannot be built.
    pub fn new(config: WebConfig) -> Result<Self, reqwest::Error> {
        ficus_kit::tls::install_crypto_provider();
        // Redirects could lead anywhere, past the allow list.
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(Self { http, config })
    }

    /// Whether a metric may request `url` (as written, before substitution): it must
    /// start with an allowed prefix that ends at a path boundary, so that
    /// `https://checks.internal` does not also allow `https://checks.internal.evil`.
    pub fn reach(&self, url: &str) -> Result<(), String> {
        let allowed = self.config.allowed_urls.iter().any(|prefix| {
            url.strip_prefix(prefix.as_str())
                .is_some_and(|rest| prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?', '#']))
        });
        if allowed { Ok(()) } else { Err(format!("`{url}` is not under any of `web.allowed_urls`")) }
    }

    /// Both sides' values of `metric` for `target` over `window`.
    pub async fn observe(
        &self,
        metric: &proto::WebMetric,
        target: &proto::Target,
        window: Duration,
    ) -> Result<Observed, String> {
        let baseline = self.side(metric, &target.route, &target.baseline, window).await?;
        Ok(Observed::new(baseline, self.side(metric, &target.route, &target.canary, window).await?))
    }

    async fn side(
        &self,
        metric: &proto::WebMetric,
        route: &str,
        backend: &str,
        window: Duration,
    ) -> Result<Observation, String> {
        let encoded = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
        // Checked as it will be requested: parsing resolves `..` and the like.
        let url = reqwest::Url::parse(&render(&metric.url, &encoded(route), &encoded(backend), window))
            .map_err(|error| format!("`{}` is not a URL: {error}", metric.url))?;
        self.reach(url.as_str())?;
        let timeout = metric
            .timeout
            .and_then(|timeout| Duration::try_from(timeout).ok())
            .filter(|timeout| !timeout.is_zero())
            .unwrap_or(DEFAULT_TIMEOUT)
            .min(MAX_TIMEOUT);
        let mut request = match Method::try_from(metric.method) {
            Ok(Method::Post) => self
                .http
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(render(&metric.body, route, backend, window)),
            _ => self.http.get(url.clone()),
        };
        for header in &metric.headers {
            request = request.header(header.name.as_str(), self.header_value(header).await?);
        }
        let answer = tokio::time::timeout(timeout, async {
            let mut response = request.send().await.map_err(|error| format!("{url} unreachable: {error}"))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("{url} answered {status}"));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|error| format!("{url}: {error}"))? {
                if body.len() + chunk.len() > MAX_ANSWER {
                    return Err(format!("{url} answered more than {MAX_ANSWER} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
        .await
        .map_err(|_| format!("{url} did not answer within {timeout:?}"))??;
        let json: Value =
            serde_json::from_slice(&answer).map_err(|error| format!("{url} answered something not JSON: {error}"))?;
        let value = pick(&json, &metric.json_path)?;
        let samples = if metric.samples_json_path.is_empty() {
            0
        } else {
            let samples = pick(&json, &metric.samples_json_path)?;
            if samples.is_nan() || samples < 0.0 {
                return Err(format!("`{}` is {samples}, not a count", metric.samples_json_path));
            }
            samples.round() as u64
        };
        Ok(Observation::Value { value, samples })
    }

    async fn header_value(&self, header: &proto::WebHeader) -> Result<String, String> {
        match &header.value {
            Some(HeaderValue::Text(text)) => Ok(text.clone()),
            Some(HeaderValue::FromFile(name)) => {
                let dir = self.config.secrets_dir.as_ref().ok_or("this analysis service has no `web.secrets_dir`")?;
                let text = tokio::fs::read_to_string(dir.join(name))
                    .await
                    .map_err(|error| format!("header `{}`: cannot read `{name}`: {error}", header.name))?;
                Ok(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            None => Err(format!("header `{}` has no value", header.name)),
        }
    }
}

/// Whether `path` is a JSONPath this source can use.
pub fn check_path(path: &str) -> Result<(), String> {
    Value::Null.query(path).map(|_| ()).map_err(|error| format!("not a JSONPath: {error}"))
}

/// The one number (or boolean, as 1 or 0) at `path` in `json`.
fn pick(json: &Value, path: &str) -> Result<f64, String> {
    let found = json.query(path).map_err(|error| format!("`{path}`: {error}"))?;
    let value = match found.as_slice() {
        [Value::Number(number)] => number.as_f64(),
        [Value::Bool(true)] => Some(1.0),
        [Value::Bool(false)] => Some(0.0),
        [] => return Err(format!("`{path}` matched nothing in the answer")),
        [_] => return Err(format!("`{path}` is not a number or a boolean")),
        many => return Err(format!("`{path}` matched {} values; it must pick one", many.len())),
    };
    value.filter(|value| value.is_finite()).ok_or_else(|| format!("`{path}` is not a finite number"))
}

/// Fills `{{route}}`, `{{backend}}` and `{{window}}` (seconds).
fn render(template: &str, route: &str, backend: &str, window: Duration) -> String {
    template
        .replace("{{route}}", route)
        .replace("{{backend}}", backend)
        .replace("{{window}}", &window.as_secs().max(1).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_under_an_allowed_prefix_at_a_path_boundary() {
        let config = WebConfig {
            allowed_urls: vec!["https://checks.internal".into(), "http://127.0.0.1:8080/api/".into()],
            secrets_dir: None,
        };
        let source = WebSource::new(config).expect("client");
        for allowed in
            ["https://checks.internal", "https://checks.internal/x?b={{backend}}", "http://127.0.0.1:8080/api/v1"]
        {
            assert_eq!(source.reach(allowed), Ok(()), "{allowed}");
        }
        for refused in [
            "https://checks.internal.evil/",
            "https://checks.internal@evil/",
            "http://169.254.169.254/",
            "http://127.0.0.1:8080/admin",
        ] {
            assert!(source.reach(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn a_path_picks_one_number_or_boolean() {
        let json: Value = serde_json::json!({"data": {"rate": 0.25, "ok": true, "name": "x", "list": [1, 2]}});
        assert_eq!(pick(&json, "$.data.rate"), Ok(0.25));
        assert_eq!(pick(&json, "$.data.ok"), Ok(1.0));
        assert!(pick(&json, "$.data.name").expect_err("a string").contains("not a number"));
        assert!(pick(&json, "$.data.missing").expect_err("nothing").contains("matched nothing"));
        assert!(pick(&json, "$.data.list[*]").expect_err("two").contains("2 values"));
        assert!(check_path("$.data[").is_err());
        assert!(check_path("$.data.rate").is_ok());
    }
}
