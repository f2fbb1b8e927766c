//! The admin HTTP port: `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::{
    Router,
    extract::{RawQuery, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;

use super::Readiness;

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    registry: Arc<Registry>,
}

/// The admin routes.
pub(crate) fn router(readiness: Readiness, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { readiness, registry })
}

/// Alive: the process answers. Never checks dependencies, so an orchestrator does not
/// restart a healthy process because Redis is down.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready only when every required dependency answers and the service is not shutting
/// down; `?verbose` lists every dependency, required or only reported, and its state.
async fn readyz(State(state): State<AdminState>, RawQuery(query): RawQuery) -> impl IntoResponse {
    let verbose =
        query.is_some_and(|query| query.split('&').any(|pair| pair == "verbose" || pair.starts_with("verbose=")));
    if verbose {
        let (ready, text) = state.readiness.report().await;
        return (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, text);
    }
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {error}\n"),
        ),
    }
}
