//! A small client for applications that keep their user sessions in the ficus session
//! store, so that the old and the new environment see the same sessions while traffic
//! moves between them.
//!
//! The typical request handler:
//!
//! ```no_run
//! # async fn handle(cookie: Option<&str>) -> Result<(), ficus_sessions_client::Error> {
//! use ficus_sessions_client::SessionClient;
//!
//! let client = SessionClient::connect_lazy("http://127.0.0.1:7004")?;
//! // The cookie's session, or a new one when it is missing, unknown or expired.
//! let loaded = client.load_or_create(cookie).await?;
//! let mut session = loaded.session;
//! if loaded.created {
//!     // Send `Set-Cookie: session=<session.id()>` with the response.
//! }
//! // Read-modify-write that survives concurrent requests of the same user: on a
//! // conflict the session is re-read and the closure applied again.
//! let visits = client
//!     .update(&mut session, |session| {
//!         let visits = session.get_str("visits").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
//!         session.set("visits", visits.to_string());
//!         visits
//!     })
//!     .await?;
//! # let _ = visits;
//! # Ok(())
//! # }
//! ```
//!
//! A store that requires credentials is reached with [`SessionClient::connect_lazy_with`]:
//! a bearer token of a caller with the `app` role, TLS, or both.
//!
//! It depends on tonic, rustls and the generated ficus types only, so it fits any web
//! framework.

mod client;
mod pipeline;
mod retry;
mod session;

pub use self::client::{CONNECTIONS, ConnectOptions, Loaded, SessionClient};
pub use self::retry::RetryPolicy;
pub use self::session::Session;

/// Why a session call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The session store address is not a valid URI, or does not fit the options.
    #[error("invalid session store address {address}: {reason}")]
    Address {
        /// The address given.
        address: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The token cannot travel in a header.
    #[error("a bearer token must be visible ASCII characters without spaces")]
    Token,
    /// The session expired or was deleted; start a new one.
    #[error("the session no longer exists")]
    NotFound,
    /// The session changed since it was read (and, for [`SessionClient::update`], kept
    /// changing through every retry); re-read it and try again.
    #[error("the session changed concurrently (now at version {current:?})")]
    Conflict {
        /// The version the session has now, when the store reported it.
        current: Option<u64>,
    },
    /// The call failed otherwise, e.g. UNAVAILABLE while the store is down or
    /// INVALID_ARGUMENT over a limit; the status says which.
    #[error("session store call failed: {0}")]
    Rpc(#[from] tonic::Status),
}
