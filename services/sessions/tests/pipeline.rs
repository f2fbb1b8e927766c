//! The Pipeline rpc: calls on one stream behave exactly as their unary rpcs, run
//! concurrently, and a shutdown answers what was read and ends the stream cleanly.

#[macro_use]
mod support;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use ficus_proto::sessions::v1::{
    CallStatus, CreateSessionRequest, DeleteSessionRequest, GetSessionRequest, SessionCall, SessionCalls, SessionReply,
    TouchSessionRequest, UpdateSessionRequest, session_call::Request as Call, session_reply::Reply,
};
use support::{Backend, Harness, attributes};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Status, Streaming};

on_both_backends!(
    pipelined_calls_answer_as_their_unary_rpcs,
    a_batch_of_calls_runs_concurrently_and_each_is_answered_once,
    a_shutdown_answers_the_calls_read_and_ends_the_stream_cleanly,
);

/// A Pipeline stream opened with the raw generated client.
struct Stream {
    calls: mpsc::UnboundedSender<SessionCalls>,
    replies: Streaming<ficus_proto::sessions::v1::SessionReplies>,
    next_id: u64,
}

impl Stream {
    async fn open(harness: &Harness) -> Self {
        let (calls, outbound) = mpsc::unbounded_channel();
        let replies = harness
            .grpc()
            .pipeline(UnboundedReceiverStream::new(outbound))
            .await
            .expect("the Pipeline stream opens")
            .into_inner();
        Self { calls, replies, next_id: 1 }
    }

    /// Sends `requests` as one batch; returns their call ids in order.
    fn send(&mut self, requests: Vec<Option<Call>>) -> Vec<u64> {
        let calls: Vec<_> = requests
            .into_iter()
            .map(|request| {
                self.next_id += 1;
                SessionCall { call_id: self.next_id, request }
            })
            .collect();
        let ids = calls.iter().map(|call| call.call_id).collect();
        self.calls.send(SessionCalls { calls }).expect("the stream is open");
        ids
    }

    /// Waits for `count` replies, by call id.
    async fn replies(&mut self, count: usize) -> HashMap<u64, Reply> {
        let mut replies = HashMap::new();
        while replies.len() < count {
            let message = tokio::time::timeout(Duration::from_secs(10), self.replies.message())
                .await
                .expect("replies within 10 s")
                .expect("the stream carries on")
                .expect("the stream is not over");
            for SessionReply { call_id, reply } in message.replies {
                let reply = reply.expect("every reply says something");
                assert!(replies.insert(call_id, reply).is_none(), "call {call_id} answered twice");
            }
        }
        replies
    }

    /// Makes one call and waits for its reply.
    async fn call(&mut self, request: Call) -> Reply {
        let id = self.send(vec![Some(request)])[0];
        self.replies(1).await.remove(&id).expect("the reply names the call")
    }
}

