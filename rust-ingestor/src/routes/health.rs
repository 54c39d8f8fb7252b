//! Liveness and readiness, outside the ingress.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::state::AppState;

const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];

/// 200 while the process serves.
pub async fn healthz() -> impl IntoResponse {
    (JSON, r#"{"status":"ok"}"#)
}

/// 200 when Redis (on a cluster, a node of it) answers PING in time, else 503 `unavailable`.
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.ping().await.map_err(|_| state.unavailable("redis is not reachable"))?;
    Ok((JSON, r#"{"status":"ready"}"#))
}
