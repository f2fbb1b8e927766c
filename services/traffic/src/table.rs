//! The live route table the data plane reads on every request.
//!
//! Readers take a snapshot with one atomic load and never block writers; a change builds a
//! new table and swaps it in, so a `SetWeights` is visible to the very next request. Each
//! route carries its balancing state, which restarts with every generation as nginx's does
//! on reload.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
};

use arc_swap::ArcSwap;
use ficus_proto::traffic::v1 as proto;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::{
    balance::SmoothWeighted,
    route::{Route, TOTAL_WEIGHT},
    stats::{Recorder, Stats},
};

/// How many route events a watcher may fall behind before it is sent a fresh snapshot.
const EVENT_BUFFER: usize = 256;

/// A route with its balancing state.
#[derive(Debug)]
pub struct ActiveRoute {
    /// The validated route.
    pub route: Route,
    /// When it last changed.
    pub updated_at: Option<pbjson_types::Timestamp>,
    /// Smooth weighted round-robin over the backends.
    pub weighted: Mutex<SmoothWeighted>,
    /// Next endpoint per backend, round-robin.
    next_endpoint: Vec<AtomicUsize>,
    /// Each backend's endpoints as URI authorities, parsed once per generation rather
    /// than formatted on every request.
    authorities: Vec<Vec<http::uri::Authority>>,
    /// Share accumulator for mirroring exactly `basis_points` of requests.
    mirror_credit: AtomicU32,
    /// Where each backend's requests are counted.
    pub recorders: Vec<Recorder>,
}

impl ActiveRoute {
    fn new(route: Route, updated_at: Option<pbjson_types::Timestamp>, stats: &Stats) -> Self {
        let recorders = route.backends.iter().map(|backend| stats.recorder(&route.name, &backend.name)).collect();
        let next_endpoint = route.backends.iter().map(|_| AtomicUsize::new(0)).collect();
        let authorities = route
            .backends
            .iter()
            .map(|backend| {
                backend
                    .endpoints
                    .iter()
                    .filter_map(|endpoint| http::uri::Authority::try_from(endpoint.to_string()).ok())
                    .collect()
            })
            .collect();
        Self {
            route,
            updated_at,
            weighted: Mutex::new(SmoothWeighted::default()),
            next_endpoint,
            authorities,
            mirror_credit: AtomicU32::new(0),
            recorders,
        }
    }

    /// The next endpoint of `backend` as a URI authority, rotating through its endpoints;
    /// `None` only if an endpoint could not be expressed as one (validation prevents it).
    pub fn endpoint(&self, backend: usize) -> Option<&http::uri::Authority> {
        let endpoints = &self.authorities[backend];
        let turn = self.next_endpoint[backend].fetch_add(1, Ordering::Relaxed);
        endpoints.get(turn % endpoints.len().max(1))
    }

    /// Whether this request is copied to the mirror: exactly `basis_points` of every
    /// 10000 requests, evenly spread.
    pub fn take_mirror_turn(&self) -> Option<usize> {
        let mirror = self.route.mirror.as_ref()?;
        let mut credit = self.mirror_credit.load(Ordering::Relaxed);
        loop {
            let next = credit + mirror.basis_points;
            let (stored, mirrored) = if next >= TOTAL_WEIGHT { (next - TOTAL_WEIGHT, true) } else { (next, false) };
            match self.mirror_credit.compare_exchange_weak(credit, stored, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return mirrored.then_some(mirror.backend),
                Err(actual) => credit = actual,
            }
        }
    }

    /// The route as the API returns it.
    pub fn to_proto(&self) -> proto::Route {
        self.route.to_proto(self.updated_at)
    }
}

/// One consistent view of every route.
#[derive(Debug, Default)]
pub struct Table {
    by_name: BTreeMap<String, Arc<ActiveRoute>>,
    /// Most specific first: longest path prefix, then routes that name hosts.
    by_specificity: Vec<Arc<ActiveRoute>>,
}

