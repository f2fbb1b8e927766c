//! The planner in a Kubernetes cluster: the `Rollout` resource and its controller,
//! leadership through a `coordination.k8s.io` Lease, and Deployments scaled with the weight.

pub mod controller;
pub mod lease;
pub mod resource;
pub mod scale;

/// The field manager of the planner's writes.
pub const FIELD_MANAGER: &str = "ficus-planner";

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `kubernetes` section of the planner's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesSettings {
    /// A kubeconfig file; unset, the pod's service account in a cluster, else the default
    /// kubeconfig.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Where Rollout objects are reconciled: one namespace, or every namespace when unset.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Lead through this Lease (`namespace/name`) instead of a lease in the store.
    #[serde(default)]
    pub lease: Option<String>,
}

impl KubernetesSettings {
    /// The Lease's namespace and name, when one is configured as `namespace/name`.
    pub fn lease(&self) -> Option<(&str, &str)> {
        self.lease.as_deref().and_then(|lease| lease.split_once('/'))
    }
}
