//! The demo's two applications: the legacy `v1` and the new `v2`. Both keep each user's
//! session in the ficus session store, so a user whose traffic moves keeps their session.
//! `v2` can be made faulty to play a bad release.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use ficus_sessions_client::SessionClient;
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The cookie carrying the session id.
pub const SESSION_COOKIE: &str = "demo-session";

/// The header naming the version that answered.
pub const SERVED_BY: &str = "x-served-by";

/// One running application.
#[derive(Clone)]
pub struct App {
    version: &'static str,
    sessions: SessionClient,
    /// Per-mille of requests answered 500, to play a faulty release.
    fault_per_mille: Arc<AtomicU32>,
    requests: Arc<AtomicU64>,
}

impl App {
    /// Starts the application `version` on `listen` until `shutdown`; returns the bound address.
    ///
    /// Besides `/`, it serves `POST /_demo/fault?per_mille=N`, which makes N in 1000 of
    /// later requests fail with 500: the demo's driver plays a bad release with it.
    pub async fn start(
        version: &'static str,
        sessions: SessionClient,
        listen: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let app = Self { version, sessions, fault_per_mille: Arc::default(), requests: Arc::default() };
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let router = Router::new().route("/", get(visit)).route(FAULT_PATH, post(set_fault)).with_state(app.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
            if let Err(error) = served {
                tracing::warn!(%error, "demo application stopped");
            }
        });
        Ok(addr)
    }
}

/// Where an application takes its fault setting.
pub const FAULT_PATH: &str = "/_demo/fault";

/// The query of [`FAULT_PATH`].
#[derive(serde::Deserialize)]
struct Fault {
    per_mille: u32,
}

/// Makes `per_mille` of later requests fail with 500.
async fn set_fault(State(app): State<App>, Query(fault): Query<Fault>) -> StatusCode {
    if fault.per_mille > 1000 {
        return StatusCode::BAD_REQUEST;
    }
    app.fault_per_mille.store(fault.per_mille, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

/// Counts the user's visits in their session and answers with the count.
async fn visit(State(app): State<App>, headers: HeaderMap) -> Response {
    let turn = app.requests.fetch_add(1, Ordering::Relaxed);
    let served_by = HeaderValue::from_static(app.version);
    // Every n-th request fails: exactly the configured share, evenly spread.
    let fault = u64::from(app.fault_per_mille.load(Ordering::Relaxed));
    if fault > 0 && (turn * fault) % 1000 < fault {
        return (StatusCode::INTERNAL_SERVER_ERROR, [(SERVED_BY, served_by)], "faulty release\n").into_response();
    }
    let cookie = cookie(&headers, SESSION_COOKIE);
    let loaded = match app.sessions.load_or_create(cookie).await {
        Ok(loaded) => loaded,
        Err(error) => {
            return (StatusCode::SERVICE_UNAVAILABLE, [(SERVED_BY, served_by)], error.to_string()).into_response();
        }
    };
    let mut session = loaded.session;
    let visits = app
        .sessions
        .update(&mut session, |session| {
            let visits = session.get_str("visits").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
            session.set("visits", visits.to_string());
            visits
        })
        .await;
    let visits = match visits {
        Ok(visits) => visits,
        Err(error) => {
            return (StatusCode::SERVICE_UNAVAILABLE, [(SERVED_BY, served_by)], error.to_string()).into_response();
        }
    };
    let mut response = (StatusCode::OK, [(SERVED_BY, served_by)], format!("{visits}\n")).into_response();
    if loaded.created
        && let Ok(value) = HeaderValue::from_str(&format!("{SESSION_COOKIE}={}; Path=/; HttpOnly", session.id()))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Sets the fault of the application at `address` (`host:port`) through [`FAULT_PATH`].
pub async fn request_fault(address: &str, per_mille: u32) -> Result<(), super::DemoError> {
    let failed = |reason: String| super::DemoError::Call(format!("set the fault of {address}: {reason}"));
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::post(format!("http://{address}{FAULT_PATH}?per_mille={per_mille}"))
        .body(Empty::new())
        .map_err(|error| failed(error.to_string()))?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| failed("no answer within 10s".into()))?
        .map_err(|error| failed(error.to_string()))?;
    if response.status() == StatusCode::NO_CONTENT { Ok(()) } else { Err(failed(response.status().to_string())) }
}
