//! Why a session operation failed, and the one place that turns it into a gRPC status.
//!
//! Messages never contain a session id: ids are credentials, and statuses end up in
//! client logs.

use ficus_kit::{status, store::StoreError};
use tonic::Status;

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The request is malformed or over a limit; nothing was changed. INVALID_ARGUMENT.
    #[error("{field}: {description}")]
    InvalidArgument {
        /// Path of the offending field, e.g. `set["cart"]`.
        field: String,
        /// What is wrong, naming the limit when one was exceeded.
        description: String,
    },
    /// No live session has this id: it never existed, expired or was deleted. NOT_FOUND.
    #[error("session not found (unknown, expired or deleted)")]
    NotFound,
    /// The session is not at the version the caller read. ABORTED, with the current
    /// version so the caller can re-read and retry.
    #[error("session changed concurrently; its current version is {current}")]
    Conflict {
        /// The version the session has now.
        current: u64,
    },
    /// The store cannot be reached; retrying later may succeed. UNAVAILABLE.
    #[error("{0}")]
    Unavailable(String),
    /// Something that should not happen, such as an unreadable stored session. INTERNAL.
    #[error("{0}")]
    Internal(String),
}

impl SessionError {
    /// INVALID_ARGUMENT at `field`.
    pub fn invalid(field: &str, description: impl std::fmt::Display) -> Self {
        Self::InvalidArgument { field: field.to_owned(), description: description.to_string() }
    }
}

impl From<StoreError> for SessionError {
    /// For store errors the caller did not handle itself: a conflict reaching here means
    /// the session vanished or changed under an operation that has no retry of its own.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { current: None, .. } => Self::NotFound,
            StoreError::Conflict { current: Some(current), .. } => Self::Conflict { current },
            StoreError::Unavailable(reason) => Self::Unavailable(reason),
            StoreError::Invalid(reason) => Self::Internal(reason),
        }
    }
}

impl From<SessionError> for Status {
    fn from(error: SessionError) -> Self {
        match error {
            SessionError::InvalidArgument { field, description } => status::invalid_argument(&field, description),
            SessionError::NotFound => Status::not_found(error.to_string()),
            SessionError::Conflict { current } => status::version_conflict(error.to_string(), Some(current)),
            SessionError::Unavailable(reason) => status::unavailable("session store", reason),
            SessionError::Internal(reason) => {
                tracing::error!(%reason, "session operation failed");
                Status::internal(reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_has_its_code_and_details() {
        let status = Status::from(SessionError::invalid("set[\"cart\"]", "too big"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status::invalid_field(&status).as_deref(), Some("set[\"cart\"]"));

        let status = Status::from(SessionError::Conflict { current: 7 });
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(status::conflict_version(&status), Some(7));

        assert_eq!(Status::from(SessionError::NotFound).code(), Code::NotFound);
        let unavailable = SessionError::from(StoreError::Unavailable("connection refused".into()));
        assert_eq!(Status::from(unavailable).code(), Code::Unavailable);
    }
}
