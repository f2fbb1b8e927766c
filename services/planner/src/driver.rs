//! The loop that moves each rollout: apply its weights to traffic, observe its step
//! (with an analysis run when the step has one), and turn what happens into transitions
//! through the state machine, each written before it is acted on. Ended rollouts are
//! driven too until traffic confirms their final weights.
//!
//! A rollout is driven only by the replica holding its lease ([`crate::lease`]), and every
//! weight change carries that lease's fencing token. Everything the driver does is idempotent
//! (weights are compared before they are set, analysis runs have ids derived from the step
//! they judge), so a replica that takes over, or a planner restarted after `kill -9`,
//! simply carries on from the stored state.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use ficus_kit::{client::TracedChannel, status::MAX_DURATION};
use ficus_proto::{
    analysis::v1::{self as analysis, Outcome, analysis_client::AnalysisClient},
    planner::v1::{self as proto, Phase},
    time,
    traffic::v1::{self as traffic, traffic_control_client::TrafficControlClient},
};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::Instrument;

use crate::kubernetes::scale::{Progress, Scaler};
use crate::metrics::RolloutMetrics;
use crate::{
    error::Error,
    lease::{self, Claim, Leadership, Leases},
    machine::{self, Transition},
    plan::StepKind,
    rollouts::{Rollouts, plan_of},
};
use ficus_kit::clock::Clock;

/// How long to wait before trying again when traffic, analysis or the store is down.
const RETRY: Duration = Duration::from_secs(1);

/// How long an ended rollout's Deployments are scaled toward their final counts.
const SETTLE_FOR: Duration = Duration::from_secs(120);

/// How often an elected leader looks for rollouts it is not driving yet (e.g. after a
/// takeover).
const RESCAN: Duration = Duration::from_secs(5);

/// The services a rollout moves and judges.
#[derive(Clone, Debug)]
pub struct Peers {
    /// Traffic control.
    pub traffic: TrafficControlClient<TracedChannel>,
    /// Metric analysis.
    pub analysis: AnalysisClient<TracedChannel>,
    /// Deployments scaled with the weight, when a cluster is configured.
    pub scaler: Option<crate::kubernetes::scale::Scaler>,
}

/// What every rollout driver of a replica works with.
struct Team {
    rollouts: Rollouts,
    peers: Peers,
    metrics: RolloutMetrics,
    clock: Clock,
}

/// How this replica comes to drive rollouts.
#[derive(Debug)]
pub enum Drivers {
    /// Per-rollout leases in the shared store: the replicas share the rollouts.
    Shared(Leases),
    /// One leader, elected through a Kubernetes Lease, drives them all.
    Elected(Leadership),
}

