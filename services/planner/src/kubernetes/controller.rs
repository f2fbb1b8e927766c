//! The Rollout controller: Rollout objects applied from Git start, steer and end planner
//! rollouts, and their status mirrors the planner's state.
//!
//! - A Rollout's RolloutSpec fields name one planner rollout, `<namespace>.<name>.<hash>`:
//!   changing them in Git supersedes the running rollout (it is aborted) with a new one.
//! - `spec.paused` pauses and resumes it; `spec.abort` aborts it.
//! - Deleting the object aborts a rollout still running (a finalizer waits for that), so
//!   traffic goes back to the stable backend.
//! - A spec the planner refuses is reported in the `SpecValid` condition.
//!
//! The controller calls the planner's own gRPC API, so every request is validated and
//! recorded exactly as one from `ficus rollout`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ficus_kit::client::TracedChannel;
use ficus_proto::planner::v1::{self as proto, Phase, planner_client::PlannerClient};
use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::resource::{Condition, Rollout, RolloutStatus, VerdictStatus};

/// Removed once the object's rollout no longer runs.
pub const FINALIZER: &str = "ficus.dev/abort-on-delete";

/// How often a running rollout's status is refreshed.
const ACTIVE_REFRESH: Duration = Duration::from_secs(2);

/// How often an ended or invalid one is looked at again.
const IDLE_REFRESH: Duration = Duration::from_secs(60);

/// What reconciling needs.
struct Context {
    client: kube::Client,
    planner: PlannerClient<TracedChannel>,
}

/// Why a Rollout could not be reconciled now; it is tried again shortly.
#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("planner: {0}")]
    Planner(String),
}

/// Reconciles Rollout objects in `namespace` (every namespace when `None`) until `shutdown`.
pub async fn run(
    client: kube::Client,
    namespace: Option<String>,
    planner: PlannerClient<TracedChannel>,
    shutdown: CancellationToken,
) {
    let rollouts: Api<Rollout> = match &namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let context = Arc::new(Context { client, planner });
    Controller::new(rollouts, watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, on_error, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "rollout reconciliation");
            }
        })
        .await;
}

