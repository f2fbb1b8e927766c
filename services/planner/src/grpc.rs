//! The `Planner` gRPC service: validation against traffic, then the store and the state
//! machine. Operator commands are transitions written to the store; the driver acts on
//! them.

use std::pin::Pin;

use ficus_kit::{client::TracedChannel, status::InvalidField};
use ficus_proto::{
    planner::v1::{self as proto, planner_server::Planner},
    traffic::v1::{self as traffic, traffic_control_client::TrafficControlClient},
};
use futures::{Stream, StreamExt};
use rand::RngCore;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

use crate::{
    error::Error,
    machine::{self, Command},
    plan::Plan,
    rollouts::{Rollouts, plan_of},
    spec::Spec,
};

/// How often an operator's command is re-applied after losing a race with the driver.
const COMMAND_ATTEMPTS: usize = 5;

/// Longest caller-chosen rollout id.
const MAX_ID_LEN: usize = 128;

/// The `Planner` service.
#[derive(Clone, Debug)]
pub struct PlannerService {
    rollouts: Rollouts,
    traffic: TrafficControlClient<TracedChannel>,
    shutdown: CancellationToken,
}

impl PlannerService {
    /// Serves `rollouts`, checking specs against `traffic`; streams end at `shutdown`.
    pub fn new(rollouts: Rollouts, traffic: TrafficControlClient<TracedChannel>, shutdown: CancellationToken) -> Self {
        Self { rollouts, traffic, shutdown }
    }

    /// Validates a spec, including that traffic has its route and backends.
    async fn validate(&self, spec: Option<&proto::RolloutSpec>) -> Result<(proto::RolloutSpec, Plan), Error> {
        let spec = spec.ok_or_else(|| InvalidField::new("spec", "required"))?;
        let validated = Spec::from_proto(spec, "spec")?;
        let route =
            match self.traffic.clone().get_route(traffic::GetRouteRequest { name: validated.route.clone() }).await {
                Ok(route) => route.into_inner(),
                Err(status) if status.code() == Code::NotFound => {
                    return Err(
                        InvalidField::new("spec.route", format!("traffic has no route `{}`", validated.route)).into()
                    );
                }
                Err(status) => {
                    return Err(Error::Unavailable { service: "traffic", reason: status.message().to_owned() });
                }
            };
        let sides = [
            ("spec.stable_backend", Some(&validated.stable_backend)),
            ("spec.canary_backend", Some(&validated.canary_backend)),
            ("spec.baseline_backend", validated.baseline_backend.as_ref()),
        ];
        for (field, name) in sides.into_iter().filter_map(|(field, name)| Some((field, name?))) {
            if !route.backends.iter().any(|backend| &backend.name == name) {
                return Err(InvalidField::new(field, format!("route `{}` has no backend `{name}`", route.name)).into());
            }
        }
        Ok((spec.clone(), Plan::new(&validated)))
    }

    /// Applies an operator's command to the rollout as it is now. The driver records a
    /// verdict every interval, so a lost compare-and-set is retried on a fresh read rather
    /// than handed to the operator.
    async fn command(&self, id: &str, command: Command, why: &str) -> Result<proto::Rollout, Error> {
        let mut attempts = COMMAND_ATTEMPTS;
        loop {
            let rollout = self.rollouts.get(id).await?;
            let (_, plan) = plan_of(&rollout)?;
            let transition = machine::command(&rollout, &plan, command, why, self.rollouts.clock().now())
                .map_err(|illegal| Error::FailedPrecondition(illegal.0))?;
            match self.rollouts.save(transition).await {
                Err(Error::Conflict { .. }) if attempts > 1 => attempts -= 1,
                result => return result,
            }
        }
    }
}

fn new_id(route: &str) -> String {
    let mut bytes = [0_u8; 5];
    rand::rng().fill_bytes(&mut bytes);
    let suffix: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{route}-{suffix}")
}