impl Table {
    fn new(by_name: BTreeMap<String, Arc<ActiveRoute>>) -> Self {
        let mut by_specificity: Vec<_> = by_name.values().cloned().collect();
        by_specificity.sort_by_key(|active| {
            let matcher = &active.route.matcher;
            (std::cmp::Reverse(matcher.path_prefix.trim_end_matches('/').len()), matcher.hosts.is_empty())
        });
        Self { by_name, by_specificity }
    }

    /// The route that takes a request for `host` and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<ActiveRoute>> {
        self.by_specificity.iter().find(|active| active.route.matcher.matches(host, path))
    }

    /// The route called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ActiveRoute>> {
        self.by_name.get(name)
    }

    /// Every route, by name.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<ActiveRoute>> {
        self.by_name.values()
    }

    /// Every route as the API returns it.
    pub fn snapshot(&self) -> proto::RouteSnapshot {
        proto::RouteSnapshot { routes: self.routes().map(|active| active.to_proto()).collect() }
    }
}

/// The table in force, with notification of every change.
#[derive(Debug)]
pub struct LiveTable {
    current: ArcSwap<Table>,
    /// Serialises writers so a stale change can never overwrite a newer one.
    write: Mutex<()>,
    events: broadcast::Sender<proto::RouteEvent>,
    stats: Stats,
}

impl LiveTable {
    /// An empty table whose routes record into `stats`.
    pub fn new(stats: Stats) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self { current: ArcSwap::from_pointee(Table::default()), write: Mutex::new(()), events, stats }
    }

    /// The table now.
    pub fn load(&self) -> Arc<Table> {
        self.current.load_full()
    }

    /// Follows changes; the receiver lags (and should re-read a snapshot) if it falls
    /// more than a few hundred changes behind.
    pub fn subscribe(&self) -> broadcast::Receiver<proto::RouteEvent> {
        self.events.subscribe()
    }

    /// Installs `route` unless the table already has the same or a newer generation.
    pub fn put(&self, route: Route, updated_at: Option<pbjson_types::Timestamp>) {
        let _writer = self.write.lock();
        let table = self.current.load();
        if table.get(&route.name).is_some_and(|current| current.route.generation >= route.generation) {
            return;
        }
        let mut by_name = table.by_name.clone();
        let active = Arc::new(ActiveRoute::new(route, updated_at, &self.stats));
        let event = proto::route_event::Event::Put(active.to_proto());
        by_name.insert(active.route.name.clone(), active);
        self.current.store(Arc::new(Table::new(by_name)));
        // No subscribers is fine: nobody is watching.
        let _ = self.events.send(proto::RouteEvent { event: Some(event) });
    }

    /// Removes the route called `name`, if present.
    pub fn remove(&self, name: &str) {
        let _writer = self.write.lock();
        let table = self.current.load();
        let Some(removed) = table.get(name).cloned() else { return };
        let mut by_name = table.by_name.clone();
        by_name.remove(name);
        self.current.store(Arc::new(Table::new(by_name)));
        self.stats.forget_route(name);
        let event = proto::route_event::Event::Deleted(proto::RouteDeleted {
            name: name.to_owned(),
            generation: removed.route.generation,
        });
        let _ = self.events.send(proto::RouteEvent { event: Some(event) });
    }

    /// Replaces the whole table, e.g. after the store reported missed changes.
    pub fn replace(&self, routes: Vec<(Route, Option<pbjson_types::Timestamp>)>) {
        let _writer = self.write.lock();
        let table = self.current.load();
        let by_name: BTreeMap<_, _> = routes
            .into_iter()
            .map(|(route, updated_at)| {
                let active = match table.get(&route.name) {
                    Some(current) if current.route.generation == route.generation => current.clone(),
                    _ => Arc::new(ActiveRoute::new(route, updated_at, &self.stats)),
                };
                (active.route.name.clone(), active)
            })
            .collect();
        for gone in table.by_name.keys().filter(|name| !by_name.contains_key(*name)) {
            self.stats.forget_route(gone);
        }
        let table = Arc::new(Table::new(by_name));
        self.current.store(table.clone());
        let _ =
            self.events.send(proto::RouteEvent { event: Some(proto::route_event::Event::Snapshot(table.snapshot())) });
    }
}
