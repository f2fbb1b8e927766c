//! Validating an `AnalysisTemplate` into a typed [`Template`], each refusal naming its field
//! (`template.checks[2].statistical.margin`), and the default template.

use std::collections::HashSet;

use ficus_kit::status::InvalidField;
use ficus_proto::analysis::v1::{
    self as proto, builtin_metric::Kind, check::Rule as ProtoRule, metric::Source, pod_health_metric,
    prometheus_metric::ValueKind,
};

use crate::observation::ObservationKind;

/// Score at or above which a verdict passes, when the template names none.
pub const DEFAULT_PASS_SCORE: f64 = 95.0;
/// Score below which a verdict fails, when the template names none.
pub const DEFAULT_MARGINAL_SCORE: f64 = 75.0;
/// False-failure rate over a whole run, when the template names none.
pub const DEFAULT_ALPHA: f64 = 0.05;
/// Samples per side before a check can pass or fail, when the check names none.
pub const DEFAULT_MIN_SAMPLES: u64 = 100;
/// The default template's alpha weight for its statistical error-rate check, against 1 for
/// each of the other three (see [`default_template`]).
const STATISTICAL_ALPHA_WEIGHT: f64 = 4.0;
/// Quantile of a latency metric that names none.
pub const DEFAULT_QUANTILE: f64 = 0.99;
/// Variables a Prometheus query may use as `{{name}}`.
pub const QUERY_VARIABLES: [&str; 3] = ["route", "backend", "window"];

/// A validated template: what the judge needs, with defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    /// The checks, in the template's order (observations come in the same order).
    pub checks: Vec<CheckSpec>,
    /// Score (0 to 100) at or above which the verdict is PASS.
    pub pass_score: f64,
    /// Score at or above which (and below `pass_score`) the verdict is INCONCLUSIVE.
    pub marginal_score: f64,
    /// False-failure rate allowed over a whole run, shared by the tested checks.
    pub alpha: f64,
}

/// One validated check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckSpec {
    /// Unique name.
    pub name: String,
    /// What is measured.
    pub metric: MetricSpec,
    /// What the canary must satisfy.
    pub rule: Rule,
    /// Weight in the score, at least 0.
    pub weight: f64,
    /// Whether failing this check fails the verdict on its own.
    pub critical: bool,
    /// Samples per side before the check can pass or fail.
    pub min_samples: u64,
    /// Its claim on the template's alpha, relative to the other tested checks'; above 0.
    pub alpha_weight: f64,
    /// The false-failure rate its test may spend over a run: its weighted share of the
    /// template's alpha; 0 when it runs no test.
    pub alpha: f64,
}

/// What a check measures, as far as judging it is concerned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricSpec {
    /// Traffic's error rate: failures out of requests.
    ErrorRate,
    /// Traffic's latency histogram and one of its quantiles.
    Latency {
        /// The quantile, in (0, 1).
        quantile: f64,
    },
    /// Traffic's requests per second.
    RequestRate,
    /// A Prometheus query; `rate` when its value is a proportion of counted trials.
    Prometheus {
        /// Whether the value is a proportion (`value_kind: RATE`).
        rate: bool,
    },
    /// Values given in the template.
    Fixed,
    /// A health signal of the canary's pods.
    PodHealth,
    /// A number from an HTTP endpoint's JSON answer.
    Web,
}

impl MetricSpec {
    /// The observation shape the sources produce for this metric.
    pub fn observation_kind(&self) -> ObservationKind {
        match self {
            Self::ErrorRate | Self::Prometheus { rate: true } => ObservationKind::Proportion,
            Self::Latency { .. } => ObservationKind::Latency,
            Self::RequestRate | Self::Prometheus { rate: false } | Self::Fixed | Self::PodHealth | Self::Web => {
                ObservationKind::Value
            }
        }
    }

