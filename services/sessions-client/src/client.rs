//! The calls an application makes: load or create the cookie's session, save changes with
//! compare-and-set, update with retries, delete.

use std::{sync::Arc, time::Duration};

use ficus_proto::sessions::v1::{
    CreateSessionRequest, DeleteSessionRequest, GetSessionRequest, Session as ProtoSession,
    session_call::Request as Call, session_reply::Reply,
};
use ficus_tls_connector::{ALPN_H2, Dial, TlsConnector};
use tonic::{
    Code, Status,
    codegen::{Body, Bytes, StdError},
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;

use crate::{Error, RetryPolicy, Session, pipeline::Pipeline};

/// How long connecting to the session store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one call may take: a session call sits in the path of a user's request, so
/// it fails rather than hangs while the store is unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How often an idle connection is checked, so a store that vanished without closing it
/// fails the calls waiting on it instead of leaving them to time out one by one.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Connections a client made with [`SessionClient::connect_lazy`] spreads its calls over.
pub const CONNECTIONS: usize = 2;

/// The session found for a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The session.
    pub session: Session,
    /// Whether it was just created because the cookie named no live session; the
    /// response should then set the cookie to its id.
    pub created: bool,
}

/// A client of the ficus `SessionStore`. Cheap to clone; clones share the connections.
///
/// Calls go over long-lived Pipeline streams that the client and its clones share, so
/// many concurrent requests cost the store little more than their session reads and
/// writes.
#[derive(Clone, Debug)]
pub struct SessionClient<T = Channel> {
    pipeline: Pipeline<T>,
    retry: RetryPolicy,
    ttl: Option<Duration>,
}

impl SessionClient<Channel> {
    /// A client of the store at `address` (`http://host:port`, or `host:port`) that
    /// connects on first use and reconnects by itself.
    ///
    /// It spreads its calls over [`CONNECTIONS`] connections, a Pipeline stream on each:
    /// an HTTP/2 connection is framed by one task at each end, so one connection would
    /// cap a busy client at what those tasks manage, and its calls would move in lockstep
    /// batches, waiting while the store answers the previous one.
    pub fn connect_lazy(address: &str) -> Result<Self, Error> {
        Self::connect_lazy_with(address, &ConnectOptions::default())
    }

    /// [`SessionClient::connect_lazy`] to a store that requires credentials: over TLS
    /// when `options.tls` is set (the address may then be `https://host:port` or
    /// `host:port`), presenting `options.token` when set.
    pub fn connect_lazy_with(address: &str, options: &ConnectOptions) -> Result<Self, Error> {
        let invalid = |reason: String| Error::Address { address: address.to_owned(), reason };
        let dial = Dial::of(address, options.tls.is_some()).map_err(invalid)?;
        if dial.tls && options.tls.is_none() {
            return Err(invalid("https:// needs `ConnectOptions::tls`".to_owned()));
        }
        let endpoint = Endpoint::from_shared(dial.uri())
            .map_err(|source| invalid(source.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        let channels: Vec<Channel> = match &options.tls {
            Some(tls) => {
                let mut tls = (**tls).clone();
                tls.alpn_protocols = vec![ALPN_H2.to_vec()];
                let connector = TlsConnector::fixed(Arc::new(tls), None);
                (0..CONNECTIONS).map(|_| endpoint.connect_with_connector_lazy(connector.clone())).collect()
            }
            None => (0..CONNECTIONS).map(|_| endpoint.connect_lazy()).collect(),
        };
        let client = Self::over(channels);
        match &options.token {
            Some(token) => {
                let authorization = MetadataValue::try_from(format!("Bearer {token}"))
                    .ok()
                    .filter(|_| !token.is_empty() && token.bytes().all(|byte| byte.is_ascii_graphic()))
                    .ok_or_else(|| Error::Token)?;
                Ok(Self { pipeline: client.pipeline.with_authorization(authorization), ..client })
            }
            None => Ok(client),
        }
    }
}

/// What a client presents to a store that requires credentials.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// The bearer token of a caller holding the store's `app` role.
    pub token: Option<String>,
    /// TLS: the roots the store's certificate must chain to and, for mutual TLS, the
    /// client's certificate. HTTP/2 is offered whatever the configuration says.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl<T> SessionClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    /// A client over any gRPC channel, e.g. one with tracing or authentication layers.
    pub fn new(channel: T) -> Self {
        Self::over([channel])
    }

    /// A client that spreads its calls over `channels`, each carrying a Pipeline stream
    /// of its own; channels on separate connections share the load best. Without any
    /// channel every call fails with UNAVAILABLE.
    pub fn over(channels: impl IntoIterator<Item = T>) -> Self {
        Self { pipeline: Pipeline::new(channels), retry: RetryPolicy::default(), ttl: None }
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
        Ok(Session::from_proto(self.session(Call::Create(request)).await?))
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
        match self.session(Call::Update(session.update_request())).await {
            Ok(saved) => {
                session.saved(saved);
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
        match self.call(Call::Delete(DeleteSessionRequest { id: id.to_owned() })).await? {
            Reply::Deleted(deleted) => Ok(deleted.existed),
            _ => Err(mismatched().into()),
        }
    }

    /// Reads the live session `id` without sliding its expiry, as a look from outside the
    /// user's requests (an admin page, an audit) should; `None` when there is none.
    pub async fn peek(&self, id: &str) -> Result<Option<Session>, Error> {
        self.get(id, false).await
    }

    async fn get(&self, id: &str, touch: bool) -> Result<Option<Session>, Error> {
        match self.session(Call::Get(GetSessionRequest { id: id.to_owned(), touch })).await {
            Ok(session) => Ok(Some(Session::from_proto(session))),
            // A malformed id cannot name a session; for the caller it is simply not there.
            Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    /// Makes a call that answers with a session.
    async fn session(&self, request: Call) -> Result<ProtoSession, Status> {
        match self.call(request).await? {
            Reply::Session(session) => Ok(session),
            _ => Err(mismatched()),
        }
    }

    /// Makes a call, failing it with DEADLINE_EXCEEDED after [`CALL_TIMEOUT`].
    async fn call(&self, request: Call) -> Result<Reply, Status> {
        tokio::time::timeout(CALL_TIMEOUT, self.pipeline.call(request)).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!("the session store did not answer within {CALL_TIMEOUT:?}")))
        })
    }
}

/// The store answered a call with the reply of another kind of call.
fn mismatched() -> Status {
    Status::internal("the session store answered with a reply of the wrong kind")
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
