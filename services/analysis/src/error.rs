//! The analysis service's errors and, in one place, their gRPC statuses.

use ficus_kit::{status::InvalidField, store::StoreError};
use tonic::Status;

/// Why an analysis operation failed. A metric source failing is not one of these: it
/// makes the affected checks INCONCLUSIVE instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; nothing started.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// No run has this id.
    #[error("run `{0}` not found")]
    NotFound(String),
    /// A run with this id exists for another target.
    #[error("run `{0}` already exists for another target")]
    AlreadyExists(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The request needs a source this service is not configured with; nothing started.
    #[error("{0}")]
    Unsupported(String),
    /// A stored run cannot be decoded.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(invalid) => invalid.into(),
            Error::NotFound(_) => Status::not_found(error.to_string()),
            Error::AlreadyExists(_) => Status::already_exists(error.to_string()),
            Error::Store(error) => error.into(),
            Error::Corrupt(_) => Status::data_loss(error.to_string()),
            Error::Unsupported(_) => Status::failed_precondition(error.to_string()),
        }
    }
}
