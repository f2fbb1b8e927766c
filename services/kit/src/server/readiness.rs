//! What a service needs before it can take calls, and what it only reports.
//!
//! A dependency is either *required*, and the service is not ready while it is down, or
//! *reported*: shown in `/readyz?verbose`, `ficus_dependency_up` and the logs, but never a
//! reason to take the service out of rotation. Readiness means "can do my job": the
//! traffic proxy serves its last routes while its store is down, and a planner whose peer
//! is down still answers reads, so neither should be pulled from its Service for it.

use std::{sync::Arc, time::Duration};

use futures::future::{BoxFuture, join_all};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How long one dependency probe may take before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Something a service uses, probed for `/readyz`, gRPC health and `ficus_dependency_up`.
pub trait Dependency: Send + Sync + 'static {
    /// Short name shown when the dependency is down, e.g. `store`.
    fn name(&self) -> &str;

    /// Succeeds when the dependency answers; the error says what is wrong.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>>;
}

impl Dependency for Store {
    fn name(&self) -> &str {
        "store"
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.ping().await.map_err(|error| error.to_string()) })
    }
}

/// Whether a service can work without a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Not ready while it is down.
    Required,
    /// Reported only.
    Reported,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Reported => "reported",
        }
    }
}

/// A dependency and how much it matters.
pub(crate) struct Watched {
    pub(crate) dependency: Box<dyn Dependency>,
    pub(crate) need: Need,
}

/// One dependency as just probed.
struct Probed {
    name: String,
    need: Need,
    state: Result<(), String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: String,
}

/// The dependencies of a service, and whether it is stopping; cheap to clone.
#[derive(Clone)]
pub(crate) struct Readiness {
    dependencies: Arc<Vec<Watched>>,
    stopping: CancellationToken,
    up: Family<DependencyLabels, Gauge>,
}

impl Readiness {
    /// Readiness over `dependencies`, exporting `ficus_dependency_up` into `registry`.
    pub(crate) fn new(dependencies: Vec<Watched>, stopping: CancellationToken, registry: &mut Registry) -> Self {
        let up = Family::<DependencyLabels, Gauge>::default();
        registry.register("dependency_up", "Whether a dependency answered its last probe (1) or not (0)", up.clone());
        Self { dependencies: Arc::new(dependencies), stopping, up }
    }

    /// Whether the service is stopping.
    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Probes every dependency at once, each within [`PROBE_TIMEOUT`], and records what
    /// was found in `ficus_dependency_up`.
    async fn probe(&self) -> Vec<Probed> {
        let probes = self.dependencies.iter().map(|watched| async move {
            let dependency = &watched.dependency;
            let state = match tokio::time::timeout(PROBE_TIMEOUT, dependency.probe()).await {
                Ok(state) => state,
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            Probed { name: dependency.name().to_owned(), need: watched.need, state }
        });
        let probed = join_all(probes).await;
        for probe in &probed {
            self.up
                .get_or_create(&DependencyLabels { dependency: probe.name.clone() })
                .set(i64::from(probe.state.is_ok()));
        }
        probed
    }

    /// Ok when not stopping and every required dependency answers.
    pub(crate) async fn check(&self) -> Result<(), String> {
        if self.stopping.is_cancelled() {
            return Err("shutting down".into());
        }
        let down = required_down(&self.probe().await);
        if down.is_empty() { Ok(()) } else { Err(down.join("; ")) }
    }

    /// Whether the service is ready, and one line per dependency saying how it is and
    /// whether readiness hangs on it.
    pub(crate) async fn report(&self) -> (bool, String) {
        let stopping = self.stopping.is_cancelled();
        let probed = self.probe().await;
        let ready = !stopping && required_down(&probed).is_empty();
        let mut text = String::from(if ready { "ready\n" } else { "not ready\n" });
        if stopping {
            text.push_str("shutting down\n");
        }
        for probe in probed {
            let state = match &probe.state {
                Ok(()) => "up".to_owned(),
                Err(error) => format!("down: {error}"),
            };
            text.push_str(&format!("{} ({}): {state}\n", probe.name, probe.need.name()));
        }
        (ready, text)
    }
}

/// The required dependencies that are down, each as `name: why`.
fn required_down(probed: &[Probed]) -> Vec<String> {
    let required = probed.iter().filter(|probe| probe.need == Need::Required);
    required.filter_map(|probe| probe.state.as_ref().err().map(|error| format!("{}: {error}", probe.name))).collect()
}
