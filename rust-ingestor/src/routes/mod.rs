//! The HTTP surface: `fn router(state)` builds everything, so tests can drive
//! it with `oneshot` and no socket.

mod health;
mod ingest;
mod prometheus;
mod thingsboard;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use ingest::epoch_ms;

use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/ingest", post(ingest::ingest))
        .route("/api/v1/{token}/telemetry", post(thingsboard::telemetry))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(prometheus::router())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// One layer for every request (one layer is cheaper than two on the hot path):
/// bounds it by the request timeout (body upload included; past the deadline
/// the handler is dropped and the client told to retry), then counts it by
/// route template and status and times it.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = metrics::route_label(request.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
    let response = match tokio::time::timeout(state.config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => state.unavailable("request timed out").into_response(),
    };
    metrics::request(route, response.status(), start.elapsed());
    response
}

#[cfg(test)]
mod tests;