/// A failed reply as the status a unary call would end with.
fn status(reply: Reply) -> Status {
    match reply {
        Reply::Error(CallStatus { code, message, details }) => {
            Status::with_details(Code::from(code), message, details.into())
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

fn session(reply: Reply) -> ficus_proto::sessions::v1::Session {
    match reply {
        Reply::Session(session) => session,
        other => panic!("expected a session, got {other:?}"),
    }
}

async fn pipelined_calls_answer_as_their_unary_rpcs(backend: Backend) {
    let harness = Harness::start(backend).await;
    let mut stream = Stream::open(&harness).await;
    let mut grpc = harness.grpc();

    let create = CreateSessionRequest { attributes: attributes(&[("user", b"ada")]), ..Default::default() };
    let created = session(stream.call(Call::Create(create)).await);
    // What the pipeline wrote, a unary read sees. (Expiry aside: a create reports the
    // deadline it asked for, a read the one the store keeps, a moment later.)
    let state = |session: &ficus_proto::sessions::v1::Session| {
        (session.id.clone(), session.version, session.attributes.clone(), session.created_at)
    };
    assert_eq!(state(&support::get(&mut grpc, &created.id).await.expect("GetSession")), state(&created));

    let get = |id: &str| Call::Get(GetSessionRequest { id: id.to_owned(), touch: false });
    let update = |expected_version, value: &[u8]| {
        Call::Update(UpdateSessionRequest {
            id: created.id.clone(),
            expected_version,
            set: attributes(&[("cart", value)]),
            ..UpdateSessionRequest::default()
        })
    };
    let ids = stream.send(vec![
        Some(get(&created.id)),
        Some(update(created.version + 1000, b"stale")),
        Some(get("not an id!")),
        None,
        Some(get(&format!("{}A", &created.id[1..]))),
        Some(Call::Touch(TouchSessionRequest { id: created.id.clone(), ttl: Some(Duration::from_millis(1).into()) })),
    ]);
    let mut replies = stream.replies(ids.len()).await;
    let mut reply = |index: usize| replies.remove(&ids[index]).expect("every call is answered");
    assert_eq!(state(&session(reply(0))), state(&created));
    // The same refusals, with the same details, as the unary rpcs give.
    let conflict = status(reply(1));
    assert_eq!(conflict.code(), Code::Aborted, "{conflict:?}");
    assert_eq!(ficus_kit::status::conflict_version(&conflict), Some(created.version));
    support::assert_invalid::<()>(Err(status(reply(2))), "id");
    support::assert_invalid::<()>(Err(status(reply(3))), "request");
    support::assert_code::<()>(Err(status(reply(4))), Code::NotFound);
    support::assert_invalid::<()>(Err(status(reply(5))), "ttl");
    // Refused calls changed nothing.
    assert_eq!(state(&support::get(&mut grpc, &created.id).await.expect("GetSession")), state(&created));

    let updated = session(stream.call(update(created.version, b"2 items")).await);
    assert!(updated.version > created.version);
    assert_eq!(updated.attributes, attributes(&[("user", b"ada"), ("cart", b"2 items")]));

    let delete = || Call::Delete(DeleteSessionRequest { id: created.id.clone() });
    assert!(matches!(stream.call(delete()).await, Reply::Deleted(deleted) if deleted.existed));
    assert!(matches!(stream.call(delete()).await, Reply::Deleted(deleted) if !deleted.existed));
    support::assert_code(support::get(&mut grpc, &created.id).await, Code::NotFound);

    // Counted by operation and code.
    let counter = |operation: &str, code: &str| {
        format!("ficus_session_pipeline_calls_total{{operation=\"{operation}\",code=\"{code}\"}}")
    };
    assert_eq!(harness.counter(&counter("get", "OK")).await, 1);
    assert_eq!(harness.counter(&counter("get", "INVALID_ARGUMENT")).await, 1);
    assert_eq!(harness.counter(&counter("update", "ABORTED")).await, 1);
    assert_eq!(harness.counter(&counter("unknown", "INVALID_ARGUMENT")).await, 1);
    assert_eq!(harness.counter(&counter("delete", "OK")).await, 2);
    // Timed by operation, whatever the code.
    let timed =
        |operation: &str| format!("ficus_session_pipeline_call_duration_seconds_count{{operation=\"{operation}\"}}");
    assert_eq!(harness.counter(&timed("create")).await, 1);
    assert_eq!(harness.counter(&timed("get")).await, 3);
    assert_eq!(harness.counter(&timed("delete")).await, 2);
}

async fn a_batch_of_calls_runs_concurrently_and_each_is_answered_once(backend: Backend) {
    let harness = Harness::start(backend).await;
    let mut stream = Stream::open(&harness).await;
    let create = || Some(Call::Create(CreateSessionRequest::default()));
    // More calls in one batch than the server runs at a time, so some wait for a slot.
    let calls = 1500;
    let ids = stream.send((0..calls).map(|_| create()).collect());
    let replies = stream.replies(calls).await;
    assert_eq!(replies.keys().copied().collect::<HashSet<_>>(), ids.into_iter().collect::<HashSet<_>>());
    let sessions: HashSet<_> = replies.into_values().map(|reply| session(reply).id).collect();
    assert_eq!(sessions.len(), calls, "every create made a session of its own");
}

async fn a_shutdown_answers_the_calls_read_and_ends_the_stream_cleanly(backend: Backend) {
    let mut harness = Harness::start(backend).await;
    let mut stream = Stream::open(&harness).await;
    let created = session(stream.call(Call::Create(CreateSessionRequest::default())).await);

    // The open stream must not hold the shutdown for the grace period (2 s here).
    let started = Instant::now();
    harness.restart_service().await;
    assert!(started.elapsed() < Duration::from_millis(1500), "the shutdown took {:?}", started.elapsed());
    // A clean end, not a dropped connection: the client may resend what was unanswered.
    let end = tokio::time::timeout(Duration::from_secs(5), stream.replies.message()).await.expect("the stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");

    // The new process serves the session on a new stream.
    let mut stream = Stream::open(&harness).await;
    let read = session(stream.call(Call::Get(GetSessionRequest { id: created.id.clone(), touch: false })).await);
    assert_eq!(read.id, created.id);
}