fn check_id(id: &str) -> Result<(), Error> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if valid { Ok(()) } else { Err(InvalidField::new("id", "up to 128 lowercase letters, digits, '-' or '.'").into()) }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::RolloutEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Planner for PlannerService {
    async fn preview_plan(
        &self,
        request: Request<proto::PreviewPlanRequest>,
    ) -> Result<Response<proto::PreviewPlanResponse>, Status> {
        let (_, plan) = self.validate(request.into_inner().spec.as_ref()).await?;
        Ok(Response::new(proto::PreviewPlanResponse { plan: Some(plan.to_proto()) }))
    }

    async fn create_rollout(
        &self,
        request: Request<proto::CreateRolloutRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        ficus_kit::auth::audit::note(&request);
        let request = request.into_inner();
        let (spec, plan) = self.validate(request.spec.as_ref()).await?;
        let id = if request.id.is_empty() { new_id(&spec.route) } else { request.id };
        check_id(&id)?;
        Ok(Response::new(self.rollouts.create(spec, &plan, id).await?))
    }

    async fn get_rollout(
        &self,
        request: Request<proto::GetRolloutRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        Ok(Response::new(self.rollouts.get(&request.into_inner().id).await?))
    }

    async fn list_rollouts(
        &self,
        request: Request<proto::ListRolloutsRequest>,
    ) -> Result<Response<proto::ListRolloutsResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(proto::ListRolloutsResponse {
            rollouts: self.rollouts.list(&request.route, request.active_only).await?,
        }))
    }

    async fn watch_rollout(
        &self,
        request: Request<proto::WatchRolloutRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let id = request.into_inner().id;
        let changes = BroadcastStream::new(self.rollouts.subscribe());
        let current = self.rollouts.get(&id).await?;
        let first = proto::RolloutEvent {
            reason: current.message.clone(),
            from_phase: current.phase,
            rollout: Some(current.clone()),
        };
        let rollouts = self.rollouts.clone();
        let watched = id.clone();
        let mut last_version = current.version;
        let follow = changes
            .then(move |change| {
                let rollouts = rollouts.clone();
                let id = watched.clone();
                async move {
                    match change {
                        Ok(event) => Some(event),
                        // Fell behind: carry on from the current state.
                        Err(BroadcastStreamRecvError::Lagged(_)) => {
                            rollouts.get(&id).await.ok().map(|rollout| proto::RolloutEvent {
                                reason: rollout.message.clone(),
                                from_phase: rollout.phase,
                                rollout: Some(rollout),
                            })
                        }
                    }
                }
            })
            .filter_map(move |event| {
                let keep = event.filter(|event| {
                    event.rollout.as_ref().is_some_and(|rollout| rollout.id == id && rollout.version > last_version)
                });
                if let Some(rollout) = keep.as_ref().and_then(|event| event.rollout.as_ref()) {
                    last_version = rollout.version;
                }
                async move { keep }
            })
            .boxed();
        // The end is an ended rollout whose final weights traffic has confirmed: a rollback
        // is not over while traffic has yet to carry it.
        let already_ended = !Rollouts::is_unsettled(&current);
        // Ends right after that, without waiting for another event.
        let follow = futures::stream::unfold((follow, already_ended), |(mut follow, ended)| async move {
            if ended {
                return None;
            }
            let event = follow.next().await?;
            let ended = event.rollout.as_ref().is_some_and(|rollout| !Rollouts::is_unsettled(rollout));
            Some((event, (follow, ended)))
        });
        let events = futures::stream::once(async move { first })
            .chain(follow)
            .map(Ok)
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(events)))
    }

    async fn promote(&self, request: Request<proto::PromoteRequest>) -> Result<Response<proto::Rollout>, Status> {
        ficus_kit::auth::audit::note(&request);
        let request = request.into_inner();
        Ok(Response::new(self.command(&request.id, Command::Promote { full: request.full }, &request.reason).await?))
    }

    async fn pause(&self, request: Request<proto::PauseRequest>) -> Result<Response<proto::Rollout>, Status> {
        ficus_kit::auth::audit::note(&request);
        let request = request.into_inner();
        Ok(Response::new(self.command(&request.id, Command::Pause, &request.reason).await?))
    }

    async fn resume(&self, request: Request<proto::ResumeRequest>) -> Result<Response<proto::Rollout>, Status> {
        ficus_kit::auth::audit::note(&request);
        let request = request.into_inner();
        Ok(Response::new(self.command(&request.id, Command::Resume, &request.reason).await?))
    }

    async fn abort(&self, request: Request<proto::AbortRequest>) -> Result<Response<proto::Rollout>, Status> {
        ficus_kit::auth::audit::note(&request);
        let request = request.into_inner();
        Ok(Response::new(self.command(&request.id, Command::Abort, &request.reason).await?))
    }
}