fn on_error(_: Arc<Rollout>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "cannot reconcile a Rollout; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(object: Arc<Rollout>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<Rollout> = Api::namespaced(context.client.clone(), &namespace);
    let mut planner = context.planner.clone();
    let previous = object.status.clone().unwrap_or_default();

    if object.metadata.deletion_timestamp.is_some() {
        if !previous.rollout_id.is_empty() {
            abort(&mut planner, &previous.rollout_id, "the Rollout object was deleted").await?;
        }
        let finalizers: Vec<String> = object.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": object.resource_version()}});
        api.patch(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        return Ok(Action::await_change());
    }
    if !object.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = object.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": object.resource_version()}});
        api.patch(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }

    let generation = object.metadata.generation.unwrap_or_default();
    let mut status =
        RolloutStatus { observed_generation: generation, conditions: previous.conditions.clone(), ..previous.clone() };
    let spec = match rollout_spec(&object.spec.rollout.0) {
        Ok(spec) => spec,
        Err(reason) => {
            set_condition(&mut status, "SpecValid", false, "InvalidSpec", &reason, generation);
            write_status(&api, &object, status).await?;
            return Ok(Action::requeue(IDLE_REFRESH));
        }
    };
    let id = rollout_id(&namespace, &object.name_any(), &object.spec.rollout.0);

    // A new spec supersedes the rollout the object ran before.
    if !previous.rollout_id.is_empty() && previous.rollout_id != id {
        abort(&mut planner, &previous.rollout_id, "superseded by a new spec of the Rollout object").await?;
    }
    let rollout = match planner.get_rollout(proto::GetRolloutRequest { id: id.clone() }).await {
        Ok(rollout) => rollout.into_inner(),
        Err(missing) if missing.code() == Code::NotFound && !object.spec.abort => {
            match planner.create_rollout(proto::CreateRolloutRequest { spec: Some(spec), id: id.clone() }).await {
                Ok(rollout) => rollout.into_inner(),
                Err(refused)
                    if refused.code() == Code::InvalidArgument || refused.code() == Code::FailedPrecondition =>
                {
                    set_condition(&mut status, "SpecValid", false, "Refused", refused.message(), generation);
                    write_status(&api, &object, status).await?;
                    return Ok(Action::requeue(IDLE_REFRESH));
                }
                Err(failed) => return Err(ReconcileError::Planner(failed.message().to_owned())),
            }
        }
        Err(missing) if missing.code() == Code::NotFound => {
            status.phase = Phase::Aborted.as_str_name().to_owned();
            status.message = "aborted before it started (spec.abort)".into();
            write_status(&api, &object, status).await?;
            return Ok(Action::await_change());
        }
        Err(failed) => return Err(ReconcileError::Planner(failed.message().to_owned())),
    };
    set_condition(&mut status, "SpecValid", true, "Accepted", "the planner accepted the spec", generation);

    let rollout = steer(&mut planner, rollout, object.spec.paused, object.spec.abort).await?;
    mirror(&mut status, &rollout, &id, generation);
    write_status(&api, &object, status).await?;
    let active = !matches!(rollout.phase(), Phase::Succeeded | Phase::RolledBack | Phase::Aborted | Phase::Failed);
    Ok(Action::requeue(if active { ACTIVE_REFRESH } else { IDLE_REFRESH }))
}

/// Pauses, resumes or aborts the rollout as the object's spec says.
async fn steer(
    planner: &mut PlannerClient<TracedChannel>,
    rollout: proto::Rollout,
    paused: bool,
    aborted: bool,
) -> Result<proto::Rollout, ReconcileError> {
    let id = rollout.id.clone();
    let reason = "set in the Rollout object".to_owned();
    let result = match rollout.phase() {
        Phase::Pending | Phase::Progressing | Phase::Paused if aborted => {
            planner.abort(proto::AbortRequest { id, reason: format!("spec.abort {reason}") }).await
        }
        Phase::Pending | Phase::Progressing if paused => {
            planner.pause(proto::PauseRequest { id, reason: format!("spec.paused {reason}") }).await
        }
        Phase::Paused if !paused => {
            planner.resume(proto::ResumeRequest { id, reason: format!("spec.paused: false {reason}") }).await
        }
        _ => return Ok(rollout),
    };
    match result {
        Ok(changed) => Ok(changed.into_inner()),
        // The rollout moved on meanwhile (e.g. it ended); the next pass sees where it is.
        Err(status) if status.code() == Code::FailedPrecondition => Ok(rollout),
        Err(status) => Err(ReconcileError::Planner(status.message().to_owned())),
    }
}

async fn abort(planner: &mut PlannerClient<TracedChannel>, id: &str, reason: &str) -> Result<(), ReconcileError> {
    match planner.abort(proto::AbortRequest { id: id.to_owned(), reason: reason.to_owned() }).await {
        Ok(_) => Ok(()),
        // Gone, or ended already: nothing runs.
        Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
        Err(status) => Err(ReconcileError::Planner(status.message().to_owned())),
    }
}

/// The RolloutSpec of the object's fields: durations such as `10m` accepted, as in spec files.
pub fn rollout_spec(fields: &serde_json::Map<String, Value>) -> Result<proto::RolloutSpec, String> {
    let mut value = Value::Object(fields.clone());
    normalize_durations(&mut value);
    serde_json::from_value(value).map_err(|error| format!("spec: {error}"))
}

fn normalize_durations(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                if let Value::String(text) = field
                    && ficus_proto::time::DURATION_KEYS.contains(&key.as_str())
                    && !ficus_proto::time::is_proto_duration(text)
                    && let Ok(duration) = humantime::parse_duration(text)
                {
                    *text = ficus_proto::time::proto_duration(duration);
                }
                normalize_durations(field);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_durations),
        _ => {}
    }
}