    /// How the metric is named in reasons, e.g. `error rate` or `p99 latency`.
    pub fn label(&self) -> String {
        match self {
            Self::ErrorRate => "error rate".to_owned(),
            Self::Latency { quantile } => format!("p{} latency", super::check::format_number(quantile * 100.0)),
            Self::RequestRate => "request rate".to_owned(),
            Self::Prometheus { rate: true } => "rate".to_owned(),
            Self::Prometheus { rate: false } | Self::Fixed => "value".to_owned(),
            Self::PodHealth => "pod health".to_owned(),
            Self::Web => "web value".to_owned(),
        }
    }
}

/// The rule of a check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// The canary's value alone against bounds; at least one is set.
    Threshold {
        /// Upper bound.
        max: Option<f64>,
        /// Lower bound.
        min: Option<f64>,
    },
    /// `canary <= max(max_ratio x baseline, baseline + min_difference)`.
    Relative {
        /// Above 0.
        max_ratio: f64,
        /// At least 0, in the metric's unit.
        min_difference: f64,
    },
    /// A one-sided test that the canary is worse than the baseline beyond `margin`.
    Statistical {
        /// Absolute difference in proportion for rates; relative shift for latency.
        margin: f64,
    },
}

impl CheckSpec {
    /// Whether judging this check runs a statistical test, and so spends part of the
    /// template's alpha: every rule on counts or on a histogram except a latency floor.
    pub fn is_tested(&self) -> bool {
        match (self.metric.observation_kind(), self.rule) {
            (ObservationKind::Value, _) => false,
            (ObservationKind::Latency, Rule::Threshold { max, .. }) => max.is_some(),
            _ => true,
        }
    }
}

impl Template {
    /// Validates `template`; errors name the offending field under `field`, e.g. `template`
    /// or `spec.analysis.template`.
    pub fn from_proto(template: &proto::AnalysisTemplate, field: &str) -> Result<Self, InvalidField> {
        if template.checks.is_empty() {
            return Err(InvalidField::new(format!("{field}.checks"), "at least one check is required"));
        }
        let pass_score = score(template.pass_score, DEFAULT_PASS_SCORE, &format!("{field}.pass_score"))?;
        let marginal_score =
            score(template.marginal_score, DEFAULT_MARGINAL_SCORE, &format!("{field}.marginal_score"))?;
        if marginal_score > pass_score {
            return Err(InvalidField::new(
                format!("{field}.marginal_score"),
                format!("must not exceed pass_score ({pass_score})"),
            ));
        }
        let alpha = template.alpha.unwrap_or(DEFAULT_ALPHA);
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(InvalidField::new(format!("{field}.alpha"), "must be in (0, 1)"));
        }
        let mut names = HashSet::new();
        let mut checks = Vec::with_capacity(template.checks.len());
        for (index, check) in template.checks.iter().enumerate() {
            let path = format!("{field}.checks[{index}]");
            let check = check_spec(check, &path)?;
            if !names.insert(check.name.clone()) {
                return Err(InvalidField::new(
                    format!("{path}.name"),
                    format!("`{}` is used by another check", check.name),
                ));
            }
            checks.push(check);
        }
        share_alpha(&mut checks, alpha);
        Ok(Self { checks, pass_score, marginal_score, alpha })
    }
}

/// Splits `alpha` over the tested checks in proportion to their alpha weights (weighted
/// Bonferroni): the shares sum to `alpha`, so over all checks a healthy canary fails a run
/// at most alpha.
///
/// The weights are fixed by the template before any data is seen, which is what keeps the
/// split valid; they only move speed from one check to another. Shares chosen from the
/// data, such as none for a check whose value is far from its bound, would not be valid.
fn share_alpha(checks: &mut [CheckSpec], alpha: f64) {
    let total: f64 = checks.iter().filter(|check| check.is_tested()).map(|check| check.alpha_weight).sum();
    for check in checks {
        check.alpha = if check.is_tested() && total > 0.0 { alpha * check.alpha_weight / total } else { 0.0 };
    }
}

fn score(value: Option<f64>, default: f64, field: &str) -> Result<f64, InvalidField> {
    let value = value.unwrap_or(default);
    if (0.0..=100.0).contains(&value) { Ok(value) } else { Err(InvalidField::new(field, "must be between 0 and 100")) }
}