/// Drives rollouts until `shutdown`: with [`Drivers::Shared`] this replica's share of
/// them, with [`Drivers::Elected`] all of them while it leads.
pub async fn run(
    rollouts: Rollouts,
    peers: Peers,
    drivers: Drivers,
    metrics: RolloutMetrics,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut leadership = match drivers {
        Drivers::Shared(leases) => {
            tokio::spawn(leases.clone().heartbeat(shutdown.clone()));
            let rescan = leases.renew_every();
            return lead(Team { rollouts, peers, metrics, clock }, Claims::Shared(leases), rescan, shutdown).await;
        }
        Drivers::Elected(leadership) => leadership,
    };
    loop {
        let token = *leadership.borrow_and_update();
        if let Some(token) = token {
            let tenure = shutdown.child_token();
            let team = Team { rollouts: rollouts.clone(), peers: peers.clone(), metrics: metrics.clone(), clock };
            let lead = lead(team, Claims::Elected(token), RESCAN, tenure.clone());
            tokio::pin!(lead);
            loop {
                tokio::select! {
                    () = &mut lead => {}
                    changed = leadership.changed() => {
                        // A new tenure (after a pause long enough to lose the Lease) has a
                        // new token: the drivers start over with it.
                        if changed.is_err() || *leadership.borrow_and_update() != Some(token) {
                            tracing::info!("no longer leading with token {token}; stopping every rollout driver");
                            tenure.cancel();
                            break;
                        }
                        continue;
                    }
                }
                break;
            }
            tenure.cancel();
        }
        tokio::select! {
            changed = leadership.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// How a replica that may drive gets the right to drive one rollout.
enum Claims {
    /// By claiming the rollout's lease, within this replica's fair share.
    Shared(Leases),
    /// As the elected leader, with the leadership's fencing token.
    Elected(u64),
}

/// The right to drive one rollout.
enum Tenure {
    /// The rollout's own lease, renewed while it is driven.
    Lease(Leases, Claim),
    /// The leader's, which the caller ends with the leadership.
    Elected(u64),
}

impl Claims {
    /// How many of the `unsettled` rollouts this replica should drive.
    async fn share(&self, unsettled: usize) -> usize {
        match self {
            Self::Elected(_) => usize::MAX,
            Self::Shared(leases) => match leases.replicas().await {
                Ok(replicas) => lease::fair_share(unsettled, replicas),
                Err(error) => {
                    tracing::warn!(%error, "cannot count the live replicas");
                    0
                }
            },
        }
    }

    /// The right to drive rollout `id`, unless another replica has it.
    async fn claim(&self, id: &str) -> Option<Tenure> {
        let leases = match self {
            Self::Elected(token) => return Some(Tenure::Elected(*token)),
            Self::Shared(leases) => leases,
        };
        match leases.claim(id).await {
            Ok(claim) => claim.map(|claim| Tenure::Lease(leases.clone(), claim)),
            Err(error) => {
                tracing::warn!(rollout = id, %error, "cannot claim the rollout's lease");
                None
            }
        }
    }
}

impl Tenure {
    fn token(&self) -> u64 {
        match self {
            Self::Lease(_, claim) => claim.token,
            Self::Elected(token) => *token,
        }
    }

    /// Keeps the tenure until `stop`, then gives it up; cancels `stop` when the lease
    /// cannot be renewed, as another replica may then take the rollout over.
    async fn keep(self, id: String, stop: CancellationToken) {
        let Self::Lease(leases, mut claim) = self else { return };
        let mut ticks = tokio::time::interval(leases.renew_every());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if let Err(error) = leases.renew(&mut claim).await {
                        tracing::warn!(rollout = %id, %error, "lost the rollout's lease; stopping its driver");
                        stop.cancel();
                        return;
                    }
                }
                () = stop.cancelled() => break,
            }
        }
        leases.release(claim).await;
    }
}

