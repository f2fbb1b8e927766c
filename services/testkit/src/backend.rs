//! A real HTTP backend for data-plane tests: it answers every request with its own name,
//! so a test can count which backend served what, and remembers the last request's
//! headers so forwarding can be checked.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{HeaderMap, Request, Response, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// Header carrying the backend's name on every response.
pub const BACKEND_HEADER: &str = "x-backend";

#[derive(Debug)]
struct State {
    name: String,
    hits: AtomicUsize,
    status: AtomicU16,
    last_headers: Mutex<Option<HeaderMap>>,
}

/// A running backend, stopped when dropped.
#[derive(Debug)]
pub struct Backend {
    state: Arc<State>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend called `name` on a free loopback port.
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a backend called `name` on `addr`, e.g. the address of one that was stopped.
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let state = Arc::new(State {
            name: name.to_owned(),
            hits: AtomicUsize::new(0),
            status: AtomicU16::new(200),
            last_headers: Mutex::new(None),
        });
        Self::serve(state, addr).await
    }

    async fn serve(state: Arc<State>, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|error| panic!("cannot bind {addr}: {error}"));
        let addr = listener.local_addr().unwrap_or_else(|error| panic!("no local address: {error}"));
        let (stop, mut stopped) = watch::channel(false);
        let served = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = Vec::new();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => break,
                };
                let state = served.clone();
                let mut stop_connection = stopped.clone();
                connections.push(tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| answer(state.clone(), request));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stop_connection.changed() => {}
                    }
                }));
            }
            for connection in connections {
                connection.abort();
            }
        });
        Self { state, addr, stop, task: Some(task) }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name, as answered in the body and the `x-backend` header.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The headers of the last request it answered.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.state.last_headers.lock().ok().and_then(|headers| headers.clone())
    }

    /// Answers later requests with `status`, e.g. 500 to play a faulty release.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Stops listening and drops open connections, as a crashed backend would.
    pub async fn stop(mut self) -> SocketAddr {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.addr
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn answer(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut last) = state.last_headers.lock() {
        *last = Some(request.headers().clone());
    }
    let status = state.status.load(Ordering::SeqCst);
    let mut response = Response::new(Full::new(Bytes::from(state.name.clone())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = hyper::header::HeaderValue::from_str(&state.name) {
        response.headers_mut().insert(BACKEND_HEADER, value);
    }
    Ok(response)
}
