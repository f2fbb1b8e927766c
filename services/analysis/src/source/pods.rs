//! Pod health from the Kubernetes API: restarts within a window, OOM kills, readiness.
//!
//! `restartCount` only ever grows, so "restarts in the last 5 minutes" needs history: the
//! source remembers each container's count at every look. A pod younger than the window
//! restarted `restartCount` times within it; an older pod seen before restarted the
//! difference from the count seen at the window's start; an older pod seen for the first
//! time restarted at least once within the window if its last termination ended in it.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use ficus_proto::analysis::v1::{PodHealthMetric, pod_health_metric::Signal};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, ListParams};
use parking_lot::Mutex;

use crate::observation::{Observation, Observed};

/// The default window of restarts and OOM kills, from the rollback table.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Reads pod health through one client, remembering restart counts between looks.
#[derive(Clone)]
pub struct PodSource {
    client: kube::Client,
    history: std::sync::Arc<Mutex<RestartHistory>>,
}

/// Each container's restart counts seen, oldest first, by `namespace/pod uid/container`.
type RestartHistory = HashMap<String, Vec<(SystemTime, i32)>>;

impl std::fmt::Debug for PodSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodSource").finish_non_exhaustive()
    }
}

impl PodSource {
    /// A source reading pods through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client, history: Default::default() }
    }

    /// The signal of `metric` for the canary's pods now; the baseline is 0. No matching
    /// pod is an error: nothing to judge is never a PASS.
    pub async fn observe(&self, metric: &PodHealthMetric) -> Result<Observed, String> {
        let window =
            metric.window.as_ref().and_then(|window| Duration::try_from(*window).ok()).unwrap_or(DEFAULT_WINDOW);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &metric.namespace);
        let listed = pods
            .list(&ListParams::default().labels(&metric.label_selector))
            .await
            .map_err(|error| format!("cannot list pods {} in {}: {error}", metric.label_selector, metric.namespace))?;
        if listed.items.is_empty() {
            return Err(format!("no pod matches {} in {}", metric.label_selector, metric.namespace));
        }
        let now = SystemTime::now();
        let health = self.assess(&listed.items, window, now);
        let (value, note) = match Signal::try_from(metric.signal) {
            Ok(Signal::Restarts) => {
                let worst = health.iter().max_by_key(|pod| pod.restarts);
                let value = worst.map_or(0, |pod| pod.restarts);
                let note = worst
                    .filter(|pod| pod.restarts > 0)
                    .map(|pod| format!("pod {} restarted {} times in {}", pod.name, pod.restarts, humanize(window)));
                (f64::from(value), note)
            }
            Ok(Signal::OomKilled) => {
                let killed: Vec<&str> =
                    health.iter().flat_map(|pod| pod.oom_killed.iter().map(String::as_str)).collect();
                let note = (!killed.is_empty()).then(|| format!("OOMKilled: {}", killed.join(", ")));
                (killed.len() as f64, note)
            }
            Ok(Signal::NotReady) => {
                let not_ready: Vec<&str> =
                    health.iter().filter(|pod| !pod.ready).map(|pod| pod.name.as_str()).collect();
                let note = (!not_ready.is_empty()).then(|| format!("not ready: {}", not_ready.join(", ")));
                (not_ready.len() as f64 / health.len() as f64, note)
            }
            _ => return Err("the pod health signal is unspecified".to_owned()),
        };
        let samples = health.len() as u64;
        Ok(Observed {
            baseline: Observation::Value { value: 0.0, samples },
            canary: Observation::Value { value, samples },
            note,
            periods: Vec::new(),
            baseline_halves: None,
        })
    }

    /// Each pod's restarts within `window`, OOM-killed containers and readiness, recording
    /// the counts seen for the next look.
    fn assess(&self, pods: &[Pod], window: Duration, now: SystemTime) -> Vec<PodHealth> {
        let since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut history = self.history.lock();
        // Forget what is older than any window could need.
        history.retain(|_, seen| {
            seen.retain(|(at, _)| now.duration_since(*at).unwrap_or_default() <= window * 2 + Duration::from_secs(60));
            !seen.is_empty()
        });
        pods.iter()
            .map(|pod| {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let status = pod.status.clone().unwrap_or_default();
                let started = status.start_time.as_ref().map(|time| SystemTime::from(time.0));
                let young = started.is_some_and(|started| started >= since);
                let mut restarts = 0;
                let mut oom_killed = Vec::new();
                for container in
                    status.container_statuses.iter().flatten().chain(status.init_container_statuses.iter().flatten())
                {
                    let key =
                        format!("{}/{uid}/{}", pod.metadata.namespace.clone().unwrap_or_default(), container.name);
                    let seen = history.entry(key).or_default();
                    restarts += restarts_in_window(container, young, seen, since);
                    seen.push((now, container.restart_count));
                    if oom_killed_since(container, since) {
                        oom_killed.push(format!("{name}/{}", container.name));
                    }
                }
                let ready = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|condition| condition.type_ == "Ready" && condition.status == "True");
                PodHealth { name, restarts, oom_killed, ready }
            })
            .collect()
    }
}

