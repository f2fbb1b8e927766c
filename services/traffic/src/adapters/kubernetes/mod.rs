//! Kubernetes data planes: each route with a `kubernetes` target is applied to its object
//! (an ingress-nginx canary Ingress, a Gateway API HTTPRoute, an Istio VirtualService, or
//! a Service's selector) by server-side apply with field manager `ficus`, so ficus owns
//! only its fields and never fights the other owners of the object.
//!
//! Every target is checked again each resync: if someone changed ficus' fields by hand,
//! the drift is logged and reported in the route's `kubernetes_status`, and undone when the
//! route says `restore_drift`.

mod render;
mod target;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use ficus_proto::traffic::v1 as proto;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use self::render::Desired;
pub use self::render::{RenderError, canary_ingress_name};
pub use self::target::{ClusterBackend, Kind, Target};
use crate::{route::Route, table::LiveTable};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "ficus";

/// How traffic reaches the cluster, the `kubernetes` section of its configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesSettings {
    /// A kubeconfig file; unset, the pod's service account in a cluster, else the
    /// default kubeconfig.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// How often every target is checked for drift and applied again if needed.
    #[serde(with = "humantime_serde", default = "default_resync")]
    pub resync: Duration,
}

fn default_resync() -> Duration {
    Duration::from_secs(10)
}

/// The last known state of every route's object, for the API.
#[derive(Debug, Default)]
pub struct Ledger {
    statuses: Mutex<HashMap<String, proto::KubernetesStatus>>,
}

impl Ledger {
    /// The status of route `name`'s object, if it has one.
    pub fn status(&self, name: &str) -> Option<proto::KubernetesStatus> {
        self.statuses.lock().get(name).cloned()
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut proto::KubernetesStatus)) {
        change(self.statuses.lock().entry(name.to_owned()).or_default());
    }

    fn forget(&self, name: &str) {
        self.statuses.lock().remove(name);
    }
}

/// What was last applied for one route.
struct Applied {
    target: Target,
    desired: Desired,
    drifting: bool,
}

/// Applies every route with a Kubernetes target now, after every change, and each
/// `resync`, until `shutdown`.
pub async fn follow_kubernetes(
    client: kube::Client,
    table: Arc<LiveTable>,
    ledger: Arc<Ledger>,
    resync: Duration,
    shutdown: CancellationToken,
) {
    let mut changes = table.subscribe();
    let mut resyncs = tokio::time::interval(resync);
    resyncs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut applied: HashMap<String, Applied> = HashMap::new();
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(_) | Err(RecvError::Lagged(_)) => while changes.try_recv().is_ok() {},
                Err(RecvError::Closed) => return,
            },
            _ = resyncs.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let routes: Vec<Route> = table.load().routes().map(|active| active.route.clone()).collect();
        let current: Vec<&str> =
            routes.iter().filter(|route| route.kubernetes.is_some()).map(|route| route.name.as_str()).collect();
        let gone: Vec<String> = applied.keys().filter(|name| !current.contains(&name.as_str())).cloned().collect();
        for name in gone {
            if let Some(previous) = applied.remove(&name) {
                release(&client, &previous).await;
            }
            ledger.forget(&name);
        }
        for route in &routes {
            let Some(target) = &route.kubernetes else { continue };
            if let Err(error) = reconcile(&client, route, target, &mut applied, &ledger).await {
                tracing::warn!(route = %route.name, %error, "cannot apply the route to its Kubernetes object");
                ledger.update(&route.name, |status| {
                    status.in_sync = false;
                    status.error = error.to_string();
                });
            }
        }
    }
}

/// Why a route could not be applied or checked.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("{0}")]
    Api(#[from] kube::Error),
}

/// Applies `route` when what it asks changed, else checks its object for drift.
async fn reconcile(
    client: &kube::Client,
    route: &Route,
    target: &Target,
    applied: &mut HashMap<String, Applied>,
    ledger: &Ledger,
) -> Result<(), ApplyError> {
    let stable = match target.kind {
        Kind::IngressNginx => {
            Api::<Ingress>::namespaced(client.clone(), &target.namespace).get_opt(&target.name).await?
        }
        _ => None,
    };
    let desired = render::desired(route, target, stable.as_ref())?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &target.namespace, &desired.resource);
    let previous = applied.get(&route.name);
    if previous.is_none_or(|previous| previous.desired != desired || previous.target != *target) {
        if let Some(previous) = previous.filter(|previous| previous.desired.name != desired.name) {
            release(client, previous).await;
        }
        apply(&api, &desired).await?;
        tracing::info!(route = %route.name, object = %desired.name, kind = ?target.kind, "route applied to Kubernetes");
        ledger.update(&route.name, |status| {
            status.in_sync = true;
            status.applied_generation = route.generation;
            status.error.clear();
        });
        applied.insert(route.name.clone(), Applied { target: target.clone(), desired, drifting: false });
        return Ok(());
    }
    let actual = api.get_opt(&desired.name).await?.map(|object| serde_json::to_value(object).unwrap_or_default());
    let drift = match &actual {
        Some(actual) => render::difference(&desired.patch, actual),
        None => Some("the object was deleted".to_owned()),
    };
    let Some(entry) = applied.get_mut(&route.name) else { return Ok(()) };
    match drift {
        None => {
            entry.drifting = false;
            ledger.update(&route.name, |status| {
                status.in_sync = true;
                status.error.clear();
            });
        }
        Some(drift) => {
            let first = !entry.drifting;
            entry.drifting = true;
            if first {
                tracing::warn!(route = %route.name, object = %desired.name, %drift, restore = target.restore_drift, "someone changed ficus' fields");
            }
            ledger.update(&route.name, |status| {
                status.in_sync = false;
                status.drift = drift.clone();
                if first {
                    status.drift_count += 1;
                    status.drift_detected_at = Some(ficus_proto::time::timestamp(std::time::SystemTime::now()));
                }
            });
            if target.restore_drift {
                apply(&api, &desired).await?;
                entry.drifting = false;
                ledger.update(&route.name, |status| status.in_sync = true);
            }
        }
    }
    Ok(())
}

/// Server-side apply as `ficus`, taking back fields someone else took.
async fn apply(api: &Api<DynamicObject>, desired: &Desired) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&desired.name, &params, &Patch::Apply(&desired.patch)).await.map(drop)
}

/// Undoes what ficus made for a route that no longer targets the object: the canary
/// Ingress it derived is deleted; objects others own keep ficus' last fields.
async fn release(client: &kube::Client, previous: &Applied) {
    if previous.target.kind != Kind::IngressNginx {
        return;
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &previous.target.namespace, &previous.desired.resource);
    if let Err(error) = api.delete(&previous.desired.name, &DeleteParams::default()).await {
        tracing::warn!(object = %previous.desired.name, %error, "cannot delete the canary Ingress");
    }
}
