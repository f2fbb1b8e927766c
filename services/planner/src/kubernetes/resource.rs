//! The `Rollout` custom resource (`ficus.dev/v1alpha1`): a RolloutSpec kept in Git and
//! applied to a cluster, with the planner's state mirrored into its status.

use std::borrow::Cow;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A rollout as a Kubernetes object. Its spec is a `ficus.planner.v1.RolloutSpec` in the
/// proto3 JSON mapping (the same YAML as `ficus rollout apply -f`, durations such as `10m`
/// accepted), plus the fields that steer it from Git: `paused` and `abort`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ficus.dev",
    version = "v1alpha1",
    kind = "Rollout",
    plural = "rollouts",
    shortname = "frollout",
    namespaced,
    status = "RolloutStatus",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Step", "type": "integer", "jsonPath": ".status.step"}"#,
    printcolumn = r#"{"name": "Canary", "type": "string", "jsonPath": ".status.canaryWeight"}"#,
    printcolumn = r#"{"name": "Verdict", "type": "string", "jsonPath": ".status.lastVerdict.outcome"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutResourceSpec {
    /// The RolloutSpec, field by field.
    #[serde(flatten)]
    pub rollout: RolloutFields,
    /// Hold the rollout's weights (`Pause`); back to `false` resumes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Abort the rollout: traffic back on the stable backend; it ends ABORTED.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
}

/// The RolloutSpec's fields as written, validated by the planner. The schema checks what
/// the API server can check structurally; the planner checks the rest and reports it in
/// the `SpecValid` condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutFields(pub serde_json::Map<String, Value>);

impl JsonSchema for RolloutFields {
    fn schema_name() -> Cow<'static, str> {
        "RolloutFields".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let name = json_schema!({"type": "string", "minLength": 1, "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"});
        let free = json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        let duration = json_schema!({"type": "string", "minLength": 1});
        json_schema!({
            "type": "object",
            "required": ["route", "stableBackend", "canaryBackend"],
            "properties": {
                "route": name,
                "stableBackend": name,
                "canaryBackend": name,
                "baselineBackend": name,
                "canary": free,
                "strangler": free,
                "blueGreen": free,
                "analysis": free,
                "failurePolicy": {"type": "string", "enum": ["FAILURE_POLICY_UNSPECIFIED", "ROLLBACK_TO_PREVIOUS_STAGE", "ABORT_TO_ZERO", "PAUSE_FOR_HUMAN"]},
                "manualGate": {"type": "boolean"},
                "scaling": free,
                "progressDeadline": duration,
                "inconclusiveDeadline": duration,
                "deadlineAction": {"type": "string", "enum": ["DEADLINE_ACTION_PAUSE", "DEADLINE_ACTION_ABORT", "DEADLINE_ACTION_ROLL_BACK"]},
            },
        })
    }
}

/// The planner's state of the rollout, mirrored for `kubectl get` and GitOps tools.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The planner's rollout id behind this object.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rollout_id: String,
    /// The `metadata.generation` this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// PENDING, PROGRESSING, PAUSED, SUCCEEDED, ROLLED_BACK, ABORTED or FAILED.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// Index of the current step of the plan.
    #[serde(default)]
    pub step: u32,
    /// Steps in the plan.
    #[serde(default)]
    pub steps: u32,
    /// The canary's share now, e.g. `20%`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canary_weight: String,
    /// Weights applied to traffic, in basis points, by backend.
    #[serde(default)]
    pub weights: std::collections::BTreeMap<String, u32>,
    /// The latest verdict of the current step's analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verdict: Option<VerdictStatus>,
    /// Why the rollout is where it is, in one line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `SpecValid`, `Progressing` and `Completed`, in the Kubernetes convention.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A verdict, shortened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerdictStatus {
    /// PASS, FAIL or INCONCLUSIVE.
    pub outcome: String,
    /// Score, 0 to 100.
    pub score: f64,
}

/// One condition, as `metav1.Condition` has it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `SpecValid`, `Progressing` or `Completed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One word, CamelCase.
    pub reason: String,
    /// For people.
    pub message: String,
    /// The generation it was set for.
    pub observed_generation: i64,
    /// When its status last changed, RFC 3339.
    pub last_transition_time: String,
}

/// The CustomResourceDefinition, as YAML: generated from these types, shipped in the chart.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    let crd = <Rollout as kube::CustomResourceExt>::crd();
    Ok(format!(
        "# Generated from the Rollout types in services/planner; regenerate with\n# FICUS_BLESS=1 cargo test -p ficus-planner --test rollout_resource\n{}",
        serde_yaml_ng::to_string(&crd)?
    ))
}
