//! Session calls multiplexed over long-lived Pipeline streams.
//!
//! A unary gRPC call costs an HTTP/2 stream and headers both ways, which is most of the
//! work of a session lookup. A client sends its calls on a Pipeline stream instead: a
//! driver task tags each call with an id, sends whatever calls are waiting as one message,
//! and hands each reply to its caller as it arrives.
//!
//! A client may have several lanes, each a stream on a connection of its own, and deals
//! its calls out over them in turn. On one stream, calls move in lockstep batches: while
//! the store works on one batch, the client and the server's stream have nothing to do.
//! With two, one lane's batch is sent and answered while the other's is in the store.
//!
//! A lane's stream opens on its first call and again on the next call after it ends.
//! When the server ends it cleanly (on shutdown), calls it left unanswered never ran and
//! go out again on the next stream; when it fails, they fail with UNAVAILABLE, as a unary
//! call cut off by a broken connection does.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use ficus_proto::sessions::v1::{
    CallStatus, SessionCall, SessionCalls, SessionReply, session_call::Request as Call, session_reply::Reply,
    session_store_client::SessionStoreClient,
};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{
    Code, Status,
    codegen::{Body, Bytes, StdError},
    metadata::{Ascii, MetadataValue},
};

/// Most calls a client has unanswered at a time; the server runs as many per stream.
const MAX_IN_FLIGHT: usize = 1024;

/// Calls are batched up to about this many bytes. A batch always takes at least one
/// call, and a session is at most 3 MiB, so a batch stays under the 4 MiB that the
/// server accepts by default.
const BATCH_BYTES: usize = 512 * 1024;

/// How many streams a call may wait through: a server that ends streams cleanly without
/// answering must not keep a call going round forever.
const MAX_STREAMS_PER_CALL: u8 = 3;

/// What a caller is told.
type Outcome = Result<Reply, Status>;

/// The calls of a client and its clones, over its lanes.
#[derive(Clone, Debug)]
pub(crate) struct Pipeline<T> {
    lanes: Arc<[Lane<T>]>,
    /// `Bearer <token>`, sent when each stream opens.
    authorization: Option<MetadataValue<Ascii>>,
    /// The lane of the next call.
    next: Arc<AtomicUsize>,
    slots: Arc<Semaphore>,
}

/// One stream's driver, for the channel it runs on.
#[derive(Debug)]
struct Lane<T> {
    grpc: SessionStoreClient<T>,
    /// Started on first use: creating a client needs no async runtime, running one does.
    calls: OnceLock<mpsc::UnboundedSender<Pending>>,
}

/// A call waiting for its reply.
struct Pending {
    request: Call,
    reply: oneshot::Sender<Outcome>,
    /// Streams this call was sent on and left unanswered by.
    streams: u8,
    _slot: OwnedSemaphorePermit,
}

impl<T> Pipeline<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    /// Calls over a lane per channel; at least one channel.
    pub(crate) fn new(channels: impl IntoIterator<Item = T>) -> Self {
        let lanes = channels
            .into_iter()
            .map(|channel| Lane { grpc: SessionStoreClient::new(channel), calls: OnceLock::new() })
            .collect();
        Self { lanes, authorization: None, next: Arc::default(), slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)) }
    }

    /// Presents `authorization` on every stream opened from now on.
    pub(crate) fn with_authorization(mut self, authorization: MetadataValue<Ascii>) -> Self {
        self.authorization = Some(authorization);
        self
    }

    /// Makes `request` and waits for its reply.
    pub(crate) async fn call(&self, request: Call) -> Outcome {
        let slot = self.slots.clone().acquire_owned().await.map_err(|_| stopped())?;
        let (reply, answer) = oneshot::channel();
        let lane = self.lane().ok_or_else(|| Status::unavailable("the session client has no channel"))?;
        let calls = lane.calls.get_or_init(|| {
            let (calls, incoming) = mpsc::unbounded_channel();
            let driver = Driver {
                grpc: lane.grpc.clone(),
                authorization: self.authorization.clone(),
                incoming,
                unsent: VecDeque::new(),
                next_id: 0,
            };
            tokio::spawn(driver.run());
            calls
        });
        calls.send(Pending { request, reply, streams: 0, _slot: slot }).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl<T> Pipeline<T> {
    /// The lane of the next call: lanes take turns, so they carry equal shares whatever
    /// the mix of sessions.
    fn lane(&self) -> Option<&Lane<T>> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len().max(1);
        self.lanes.get(turn)
    }
}

