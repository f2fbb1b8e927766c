//! The routes as stored: every change is written to the service's store first, then
//! installed in the live table, so a route the API confirmed survives a restart and is
//! seen by every replica that follows the store.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use ficus_kit::store::{Change, Entry, Expect, Store, StoreError};
use ficus_proto::traffic::v1 as proto;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::{
    error::Error,
    route::{InvalidField, Route},
    table::LiveTable,
};

/// Key prefix of routes in the store.
const PREFIX: &str = "routes/";

/// How often a `SetWeights` without an expected generation retries a lost race.
const UNCONDITIONAL_RETRIES: usize = 8;

/// Route operations over the store and the live table.
#[derive(Clone, Debug)]
pub struct Registry {
    store: Store,
    table: Arc<LiveTable>,
}

impl Registry {
    /// Loads every stored route into `table`.
    pub async fn open(store: Store, table: Arc<LiveTable>) -> Result<Self, Error> {
        let registry = Self { store, table };
        registry.reload().await?;
        Ok(registry)
    }

    /// The live table.
    pub fn table(&self) -> &Arc<LiveTable> {
        &self.table
    }

    /// Creates or replaces a route.
    pub async fn put(&self, route: &proto::Route, expected_generation: u64) -> Result<proto::Route, Error> {
        let mut candidate = Route::from_proto(route, "route", 0)?;
        self.check_match_is_unique(&candidate)?;
        for _ in 0..UNCONDITIONAL_RETRIES {
            // A replaced route keeps its fence: an operator's edit must not let a planner
            // that lost its lease write weights again. The write is conditional on the
            // route read, so a fence raised meanwhile is not lost either.
            let existing = self.read(&candidate.name).await?;
            candidate.fencing_token = existing.as_ref().map_or(0, |(existing, _)| existing.fencing_token);
            let expect = match (expected_generation, &existing) {
                (0, Some((existing, _))) => Expect::Version(existing.generation),
                (0, None) => Expect::Absent,
                (generation, _) => Expect::Version(generation),
            };
            match self.write(candidate.clone(), expect).await {
                Err(Error::Conflict { .. }) if expected_generation == 0 => continue,
                result => return result,
            }
        }
        Err(Error::Conflict { route: candidate.name, current: None })
    }

    /// Replaces only the weights of a route; `fencing_token` is the planner lease's (0 for
    /// callers that are not a planner).
    pub async fn set_weights(
        &self,
        name: &str,
        weights: &HashMap<String, u32>,
        expected_generation: u64,
        fencing_token: u64,
    ) -> Result<proto::Route, Error> {
        for _ in 0..UNCONDITIONAL_RETRIES {
            let (mut route, _) = self.read(name).await?.ok_or_else(|| Error::NotFound(name.to_owned()))?;
            if fencing_token != 0 && fencing_token < route.fencing_token {
                return Err(Error::Fenced {
                    route: name.to_owned(),
                    token: fencing_token,
                    newest: route.fencing_token,
                });
            }
            if expected_generation != 0 && route.generation != expected_generation {
                return Err(Error::Conflict { route: name.to_owned(), current: Some(route.generation) });
            }
            route.fencing_token = route.fencing_token.max(fencing_token);
            route.weights = route.weights_from(weights, "weights")?;
            if let Some(target) = &route.kubernetes {
                target.check_expressible(&route, "route.kubernetes", "weights")?;
            }
            let generation = route.generation;
            match self.write(route, Expect::Version(generation)).await {
                Err(Error::Conflict { .. }) if expected_generation == 0 => continue,
                result => return result,
            }
        }
        Err(Error::Conflict { route: name.to_owned(), current: None })
    }

    /// Reads one route from the store, the source of truth.
    pub async fn get(&self, name: &str) -> Result<proto::Route, Error> {
        let (route, updated_at) = self.read(name).await?.ok_or_else(|| Error::NotFound(name.to_owned()))?;
        Ok(route.to_proto(updated_at))
    }

    /// Every route, by name.
    pub async fn list(&self) -> Result<Vec<proto::Route>, Error> {
        let entries = self.store.scan(PREFIX).await.map_err(Error::Store)?;
        entries.iter().map(|entry| decode(entry).map(|(route, at)| route.to_proto(at))).collect()
    }

