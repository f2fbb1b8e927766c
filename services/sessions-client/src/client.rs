//! The calls an application makes: load or create the cookie's session, save changes with
//! compare-and-set, update with retries, delete.

use std::time::Duration;

use ficus_proto::sessions::v1::{
    CreateSessionRequest, DeleteSessionRequest, GetSessionRequest, session_store_client::SessionStoreClient,
};
use tonic::{
    Code, Status,
    codegen::{Body, Bytes, StdError},
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;

use crate::{Error, RetryPolicy, Session};

/// How long connecting to the session store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one call may take: a session call sits in the path of a user's request, so
/// it fails rather than hangs while the store is unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The session found for a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The session.
    pub session: Session,
    /// Whether it was just created because the cookie named no live session; the
    /// response should then set the cookie to its id.
    pub created: bool,
}

/// A client of the ficus `SessionStore`. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct SessionClient<T = Channel> {
    inner: SessionStoreClient<T>,
    retry: RetryPolicy,
    ttl: Option<Duration>,
}

impl SessionClient<Channel> {
    /// A client of the store at `address` (`http://host:port`, or `host:port`) that
    /// connects on first use and reconnects by itself.
    pub fn connect_lazy(address: &str) -> Result<Self, Error> {
        let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|source| Error::Address { address: address.to_owned(), source })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        Ok(Self::new(endpoint.connect_lazy()))
    }
}

impl<T> SessionClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    /// A client over any gRPC channel, e.g. one with tracing or authentication layers.
    pub fn new(channel: T) -> Self {
        Self { inner: SessionStoreClient::new(channel), retry: RetryPolicy::default(), ttl: None }
    }

    /// Retries conflicting updates as `retry` says.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Creates sessions with this idle TTL rather than the store's default.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The session named by a request's cookie, touched so it stays alive; or a new one
    /// when there is no cookie or it names no live session (unknown, expired, deleted, or
    /// not even shaped like an id, as a forged cookie may be).
    pub async fn load_or_create(&self, cookie: Option<&str>) -> Result<Loaded, Error> {
        if let Some(id) = cookie.filter(|id| !id.is_empty())
            && let Some(session) = self.load(id).await?
        {
            return Ok(Loaded { session, created: false });
        }
        Ok(Loaded { session: self.create().await?, created: true })
    }

    /// The live session `id`, touched; `None` when there is none.
    pub async fn load(&self, id: &str) -> Result<Option<Session>, Error> {
        self.get(id, true).await
    }

    /// Creates an empty session.
    pub async fn create(&self) -> Result<Session, Error> {
        let request = CreateSessionRequest { ttl: self.ttl.map(Into::into), ..CreateSessionRequest::default() };
        let created = self.inner.clone().create_session(request).await?;
        Ok(Session::from_proto(created.into_inner()))
    }

    /// Saves the session's changes if nobody else has written it since it was read; the
    /// session then holds the store's state, with everyone's attributes and the new
    /// version. Nothing is sent when there is nothing to save.
    ///
    /// Fails with [`Error::Conflict`] when someone else wrote first, keeping the changes
    /// pending; [`update`](Self::update) handles that by re-reading and re-applying.
    /// A failure with UNAVAILABLE may hide a save that went through (the answer was lost
    /// in an outage): re-read the session before deciding to apply a change again.
    pub async fn save(&self, session: &mut Session) -> Result<(), Error> {
        if !session.is_modified() {
            return Ok(());
        }
        match self.inner.clone().update_session(session.update_request()).await {
            Ok(saved) => {
                *session = Session::from_proto(saved.into_inner());
                Ok(())
            }
            Err(status) => Err(classify(status)),
        }
    }

    /// Applies `change` to the session and saves it; when another writer got there
    /// first, re-reads the session and applies `change` again, up to the retry policy's
    /// attempts. Returns what the successful application of `change` returned.
    ///
    /// Put every change in `change`: changes made to the session before the call are
    /// dropped if it has to re-read.
    pub async fn update<F, R>(&self, session: &mut Session, mut change: F) -> Result<R, Error>
    where
        F: FnMut(&mut Session) -> R,
    {
        let mut losses = 0;
        loop {
            let result = change(session);
            match self.save(session).await {
                Ok(()) => return Ok(result),
                Err(Error::Conflict { current }) => {
                    losses += 1;
                    if losses >= self.retry.max_attempts {
                        return Err(Error::Conflict { current });
                    }
                    tokio::time::sleep(self.retry.backoff(losses)).await;
                    *session = self.get(session.id(), false).await?.ok_or(Error::NotFound)?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Deletes the session `id`, as on logout; returns whether it was live. Deleting a
    /// session twice is fine.
    pub async fn delete(&self, id: &str) -> Result<bool, Error> {
        let deleted = self.inner.clone().delete_session(DeleteSessionRequest { id: id.to_owned() }).await?;
        Ok(deleted.into_inner().existed)
    }

    async fn get(&self, id: &str, touch: bool) -> Result<Option<Session>, Error> {
        match self.inner.clone().get_session(GetSessionRequest { id: id.to_owned(), touch }).await {
            Ok(session) => Ok(Some(Session::from_proto(session.into_inner()))),
            // A malformed id cannot name a session; for the caller it is simply not there.
            Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => Ok(None),
            Err(status) => Err(status.into()),
        }
    }
}

/// The client's error for a failed update.
fn classify(status: Status) -> Error {
    match status.code() {
        Code::Aborted => Error::Conflict { current: current_version(&status) },
        Code::NotFound => Error::NotFound,
        _ => Error::Rpc(status),
    }
}

/// The version a conflict reports (`ErrorInfo` metadata `current_version`).
fn current_version(status: &Status) -> Option<u64> {
    status.get_details_error_info()?.metadata.get("current_version")?.parse().ok()
}
