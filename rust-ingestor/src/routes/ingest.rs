//! `POST /api/ingest`: authenticate, check cheap headers, check backpressure,
//! read the body (capped), validate, XADD, and only then answer 202.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{auth, metrics, stream, validate};

pub async fn ingest(State(state): State<AppState>, request: Request) -> Response {
    match handle(&state, request).await {
        Ok(accepted) => {
            metrics::accepted(accepted);
            let body = format!("{{\"accepted\":{accepted}}}");
            (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(Rejection { error, readings }) => {
            metrics::rejected(error.code(), readings);
            error.into_response()
        }
    }
}

/// An error and how many readings it cost (0 when the body was not parsed).
struct Rejection {
    error: ApiError,
    readings: usize,
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Self {
        let readings = error.details().len();
        Self { error, readings }
    }
}

async fn handle(state: &AppState, request: Request) -> Result<usize, Rejection> {
    let (parts, body) = request.into_parts();
    let device = auth::authenticate(state, parts.headers.get(header::AUTHORIZATION)).await?;

    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    validate::check_media_type(content_type)?;
    let limits = &state.config.limits;
    if content_length(&parts.headers).is_some_and(|n| n > limits.max_body_bytes) {
        return Err(ApiError::PayloadTooLarge(limits.max_body_bytes).into());
    }

    let shard = &state.shards[stream::shard_index(device.id, state.shards.len())];
    if shard.backlog() > state.config.stream_high_water {
        metrics::backpressure();
        return Err(state.unavailable("stream backlog is over its high-water mark").into());
    }

    let bytes = read_capped(body, limits.max_body_bytes).await?;
    let now_ms = epoch_ms();
    let readings = validate::validate(content_type, &bytes, now_ms, limits)?;

    let mut encoded = Vec::with_capacity(readings.len() * 40 + 2);
    stream::encode_readings(&readings, &mut encoded);
    let cmd = stream::xadd_cmd(&shard.key, device.id, &encoded, now_ms);
    let _id: String = state.redis("xadd", &cmd).await.map_err(|error| Rejection { error, readings: readings.len() })?;
    Ok(readings.len())
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The whole body, or 413 as soon as it grows past `max` (whatever Content-Length said).
async fn read_capped(mut body: Body, max: usize) -> Result<Bytes, ApiError> {
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        // A broken upload leaves no JSON document to read.
        let frame = frame.map_err(|_| ApiError::MalformedJson)?;
        let Ok(data) = frame.into_data() else { continue };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if so_far + data.len() > max {
            return Err(ApiError::PayloadTooLarge(max));
        }
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(f) = first.take() {
                    rest.extend_from_slice(&f);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(rest)))
}

fn epoch_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