fn check_spec(check: &proto::Check, path: &str) -> Result<CheckSpec, InvalidField> {
    if check.name.trim().is_empty() {
        return Err(InvalidField::new(format!("{path}.name"), "required"));
    }
    let metric = metric_spec(check.metric.as_ref(), &format!("{path}.metric"))?;
    let rule = rule(check.rule.as_ref(), metric, path)?;
    let weight = check.weight.unwrap_or(1.0);
    if !(weight.is_finite() && weight >= 0.0) {
        return Err(InvalidField::new(format!("{path}.weight"), "must be a finite number, at least 0"));
    }
    let alpha_weight = check.alpha_weight.unwrap_or(1.0);
    if !(alpha_weight.is_finite() && alpha_weight > 0.0) {
        return Err(InvalidField::new(format!("{path}.alpha_weight"), "must be a finite number above 0"));
    }
    Ok(CheckSpec {
        name: check.name.clone(),
        metric,
        rule,
        weight,
        critical: check.critical,
        // A pod-health value counts pods, not requests: one pod is enough to judge.
        min_samples: check.min_samples.unwrap_or(if metric == MetricSpec::PodHealth { 1 } else { DEFAULT_MIN_SAMPLES }),
        alpha_weight,
        // Set once every check is known.
        alpha: 0.0,
    })
}

fn web_metric(web: &proto::WebMetric, path: &str) -> Result<MetricSpec, InvalidField> {
    let field = |name: &str| format!("{path}.{name}");
    if !(web.url.starts_with("http://") || web.url.starts_with("https://")) {
        return Err(InvalidField::new(field("url"), "must be an http:// or https:// URL"));
    }
    if web.json_path.trim().is_empty() {
        return Err(InvalidField::new(field("json_path"), "required, e.g. `$.data.value`"));
    }
    crate::source::check_json_path(&web.json_path).map_err(|reason| InvalidField::new(field("json_path"), reason))?;
    if !web.samples_json_path.is_empty() {
        crate::source::check_json_path(&web.samples_json_path)
            .map_err(|reason| InvalidField::new(field("samples_json_path"), reason))?;
    }
    if proto::web_metric::Method::try_from(web.method).is_err() {
        return Err(InvalidField::new(field("method"), format!("unknown method {}; GET or POST", web.method)));
    }
    let timeout = ficus_kit::status::positive_duration(web.timeout.as_ref(), &field("timeout"))?;
    if timeout.is_some_and(|timeout| timeout > crate::source::MAX_WEB_TIMEOUT) {
        return Err(InvalidField::new(field("timeout"), "at most 60s"));
    }
    for (i, header) in web.headers.iter().enumerate() {
        let header_field = |name: &str| format!("{path}.headers[{i}].{name}");
        if reqwest::header::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
            return Err(InvalidField::new(header_field("name"), "not a header name"));
        }
        match &header.value {
            Some(proto::web_header::Value::Text(text)) => {
                if reqwest::header::HeaderValue::from_str(text).is_err() {
                    return Err(InvalidField::new(header_field("text"), "not a header value"));
                }
            }
            Some(proto::web_header::Value::FromFile(name)) => {
                let bare = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
                if !bare {
                    return Err(InvalidField::new(
                        header_field("from_file"),
                        "the bare name of a file in `web.secrets_dir`",
                    ));
                }
            }
            None => return Err(InvalidField::new(format!("{path}.headers[{i}]"), "set `text` or `from_file`")),
        }
    }
    Ok(MetricSpec::Web)
}

