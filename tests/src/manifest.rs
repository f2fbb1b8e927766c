//! The Helm chart, rendered by the real `helm` and parsed strictly into typed objects.
//!
//! Parsing is strict in two ways: a kind the chart is not expected to render is an error,
//! and so is any field the typed object does not know, because the API server would
//! drop or refuse it, and a misspelt `readOnlyRootFileSystem` must not pass silently.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::{Deserialize, de::DeserializeOwned};

/// The ficus services, as the chart and the Compose file name them.
pub const SERVICES: [&str; 4] = ["planner", "analysis", "traffic", "sessions"];

/// One rendered object, typed by its kind.
#[derive(Clone, Debug)]
pub enum Object {
    /// apps/v1 Deployment.
    Deployment(Box<Deployment>),
    /// v1 Service.
    Service(Box<Service>),
    /// v1 ConfigMap.
    ConfigMap(Box<ConfigMap>),
    /// v1 Secret.
    Secret(Box<Secret>),
    /// v1 ServiceAccount.
    ServiceAccount(Box<ServiceAccount>),
    /// v1 PersistentVolumeClaim.
    PersistentVolumeClaim(Box<PersistentVolumeClaim>),
    /// v1 Pod (the test hook).
    Pod(Box<Pod>),
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
    /// policy/v1 PodDisruptionBudget.
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    /// autoscaling/v2 HorizontalPodAutoscaler.
    HorizontalPodAutoscaler(Box<HorizontalPodAutoscaler>),
    /// rbac.authorization.k8s.io/v1 Role.
    Role(Box<Role>),
    /// rbac.authorization.k8s.io/v1 RoleBinding.
    RoleBinding(Box<RoleBinding>),
    /// rbac.authorization.k8s.io/v1 ClusterRole.
    ClusterRole(Box<ClusterRole>),
    /// rbac.authorization.k8s.io/v1 ClusterRoleBinding.
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    /// apiextensions.k8s.io/v1 CustomResourceDefinition.
    CustomResourceDefinition(Box<CustomResourceDefinition>),
    /// monitoring.coreos.com/v1 ServiceMonitor, which k8s-openapi has no type for.
    ServiceMonitor(Box<ServiceMonitor>),
    /// cert-manager.io/v1 Certificate, which k8s-openapi has no type for either.
    Certificate(Box<ServiceMonitor>),
}

impl Object {
    /// The object's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Deployment(_) => "Deployment",
            Self::Service(_) => "Service",
            Self::ConfigMap(_) => "ConfigMap",
            Self::Secret(_) => "Secret",
            Self::ServiceAccount(_) => "ServiceAccount",
            Self::PersistentVolumeClaim(_) => "PersistentVolumeClaim",
            Self::Pod(_) => "Pod",
            Self::NetworkPolicy(_) => "NetworkPolicy",
            Self::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Self::HorizontalPodAutoscaler(_) => "HorizontalPodAutoscaler",
            Self::Role(_) => "Role",
            Self::RoleBinding(_) => "RoleBinding",
            Self::ClusterRole(_) => "ClusterRole",
            Self::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Self::CustomResourceDefinition(_) => "CustomResourceDefinition",
            Self::ServiceMonitor(_) => "ServiceMonitor",
            Self::Certificate(_) => "Certificate",
        }
    }
}

/// A custom resource the chart renders for an operator (a Prometheus Operator
/// ServiceMonitor, a cert-manager Certificate): typed metadata, the spec as the operator's
/// CRD leaves it to its own validation.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitor {
    /// E.g. `monitoring.coreos.com/v1`.
    pub api_version: String,
    /// E.g. `ServiceMonitor`.
    pub kind: String,
    /// Name and labels.
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    /// Selector and endpoints.
    pub spec: serde_json::Value,
}

/// Why the chart could not be rendered into objects.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// helm could not run.
    #[error("running helm: {0}")]
    Spawn(#[from] std::io::Error),
    /// helm refused the chart or the values; its message names the value.
    #[error("helm refused: {0}")]
    Refused(String),
    /// A document is not YAML.
    #[error("document {index}: {error}")]
    Yaml { index: usize, error: serde_yaml_ng::Error },
    /// A document has a kind the chart should never render.
    #[error("document {index}: unexpected kind {kind}")]
    UnknownKind { index: usize, kind: String },
    /// A document does not fit its typed object.
    #[error("{kind} {name}: {error}")]
    Invalid { kind: String, name: String, error: String },
    /// A document has fields its typed object does not know.
    #[error("{kind} {name}: unknown fields {fields:?}")]
    UnknownFields { kind: String, name: String, fields: Vec<String> },
}

/// The Kubernetes version the chart is rendered for: the test API server's.
pub const KUBE_VERSION: &str = "1.36.3";

/// The chart in this repository.
pub fn chart_dir() -> PathBuf {
    repository().join("helm/ficus")
}

