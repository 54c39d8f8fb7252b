//! `POST /api/ingest`: authenticate, check cheap headers, check backpressure,
//! read the body (capped), validate, append to the stream, and only then answer 202.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::append::NotStored;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{auth, device_stats, metrics, stream, validate};

pub async fn ingest(State(state): State<AppState>, request: Request) -> Response {
    handle(&state, request).await
}

/// The handler itself, also called without the router (`routes::App`).
pub async fn handle(state: &AppState, request: Request) -> Response {
    let (parts, mut body) = request.into_parts();
    let device = auth::authenticate(state, parts.headers.get(header::AUTHORIZATION)).await;
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    match accept(state, device, content_type, &parts, &mut body).await {
        Ok(accepted) => {
            metrics::accepted(accepted);
            let body = format!("{{\"accepted\":{accepted}}}");
            (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
                .into_response()
        }
        Err(rejection) => refuse(state, rejection, &parts, body),
    }
}

/// The error answer of a refused request; what is left of its body is drained beside it.
pub fn refuse(state: &AppState, rejection: Rejection, parts: &Parts, body: Body) -> Response {
    let Rejection { error, readings } = rejection;
    metrics::rejected(error.reason(), readings);
    let most = DRAIN_FACTOR * state.config.limits.max_body_bytes;
    if !body.is_end_stream() && content_length(&parts.headers).is_none_or(|n| n <= most) {
        tokio::spawn(drain(body, most));
    }
    error.into_response()
}

/// A refusal before the body was read (token, media type, Content-Length,
/// backlog) would close the connection on unread bytes, and the reset makes a
/// proxy still sending them lose the answer (nginx then answers 502). So the
/// rest is read and dropped beside the answer, which goes out at once, within
/// bounds: this many times the body limit (a longer declared body is not
/// waited for), and `DRAIN_TIME`.
/// The 503 of readings that may be stored (too few replicas confirmed them, or their answer was lost and Redis
/// could not say): unlike the other 503s. docs/api.md.
pub const MAY_BE_STORED: &str = "the write may be stored (too few replicas confirmed it in time, or its answer was \
                                 lost); resend it: a resent reading is stored once";

const DRAIN_FACTOR: usize = 4;
const DRAIN_TIME: Duration = Duration::from_secs(5);

async fn drain(mut body: Body, most: usize) {
    let read = async {
        let mut seen = 0;
        while seen <= most {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// An error and how many readings it cost (0 when the body was not parsed).
pub struct Rejection {
    error: ApiError,
    readings: usize,
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Self {
        let readings = error.details().len();
        Self { error, readings }
    }
}

/// Everything after authentication: cheap checks, the capped read, validation,
/// the XADD. The number of readings stored, or why none were.
pub async fn accept(
    state: &AppState,
    device: Result<auth::Device, ApiError>,
    content_type: Option<&str>,
    parts: &Parts,
    body: &mut Body,
) -> Result<usize, Rejection> {
    let device = device?;
    let outcome = accept_for(state, device, content_type, parts, body).await;
    if let Err(rejection) = &outcome {
        device_stats::rejected(device.id, 1, device_stats::reason(&rejection.error), epoch_ms());
    }
    outcome
}

async fn accept_for(
    state: &AppState,
    device: auth::Device,
    content_type: Option<&str>,
    parts: &Parts,
    body: &mut Body,
) -> Result<usize, Rejection> {
    validate::check_media_type(content_type)?;
    let limits = &state.config.limits;
    if content_length(&parts.headers).is_some_and(|n| n > limits.max_body_bytes) {
        return Err(ApiError::PayloadTooLarge(limits.max_body_bytes).into());
    }

    // A device out of tokens is refused before its body is read: a flood costs no parsing.
    let limiter = &state.limiter;
    limiter.precheck(device.id, Instant::now()).map_err(|limited| limiter.error(device.id, limited))?;
    let shard_index = stream::shard_index(device.id, state.shards.len());
    if stream::over_high_water(state, &state.shards[shard_index]) {
        return Err(state.unavailable("stream backlog is over its high-water mark").into());
    }

    let bytes = read_capped(body, limits.max_body_bytes).await?;
    let now_ms = epoch_ms();
    let readings = validate::validate(content_type, &bytes, now_ms, limits)?;
    let budget = limiter
        .take(device.id, &readings, now_ms, Instant::now())
        .map_err(|limited| Rejection { error: limiter.error(device.id, limited), readings: readings.len() })?;

    let mut encoded = Vec::with_capacity(readings.len() * 40 + 2);
    stream::encode_readings(&readings, &mut encoded);
    state.appender.append(shard_index, device.id, now_ms, encoded).await.map_err(|why| {
        // Refused: the device will resend these readings, and must not pay for them twice.
        limiter.give_back(device.id, budget, readings.len(), Instant::now());
        let message = match why {
            NotStored::Failed => "storage is unavailable",
            NotStored::MayBeStored => MAY_BE_STORED,
        };
        Rejection { error: state.unavailable(message), readings: readings.len() }
    })?;
    device_stats::accepted(device.id, 1, &readings, now_ms);
    Ok(readings.len())
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The whole body, or 413 as soon as it grows past `max` (whatever Content-Length said).
async fn read_capped(body: &mut Body, max: usize) -> Result<Bytes, ApiError> {
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

pub fn epoch_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