fn metric_spec(metric: Option<&proto::Metric>, path: &str) -> Result<MetricSpec, InvalidField> {
    let source = metric
        .and_then(|metric| metric.source.as_ref())
        .ok_or_else(|| InvalidField::new(path, "required: one of builtin, prometheus, fixed, pod_health, web"))?;
    match source {
        Source::Builtin(builtin) => {
            let kind =
                Kind::try_from(builtin.kind).ok().filter(|kind| *kind != Kind::Unspecified).ok_or_else(|| {
                    InvalidField::new(
                        format!("{path}.builtin.kind"),
                        format!("unknown kind {}; one of ERROR_RATE, LATENCY, REQUEST_RATE", builtin.kind),
                    )
                })?;
            let quantile_field = format!("{path}.builtin.quantile");
            match kind {
                Kind::Latency => {
                    let quantile = builtin.quantile.unwrap_or(DEFAULT_QUANTILE);
                    if !(quantile > 0.0 && quantile < 1.0) {
                        return Err(InvalidField::new(quantile_field, "must be in (0, 1)"));
                    }
                    Ok(MetricSpec::Latency { quantile })
                }
                _ if builtin.quantile.is_some() => Err(InvalidField::new(quantile_field, "applies to LATENCY only")),
                Kind::ErrorRate => Ok(MetricSpec::ErrorRate),
                _ => Ok(MetricSpec::RequestRate),
            }
        }
        Source::Prometheus(prometheus) => {
            if prometheus.query.trim().is_empty() {
                return Err(InvalidField::new(format!("{path}.prometheus.query"), "required"));
            }
            query_template(&prometheus.query)
                .map_err(|reason| InvalidField::new(format!("{path}.prometheus.query"), reason))?;
            query_template(&prometheus.samples_query)
                .map_err(|reason| InvalidField::new(format!("{path}.prometheus.samples_query"), reason))?;
            if !(prometheus.address.is_empty()
                || prometheus.address.starts_with("http://")
                || prometheus.address.starts_with("https://"))
            {
                return Err(InvalidField::new(
                    format!("{path}.prometheus.address"),
                    "must be an http:// or https:// URL",
                ));
            }
            let rate = match ValueKind::try_from(prometheus.value_kind) {
                Ok(ValueKind::Rate) => true,
                Ok(ValueKind::Unspecified) => false,
                Err(_) => {
                    return Err(InvalidField::new(
                        format!("{path}.prometheus.value_kind"),
                        format!("unknown value kind {}", prometheus.value_kind),
                    ));
                }
            };
            if let Some(step) = &prometheus.step
                && !(step.seconds > 0 || (step.seconds == 0 && step.nanos > 0))
            {
                return Err(InvalidField::new(format!("{path}.prometheus.step"), "must be a positive duration"));
            }
            Ok(MetricSpec::Prometheus { rate })
        }
        Source::PodHealth(pods) => {
            let field = |name: &str| format!("{path}.pod_health.{name}");
            ficus_kit::status::check_name(&field("namespace"), &pods.namespace)?;
            label_selector(&pods.label_selector)
                .map_err(|reason| InvalidField::new(field("label_selector"), reason))?;
            let signal = pod_health_metric::Signal::try_from(pods.signal).ok();
            if signal.is_none_or(|signal| signal == pod_health_metric::Signal::Unspecified) {
                return Err(InvalidField::new(field("signal"), "one of RESTARTS, OOM_KILLED, NOT_READY"));
            }
            if let Some(window) = &pods.window
                && !(window.seconds > 0 || (window.seconds == 0 && window.nanos > 0))
            {
                return Err(InvalidField::new(field("window"), "must be a positive duration"));
            }
            Ok(MetricSpec::PodHealth)
        }
        Source::Web(web) => web_metric(web, &format!("{path}.web")),
        Source::Fixed(fixed) => {
            for (name, value) in [("baseline", fixed.baseline), ("canary", fixed.canary)] {
                if !value.is_finite() {
                    return Err(InvalidField::new(format!("{path}.fixed.{name}"), "must be a finite number"));
                }
            }
            Ok(MetricSpec::Fixed)
        }
    }
}