/// `<namespace>.<name>.<hash of the RolloutSpec fields>`: the same spec always names the
/// same planner rollout, so reconciling again never starts a second one.
pub fn rollout_id(namespace: &str, name: &str, fields: &serde_json::Map<String, Value>) -> String {
    let canonical = serde_json::to_string(&Value::Object(fields.clone())).unwrap_or_default();
    let hash = xxhash_rust::xxh3::xxh3_64(canonical.as_bytes());
    let id = format!("{namespace}.{name}.{:08x}", hash >> 32);
    id.chars().take(128).collect()
}

fn mirror(status: &mut RolloutStatus, rollout: &proto::Rollout, id: &str, generation: i64) {
    let canary = rollout.spec.as_ref().map(|spec| spec.canary_backend.clone()).unwrap_or_default();
    let weight = rollout.weights.get(&canary).copied().unwrap_or(0);
    status.rollout_id = id.to_owned();
    status.phase = rollout.phase().as_str_name().to_owned();
    status.step = rollout.step;
    status.steps = rollout.plan.as_ref().map_or(0, |plan| u32::try_from(plan.steps.len()).unwrap_or(u32::MAX));
    status.canary_weight = format!("{}%", f64::from(weight) / 100.0);
    status.weights = rollout.weights.iter().map(|(k, v)| (k.clone(), *v)).collect::<BTreeMap<_, _>>();
    status.last_verdict = rollout
        .last_verdict
        .as_ref()
        .map(|verdict| VerdictStatus { outcome: verdict.outcome().as_str_name().to_owned(), score: verdict.score });
    status.message = rollout.message.clone();
    let phase = rollout.phase();
    let running = matches!(phase, Phase::Pending | Phase::Progressing | Phase::Paused);
    set_condition(status, "Progressing", running, phase.as_str_name(), &rollout.message, generation);
    set_condition(status, "Completed", phase == Phase::Succeeded, phase.as_str_name(), &rollout.message, generation);
}

fn set_condition(status: &mut RolloutStatus, kind: &str, holds: bool, reason: &str, message: &str, generation: i64) {
    let value = if holds { "True" } else { "False" };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let reason: String = reason.split(['_', ' ']).map(capitalized).collect();
    match status.conditions.iter_mut().find(|condition| condition.type_ == kind) {
        Some(condition) => {
            if condition.status != value {
                condition.last_transition_time = now;
            }
            condition.status = value.to_owned();
            condition.reason = reason;
            condition.message = message.to_owned();
            condition.observed_generation = generation;
        }
        None => status.conditions.push(Condition {
            type_: kind.to_owned(),
            status: value.to_owned(),
            reason,
            message: message.to_owned(),
            observed_generation: generation,
            last_transition_time: now,
        }),
    }
}

fn capitalized(word: &str) -> String {
    let lower = word.to_lowercase();
    let mut chars = lower.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

async fn write_status(api: &Api<Rollout>, object: &Rollout, status: RolloutStatus) -> Result<(), kube::Error> {
    if object.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = json!({"status": status});
    api.patch_status(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_accept_human_durations_and_name_the_same_rollout_every_time() {
        let fields: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "route": "shop", "stableBackend": "v1", "canaryBackend": "v2",
            "strangler": {"window": "10m"}
        }))
        .expect("fields");
        let spec = rollout_spec(&fields).expect("spec");
        let Some(proto::rollout_spec::Strategy::Strangler(strangler)) = spec.strategy else { panic!("strangler") };
        assert_eq!(strangler.window.map(|window| window.seconds), Some(600));
        assert_eq!(rollout_id("prod", "shop", &fields), rollout_id("prod", "shop", &fields.clone()));
        let mut changed = fields.clone();
        changed.insert("canaryBackend".into(), json!("v3"));
        assert_ne!(rollout_id("prod", "shop", &fields), rollout_id("prod", "shop", &changed));
        assert!(rollout_spec(&serde_json::Map::from_iter([("route".to_owned(), json!(5))])).is_err());
    }
}
