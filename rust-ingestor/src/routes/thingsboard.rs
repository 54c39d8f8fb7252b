//! `POST /api/v1/{token}/telemetry`: ThingsBoard's HTTP device API, so its
//! devices and SDKs work unchanged. Same checks and durability as `/api/ingest`;
//! success is 200 with an empty body, as ThingsBoard answers. The token is in
//! the path: metrics label the route by its template, and nothing logs the path.

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::routes::ingest::{accept, refuse};
use crate::state::AppState;
use crate::{auth, metrics};

pub async fn telemetry(State(state): State<AppState>, Path(token): Path<String>, request: Request) -> Response {
    let (parts, mut body) = request.into_parts();
    let device = auth::authenticate_token(&state, &token).await;
    // ThingsBoard's devices often send no Content-Type: the body is JSON either way.
    let content_type = match parts.headers.get(header::CONTENT_TYPE) {
        None => Some("application/json"),
        Some(v) => v.to_str().ok(),
    };
    match accept(&state, device, content_type, &parts, &mut body).await {
        Ok(accepted) => {
            metrics::accepted(accepted);
            StatusCode::OK.into_response()
        }
        Err(rejection) => refuse(&state, rejection, &parts, body),
    }
}