fn stopped() -> Status {
    Status::unavailable("the session pipeline stopped")
}

/// Owns the stream: sends calls, matches replies, reopens after an end.
struct Driver<T> {
    grpc: SessionStoreClient<T>,
    authorization: Option<MetadataValue<Ascii>>,
    incoming: mpsc::UnboundedReceiver<Pending>,
    /// Calls to send on the next stream, oldest first.
    unsent: VecDeque<Pending>,
    next_id: u64,
}

impl<T> Driver<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    /// Runs streams for as long as the client exists.
    async fn run(mut self) {
        loop {
            if self.unsent.is_empty() {
                match self.incoming.recv().await {
                    Some(call) => self.unsent.push_back(call),
                    None => return,
                }
            }
            self.stream().await;
        }
    }

    /// Opens a stream and runs it until it ends, leaving in `unsent` what must go out on
    /// the next one.
    async fn stream(&mut self) {
        let mut waiting = HashMap::new();
        let (outbound, calls) = mpsc::unbounded_channel();
        // Sent with the request, so the stream opens with work to do.
        let _ = outbound.send(self.batch(&mut waiting));
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(calls));
        if let Some(authorization) = &self.authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        let mut replies = match self.grpc.pipeline(request).await {
            Ok(replies) => replies.into_inner(),
            Err(status) => return fail(waiting, &status),
        };
        loop {
            tokio::select! {
                call = self.incoming.recv() => {
                    let Some(call) = call else { return };
                    self.unsent.push_back(call);
                    // The caller that woke this task is often one of many woken by the same
                    // batch of replies. Letting the others run first puts their calls into
                    // this batch instead of sending each in a message of its own.
                    tokio::task::yield_now().await;
                    // Should the request side be gone already, the calls stay waiting and
                    // the end of the stream decides what happens to them.
                    let _ = outbound.send(self.batch(&mut waiting));
                }
                message = replies.message() => match message {
                    Ok(Some(message)) => {
                        for SessionReply { call_id, reply } in message.replies {
                            if let Some(pending) = waiting.remove(&call_id) {
                                let _ = pending.reply.send(outcome(reply));
                            }
                        }
                    }
                    Ok(None) => return self.resend(waiting),
                    Err(status) => {
                        let broken = Status::unavailable(format!("the session pipeline broke: {}", status.message()));
                        return fail(waiting, &broken);
                    }
                }
            }
        }
    }

    /// Takes the calls ready to go, up to [`BATCH_BYTES`], into one message; calls whose
    /// callers gave up are dropped unsent.
    fn batch(&mut self, waiting: &mut HashMap<u64, Pending>) -> SessionCalls {
        while let Ok(call) = self.incoming.try_recv() {
            self.unsent.push_back(call);
        }
        let mut calls = Vec::new();
        let mut bytes = 0;
        while let Some(pending) = self.unsent.pop_front() {
            if pending.reply.is_closed() {
                continue;
            }
            let call = SessionCall { call_id: self.next_id, request: Some(pending.request.clone()) };
            let size = call.encoded_len();
            if !calls.is_empty() && bytes + size > BATCH_BYTES {
                self.unsent.push_front(pending);
                break;
            }
            bytes += size;
            self.next_id += 1;
            waiting.insert(call.call_id, pending);
            calls.push(call);
        }
        SessionCalls { calls }
    }

    /// After a clean end: the calls left unanswered never ran, so they go out again
    /// first, in the order they were made.
    fn resend(&mut self, waiting: HashMap<u64, Pending>) {
        let mut left: Vec<_> = waiting.into_iter().collect();
        left.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
        for (_, mut pending) in left {
            pending.streams += 1;
            if pending.streams >= MAX_STREAMS_PER_CALL {
                let _ = pending.reply.send(Err(Status::unavailable("the session store kept closing its stream")));
            } else {
                self.unsent.push_front(pending);
            }
        }
    }
}

/// Fails every call in `waiting` with `status`.
fn fail(waiting: HashMap<u64, Pending>, status: &Status) {
    for (_, pending) in waiting {
        let _ = pending.reply.send(Err(status.clone()));
    }
}

/// A reply as the unary rpc would have ended.
fn outcome(reply: Option<Reply>) -> Outcome {
    match reply {
        Some(Reply::Error(CallStatus { code, message, details })) => {
            Err(Status::with_details(Code::from(code), message, Bytes::from(details)))
        }
        Some(reply) => Ok(reply),
        None => Err(Status::internal("the session store sent an empty reply")),
    }
}
