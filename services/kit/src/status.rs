//! Building gRPC statuses with the standard error details.
//!
//! Each service maps its own error type to a status in one place; these builders make
//! those statuses uniform: the field path in both the message and `google.rpc.BadRequest`,
//! the current version of a conflicting object in `google.rpc.ErrorInfo`.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};

use crate::store::StoreError;
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo` domain of every ficus error.
pub const ERROR_DOMAIN: &str = "ficus.dev";

/// A request field that failed validation; becomes INVALID_ARGUMENT naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// Path of the field, e.g. `route.backends[1].endpoints[0]`.
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

impl InvalidField {
    /// `field` refused for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl From<InvalidField> for Status {
    fn from(invalid: InvalidField) -> Self {
        invalid_argument(&invalid.field, invalid.reason)
    }
}

/// Longest name that fits a DNS label, as Kubernetes object names must.
const MAX_NAME_LEN: usize = 63;

/// Checks that `name` is a DNS label (1-63 lowercase letters, digits or '-', not starting
/// or ending with '-'), the form of every ficus route, backend and rollout name, so names
/// carry over unchanged to Kubernetes objects, nginx upstreams and metric labels.
pub fn check_name(field: &str, name: &str) -> Result<(), InvalidField> {
    if name.is_empty() {
        return Err(InvalidField::new(field, "required"));
    }
    let valid = name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!("`{name}` must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'"),
        ))
    }
}

/// Longest duration any caller may set (a window, interval, pause, retention or run
/// length): a year covers every real rollout, and a cap keeps time arithmetic on it (a
/// start plus a window, a deadline) far from overflowing, which would panic the task that
/// drives a rollout or a run.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// An optional duration field that, when set, is well formed, positive and at most
/// [`MAX_DURATION`]; the error names `field`.
pub fn positive_duration(
    duration: Option<&pbjson_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, InvalidField> {
    let Some(duration) = duration else { return Ok(None) };
    // Nanos outside ±999 999 999 are malformed in proto3; std would silently carry them.
    let well_formed = duration.nanos.unsigned_abs() < 1_000_000_000;
    let duration = well_formed
        .then(|| Duration::try_from(*duration).ok())
        .flatten()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| InvalidField::new(field, "must be a positive duration"))?;
    if duration > MAX_DURATION {
        return Err(InvalidField::new(field, format!("must be at most 366 days, not {}s", duration.as_secs())));
    }
    Ok(Some(duration))
}

/// The status of a store failure: UNAVAILABLE while the backend is down, ABORTED with
/// the current version on a lost compare-and-set, INTERNAL otherwise.
impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(reason) => unavailable("store", reason),
            StoreError::Conflict { ref key, current } => {
                version_conflict(format!("{key} changed concurrently"), current)
            }
            StoreError::Invalid(reason) => Status::internal(format!("store: {reason}")),
        }
    }
}

/// INVALID_ARGUMENT naming the offending field, e.g. `spec.strategy.canary.steps[2].set_weight`.
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    let details = ErrorDetails::with_bad_request_violation(field, description.clone());
    Status::with_error_details(Code::InvalidArgument, format!("{field}: {description}"), details)
}

/// ABORTED for a compare-and-set that lost: `current` is the version the caller should
/// re-read, reported in `ErrorInfo` metadata under `current_version`.
pub fn version_conflict(message: impl Into<String>, current: Option<u64>) -> Status {
    let mut metadata = HashMap::new();
    if let Some(current) = current {
        metadata.insert("current_version".to_owned(), current.to_string());
    }
    let details = ErrorDetails::with_error_info("VERSION_CONFLICT", ERROR_DOMAIN, metadata);
    Status::with_error_details(Code::Aborted, message, details)
}

/// The current version carried by a [`version_conflict`] status, if any.
pub fn conflict_version(status: &Status) -> Option<u64> {
    status.get_details_error_info()?.metadata.get("current_version")?.parse().ok()
}

/// The field path carried by an [`invalid_argument`] status, if any.
pub fn invalid_field(status: &Status) -> Option<String> {
    let bad_request = status.get_details_bad_request()?;
    bad_request.field_violations.first().map(|violation| violation.field.clone())
}

/// The canonical name of `code` (e.g. `NOT_FOUND`), the label value metrics use for it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// UNAVAILABLE because `dependency` cannot be reached; callers may retry.
pub fn unavailable(dependency: &str, reason: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("{dependency} unavailable: {reason}"))
}
