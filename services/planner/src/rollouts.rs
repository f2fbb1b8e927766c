//! Rollouts in the store, with the one-active-rollout-per-route index and the stream of
//! transitions that `WatchRollout` follows.
//!
//! Every transition is written here, compare-and-set on the rollout's version, before the
//! driver acts on it. Transitions written by this process are published with their exact
//! reason; those written by another replica arrive through the store's change feed.

use std::{collections::HashMap, sync::Arc};

use ficus_kit::{
    clock::Clock,
    store::{Change, Expect, Store, StoreError},
};
use ficus_proto::planner::v1::{self as proto, Phase};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{
    error::Error,
    machine::{self, Transition},
    plan::Plan,
    spec::Spec,
};

const ROLLOUTS: &str = "rollouts/";
const ACTIVE: &str = "active/";

/// How many transitions a watcher may fall behind before it skips to the latest state.
const EVENT_BUFFER: usize = 1024;

/// The stored rollouts.
#[derive(Clone, Debug)]
pub struct Rollouts {
    store: Store,
    clock: Clock,
    events: broadcast::Sender<proto::RolloutEvent>,
    /// Highest version published per rollout, so nothing is published twice or backwards.
    published: Arc<Mutex<HashMap<String, u64>>>,
}

/// A rollout's validated spec and its plan, derived from what is stored.
pub fn plan_of(rollout: &proto::Rollout) -> Result<(Spec, Plan), Error> {
    let spec = rollout.spec.as_ref().ok_or_else(|| Error::Corrupt(format!("rollout `{}` has no spec", rollout.id)))?;
    let spec =
        Spec::from_proto(spec, "spec").map_err(|error| Error::Corrupt(format!("rollout `{}`: {error}", rollout.id)))?;
    let plan = Plan::new(&spec);
    Ok((spec, plan))
}

