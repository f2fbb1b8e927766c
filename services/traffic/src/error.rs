//! The traffic service's errors and, in one place, their gRPC statuses.

use ficus_kit::{status, store::StoreError};
use tonic::Status;

use crate::route::InvalidField;

/// Why a traffic operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; nothing changed.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// No route has this name.
    #[error("route `{0}` not found")]
    NotFound(String),
    /// The caller's generation is not the route's; nothing changed.
    #[error("route `{route}` changed: its generation is {current:?}")]
    Conflict {
        /// Route name.
        route: String,
        /// The route's generation now, `None` when it no longer exists.
        current: Option<u64>,
    },
    /// Weights from a planner whose lease was superseded; nothing changed.
    #[error("route `{route}` has weights from a newer planner lease (fencing token {newest}); token {token} is stale")]
    Fenced {
        /// Route name.
        route: String,
        /// The caller's token.
        token: u64,
        /// The newest token the route has seen.
        newest: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The service could not start serving.
    #[error(transparent)]
    Serve(#[from] ficus_kit::server::ServeError),
    /// The configured Kubernetes cluster cannot be reached.
    #[error("kubernetes: {0}")]
    Kubernetes(#[from] ficus_kit::kubernetes::KubernetesError),
    /// The statistics exchange with the other replicas cannot start.
    #[error("statistics exchange: {0}")]
    Cluster(crate::stats::cluster::ClusterError),
    /// A stored route cannot be decoded.
    #[error("stored route `{route}` is unreadable: {reason}")]
    Corrupt {
        /// Route name.
        route: String,
        /// Why.
        reason: String,
    },
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(invalid) => invalid.into(),
            Error::NotFound(_) => Status::not_found(error.to_string()),
            Error::Conflict { current, .. } => status::version_conflict(error.to_string(), current),
            Error::Fenced { .. } => Status::aborted(error.to_string()),
            Error::Store(error) => error.into(),
            Error::Corrupt { .. } => Status::data_loss(error.to_string()),
            Error::Serve(_) => Status::internal(error.to_string()),
            Error::Kubernetes(_) | Error::Cluster(_) => Status::unavailable(error.to_string()),
        }
    }
}