    /// Deletes a route.
    pub async fn delete(&self, name: &str, expected_generation: u64) -> Result<(), Error> {
        let expect = if expected_generation == 0 { Expect::Any } else { Expect::Version(expected_generation) };
        let existed = self.store.delete(&key(name), expect).await.map_err(|error| conflict_or_store(name, error))?;
        if !existed {
            return Err(Error::NotFound(name.to_owned()));
        }
        self.table.remove(name);
        Ok(())
    }

    /// Keeps the live table in step with writes made through other replicas until
    /// `shutdown`.
    pub async fn follow(self, shutdown: CancellationToken) {
        let mut changes = self.store.follow(shutdown);
        while let Some(change) = changes.next().await {
            let result = match change {
                Change::Put { key, .. } => match key.strip_prefix(PREFIX) {
                    Some(name) => self.refresh(name).await,
                    None => Ok(()),
                },
                Change::Deleted { key } => {
                    if let Some(name) = key.strip_prefix(PREFIX) {
                        self.table.remove(name);
                    }
                    Ok(())
                }
                // Also the first change: what was written since the load at open.
                Change::Resync => self.reload().await,
            };
            if let Err(error) = result {
                tracing::warn!(%error, "cannot follow a route change; the table stays as it was until the next one");
            }
        }
    }

    async fn refresh(&self, name: &str) -> Result<(), Error> {
        match self.read(name).await? {
            Some((route, updated_at)) => self.table.put(route, updated_at),
            None => self.table.remove(name),
        }
        Ok(())
    }

    async fn reload(&self) -> Result<(), Error> {
        let entries = self.store.scan(PREFIX).await.map_err(Error::Store)?;
        let routes = entries.iter().map(decode).collect::<Result<_, _>>()?;
        self.table.replace(routes);
        Ok(())
    }

    async fn read(&self, name: &str) -> Result<Option<(Route, Option<pbjson_types::Timestamp>)>, Error> {
        let entry = self.store.get(&key(name)).await.map_err(Error::Store)?;
        entry.as_ref().map(decode).transpose()
    }

    async fn write(&self, mut route: Route, expect: Expect) -> Result<proto::Route, Error> {
        let updated_at = Some(ficus_proto::time::timestamp(SystemTime::now()));
        let mut stored = route.to_proto(updated_at);
        stored.generation = 0;
        let generation = self
            .store
            .put(&key(&route.name), stored.encode_to_vec(), expect, None)
            .await
            .map_err(|error| conflict_or_store(&route.name, error))?;
        route.generation = generation;
        let confirmed = route.to_proto(updated_at);
        self.table.put(route, updated_at);
        Ok(confirmed)
    }

    /// Two routes with the same hosts and path prefix would make routing depend on
    /// names; refuse the second.
    fn check_match_is_unique(&self, candidate: &Route) -> Result<(), Error> {
        let table = self.table.load();
        let clash = table.routes().find(|active| {
            let existing = &active.route;
            existing.name != candidate.name && same_match(&existing.matcher, &candidate.matcher)
        });
        match clash {
            Some(active) => Err(InvalidField::new(
                "route.match",
                format!("route `{}` already takes the same hosts and path prefix", active.route.name),
            )
            .into()),
            None => Ok(()),
        }
    }
}

fn same_match(a: &crate::route::RouteMatch, b: &crate::route::RouteMatch) -> bool {
    let mut a_hosts = a.hosts.clone();
    let mut b_hosts = b.hosts.clone();
    a_hosts.sort();
    b_hosts.sort();
    a_hosts == b_hosts && a.path_prefix.trim_end_matches('/') == b.path_prefix.trim_end_matches('/')
}

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn conflict_or_store(name: &str, error: StoreError) -> Error {
    match error {
        StoreError::Conflict { current, .. } => Error::Conflict { route: name.to_owned(), current },
        other => Error::Store(other),
    }
}

fn decode(entry: &Entry) -> Result<(Route, Option<pbjson_types::Timestamp>), Error> {
    let name = entry.key.strip_prefix(PREFIX).unwrap_or(&entry.key).to_owned();
    let corrupt = |reason: String| Error::Corrupt { route: name.clone(), reason };
    let stored = proto::Route::decode(entry.value.as_slice()).map_err(|error| corrupt(error.to_string()))?;
    let mut route = Route::from_proto(&stored, "route", entry.version).map_err(|error| corrupt(error.to_string()))?;
    route.fencing_token = stored.fencing_token;
    Ok((route, stored.updated_at))
}