impl Rollouts {
    /// Rollouts kept in `store`, created at the times `clock` reads.
    pub fn new(store: Store, clock: Clock) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self { store, clock, events, published: Arc::default() }
    }

    /// The clock rollouts are created and moved by.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Follows transitions, of this process and of other replicas.
    pub fn subscribe(&self) -> broadcast::Receiver<proto::RolloutEvent> {
        self.events.subscribe()
    }

    /// Stores a new rollout, refusing a second active one on the same route.
    pub async fn create(&self, spec: proto::RolloutSpec, plan: &Plan, id: String) -> Result<proto::Rollout, Error> {
        if let Some(existing) = self.find(&id).await? {
            return if existing.spec.as_ref() == Some(&spec) { Ok(existing) } else { Err(Error::AlreadyExists(id)) };
        }
        let route = spec.route.clone();
        self.claim_route(&route, &id).await?;
        let now = self.clock.now();
        let rollout = proto::Rollout {
            id: id.clone(),
            plan: Some(plan.to_proto()),
            spec: Some(spec),
            created_at: Some(ficus_proto::time::timestamp(now)),
            ..Default::default()
        };
        let transition = machine::start(rollout, plan, now);
        match self.store.put(&key(&id), transition.rollout.encode_to_vec(), Expect::Absent, None).await {
            Ok(version) => {
                let mut stored = transition.rollout;
                stored.version = version;
                self.publish(&stored, transition.reason, transition.from);
                Ok(stored)
            }
            Err(error) => {
                // Free the route again; the rollout was never stored.
                let _ = self.release_route(&route, &id).await;
                match error {
                    StoreError::Conflict { .. } => self.find(&id).await?.ok_or(Error::NotFound(id)),
                    other => Err(Error::Store(other)),
                }
            }
        }
    }

    /// Writes a transition if the rollout is still at `transition.rollout.version`.
    pub async fn save(&self, transition: Transition) -> Result<proto::Rollout, Error> {
        let mut rollout = transition.rollout;
        let expected = rollout.version;
        let version =
            self.store.put(&key(&rollout.id), rollout.encode_to_vec(), Expect::Version(expected), None).await.map_err(
                |error| match error {
                    StoreError::Conflict { current, .. } => Error::Conflict { id: rollout.id.clone(), current },
                    other => Error::Store(other),
                },
            )?;
        rollout.version = version;
        // The route is free once the rollout's final weights are on traffic, so the next
        // rollout never races the last one's rollback.
        if !Self::is_unsettled(&rollout) {
            let route = rollout.spec.as_ref().map(|spec| spec.route.clone()).unwrap_or_default();
            if let Err(error) = self.release_route(&route, &rollout.id).await {
                tracing::warn!(%error, rollout = %rollout.id, "cannot free the route; the next rollout frees it");
            }
        }
        self.publish(&rollout, transition.reason, transition.from);
        Ok(rollout)
    }

    /// One rollout.
    pub async fn get(&self, id: &str) -> Result<proto::Rollout, Error> {
        self.find(id).await?.ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// Rollouts, newest first.
    pub async fn list(&self, route: &str, active_only: bool) -> Result<Vec<proto::Rollout>, Error> {
        let mut rollouts = Vec::new();
        for entry in self.store.scan(ROLLOUTS).await.map_err(Error::Store)? {
            let rollout = decode(&entry.value, entry.version)?;
            let route_ok = route.is_empty() || rollout.spec.as_ref().is_some_and(|spec| spec.route == route);
            if route_ok && !(active_only && machine::is_terminal(rollout.phase())) {
                rollouts.push(rollout);
            }
        }
        rollouts.sort_by(|a, b| {
            let at = |r: &proto::Rollout| r.created_at.map(|t| (t.seconds, t.nanos)).unwrap_or_default();
            at(b).cmp(&at(a)).then_with(|| a.id.cmp(&b.id))
        });
        Ok(rollouts)
    }

    /// Rollouts the driver still has work for: active ones, and ended ones whose final
    /// weights traffic has not confirmed yet.
    pub async fn unsettled(&self) -> Result<Vec<proto::Rollout>, Error> {
        Ok(self.list("", false).await?.into_iter().filter(Self::is_unsettled).collect())
    }

    /// Whether the driver still has work for `rollout` (see [`Rollouts::unsettled`]).
    pub fn is_unsettled(rollout: &proto::Rollout) -> bool {
        !machine::is_terminal(rollout.phase()) || rollout.weights_pending
    }

    /// Publishes other replicas' writes until `shutdown`.
    pub async fn follow(self, shutdown: CancellationToken) {
        let mut changes = self.store.follow(shutdown);
        while let Some(change) = changes.next().await {
            let ids: Vec<String> = match change {
                Change::Put { key, .. } => key.strip_prefix(ROLLOUTS).map(str::to_owned).into_iter().collect(),
                Change::Deleted { .. } => Vec::new(),
                Change::Resync => match self.list("", false).await {
                    Ok(all) => all.into_iter().map(|rollout| rollout.id).collect(),
                    Err(_) => Vec::new(),
                },
            };
            for id in ids {
                if let Ok(Some(rollout)) = self.find(&id).await {
                    let reason = rollout.message.clone();
                    let from = rollout.phase();
                    self.publish(&rollout, reason, from);
                }
            }
        }
    }

    fn publish(&self, rollout: &proto::Rollout, reason: String, from: Phase) {
        {
            let mut published = self.published.lock();
            let last = published.entry(rollout.id.clone()).or_default();
            if rollout.version <= *last {
                return;
            }
            *last = rollout.version;
        }
        // Nobody watching is fine.
        let _ =
            self.events.send(proto::RolloutEvent { rollout: Some(rollout.clone()), reason, from_phase: from.into() });
    }

    async fn find(&self, id: &str) -> Result<Option<proto::Rollout>, Error> {
        let entry = self.store.get(&key(id)).await.map_err(Error::Store)?;
        entry.map(|entry| decode(&entry.value, entry.version)).transpose()
    }

    /// Takes `route` for rollout `id`; a route held by a rollout that has ended is taken over.
    async fn claim_route(&self, route: &str, id: &str) -> Result<(), Error> {
        let index = format!("{ACTIVE}{route}");
        match self.store.put(&index, id.as_bytes().to_vec(), Expect::Absent, None).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => {}
            Err(other) => return Err(Error::Store(other)),
        }
        let Some(entry) = self.store.get(&index).await.map_err(Error::Store)? else {
            return Err(Error::Conflict { id: id.to_owned(), current: None });
        };
        let holder = String::from_utf8_lossy(&entry.value).into_owned();
        if let Some(active) = self.find(&holder).await?
            && Self::is_unsettled(&active)
        {
            let what = if machine::is_terminal(active.phase()) {
                "an ended rollout whose final weights traffic has yet to confirm"
            } else {
                "an active rollout"
            };
            return Err(Error::FailedPrecondition(format!(
                "route `{route}` already has {what}, `{holder}` ({})",
                active.phase().as_str_name()
            )));
        }
        self.store
            .put(&index, id.as_bytes().to_vec(), Expect::Version(entry.version), None)
            .await
            .map(|_| ())
            .map_err(|_| Error::FailedPrecondition(format!("route `{route}` was just taken by another rollout")))
    }

    async fn release_route(&self, route: &str, id: &str) -> Result<(), Error> {
        let index = format!("{ACTIVE}{route}");
        if let Some(entry) = self.store.get(&index).await.map_err(Error::Store)?
            && entry.value == id.as_bytes()
        {
            self.store.delete(&index, Expect::Version(entry.version)).await.map_err(Error::Store)?;
        }
        Ok(())
    }
}

fn key(id: &str) -> String {
    format!("{ROLLOUTS}{id}")
}

fn decode(bytes: &[u8], version: u64) -> Result<proto::Rollout, Error> {
    let mut rollout = proto::Rollout::decode(bytes).map_err(|error| Error::Corrupt(error.to_string()))?;
    rollout.version = version;
    Ok(rollout)
}

#[cfg(test)]
mod tests {
    use ficus_proto::planner::v1 as proto;

    use super::*;

    fn spec() -> proto::RolloutSpec {
        proto::RolloutSpec {
            route: "checkout".into(),
            stable_backend: "legacy".into(),
            canary_backend: "k8s".into(),
            strategy: Some(proto::rollout_spec::Strategy::Strangler(proto::StranglerStrategy::default())),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_route_stays_taken_until_the_last_rollouts_final_weights_are_on_traffic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().display().to_string(), "planner").await.expect("store");
        let rollouts = Rollouts::new(store, Clock::System);
        let (_, plan) = plan_of(&proto::Rollout { spec: Some(spec()), ..Default::default() }).expect("plan");
        let first = rollouts.create(spec(), &plan, "first".into()).await.expect("created");
        let aborted = machine::command(&first, &plan, machine::Command::Abort, "", Clock::System.now()).expect("abort");
        let aborted = rollouts.save(aborted).await.expect("saved");
        assert!(aborted.weights_pending);
        let refused =
            rollouts.create(spec(), &plan, "second".into()).await.expect_err("the rollback is not on traffic");
        assert!(refused.to_string().contains("yet to confirm"), "{refused}");
        rollouts.save(machine::applied(&aborted, 7)).await.expect("applied");
        rollouts.create(spec(), &plan, "second".into()).await.expect("free once traffic has the rollback");
    }
}