/// One pod's health.
struct PodHealth {
    name: String,
    restarts: i32,
    oom_killed: Vec<String>,
    ready: bool,
}

/// Restarts of `container` after `since`; `seen` holds its earlier counts, oldest first.
fn restarts_in_window(container: &ContainerStatus, young: bool, seen: &[(SystemTime, i32)], since: SystemTime) -> i32 {
    let count = container.restart_count;
    if young {
        return count;
    }
    // The count at the window's start: the last one seen before it, else the first within it.
    let before = seen.iter().rev().find(|(at, _)| *at <= since).or_else(|| seen.first());
    match before {
        Some((_, earlier)) => (count - earlier).max(0),
        None => i32::from(last_terminated_since(container, since).is_some()),
    }
}

/// The reason of the container's last termination, when it ended after `since`.
fn last_terminated_since(container: &ContainerStatus, since: SystemTime) -> Option<String> {
    let terminated = container.last_state.as_ref()?.terminated.as_ref()?;
    let finished = SystemTime::from(terminated.finished_at.as_ref()?.0);
    (finished >= since).then(|| terminated.reason.clone().unwrap_or_default())
}

/// Whether the container is, or last was, killed for memory after `since`.
fn oom_killed_since(container: &ContainerStatus, since: SystemTime) -> bool {
    let now_killed = container
        .state
        .as_ref()
        .and_then(|state| state.terminated.as_ref())
        .is_some_and(|terminated| terminated.reason.as_deref() == Some("OOMKilled"));
    now_killed || last_terminated_since(container, since).as_deref() == Some("OOMKilled")
}

fn humanize(window: Duration) -> String {
    humantime::format_duration(window).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn container(restarts: i32, last_finished: Option<SystemTime>, reason: &str) -> ContainerStatus {
        ContainerStatus {
            name: "web".into(),
            restart_count: restarts,
            last_state: last_finished.map(|finished| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    finished_at: Some(Time(k8s_openapi::jiff::Timestamp::try_from(finished).expect("time"))),
                    reason: Some(reason.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_young_pod_restarted_all_its_restarts_within_the_window() {
        let now = SystemTime::now();
        let since = now - DEFAULT_WINDOW;
        assert_eq!(restarts_in_window(&container(3, None, ""), true, &[], since), 3);
    }

    #[test]
    fn an_old_pod_counts_restarts_since_the_count_seen_at_the_window_start() {
        let now = SystemTime::now();
        let since = now - DEFAULT_WINDOW;
        let seen = [(now - Duration::from_secs(600), 4), (now - Duration::from_secs(200), 5)];
        assert_eq!(restarts_in_window(&container(7, None, ""), false, &seen, since), 3, "7 now, 4 before the window");
        let later = [(now - Duration::from_secs(100), 6)];
        assert_eq!(
            restarts_in_window(&container(7, None, ""), false, &later, since),
            1,
            "first seen inside the window"
        );
    }

    #[test]
    fn an_old_pod_seen_first_counts_its_last_restart_only_if_it_falls_in_the_window() {
        let now = SystemTime::now();
        let since = now - DEFAULT_WINDOW;
        let recent = container(9, Some(now - Duration::from_secs(30)), "Error");
        assert_eq!(restarts_in_window(&recent, false, &[], since), 1);
        let old = container(9, Some(now - Duration::from_secs(3600)), "Error");
        assert_eq!(restarts_in_window(&old, false, &[], since), 0);
    }

    #[test]
    fn oom_kills_count_when_they_ended_within_the_window() {
        let now = SystemTime::now();
        let since = now - DEFAULT_WINDOW;
        assert!(oom_killed_since(&container(1, Some(now - Duration::from_secs(10)), "OOMKilled"), since));
        assert!(!oom_killed_since(&container(1, Some(now - Duration::from_secs(3600)), "OOMKilled"), since));
        assert!(!oom_killed_since(&container(1, Some(now - Duration::from_secs(10)), "Error"), since));
    }
}
