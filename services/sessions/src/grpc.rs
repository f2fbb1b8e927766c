//! The `SessionStore` gRPC service: each rpc converts its request to domain types, calls
//! one [`Sessions`] operation and converts the result back, and the Pipeline rpc runs the
//! same conversions for calls that share a stream. Errors become statuses in
//! [`error`](crate::error) only.

use std::time::{Duration, SystemTime};

use ficus_proto::sessions::v1::{
    CreateSessionRequest, DeleteSessionRequest, DeleteSessionResponse, GetSessionRequest, Session as ProtoSession,
    SessionCalls, TouchSessionRequest, UpdateSessionRequest, session_store_server::SessionStore,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    error::SessionError,
    pipeline::{self, ReplyStream},
    service::{Changes, NewSession, Session, Sessions},
};

/// Serves [`Sessions`] over gRPC.
#[derive(Clone, Debug)]
pub struct SessionStoreService {
    sessions: Sessions,
    /// Ends Pipeline streams when the server shuts down, which would otherwise keep it
    /// waiting for their clients to hang up.
    shutdown: CancellationToken,
}

impl SessionStoreService {
    /// Serves `sessions` until `shutdown`.
    pub fn new(sessions: Sessions, shutdown: CancellationToken) -> Self {
        Self { sessions, shutdown }
    }
}

#[tonic::async_trait]
impl SessionStore for SessionStoreService {
    async fn create_session(&self, request: Request<CreateSessionRequest>) -> Result<Response<ProtoSession>, Status> {
        ficus_kit::auth::audit::note(&request);
        Ok(Response::new(create(&self.sessions, request.into_inner()).await?))
    }

    async fn get_session(&self, request: Request<GetSessionRequest>) -> Result<Response<ProtoSession>, Status> {
        Ok(Response::new(get(&self.sessions, request.into_inner()).await?))
    }

    async fn update_session(&self, request: Request<UpdateSessionRequest>) -> Result<Response<ProtoSession>, Status> {
        ficus_kit::auth::audit::note(&request);
        Ok(Response::new(update(&self.sessions, request.into_inner()).await?))
    }

    async fn touch_session(&self, request: Request<TouchSessionRequest>) -> Result<Response<ProtoSession>, Status> {
        ficus_kit::auth::audit::note(&request);
        Ok(Response::new(touch(&self.sessions, request.into_inner()).await?))
    }

    async fn delete_session(
        &self,
        request: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteSessionResponse>, Status> {
        ficus_kit::auth::audit::note(&request);
        Ok(Response::new(delete(&self.sessions, request.into_inner()).await?))
    }

    async fn pipeline(&self, request: Request<Streaming<SessionCalls>>) -> Result<Response<ReplyStream>, Status> {
        let calls = request.into_inner();
        Ok(Response::new(pipeline::serve(self.sessions.clone(), calls, self.shutdown.clone())))
    }
}

/// CreateSession.
pub(crate) async fn create(sessions: &Sessions, request: CreateSessionRequest) -> Result<ProtoSession, SessionError> {
    let new = NewSession {
        attributes: request.attributes,
        ttl: duration("ttl", request.ttl)?,
        max_lifetime: duration("max_lifetime", request.max_lifetime)?,
    };
    Ok(to_proto(sessions.create(new).await?))
}

/// GetSession.
pub(crate) async fn get(sessions: &Sessions, request: GetSessionRequest) -> Result<ProtoSession, SessionError> {
    Ok(to_proto(sessions.get(&request.id, request.touch).await?))
}

/// UpdateSession.
pub(crate) async fn update(sessions: &Sessions, request: UpdateSessionRequest) -> Result<ProtoSession, SessionError> {
    let changes = Changes {
        expected_version: request.expected_version,
        set: request.set,
        remove: request.remove,
        ttl: duration("ttl", request.ttl)?,
        omit_attributes: request.omit_attributes,
    };
    Ok(to_proto(sessions.update(&request.id, changes).await?))
}

/// TouchSession.
pub(crate) async fn touch(sessions: &Sessions, request: TouchSessionRequest) -> Result<ProtoSession, SessionError> {
    let ttl = duration("ttl", request.ttl)?;
    Ok(to_proto(sessions.touch(&request.id, ttl).await?))
}

/// DeleteSession.
pub(crate) async fn delete(
    sessions: &Sessions,
    request: DeleteSessionRequest,
) -> Result<DeleteSessionResponse, SessionError> {
    Ok(DeleteSessionResponse { existed: sessions.delete(&request.id).await? })
}

fn to_proto(session: Session) -> ProtoSession {
    ProtoSession {
        id: session.id.into_string(),
        version: session.version,
        attributes: session.attributes,
        created_at: Some(timestamp(session.created_at)),
        expires_at: Some(timestamp(session.expires_at)),
        max_expires_at: session.max_expires_at.map(timestamp),
    }
}

/// A protobuf duration as a `Duration`; negative or denormal ones are refused at `field`.
fn duration(field: &str, duration: Option<pbjson_types::Duration>) -> Result<Option<Duration>, SessionError> {
    let Some(pbjson_types::Duration { seconds, nanos }) = duration else {
        return Ok(None);
    };
    match (u64::try_from(seconds), u32::try_from(nanos)) {
        (Ok(seconds), Ok(nanos)) if nanos < 1_000_000_000 => Ok(Some(Duration::new(seconds, nanos))),
        _ => Err(SessionError::invalid(field, format!("{seconds}s {nanos}ns is not a non-negative duration"))),
    }
}

fn timestamp(time: SystemTime) -> pbjson_types::Timestamp {
    let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        // Below one billion, so it fits.
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_be_non_negative_and_normal() {
        let proto = |seconds, nanos| Some(pbjson_types::Duration { seconds, nanos });
        assert_eq!(duration("ttl", proto(90, 5)).ok().flatten(), Some(Duration::new(90, 5)));
        assert_eq!(duration("ttl", None).ok().flatten(), None);
        for (seconds, nanos) in [(-1, 0), (0, -1), (1, 1_000_000_000)] {
            assert!(
                matches!(duration("ttl", proto(seconds, nanos)), Err(SessionError::InvalidArgument { field, .. }) if field == "ttl")
            );
        }
    }

    #[test]
    fn timestamps_keep_nanoseconds() {
        let time = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(timestamp(time), pbjson_types::Timestamp { seconds: 1_700_000_000, nanos: 123_456_789 });
    }
}
