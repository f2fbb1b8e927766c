//! Where metric values come from: traffic's own request statistics (the default, no
//! Prometheus needed), the Prometheus HTTP API, any HTTP endpoint that answers JSON, or
//! fixed values for tests and drills.
//!
//! A source failure never becomes a PASS: the check it feeds is INCONCLUSIVE with the
//! error as its reason. Pod health from the Kubernetes API is a source too, when the
//! service is configured to reach a cluster.

mod builtin;
mod pods;
mod prometheus;
mod web;

use std::time::Duration;

use ficus_kit::status::InvalidField;
use ficus_proto::analysis::v1::{self as proto, metric::Source};

pub use self::{
    builtin::TrafficSource,
    pods::PodSource,
    prometheus::{PrometheusConfig, PrometheusSource},
    web::{MAX_TIMEOUT as MAX_WEB_TIMEOUT, WebConfig, WebSource, check_path as check_json_path},
};
use crate::observation::{Observation, Observed};

/// Every source a judgement may read.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Traffic's request statistics.
    pub traffic: TrafficSource,
    /// The Prometheus HTTP API.
    pub prometheus: PrometheusSource,
    /// The Kubernetes API, when a cluster is configured.
    pub pods: Option<PodSource>,
    /// HTTP endpoints that answer JSON.
    pub web: WebSource,
}

impl Sources {
    /// Reads every check's metric for `target` over `window`, one result per check in
    /// order; traffic's statistics are fetched once for all builtin checks.
    pub async fn observe(
        &self,
        target: &proto::Target,
        checks: &[proto::Check],
        window: Duration,
    ) -> Vec<Result<Observed, String>> {
        let needs_traffic = checks.iter().any(|check| matches!(source(check), Some(Source::Builtin(_))));
        let traffic = if needs_traffic { Some(self.traffic.read(target, window).await) } else { None };
        let mut observed = Vec::with_capacity(checks.len());
        for check in checks {
            observed.push(match (source(check), &traffic) {
                (Some(Source::Builtin(metric)), Some(stats)) => {
                    stats.as_ref().map_err(Clone::clone).and_then(|stats| stats.observe(metric))
                }
                (Some(Source::Prometheus(metric)), _) => self.prometheus.observe(metric, target, window).await,
                (Some(Source::Fixed(fixed)), _) => Ok(Observed::new(
                    Observation::Value { value: fixed.baseline, samples: fixed.samples },
                    Observation::Value { value: fixed.canary, samples: fixed.samples },
                )),
                (Some(Source::Web(metric)), _) => self.web.observe(metric, target, window).await,
                (Some(Source::PodHealth(metric)), _) => match &self.pods {
                    Some(pods) => pods.observe(metric).await,
                    None => Err("this analysis service has no [kubernetes] configuration".to_owned()),
                },
                (Some(Source::Builtin(_)), None) | (None, _) => Err("the check has no metric source".to_owned()),
            });
        }
        observed
    }
}

impl Sources {
    /// Refuses a template whose checks read a source this service does not have, or a
    /// Prometheus server it may not query.
    pub fn check_available(&self, template: &proto::AnalysisTemplate, field: &str) -> Result<(), crate::error::Error> {
        let pod_health = template.checks.iter().position(|check| matches!(source(check), Some(Source::PodHealth(_))));
        if let Some(i) = pod_health
            && self.pods.is_none()
        {
            return Err(crate::error::Error::Unsupported(format!(
                "{field}.checks[{i}].metric.pod_health: this analysis service has no [kubernetes] configuration"
            )));
        }
        for (i, check) in template.checks.iter().enumerate() {
            if let Some(Source::Prometheus(metric)) = source(check)
                && let Err(reason) = self.prometheus.reach(&metric.address)
            {
                return Err(InvalidField::new(format!("{field}.checks[{i}].metric.prometheus.address"), reason).into());
            }
            if let Some(Source::Web(metric)) = source(check)
                && let Err(reason) = self.web.reach(&metric.url)
            {
                return Err(InvalidField::new(format!("{field}.checks[{i}].metric.web.url"), reason).into());
            }
        }
        Ok(())
    }
}

fn source(check: &proto::Check) -> Option<&Source> {
    check.metric.as_ref()?.source.as_ref()
}