/// The repository's root.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The example values files the chart's tests render besides the defaults.
pub fn example_values() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(chart_dir().join("ci"))
        .map(|entries| entries.filter_map(Result::ok).map(|entry| entry.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// A `helm` command at the pinned version the test tools script builds.
pub fn helm() -> Command {
    Command::new(ficus_testkit::tool("helm"))
}

/// `helm template` of the chart as release `ficus` in namespace `ficus`, with `values`
/// files and `--set` pairs, parsed strictly into typed objects.
pub fn render(values: &[&Path], set: &[&str]) -> Result<Vec<Object>, RenderError> {
    let mut command = helm();
    command.args(["template", "ficus"]).arg(chart_dir()).args(["--namespace", "ficus", "--kube-version", KUBE_VERSION]);
    for file in values {
        command.arg("--values").arg(file);
    }
    for pair in set {
        command.args(["--set", pair]);
    }
    let output = command.output()?;
    if !output.status.success() {
        return Err(RenderError::Refused(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    parse(&String::from_utf8_lossy(&output.stdout))
}

/// Parses a multi-document manifest strictly into typed objects.
pub fn parse(manifest: &str) -> Result<Vec<Object>, RenderError> {
    let mut objects = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(manifest).enumerate() {
        let value = serde_json::Value::deserialize(document).map_err(|error| RenderError::Yaml { index, error })?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|kind| kind.as_str()).unwrap_or_default().to_owned();
        let object = match kind.as_str() {
            "Deployment" => Object::Deployment(strict(value)?),
            "Service" => Object::Service(strict(value)?),
            "ConfigMap" => Object::ConfigMap(strict(value)?),
            "Secret" => Object::Secret(strict(value)?),
            "ServiceAccount" => Object::ServiceAccount(strict(value)?),
            "PersistentVolumeClaim" => Object::PersistentVolumeClaim(strict(value)?),
            "Pod" => Object::Pod(strict(value)?),
            "NetworkPolicy" => Object::NetworkPolicy(strict(value)?),
            "PodDisruptionBudget" => Object::PodDisruptionBudget(strict(value)?),
            "HorizontalPodAutoscaler" => Object::HorizontalPodAutoscaler(strict(value)?),
            "Role" => Object::Role(strict(value)?),
            "RoleBinding" => Object::RoleBinding(strict(value)?),
            "ClusterRole" => Object::ClusterRole(strict(value)?),
            "ClusterRoleBinding" => Object::ClusterRoleBinding(strict(value)?),
            "CustomResourceDefinition" => Object::CustomResourceDefinition(strict(value)?),
            "ServiceMonitor" => Object::ServiceMonitor(strict(value)?),
            "Certificate" => Object::Certificate(strict(value)?),
            _ => return Err(RenderError::UnknownKind { index, kind }),
        };
        objects.push(object);
    }
    Ok(objects)
}

/// Deserializes `value` into `T`, failing on every field `T` would ignore.
fn strict<T: DeserializeOwned>(value: serde_json::Value) -> Result<Box<T>, RenderError> {
    let kind = value.get("kind").and_then(|kind| kind.as_str()).unwrap_or_default().to_owned();
    let name = value.pointer("/metadata/name").and_then(|name| name.as_str()).unwrap_or_default().to_owned();
    let mut unknown = Vec::new();
    let typed = serde_ignored::deserialize(value, |path| unknown.push(path.to_string())).map_err(
        |error: serde_json::Error| RenderError::Invalid {
            kind: kind.clone(),
            name: name.clone(),
            error: error.to_string(),
        },
    )?;
    if unknown.is_empty() {
        Ok(Box::new(typed))
    } else {
        Err(RenderError::UnknownFields { kind, name, fields: unknown })
    }
}

/// Which service calls which, as the chart configures them: each service's peers from
/// its rendered ficus.toml, and `redis` for every service whose store is a Redis URL.
pub fn service_graph(objects: &[Object]) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for object in objects {
        let Object::ConfigMap(config_map) = object else { continue };
        let labels = config_map.metadata.labels.clone().unwrap_or_default();
        let Some(component) = labels.get("app.kubernetes.io/component").filter(|c| SERVICES.contains(&c.as_str()))
        else {
            continue;
        };
        let toml = config_map.data.as_ref().and_then(|data| data.get("ficus.toml")).cloned().unwrap_or_default();
        let config: toml::Table = toml.parse().unwrap_or_default();
        let peers: BTreeSet<String> =
            SERVICES.iter().filter(|peer| config.contains_key(**peer)).map(|peer| (*peer).to_owned()).collect();
        graph.insert(component.clone(), peers);
    }
    for object in objects {
        let Object::Deployment(deployment) = object else { continue };
        let Some(component) = component_of(&deployment.metadata) else { continue };
        let stores_in_redis = deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.template.spec.as_ref())
            .into_iter()
            .flat_map(|pod| &pod.containers)
            .flat_map(|container| container.env.iter().flatten())
            .any(|env| env.name == "FICUS_STORE" && env.value.as_deref().is_some_and(|v| v.starts_with("redis")));
        if stores_in_redis && let Some(peers) = graph.get_mut(&component) {
            peers.insert("redis".to_owned());
        }
    }
    graph
}

/// The `app.kubernetes.io/component` label of an object.
pub fn component_of(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    metadata.labels.as_ref()?.get("app.kubernetes.io/component").cloned()
}
