//! The planner's errors and, in one place, their gRPC statuses.

use ficus_kit::{status, status::InvalidField, store::StoreError};
use tonic::Status;

/// Why a planner operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; nothing changed.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// No rollout has this id.
    #[error("rollout `{0}` not found")]
    NotFound(String),
    /// A rollout with this id exists with another spec.
    #[error("rollout `{0}` already exists with another spec")]
    AlreadyExists(String),
    /// The rollout's phase does not allow the operation, or its route is taken.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The rollout changed concurrently; the caller may retry.
    #[error("rollout `{id}` changed concurrently")]
    Conflict {
        /// Rollout id.
        id: String,
        /// Its version now.
        current: Option<u64>,
    },
    /// A service the planner needs could not be reached.
    #[error("{service} unavailable: {reason}")]
    Unavailable {
        /// Which service.
        service: &'static str,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// Stored data cannot be decoded.
    #[error("stored rollout is unreadable: {0}")]
    Corrupt(String),
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(invalid) => invalid.into(),
            Error::NotFound(_) => Status::not_found(error.to_string()),
            Error::AlreadyExists(_) => Status::already_exists(error.to_string()),
            Error::FailedPrecondition(_) => Status::failed_precondition(error.to_string()),
            Error::Conflict { current, .. } => status::version_conflict(error.to_string(), current),
            Error::Unavailable { service, reason } => status::unavailable(service, reason),
            Error::Store(error) => error.into(),
            Error::Corrupt(_) => Status::data_loss(error.to_string()),
        }
    }
}
