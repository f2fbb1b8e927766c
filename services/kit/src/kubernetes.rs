//! Reaching a Kubernetes cluster, the same way for every service that does.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which cluster a service reads, the `kubernetes` section of its configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// A kubeconfig file; unset, the pod's service account in a cluster, else the default
    /// kubeconfig.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

/// Why no client for the cluster could be made.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The named kubeconfig is unreadable or invalid.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Neither an in-cluster service account nor a default kubeconfig was found.
    #[error("no cluster configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The configuration cannot make a client (e.g. its TLS settings).
    #[error(transparent)]
    Client(#[from] kube::Error),
}

/// A client for the cluster in `kubeconfig`; without one, the pod's service account
/// when running in a cluster, else the default kubeconfig (`KUBECONFIG`, `~/.kube/config`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubernetesError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}