/// Checks a label selector's syntax: comma-separated `key=value`, `key!=value`,
/// `key in (a,b)`, `key notin (a,b)`, `key` or `!key`, with label keys and values.
fn label_selector(selector: &str) -> Result<(), String> {
    if selector.trim().is_empty() {
        return Err("required, e.g. `app=shop,track=canary`".to_owned());
    }
    let key = regex::Regex::new(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
        .map_err(|error| error.to_string())?;
    let value =
        regex::Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").map_err(|error| error.to_string())?;
    let set =
        regex::Regex::new(r"^\s*(!?)\s*([^\s!=(),]+)\s*(?:(==|!=|=)\s*([^\s,]*)|\s(in|notin)\s*\(([^)]*)\))?\s*$")
            .map_err(|error| error.to_string())?;
    // Split on commas outside parentheses.
    let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    for part in parts {
        let captures = set.captures(part).ok_or_else(|| format!("`{}` is not a selector requirement", part.trim()))?;
        let name = &captures[2];
        if !key.is_match(name) || name.len() > 317 {
            return Err(format!("`{name}` is not a label key"));
        }
        let negated = !captures[1].is_empty();
        let values: Vec<&str> = match (captures.get(4), captures.get(6)) {
            (Some(single), _) => vec![single.as_str()],
            (None, Some(list)) => list.as_str().split(',').map(str::trim).collect(),
            (None, None) => vec![],
        };
        if negated && !values.is_empty() {
            return Err(format!("`{}`: `!` goes with a bare key", part.trim()));
        }
        if let Some(bad) = values.iter().find(|v| !value.is_match(v) || v.len() > 63) {
            return Err(format!("`{bad}` is not a label value"));
        }
    }
    Ok(())
}

fn rule(rule: Option<&ProtoRule>, metric: MetricSpec, path: &str) -> Result<Rule, InvalidField> {
    let proportion = metric.observation_kind() == ObservationKind::Proportion;
    match rule {
        None => Err(InvalidField::new(format!("{path}.rule"), "required: one of threshold, relative, statistical")),
        Some(ProtoRule::Threshold(threshold)) => {
            if threshold.max.is_none() && threshold.min.is_none() {
                return Err(InvalidField::new(format!("{path}.threshold"), "set max, min or both"));
            }
            for (name, bound) in [("max", threshold.max), ("min", threshold.min)] {
                let Some(bound) = bound else { continue };
                let field = format!("{path}.threshold.{name}");
                if !bound.is_finite() || bound < 0.0 {
                    return Err(InvalidField::new(field, "must be a finite number, at least 0"));
                }
                if proportion && bound > 1.0 {
                    return Err(InvalidField::new(field, "a rate is a proportion, at most 1 (0.01 = 1%)"));
                }
            }
            if let (Some(max), Some(min)) = (threshold.max, threshold.min)
                && min > max
            {
                return Err(InvalidField::new(format!("{path}.threshold.min"), format!("must not exceed max ({max})")));
            }
            Ok(Rule::Threshold { max: threshold.max, min: threshold.min })
        }
        Some(ProtoRule::Relative(relative)) => {
            if !(relative.max_ratio.is_finite() && relative.max_ratio > 0.0) {
                return Err(InvalidField::new(format!("{path}.relative.max_ratio"), "must be a finite number above 0"));
            }
            let min_difference = relative.min_difference.unwrap_or(0.0);
            if !(min_difference.is_finite() && min_difference >= 0.0) {
                return Err(InvalidField::new(
                    format!("{path}.relative.min_difference"),
                    "must be a finite number, at least 0",
                ));
            }
            Ok(Rule::Relative { max_ratio: relative.max_ratio, min_difference })
        }
        Some(ProtoRule::Statistical(statistical)) => {
            let field = format!("{path}.statistical");
            if metric.observation_kind() == ObservationKind::Value {
                return Err(InvalidField::new(
                    field,
                    "needs counts or a histogram: a builtin ERROR_RATE or LATENCY metric, or a Prometheus RATE",
                ));
            }
            let margin = statistical.margin;
            if !margin.is_finite() || margin < 0.0 {
                return Err(InvalidField::new(format!("{field}.margin"), "must be a finite number, at least 0"));
            }
            if proportion && margin >= 1.0 {
                return Err(InvalidField::new(
                    format!("{field}.margin"),
                    "for a rate, an absolute difference in proportion below 1 (0.001 = 0.1 percentage points)",
                ));
            }
            Ok(Rule::Statistical { margin })
        }
    }
}

/// Checks a Prometheus query template: every `{{` is closed by `}}` and names one of
/// [`QUERY_VARIABLES`], written exactly as the source substitutes them.
pub fn query_template(query: &str) -> Result<(), String> {
    let mut rest = query;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("`{{{{` at byte {} is never closed by `}}}}`", query.len() - rest.len() + open))?;
        let name = &after[..close];
        if !QUERY_VARIABLES.contains(&name) {
            return Err(format!(
                "unknown variable `{{{{{name}}}}}`; known: {{{{route}}}}, {{{{backend}}}}, {{{{window}}}}"
            ));
        }
        rest = &after[close + 2..];
    }
    Ok(())
}

