//! The `TrafficControl` gRPC service: decoding requests, calling the registry and stats,
//! encoding answers. No traffic logic lives here.

use std::{pin::Pin, sync::Arc, time::Duration};

use ficus_kit::status;
use ficus_proto::traffic::v1::{self as proto, traffic_control_server::TrafficControl};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    adapters::kubernetes::Ledger,
    registry::Registry,
    stats::{
        Query, Stats,
        cluster::{self, Cluster},
    },
    table::LiveTable,
};

/// Window of `GetTrafficStats` when the request names none.
const DEFAULT_STATS_WINDOW: Duration = Duration::from_secs(60);

/// Most periods one `GetTrafficStats` answer cuts a window into, which bounds the answer's
/// size (each period carries a histogram) whatever the caller asks.
const MAX_STATS_PERIODS: f64 = 300.0;

/// The `TrafficControl` service.
#[derive(Clone, Debug)]
pub struct TrafficService {
    registry: Registry,
    /// The state of routes' Kubernetes objects; `None` when no cluster is configured.
    kubernetes: Option<Arc<Ledger>>,
    stats: Stats,
    /// The other replicas' statistics, when replicas share a Redis store.
    cluster: Option<Cluster>,
    retention: Duration,
    shutdown: CancellationToken,
}

impl TrafficService {
    /// Serves `registry` and `stats`; streams end when `shutdown` is cancelled. Routes may
    /// target Kubernetes objects only when `kubernetes` (their applier's ledger) is given.
    pub fn new(
        registry: Registry,
        stats: Stats,
        retention: Duration,
        kubernetes: Option<Arc<Ledger>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self { registry, kubernetes, stats, cluster: None, retention, shutdown }
    }

    /// Reports statistics over every replica in `cluster`, not this one's alone.
    pub fn with_cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The route with its Kubernetes object's status, when it has one.
    fn with_status(&self, mut route: proto::Route) -> proto::Route {
        if route.kubernetes.is_some() {
            route.kubernetes_status = self.kubernetes.as_ref().and_then(|ledger| ledger.status(&route.name));
        }
        route
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::RouteEvent, Status>> + Send>>;

fn snapshot_event(table: &LiveTable) -> proto::RouteEvent {
    proto::RouteEvent { event: Some(proto::route_event::Event::Snapshot(table.load().snapshot())) }
}

#[tonic::async_trait]
impl TrafficControl for TrafficService {
    async fn put_route(&self, request: Request<proto::PutRouteRequest>) -> Result<Response<proto::Route>, Status> {
        ficus_kit::auth::audit::note(&request);
        let request = request.into_inner();
        let route = request.route.ok_or_else(|| status::invalid_argument("route", "required"))?;
        if route.kubernetes.is_some() && self.kubernetes.is_none() {
            return Err(Status::failed_precondition(
                "route.kubernetes: this traffic service has no [kubernetes] configuration to reach a cluster",
            ));
        }
        Ok(Response::new(self.registry.put(&route, request.expected_generation).await?))
    }

    async fn get_route(&self, request: Request<proto::GetRouteRequest>) -> Result<Response<proto::Route>, Status> {
        Ok(Response::new(self.with_status(self.registry.get(&request.into_inner().name).await?)))
    }

    async fn list_routes(
        &self,
        _request: Request<proto::ListRoutesRequest>,
    ) -> Result<Response<proto::ListRoutesResponse>, Status> {
        let routes = self.registry.list().await?.into_iter().map(|route| self.with_status(route)).collect();
        Ok(Response::new(proto::ListRoutesResponse { routes }))
    }

    async fn delete_route(
        &self,
        request: Request<proto::DeleteRouteRequest>,
    ) -> Result<Response<proto::DeleteRouteResponse>, Status> {
        ficus_kit::auth::audit::note(&request);
        let request = request.into_inner();
        self.registry.delete(&request.name, request.expected_generation).await?;
        Ok(Response::new(proto::DeleteRouteResponse {}))
    }

    async fn set_weights(&self, request: Request<proto::SetWeightsRequest>) -> Result<Response<proto::Route>, Status> {
        ficus_kit::auth::audit::note(&request);
        let request = request.into_inner();
        Ok(Response::new(
            self.registry
                .set_weights(&request.route, &request.weights, request.expected_generation, request.fencing_token)
                .await?,
        ))
    }

    async fn watch_routes(
        &self,
        _request: Request<proto::WatchRoutesRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let table = self.registry.table().clone();
        // Subscribe before the snapshot so no change falls between the two.
        let changes = BroadcastStream::new(table.subscribe());
        let first = snapshot_event(&table);
        let follow = Arc::clone(&table);
        let events = futures::stream::once(async move { Ok(first) })
            .chain(changes.map(move |change| match change {
                Ok(event) => Ok(event),
                Err(BroadcastStreamRecvError::Lagged(_)) => Ok(snapshot_event(&follow)),
            }))
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(events)))
    }

    async fn get_traffic_stats(
        &self,
        request: Request<proto::GetTrafficStatsRequest>,
    ) -> Result<Response<proto::TrafficStats>, Status> {
        let request = request.into_inner();
        let table = self.registry.table().load();
        let active = table
            .get(&request.route)
            .ok_or_else(|| Status::not_found(format!("route `{}` not found", request.route)))?;
        let backends = if request.backends.is_empty() {
            active.route.backends.iter().map(|backend| backend.name.clone()).collect()
        } else {
            for (i, name) in request.backends.iter().enumerate() {
                if active.route.backend_index(name).is_none() {
                    return Err(status::invalid_argument(
                        &format!("backends[{i}]"),
                        format!("`{name}` is not a backend of route `{}`", request.route),
                    ));
                }
            }
            request.backends
        };
        let window = match request.window {
            None => DEFAULT_STATS_WINDOW,
            Some(window) => Duration::try_from(window)
                .ok()
                .filter(|window| !window.is_zero())
                .ok_or_else(|| status::invalid_argument("window", "must be positive"))?,
        };
        let window = window.min(self.retention);
        let period = match request.period {
            None => None,
            Some(period) => {
                let period = Duration::try_from(period)
                    .ok()
                    .filter(|period| !period.is_zero())
                    .ok_or_else(|| status::invalid_argument("period", "must be positive"))?;
                // Whole seconds, as the statistics keep them.
                let periods = window.as_secs_f64().ceil() / period.as_secs_f64().ceil();
                if periods > MAX_STATS_PERIODS {
                    return Err(status::invalid_argument(
                        "period",
                        format!("cuts the window into {periods:.0} periods; at most {MAX_STATS_PERIODS} are served"),
                    ));
                }
                Some(period)
            }
        };
        let query = Query { window, period, halves: request.halves };
        let Some(cluster) = &self.cluster else {
            return Ok(Response::new(self.stats.snapshot(&request.route, &backends, query)));
        };
        // Judging on one replica's share would be judging on a sample that changes with
        // every look: without the others' seconds there is no answer.
        let at = self.stats.cluster_window(window, cluster::LAG);
        let (first, last) = at.unix_seconds;
        let remote = cluster.fetch(&request.route, first, last).await.map_err(|error| {
            Status::unavailable(format!("the other replicas' statistics cannot be read from the store: {error}"))
        })?;
        Ok(Response::new(self.stats.cluster_snapshot(&request.route, &backends, query, &at, &remote)))
    }
}
