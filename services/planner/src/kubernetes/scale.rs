//! Scaling a rollout's Deployments with its weight, through their `scale` subresource.
//!
//! Each call moves the replica counts one batch toward a step's [`ReplicaPlan`] and says
//! whether the step's pods are there: the side that gains traffic grows first (within
//! replicas + maxSurge pods, making room by shrinking the other side only while
//! replicas - maxUnavailable pods stay ready), and only when its pods are ready does the
//! driver move the weight; the side that lost traffic shrinks after.

use ficus_proto::planner::v1::ScaledDeployments;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::replicas::ReplicaPlan;

/// Where the Deployments stand, or why the step must wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Both sides have their step's replicas (growing: and they are ready).
    Done,
    /// Not yet, and why.
    Waiting(String),
}

/// Scales Deployments through one client.
#[derive(Clone)]
pub struct Scaler {
    client: kube::Client,
}

impl std::fmt::Debug for Scaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scaler").finish_non_exhaustive()
    }
}

/// One Deployment's replicas: wanted and ready.
#[derive(Clone, Copy, Debug)]
struct Side {
    replicas: u32,
    ready: u32,
}

impl Scaler {
    /// A scaler acting through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// One batch toward `target` for every side that must grow; `Done` once both sides
    /// have at least their target and those pods are ready.
    pub async fn grow(&self, deployments: &ScaledDeployments, target: ReplicaPlan) -> Result<Progress, kube::Error> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &deployments.namespace);
        let (stable, canary) = (side(&api, &deployments.stable).await?, side(&api, &deployments.canary).await?);
        let wanted = [(&deployments.canary, canary, target.canary), (&deployments.stable, stable, target.stable)];
        if wanted.iter().all(|(_, side, goal)| side.replicas >= *goal) {
            return Ok(match wanted.iter().find(|(_, side, goal)| side.ready < *goal) {
                None => Progress::Done,
                Some((name, side, goal)) => Progress::Waiting(format!("{name}: {} of {goal} pods ready", side.ready)),
            });
        }
        let mut room = target.max_pods.saturating_sub(stable.replicas + canary.replicas);
        if room == 0 {
            // Make room: shrink a side above its target while enough pods stay ready.
            let spare = (stable.ready + canary.ready).saturating_sub(target.min_available);
            for (name, side, goal) in wanted {
                let by = side.replicas.saturating_sub(goal).min(spare);
                if by > 0 {
                    scale(&api, name, side.replicas - by).await?;
                    return Ok(Progress::Waiting(format!(
                        "{name}: scaled down to {} to make room",
                        side.replicas - by
                    )));
                }
            }
            return Ok(Progress::Waiting("waiting for pods to be ready before scaling further".into()));
        }
        let mut moved = Vec::new();
        for (name, side, goal) in wanted {
            let by = goal.saturating_sub(side.replicas).min(room);
            if by > 0 {
                scale(&api, name, side.replicas + by).await?;
                room -= by;
                moved.push(format!("{name} to {}", side.replicas + by));
            }
        }
        Ok(Progress::Waiting(format!("scaled {}", moved.join(", "))))
    }

    /// One batch toward `target` for every side above it, while replicas - maxUnavailable
    /// pods stay ready; `Done` once neither side is above its target.
    pub async fn shrink(&self, deployments: &ScaledDeployments, target: ReplicaPlan) -> Result<Progress, kube::Error> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &deployments.namespace);
        let (stable, canary) = (side(&api, &deployments.stable).await?, side(&api, &deployments.canary).await?);
        let mut spare = (stable.ready + canary.ready).saturating_sub(target.min_available);
        let mut above = false;
        for (name, side, goal) in
            [(&deployments.stable, stable, target.stable), (&deployments.canary, canary, target.canary)]
        {
            if side.replicas <= goal {
                continue;
            }
            above = true;
            let by = (side.replicas - goal).min(spare);
            if by > 0 {
                scale(&api, name, side.replicas - by).await?;
                spare -= by;
            }
        }
        Ok(if above { Progress::Waiting("scaling down".into()) } else { Progress::Done })
    }
}

async fn side(api: &Api<Deployment>, name: &str) -> Result<Side, kube::Error> {
    let deployment = api.get(name).await?;
    let replicas = deployment.spec.and_then(|spec| spec.replicas).unwrap_or(1);
    let ready = deployment.status.and_then(|status| status.ready_replicas).unwrap_or(0);
    Ok(Side { replicas: u32::try_from(replicas).unwrap_or(0), ready: u32::try_from(ready).unwrap_or(0) })
}

async fn scale(api: &Api<Deployment>, name: &str, replicas: u32) -> Result<(), kube::Error> {
    let patch = json!({"spec": {"replicas": replicas}});
    api.patch_scale(name, &PatchParams::apply(super::FIELD_MANAGER), &Patch::Merge(&patch)).await.map(drop)
}
