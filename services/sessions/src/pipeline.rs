//! The Pipeline rpc: many session calls over one stream.
//!
//! A unary call costs an HTTP/2 stream of its own, with headers both ways; for a session
//! lookup that is most of the work. On a pipeline, calls arrive in batches, run
//! concurrently exactly as their unary rpcs would, and replies leave in batches of
//! whatever has completed.
//!
//! At most [`MAX_IN_FLIGHT`] calls of one stream run or wait to be sent back at a time;
//! past that the stream is not read, so HTTP/2 flow control holds the client back. On
//! shutdown the stream stops being read, every call read so far is answered, and the
//! stream ends with OK: the client knows that calls still unanswered never ran.

use std::{collections::VecDeque, pin::Pin, sync::Arc, time::Instant};

use ficus_proto::sessions::v1::{
    CallStatus, SessionCall, SessionCalls, SessionReplies, SessionReply, session_call::Request as Call,
    session_reply::Reply,
};
use futures::{Stream, StreamExt, stream::FuturesUnordered};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::{
    error::SessionError,
    grpc,
    metrics::{OpenStream, Operation},
    service::Sessions,
};

/// Most calls of one stream running or answered but not yet sent.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// Replies are batched up to about this many bytes; a batch always takes at least one
/// reply, and a session is at most 3 MiB, so a batch stays under the 4 MiB that gRPC
/// clients accept by default.
const BATCH_BYTES: usize = 512 * 1024;

/// The reply stream of a Pipeline call.
pub(crate) type ReplyStream = Pin<Box<dyn Stream<Item = Result<SessionReplies, Status>> + Send>>;

/// A reply, holding its call's place among the [`MAX_IN_FLIGHT`] until it is sent.
struct Answered {
    reply: SessionReply,
    _slot: OwnedSemaphorePermit,
}

/// Runs the calls arriving on `calls` until the client stops sending or `shutdown`, and
/// returns the stream of their replies.
pub(crate) fn serve(sessions: Sessions, calls: Streaming<SessionCalls>, shutdown: CancellationToken) -> ReplyStream {
    let (answered, replies) = mpsc::unbounded_channel();
    let open = sessions.metrics().stream_opened();
    tokio::spawn(read(sessions, calls, answered, shutdown));
    Box::pin(futures::stream::unfold(Batcher { replies, carry: None, _open: open }, Batcher::next).map(Ok))
}

/// Reads batches of calls and runs them concurrently in this task, until the client has
/// sent its last call, the stream failed, or the server is shutting down; then finishes
/// the calls it has read. Running them here rather than as tasks of their own spares a
/// spawn and a wake-up per call: a session call is a short wait on the store.
async fn read(
    sessions: Sessions,
    mut calls: Streaming<SessionCalls>,
    answered: mpsc::UnboundedSender<Answered>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut running = FuturesUnordered::new();
    // Calls read but not started for want of a slot; every call read is run, even during
    // shutdown, so the client can tell from a clean end that an unanswered call never ran.
    let mut queued = VecDeque::new();
    let mut reading = true;
    loop {
        while let Some(call) = queued.pop_front() {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                queued.push_front(call);
                break;
            };
            running.push(run(&sessions, call, slot));
        }
        let can_read = reading && queued.is_empty();
        tokio::select! {
            biased;
            Some(done) = running.next(), if !running.is_empty() => {
                // The client went away; its reply has nowhere to go.
                let _ = answered.send(done);
            }
            // Every slot is taken by a reply the client has yet to read.
            slot = slots.clone().acquire_owned(), if !queued.is_empty() => {
                if let (Ok(slot), Some(call)) = (slot, queued.pop_front()) {
                    running.push(run(&sessions, call, slot));
                }
            }
            () = shutdown.cancelled(), if can_read => reading = false,
            batch = calls.message(), if can_read => match batch {
                Ok(Some(batch)) => {
                    sessions.metrics().pipeline_message();
                    queued.extend(batch.calls);
                }
                Ok(None) => reading = false,
                Err(status) => {
                    tracing::debug!(%status, "session pipeline ended by the client");
                    return;
                }
            },
            else => return,
        }
    }
}

/// Runs one call as its unary rpc would, and counts it.
async fn run(sessions: &Sessions, call: SessionCall, slot: OwnedSemaphorePermit) -> Answered {
    let started = Instant::now();
    let (operation, result) = match call.request {
        Some(Call::Create(request)) => (Operation::Create, grpc::create(sessions, request).await.map(Reply::Session)),
        Some(Call::Get(request)) => (Operation::Get, grpc::get(sessions, request).await.map(Reply::Session)),
        Some(Call::Update(request)) => (Operation::Update, grpc::update(sessions, request).await.map(Reply::Session)),
        Some(Call::Touch(request)) => (Operation::Touch, grpc::touch(sessions, request).await.map(Reply::Session)),
        Some(Call::Delete(request)) => (Operation::Delete, grpc::delete(sessions, request).await.map(Reply::Deleted)),
        None => (Operation::Unknown, Err(SessionError::invalid("request", "names no operation"))),
    };
    let reply = result.unwrap_or_else(|error| Reply::Error(call_status(Status::from(error))));
    let code = match &reply {
        Reply::Error(status) => tonic::Code::from(status.code),
        Reply::Session(_) | Reply::Deleted(_) => tonic::Code::Ok,
    };
    sessions.metrics().pipelined(operation, code, started.elapsed());
    Answered { reply: SessionReply { call_id: call.call_id, reply: Some(reply) }, _slot: slot }
}

/// A status as a pipelined reply carries it.
fn call_status(status: Status) -> CallStatus {
    CallStatus { code: status.code().into(), message: status.message().to_owned(), details: status.details().to_vec() }
}

/// Gathers the replies ready to be sent into one message.
struct Batcher {
    replies: mpsc::UnboundedReceiver<Answered>,
    /// A reply that did not fit the previous batch.
    carry: Option<Answered>,
    /// Counts the stream as open until its last reply is sent or it is dropped.
    _open: OpenStream,
}

impl Batcher {
    async fn next(mut self) -> Option<(SessionReplies, Self)> {
        let first = match self.carry.take() {
            Some(carried) => carried,
            None => self.replies.recv().await?,
        };
        let mut bytes = first.reply.encoded_len();
        let mut replies = vec![first.reply];
        while let Ok(next) = self.replies.try_recv() {
            let size = next.reply.encoded_len();
            if bytes + size > BATCH_BYTES {
                self.carry = Some(next);
                break;
            }
            bytes += size;
            replies.push(next.reply);
        }
        Some((SessionReplies { replies }, self))
    }
}