/// The default p99 check's practical floor: a canary is never failed for a p99 less than
/// this above the baseline's. Under load, two identical instances differ at p99 by tenths
/// of a millisecond from scheduling alone, which a ratio on a sub-millisecond service
/// calls a regression; 1 ms is below what users of any service notice, and above 1 ms the
/// ratio (1.5 x) takes over.
pub const DEFAULT_LATENCY_FLOOR: std::time::Duration = std::time::Duration::from_millis(1);

/// The default latency check's margin: the canary fails only when it is significantly
/// slower than the baseline made a quarter slower, across the whole distribution (a
/// Mann-Whitney test). The p99 rule cannot see a shift of the body of the distribution when
/// the tail is queueing and scheduling noise (a 1 ms service 2 ms slower, on a busy
/// machine, has a p99 within 1.5 x the baseline's and twice its median); a quarter keeps a
/// lightly loaded canary process, which identical releases show to be a few percent apart
/// from a busy one, from failing.
pub const DEFAULT_LATENCY_MARGIN: f64 = 0.25;

/// The seed's rollback table as a template on traffic's own statistics: an error rate above
/// 1% fails, a p99 more than 50% (and more than [`DEFAULT_LATENCY_FLOOR`]) above the
/// baseline's fails, an error rate significantly above the baseline's (by more than 0.1
/// percentage points) fails, and latencies significantly slower than the baseline's made
/// [`DEFAULT_LATENCY_MARGIN`] slower fail. All four are critical.
///
/// The error-rate comparison gets four sevenths of the alpha: it is the one that must
/// notice a subtle regression, such as a doubled error rate on a 5% canary, and its time to
/// fail shrinks with its share (75 s to 55-60 s in the judgement benchmark's 1000 req/s, 5%
/// case). The others catch large effects (an error rate past 1%, a p99 half as slow again,
/// a quarter slower throughout), for which a seventh of the alpha each costs a look or two
/// at most.
pub fn default_template() -> proto::AnalysisTemplate {
    let builtin = |kind: Kind, quantile: Option<f64>| proto::Metric {
        source: Some(Source::Builtin(proto::BuiltinMetric { kind: kind.into(), quantile })),
    };
    let check = |name: &str, metric: proto::Metric, rule: ProtoRule, alpha_weight: f64| proto::Check {
        name: name.to_owned(),
        metric: Some(metric),
        rule: Some(rule),
        weight: None,
        critical: true,
        min_samples: None,
        alpha_weight: Some(alpha_weight),
    };
    proto::AnalysisTemplate {
        checks: vec![
            check(
                "error-rate",
                builtin(Kind::ErrorRate, None),
                ProtoRule::Threshold(proto::Threshold { max: Some(0.01), min: None }),
                1.0,
            ),
            check(
                "p99-latency",
                builtin(Kind::Latency, Some(DEFAULT_QUANTILE)),
                ProtoRule::Relative(proto::Relative {
                    max_ratio: 1.5,
                    min_difference: Some(DEFAULT_LATENCY_FLOOR.as_secs_f64()),
                }),
                1.0,
            ),
            check(
                "error-rate-vs-baseline",
                builtin(Kind::ErrorRate, None),
                ProtoRule::Statistical(proto::Statistical { margin: 0.001 }),
                STATISTICAL_ALPHA_WEIGHT,
            ),
            check(
                "latency-vs-baseline",
                builtin(Kind::Latency, None),
                ProtoRule::Statistical(proto::Statistical { margin: DEFAULT_LATENCY_MARGIN }),
                1.0,
            ),
        ],
        pass_score: None,
        marginal_score: None,
        alpha: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_rate_check(name: &str, rule: ProtoRule) -> proto::Check {
        proto::Check {
            name: name.to_owned(),
            metric: Some(proto::Metric {
                source: Some(Source::Builtin(proto::BuiltinMetric { kind: Kind::ErrorRate.into(), quantile: None })),
            }),
            rule: Some(rule),
            weight: None,
            critical: false,
            min_samples: None,
            alpha_weight: None,
        }
    }

    fn template(checks: Vec<proto::Check>) -> proto::AnalysisTemplate {
        proto::AnalysisTemplate { checks, pass_score: None, marginal_score: None, alpha: None }
    }

    fn refusal(template: &proto::AnalysisTemplate) -> (String, String) {
        let error = Template::from_proto(template, "template").unwrap_err();
        (error.field, error.reason)
    }

    #[test]
    fn a_floor_that_is_negative_or_not_a_number_is_refused_by_name() {
        for floor in [-0.001, f64::NAN, f64::INFINITY] {
            let relative = ProtoRule::Relative(proto::Relative { max_ratio: 1.5, min_difference: Some(floor) });
            let (field, _) = refusal(&template(vec![error_rate_check("a", relative)]));
            assert_eq!(field, "template.checks[0].relative.min_difference", "{floor}");
        }
        let relative = ProtoRule::Relative(proto::Relative { max_ratio: 1.5, min_difference: Some(0.001) });
        let valid = Template::from_proto(&template(vec![error_rate_check("a", relative)]), "template").unwrap();
        assert_eq!(valid.checks[0].rule, Rule::Relative { max_ratio: 1.5, min_difference: 0.001 });
    }

    #[test]
    fn the_default_template_is_valid_and_fills_defaults() {
        let template = Template::from_proto(&default_template(), "template").unwrap();
        assert_eq!(template.checks.len(), 4);
        assert_eq!(template.pass_score, 95.0);
        assert_eq!(template.marginal_score, 75.0);
        assert_eq!(template.alpha, 0.05);
        assert!(template.checks.iter().all(|check| check.critical && check.min_samples == 100));
        let alphas: Vec<f64> = template.checks.iter().map(|check| check.alpha).collect();
        let total = 3.0 + STATISTICAL_ALPHA_WEIGHT;
        let expected = [0.05 / total, 0.05 / total, 0.05 * STATISTICAL_ALPHA_WEIGHT / total, 0.05 / total];
        assert!(alphas.iter().zip(expected).all(|(alpha, expected)| (alpha - expected).abs() < 1e-15), "{alphas:?}");
    }

    #[test]
    fn alpha_is_split_over_tested_checks_by_weight() {
        let statistical = ProtoRule::Statistical(proto::Statistical { margin: 0.0 });
        let weighted = |name: &str, alpha_weight: Option<f64>| proto::Check {
            alpha_weight,
            ..error_rate_check(name, statistical)
        };
        let plain_value = proto::Check {
            metric: Some(proto::Metric {
                source: Some(Source::Fixed(proto::FixedMetric { baseline: 0.0, canary: 0.0, samples: 1 })),
            }),
            rule: Some(ProtoRule::Threshold(proto::Threshold { max: Some(1.0), min: None })),
            ..error_rate_check("fixed", statistical)
        };
        let mut proto = template(vec![weighted("a", None), weighted("b", Some(3.0)), plain_value]);
        proto.alpha = Some(0.04);
        let split = Template::from_proto(&proto, "template").unwrap();
        let alphas: Vec<f64> = split.checks.iter().map(|check| check.alpha).collect();
        assert_eq!(alphas, [0.01, 0.03, 0.0], "a plain value runs no test and spends nothing");

        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let proto = template(vec![weighted("a", None), weighted("b", Some(bad))]);
            assert_eq!(
                refusal(&proto),
                ("template.checks[1].alpha_weight".to_owned(), "must be a finite number above 0".to_owned())
            );
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let statistical = |margin| ProtoRule::Statistical(proto::Statistical { margin });
        let mut negative_margin = template(vec![
            error_rate_check("a", statistical(0.0)),
            error_rate_check("b", statistical(0.0)),
            error_rate_check("c", statistical(-0.1)),
        ]);
        assert_eq!(refusal(&negative_margin).0, "template.checks[2].statistical.margin");

        negative_margin.checks[2].rule = Some(statistical(0.0));
        negative_margin.alpha = Some(1.0);
        assert_eq!(refusal(&negative_margin).0, "template.alpha");
        negative_margin.alpha = Some(0.0);
        assert_eq!(refusal(&negative_margin).0, "template.alpha");

        let duplicate =
            template(vec![error_rate_check("a", statistical(0.0)), error_rate_check("a", statistical(0.0))]);
        assert_eq!(refusal(&duplicate).0, "template.checks[1].name");

        let mut no_rule = template(vec![error_rate_check("a", statistical(0.0))]);
        no_rule.checks[0].rule = None;
        assert_eq!(refusal(&no_rule).0, "template.checks[0].rule");

        let negative = template(vec![error_rate_check(
            "a",
            ProtoRule::Threshold(proto::Threshold { max: Some(-0.01), min: None }),
        )]);
        assert_eq!(refusal(&negative).0, "template.checks[0].threshold.max");

        assert_eq!(refusal(&template(vec![])).0, "template.checks");
    }

    #[test]
    fn builtin_kinds_and_quantiles_are_checked() {
        let mut check =
            error_rate_check("a", ProtoRule::Relative(proto::Relative { max_ratio: 1.5, min_difference: None }));
        check.metric =
            Some(proto::Metric { source: Some(Source::Builtin(proto::BuiltinMetric { kind: 42, quantile: None })) });
        assert_eq!(refusal(&template(vec![check.clone()])).0, "template.checks[0].metric.builtin.kind");
        check.metric = Some(proto::Metric {
            source: Some(Source::Builtin(proto::BuiltinMetric { kind: Kind::Latency.into(), quantile: Some(1.0) })),
        });
        assert_eq!(refusal(&template(vec![check])).0, "template.checks[0].metric.builtin.quantile");
    }

    #[test]
    fn statistical_rules_need_counts_or_histograms() {
        let mut check = error_rate_check("a", ProtoRule::Statistical(proto::Statistical { margin: 0.0 }));
        check.metric = Some(proto::Metric {
            source: Some(Source::Fixed(proto::FixedMetric { baseline: 1.0, canary: 1.0, samples: 10 })),
        });
        assert_eq!(refusal(&template(vec![check])).0, "template.checks[0].statistical");
    }

    #[test]
    fn the_field_prefix_is_the_callers() {
        let error = Template::from_proto(&template(vec![]), "spec.analysis.template").unwrap_err();
        assert_eq!(error.field, "spec.analysis.template.checks");
    }

    #[test]
    fn query_templates_use_known_variables_only() {
        assert!(query_template("sum(rate(x{route=\"{{route}}\",backend=\"{{backend}}\"}[{{window}}]))").is_ok());
        assert!(query_template("up").is_ok());
        assert!(query_template("x{a=\"{{route}\"}").unwrap_err().contains("never closed"));
        assert!(query_template("x{a=\"{{pod}}\"}").unwrap_err().contains("unknown variable `{{pod}}`"));
        assert!(query_template("x{a=\"{{ route }}\"}").is_err());
    }

    #[test]
    fn a_malformed_prometheus_query_is_refused() {
        let mut check = error_rate_check("a", ProtoRule::Threshold(proto::Threshold { max: Some(1.0), min: None }));
        check.metric = Some(proto::Metric {
            source: Some(Source::Prometheus(proto::PrometheusMetric {
                query: "x{b=\"{{backend}}\"}[{{range}}]".to_owned(),
                ..Default::default()
            })),
        });
        assert_eq!(refusal(&template(vec![check])).0, "template.checks[0].metric.prometheus.query");
    }
}