/// While allowed to drive (until `tenure`): one task per rollout that is active or whose
/// decided weights traffic has not confirmed yet, for those this replica claims. Looks
/// for rollouts nobody drives every `rescan` (after a replica died, its leases expire).
async fn lead(team: Team, claims: Claims, rescan: Duration, tenure: CancellationToken) {
    let Team { rollouts, peers, metrics, clock } = team;
    let driving: Arc<Mutex<HashMap<String, CancellationToken>>> = Arc::default();
    let mut events = rollouts.subscribe();
    let mut rescan = tokio::time::interval(rescan);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unsettled: HashSet<String> = HashSet::new();
    loop {
        let ids: Vec<String> = tokio::select! {
            _ = rescan.tick() => match rollouts.unsettled().await {
                Ok(found) => {
                    unsettled = found.into_iter().map(|rollout| rollout.id).collect();
                    unsettled.iter().cloned().collect()
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot list the rollouts to drive");
                    Vec::new()
                }
            },
            // Only rollouts not seen yet (new ones): the others' transitions, such as every
            // verdict of a rollout another replica drives, wait for the rescan rather than
            // costing a count of the replicas and a lost claim each.
            event = events.recv() => match event {
                Ok(event) => event
                    .rollout
                    .into_iter()
                    .filter(|rollout| Rollouts::is_unsettled(rollout) && !unsettled.contains(&rollout.id))
                    .map(|rollout| rollout.id)
                    .collect(),
                Err(broadcast::error::RecvError::Lagged(_)) => Vec::new(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tenure.cancelled() => return,
        };
        let new: Vec<String> = {
            let driving = driving.lock();
            ids.into_iter().filter(|id| !driving.contains_key(id)).collect()
        };
        if new.is_empty() {
            continue;
        }
        unsettled.extend(new.iter().cloned());
        let share = claims.share(unsettled.len()).await;
        for id in new {
            if driving.lock().len() >= share {
                break;
            }
            let Some(right) = claims.claim(&id).await else { continue };
            let stop = tenure.child_token();
            driving.lock().insert(id.clone(), stop.clone());
            let (rollouts, peers, metrics, driving) =
                (rollouts.clone(), peers.clone(), metrics.clone(), driving.clone());
            let token = right.token();
            tokio::spawn(right.keep(id.clone(), stop.clone()));
            tokio::spawn(async move {
                Drive { rollouts, peers, metrics, clock, id: id.clone(), token, stop: stop.clone() }.run().await;
                stop.cancel();
                driving.lock().remove(&id);
            });
        }
    }
}

/// One rollout's driver.
struct Drive {
    rollouts: Rollouts,
    peers: Peers,
    metrics: RolloutMetrics,
    clock: Clock,
    id: String,
    /// The lease's fencing token, sent with every weight change.
    token: u64,
    stop: CancellationToken,
}

/// What to do after one pass.
enum Next {
    /// Re-read the rollout and go on at once.
    Reload,
    /// Wait for a change of this rollout (or the retry delay), then re-read.
    Wait(Option<Duration>),
    /// The rollout has ended and traffic has its final weights, or this replica no
    /// longer leads.
    Done,
}

impl Drive {
    async fn run(self) {
        let mut changes = self.rollouts.subscribe();
        // One trace per stage: every pass at the same weights (applying them, starting the
        // stage's analysis, acting on its verdicts) runs in the same span, so the calls to
        // traffic and analysis that make up a stage transition form one tree.
        let mut stage: Option<(HashMap<String, u32>, tracing::Span)> = None;
        loop {
            let next = match self.rollouts.get(&self.id).await {
                Ok(rollout) => {
                    let span = match &stage {
                        Some((weights, span)) if *weights == rollout.weights => span.clone(),
                        _ => {
                            let canary =
                                rollout.spec.as_ref().and_then(|spec| rollout.weights.get(&spec.canary_backend));
                            let span = tracing::info_span!(
                                parent: None,
                                "rollout.stage",
                                otel.name = "rollout.stage",
                                rollout = %self.id,
                                step = rollout.step,
                                canary_basis_points = canary.copied().unwrap_or(0),
                            );
                            stage = Some((rollout.weights.clone(), span.clone()));
                            span
                        }
                    };
                    self.step(rollout, &mut changes).instrument(span).await
                }
                Err(error) => {
                    tracing::warn!(rollout = %self.id, %error, "cannot read the rollout");
                    Next::Wait(Some(RETRY))
                }
            };
            match next {
                Next::Reload => {}
                Next::Done => return,
                Next::Wait(limit) => {
                    if self.wait_for_change(&mut changes, limit).await.is_none() {
                        return;
                    }
                }
            }
        }
    }

    /// Waits for a newer version of this rollout, at most `limit`; `None` when stopped.
    async fn wait_for_change(
        &self,
        changes: &mut broadcast::Receiver<proto::RolloutEvent>,
        limit: Option<Duration>,
    ) -> Option<()> {
        // A limit too far out to add is no limit.
        let deadline = limit.and_then(|limit| tokio::time::Instant::now().checked_add(limit));
        loop {
            tokio::select! {
                event = changes.recv() => match event {
                    Ok(event) if event.rollout.as_ref().is_some_and(|r| r.id == self.id) => return Some(()),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => return Some(()),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = sleep_until(deadline) => return Some(()),
                () = self.stop.cancelled() => return None,
            }
        }
    }

    async fn step(&self, rollout: proto::Rollout, changes: &mut broadcast::Receiver<proto::RolloutEvent>) -> Next {
        let ended = machine::is_terminal(rollout.phase());
        if ended && !rollout.weights_pending {
            return Next::Done;
        }
        let (spec, plan) = match plan_of(&rollout) {
            Ok(parsed) => parsed,
            // An ended rollout that cannot be read has nothing it could apply.
            Err(error) if ended => {
                let why = format!("cannot apply the final weights: {error}");
                return self.save(machine::abandoned(&rollout, why)).await;
            }
            Err(error) => return self.save(machine::unjudgeable(&rollout, error.to_string(), self.clock.now())).await,
        };
        // Before anything else can hold the step: a step blocked on pods or on traffic is
        // exactly what the deadline is for.
        if let Some(late) = self.past_progress_deadline(&rollout, &plan, &spec) {
            return self.save(late).await;
        }
        // A rollback (an end, or a step back) takes traffic off the canary at once; the
        // side that takes it back grows afterwards. Moving forward, the gaining side is
        // ready before traffic moves.
        let backwards = ended || rollout.stepped_back_from > 0;
        let replicas = self.replicas(&spec, &rollout);
        if !backwards && let Some((scaler, deployments, target)) = &replicas {
            match scaler.grow(deployments, *target).await {
                Ok(Progress::Done) => {}
                Ok(Progress::Waiting(why)) => return self.hold(rollout, format!("holding: {why}")).await,
                Err(error) => return self.hold(rollout, format!("holding: cannot scale: {error}")).await,
            }
        }
        let rollout = match self.apply(rollout, &spec.route).await {
            Ok(applied) => applied,
            Err(next) => return next,
        };
        if ended {
            self.settle_replicas(&rollout).await;
            return Next::Done;
        }
        if let Some((scaler, deployments, target)) = &replicas {
            if backwards && let Err(error) = scaler.grow(deployments, *target).await {
                tracing::warn!(rollout = %self.id, %error, "cannot scale up after a step back; the next pass retries");
            }
            if let Err(error) = scaler.shrink(deployments, *target).await {
                tracing::warn!(rollout = %self.id, %error, "cannot scale down; the next pass retries");
            }
        }
        if rollout.phase() == Phase::Paused {
            return Next::Wait(None);
        }
        let Some(step) = plan.step(rollout.step as usize) else {
            let transition = machine::advance(&rollout, &plan, self.clock.now(), "plan complete".into());
            return self.save(transition).await;
        };
        let started = rollout.step_started_at.as_ref().and_then(time::system_time).unwrap_or_else(|| self.clock.now());
        let remaining = |duration: Duration| step_end(started, duration).duration_since(self.clock.now()).ok();
        match step.kind {
            StepKind::SetWeight { .. } => self.step_done(&rollout, &plan, "weights applied").await,
            StepKind::Observe { window, analysis: true } => {
                self.observe(rollout, &plan, spec, window, started, changes).await
            }
            StepKind::Observe { window: duration, analysis: false }
            | StepKind::Pause { duration: Some(duration) }
            | StepKind::Retain { duration } => match remaining(duration) {
                Some(left) => Next::Wait(Some(left)),
                None => self.step_done(&rollout, &plan, "window over").await,
            },
            StepKind::Pause { duration: None } | StepKind::Gate => Next::Wait(None),
        }
    }

    /// Observes a step with analysis: acts on every verdict, and passes the step only on a
    /// PASS once the window is over.
    async fn observe(
        &self,
        rollout: proto::Rollout,
        plan: &crate::plan::Plan,
        spec: crate::spec::Spec,
        window: Duration,
        started: SystemTime,
        changes: &mut broadcast::Receiver<proto::RolloutEvent>,
    ) -> Next {
        let step = rollout.step as usize;
        // The step's start to the nanosecond: a step entered again within the same second
        // (a pause and resume) is a new run, not the old, stopped one.
        let started_at = rollout.step_started_at.map(|t| (t.seconds, t.nanos)).unwrap_or_default();
        let run_id = format!("{}-{}-{}.{:09}", rollout.id, step, started_at.0, started_at.1);
        let template = plan.step(step).and_then(|step| step.template.clone());
        let interval = spec.analysis.as_ref().map(|analysis| analysis.interval);
        let initial_delay = spec.analysis.as_ref().and_then(|analysis| analysis.initial_delay);
        let request = analysis::StartRunRequest {
            target: Some(analysis::Target {
                route: spec.route.clone(),
                // An equal-footing baseline, when the rollout has one, is what the canary
                // is compared with; else the stable side.
                baseline: spec.baseline_backend.clone().unwrap_or_else(|| spec.stable_backend.clone()),
                canary: spec.canary_backend.clone(),
            }),
            template,
            interval: interval.map(Into::into),
            window: None,
            duration: None,
            run_id: run_id.clone(),
            initial_delay: initial_delay.map(Into::into),
        };
        let mut analysis = self.peers.analysis.clone();
        if let Err(status) = analysis.start_run(request).await {
            if status.code() == Code::InvalidArgument {
                let why = format!("analysis refused the step's checks: {}", status.message());
                return self.save(machine::unjudgeable(&rollout, why, self.clock.now())).await;
            }
            return self.hold(rollout, format!("holding: analysis unavailable: {}", status.message())).await;
        }
        let mut verdicts = match analysis.watch_run(analysis::WatchRunRequest { id: run_id.clone() }).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                return self.hold(rollout, format!("holding: analysis unavailable: {}", status.message())).await;
            }
        };
        // After a restart a conclusive verdict is known only if it was the latest one.
        let mut conclusive =
            rollout.last_verdict.as_ref().is_some_and(|verdict| verdict.outcome() != Outcome::Inconclusive);
        let mut current = rollout;
        let after_start = |duration: Duration| self.clock.instant_at(step_end(started, duration));
        let window_end = after_start(window);
        let unjudged_by = spec.deadlines.inconclusive.map(after_start);
        let grace = plan.step(step).and_then(|step| step.progress_deadline);
        let late_by = grace.map(|grace| after_start(window.saturating_add(grace)));
        let mut window_over = false;
        loop {
            let deadline = sleep_until(if window_over { None } else { Some(window_end) });
            let unjudged = sleep_until(unjudged_by.filter(|_| !conclusive));
            let late = sleep_until(late_by);
            let missed = async {
                tokio::select! {
                    () = unjudged => format!(
                        "step {step} had no conclusive verdict within its inconclusive deadline ({}s)",
                        spec.deadlines.inconclusive.unwrap_or_default().as_secs()
                    ),
                    () = late => format!(
                        "step {step} missed its progress deadline ({}s past its window) without a passing verdict",
                        grace.unwrap_or_default().as_secs()
                    ),
                }
            };
            tokio::select! {
                what = missed => {
                    let transition = machine::on_deadline(&current, plan, &spec.deadlines, spec.failure_policy, what, self.clock.now());
                    stop_run_later(&self.peers.analysis, &run_id);
                    return self.save(transition).await;
                }
                verdict = verdicts.next() => match verdict {
                    Some(Ok(verdict)) => {
                        let outcome = verdict.outcome();
                        self.metrics.verdict(&current, outcome);
                        let transition = machine::on_verdict(&current, plan, spec.failure_policy, verdict, self.clock.now());
                        // A new phase or step (a step back) ends this step's run.
                        let left = transition.rollout.phase() != current.phase() || transition.rollout.step != current.step;
                        match self.rollouts.save(transition).await {
                            Ok(saved) => current = saved,
                            Err(_) => return Next::Reload,
                        }
                        if left {
                            // Weights first: the run is stopped in the background.
                            stop_run_later(&self.peers.analysis, &run_id);
                            return Next::Reload;
                        }
                        if window_over && outcome == Outcome::Pass {
                            stop_run(&self.peers.analysis, &run_id).await;
                            return self.step_done(&current, plan, "window over with a passing verdict").await;
                        }
                        if outcome != Outcome::Inconclusive {
                            conclusive = true;
                        }
                    }
                    Some(Err(status)) => return self.hold(current, format!("holding: analysis unavailable: {}", status.message())).await,
                    None => return Next::Wait(Some(RETRY)),
                },
                () = deadline => {
                    window_over = true;
                    if current.last_verdict.as_ref().is_some_and(|verdict| verdict.outcome() == Outcome::Pass) {
                        stop_run(&self.peers.analysis, &run_id).await;
                        return self.step_done(&current, plan, "window over with a passing verdict").await;
                    }
                    let mut waiting = current.clone();
                    waiting.message = format!("step {step}: window over; waiting for a passing verdict before going on");
                    let transition = Transition { reason: waiting.message.clone(), from: current.phase(), rollout: waiting };
                    match self.rollouts.save(transition).await {
                        Ok(saved) => current = saved,
                        Err(_) => return Next::Reload,
                    }
                }
                event = changes.recv() => match event {
                    Ok(event) if event.rollout.as_ref().is_some_and(|r| r.id == self.id && r.version > current.version) => {
                        let left = event.rollout.as_ref().is_some_and(|r| r.step != current.step || r.phase() != Phase::Progressing);
                        if left {
                            // Promoted, paused or aborted by an operator: this step's run is over.
                            stop_run_later(&self.peers.analysis, &run_id);
                        }
                        return Next::Reload;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return Next::Reload,
                    Err(broadcast::error::RecvError::Closed) => return Next::Done,
                },
                () = self.stop.cancelled() => return Next::Done,
            }
        }
    }

    /// The scaler, Deployments and replica counts of the rollout's current weights, when
    /// it scales Deployments and a cluster is configured.
    fn replicas(
        &self,
        spec: &crate::spec::Spec,
        rollout: &proto::Rollout,
    ) -> Option<(Scaler, proto::ScaledDeployments, crate::replicas::ReplicaPlan)> {
        let scaler = self.peers.scaler.clone()?;
        let deployments = rollout.spec.as_ref()?.scaling.as_ref()?.deployments.clone()?;
        let weight = rollout.weights.get(&spec.canary_backend).copied().unwrap_or(0);
        Some((scaler, deployments, spec.scaling?.at_weight(weight)))
    }

    async fn step_done(&self, rollout: &proto::Rollout, plan: &crate::plan::Plan, why: &str) -> Next {
        let transition =
            machine::step_done(rollout, plan, self.clock.now(), format!("step {} done: {why}", rollout.step));
        self.save(transition).await
    }

    /// The deadline transition of a progressing step that has run `progress_deadline` past
    /// its own duration; `None` while it has time, or has no deadline.
    fn past_progress_deadline(
        &self,
        rollout: &proto::Rollout,
        plan: &crate::plan::Plan,
        spec: &crate::spec::Spec,
    ) -> Option<Transition> {
        if rollout.phase() != Phase::Progressing {
            return None;
        }
        let step = plan.step(rollout.step as usize)?;
        let grace = step.progress_deadline?;
        let duration = step.duration()?;
        let started = rollout.step_started_at.as_ref().and_then(time::system_time)?;
        let due = step_end(step_end(started, duration), grace);
        let now = self.clock.now();
        let late = now.duration_since(due).is_ok();
        late.then(|| {
            let what =
                format!("step {} missed its progress deadline ({}s past its duration)", rollout.step, grace.as_secs());
            machine::on_deadline(rollout, plan, &spec.deadlines, spec.failure_policy, what, now)
        })
    }

    /// Makes traffic carry the rollout's weights. Returns the rollout, with the
    /// confirmation recorded when its weights were pending; else what to do next.
    async fn apply(&self, rollout: proto::Rollout, route: &str) -> Result<proto::Rollout, Next> {
        match apply_weights(&self.peers.traffic, route, &rollout.weights, self.token).await {
            Ok(generation) if rollout.weights_pending => {
                match self.rollouts.save(machine::applied(&rollout, generation)).await {
                    Ok(saved) => {
                        self.metrics.applied(&saved, self.clock.now());
                        Ok(saved)
                    }
                    Err(_) => Err(Next::Reload),
                }
            }
            Ok(_) => Ok(rollout),
            Err(ApplyError::Fenced { newest }) => {
                tracing::warn!(
                    rollout = %self.id,
                    token = self.token,
                    newest,
                    "traffic has weights from a newer leader; this replica stops driving"
                );
                Err(Next::Done)
            }
            Err(ApplyError::RouteGone(route)) if machine::is_terminal(rollout.phase()) => {
                let why = format!("route `{route}` no longer exists; the final weights were never applied");
                Err(self.save(machine::abandoned(&rollout, why)).await)
            }
            Err(ApplyError::RouteGone(route)) => {
                Err(self.hold(rollout, format!("holding: route `{route}` does not exist on traffic")).await)
            }
            Err(ApplyError::Failed(why)) if rollout.weights_pending => {
                if rollout.pending_reason != why {
                    let _ = self.rollouts.save(machine::unapplied(&rollout, why)).await;
                }
                Err(Next::Wait(Some(RETRY)))
            }
            Err(ApplyError::Failed(why)) => Err(self.hold(rollout, format!("holding: {why}")).await),
        }
    }

    /// Records a transition, then reads the rollout again to act on it (an ended one has
    /// its final weights applied, once).
    async fn save(&self, transition: Transition) -> Next {
        match self.rollouts.save(transition).await {
            Ok(saved) => {
                // An ending with new weights is timed once traffic has them.
                if machine::is_terminal(saved.phase()) && !saved.weights_pending {
                    self.metrics.ended(&saved, self.clock.now());
                }
                Next::Reload
            }
            Err(Error::Conflict { .. }) => Next::Reload,
            Err(error) => {
                tracing::warn!(rollout = %self.id, %error, "cannot record a transition; retrying");
                Next::Wait(Some(RETRY))
            }
        }
    }

    /// Brings the Deployments of an ended rollout to its final replica counts (after a
    /// rollback: the stable side back to full, the canary to none). Traffic moved first, as
    /// a rollback must not wait for pods; the side that takes it back grows as fast as the
    /// budget allows, for at most [`SETTLE_FOR`].
    async fn settle_replicas(&self, rollout: &proto::Rollout) {
        let Ok((spec, _)) = plan_of(rollout) else { return };
        let Some((scaler, deployments, target)) = self.replicas(&spec, rollout) else { return };
        let deadline = tokio::time::Instant::now() + SETTLE_FOR;
        loop {
            let grown = scaler.grow(&deployments, target).await;
            let shrunk = scaler.shrink(&deployments, target).await;
            match (grown, shrunk) {
                (Ok(Progress::Done), Ok(Progress::Done)) => return,
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(rollout = %self.id, %error, "cannot scale the Deployments of an ended rollout");
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(rollout = %self.id, "the Deployments did not reach their final replicas in time");
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    /// Keeps the current weights and says why, then retries shortly.
    async fn hold(&self, rollout: proto::Rollout, why: String) -> Next {
        if rollout.message != why {
            let mut held = rollout.clone();
            held.message = why.clone();
            let _ = self.rollouts.save(Transition { reason: why, from: rollout.phase(), rollout: held }).await;
        }
        Next::Wait(Some(RETRY))
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// When a step that started at `started` and lasts `duration` is over. Specs cap their
/// durations at validation; one stored before they did is read as the cap, so that time
/// arithmetic on it cannot overflow and panic the driver.
fn step_end(started: SystemTime, duration: Duration) -> SystemTime {
    started.checked_add(duration.min(MAX_DURATION)).unwrap_or(started)
}

/// Why weights could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Traffic has weights from a planner with a newer lease: this one no longer leads.
    #[error("traffic has weights from a newer leader (fencing token {newest})")]
    Fenced {
        /// The newest fencing token traffic has seen for the route.
        newest: u64,
    },
    /// Traffic has no such route (it was deleted).
    #[error("route `{0}` not found on traffic")]
    RouteGone(String),
    /// Traffic is down, refused the weights, or the route kept changing.
    #[error("{0}")]
    Failed(String),
}

/// Sets `weights` on `route` unless traffic already has them, compare-and-set on the
/// route's generation so a concurrent change is never overwritten blindly, with the
/// driver's fencing `token` so that a leader that was replaced cannot overwrite its
/// successor. Returns the route's generation that carries the weights.
pub async fn apply_weights(
    traffic: &TrafficControlClient<TracedChannel>,
    route: &str,
    weights: &HashMap<String, u32>,
    token: u64,
) -> Result<u64, ApplyError> {
    let mut traffic = traffic.clone();
    for _ in 0..3 {
        let current = match traffic.get_route(traffic::GetRouteRequest { name: route.to_owned() }).await {
            Ok(current) => current.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Err(ApplyError::RouteGone(route.to_owned())),
            Err(status) => return Err(ApplyError::Failed(format!("traffic unavailable: {}", status.message()))),
        };
        if current.fencing_token > token {
            return Err(ApplyError::Fenced { newest: current.fencing_token });
        }
        let same = current.weights.iter().all(|(name, weight)| weights.get(name).copied().unwrap_or(0) == *weight);
        if same {
            return Ok(current.generation);
        }
        let request = traffic::SetWeightsRequest {
            route: route.to_owned(),
            weights: weights.clone(),
            expected_generation: current.generation,
            fencing_token: token,
        };
        match traffic.set_weights(request).await {
            Ok(route) => return Ok(route.into_inner().generation),
            // A lost compare-and-set, or a newer leader: the next read tells which.
            Err(status) if status.code() == Code::Aborted => continue,
            Err(status) => {
                return Err(ApplyError::Failed(format!("traffic refused the weights: {}", status.message())));
            }
        }
    }
    Err(ApplyError::Failed("traffic's route keeps changing under the planner".to_owned()))
}

/// Stops analysis run `id` in the background, so that the weights a verdict decided go
/// out first.
fn stop_run_later(analysis: &AnalysisClient<TracedChannel>, id: &str) {
    let (analysis, id) = (analysis.clone(), id.to_owned());
    tokio::spawn(async move { stop_run(&analysis, &id).await });
}

async fn stop_run(analysis: &AnalysisClient<TracedChannel>, id: &str) {
    if let Err(status) = analysis.clone().stop_run(analysis::StopRunRequest { id: id.to_owned() }).await {
        tracing::debug!(run = id, %status, "cannot stop an analysis run; it ends with its service");
    }
}
