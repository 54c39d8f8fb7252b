//! Router tests through `oneshot`, no socket. Redis is pointed at a closed
//! port, so every path that needs it must answer 503, never 2xx; the token
//! cache is seeded to reach the steps after authentication.

use std::time::{Duration, Instant};

use crate::routes::App;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::auth::{token_digest, Device};
use crate::{metrics, router, AppState, Config};

const TOKEN: &str = "vtd_test-token-active";
const DISABLED: &str = "vtd_test-token-disabled";

fn state_with(extra: &[(&str, &str)]) -> AppState {
    let mut vars = vec![
        ("REDIS_URL", "redis://127.0.0.1:1/0"),
        ("VT_REDIS_TIMEOUT_MS", "300"),
        ("VT_MAX_BODY_BYTES", "64"),
        ("VT_RETRY_AFTER_SECONDS", "3"),
    ];
    vars.extend_from_slice(extra);
    let owned: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let config = Config::from_lookup(move |n| owned.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())).unwrap();
    let state = AppState::new(config, metrics::install()).unwrap();
    let now = Instant::now();
    state.tokens.insert(token_digest(TOKEN), Some(Device { id: 7, active: true }), now);
    state.tokens.insert(token_digest(DISABLED), Some(Device { id: 8, active: false }), now);
    state
}

fn app() -> App {
    router(state_with(&[]))
}

fn ingest(token: Option<&str>, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::builder().method(Method::POST).uri("/api/ingest");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(body.into()).unwrap()
}

async fn send(app: App, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app.oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (parts.status, parts.headers, value)
}

fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn healthz_is_ok_while_serving() {
    let (status, _, body) = send(app(), get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_is_503_when_redis_is_down() {
    let (status, headers, body) = send(app(), get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "3");
    assert_eq!(body["error"], "unavailable");
}

#[tokio::test]
async fn unknown_routes_are_404_in_the_error_format() {
    let (status, _, body) = send(app(), get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    assert_eq!(body["details"], json!([]));
}

#[tokio::test]
async fn wrong_method_is_405_in_the_error_format() {
    let (status, _, body) = send(app(), get("/api/ingest")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"], "method_not_allowed");
}

#[tokio::test]
async fn missing_or_garbled_authorization_is_401() {
    for req in [
        ingest(None, Some("application/json"), r#"{"a":1}"#),
        Request::post("/api/ingest").header(header::AUTHORIZATION, "Token abc").body(Body::empty()).unwrap(),
        Request::post("/api/ingest").header(header::AUTHORIZATION, "Bearer ").body(Body::empty()).unwrap(),
    ] {
        let (status, headers, body) = send(app(), req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(body["error"], "unauthorized");
    }
}

#[tokio::test]
async fn a_disabled_device_is_403() {
    let (status, _, body) = send(app(), ingest(Some(DISABLED), Some("application/json"), r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "forbidden");
}

#[tokio::test]
async fn an_uncached_token_with_redis_down_is_503_not_401() {
    let (status, headers, body) =
        send(app(), ingest(Some("vtd_unknown"), Some("application/json"), r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "3");
    assert_eq!(body["error"], "unavailable");
}

#[tokio::test]
async fn valid_data_with_redis_down_is_503_never_2xx() {
    let (status, headers, body) = send(app(), ingest(Some(TOKEN), Some("application/json"), r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "3");
    assert_eq!(body["error"], "unavailable");
}

#[tokio::test]
async fn validation_errors_come_before_any_write() {
    let (status, _, body) = send(app(), ingest(Some(TOKEN), Some("application/json"), r#"{"9a":1}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "validation_error", "message": "invalid readings; see details",
               "details": [{"index": 0, "field": "9a",
                            "message": "invalid metric name: must match ^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"}]})
    );
    let (status, _, body) = send(app(), ingest(Some(TOKEN), Some("application/json"), "{")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "malformed_json");
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let (status, _, body) = send(app(), ingest(Some(TOKEN), Some("text/plain"), r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["message"], "Content-Type must be application/json");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_before_reading() {
    // The body never ends: only the Content-Length check can answer in time.
    let (_tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
    let stream = Body::from_stream(tokio_stream_from(rx));
    let mut req = ingest(Some(TOKEN), Some("application/json"), stream);
    req.headers_mut().insert(header::CONTENT_LENGTH, "65".parse().unwrap());
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(2), send(app(), req)).await.unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["message"], "body exceeds 64 bytes");
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413() {
    let chunks: Vec<Result<&'static str, std::io::Error>> = (0..10).map(|_| Ok("[{\"a\":1},")).collect();
    let req = ingest(Some(TOKEN), Some("application/json"), Body::from_stream(futures_iter(chunks)));
    let (status, _, body) = send(app(), req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "payload_too_large");
}

#[tokio::test]
async fn backlog_over_the_high_water_mark_is_503() {
    let state = state_with(&[("VT_STREAM_HIGH_WATER", "10"), ("VT_STREAM_SHARDS", "2")]);
    // Device 7 writes to shard 1; only that shard is over the mark.
    state.shards[1].set_backlog(11);
    let (status, headers, body) =
        send(router(state.clone()), ingest(Some(TOKEN), Some("application/json"), r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "3");
    assert_eq!(body["message"], "stream backlog is over its high-water mark");

    state.shards[1].set_backlog(10);
    state.shards[0].set_backlog(1000);
    let (_, _, body) = send(router(state), ingest(Some(TOKEN), Some("application/json"), r#"{"a":1}"#)).await;
    assert_eq!(body["message"], "storage is unavailable", "the device's own shard is below the mark");
}

#[tokio::test]
async fn another_server_threads_state_sees_the_same_backlog() {
    let first = state_with(&[("VT_STREAM_HIGH_WATER", "10")]);
    let other = first.sharing_backlog().unwrap();
    let now = Instant::now();
    other.tokens.insert(token_digest(TOKEN), Some(Device { id: 7, active: true }), now);
    // The first server's sampler writes; the other server refuses on it.
    first.shards[0].set_backlog(11);
    let (status, _, body) = send(router(other), ingest(Some(TOKEN), Some("application/json"), r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["message"], "stream backlog is over its high-water mark");
}

#[tokio::test]
async fn a_request_past_its_deadline_is_503() {
    let state = state_with(&[("VT_REQUEST_TIMEOUT_MS", "100")]);
    let (_tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
    let req = ingest(Some(TOKEN), Some("application/json"), Body::from_stream(tokio_stream_from(rx)));
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(2), send(router(state), req)).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["message"], "request timed out");
}

#[tokio::test]
async fn metrics_use_route_templates_and_the_prefix() {
    let app = app();
    send(app.clone(), ingest(None, None, "")).await;
    send(app.clone(), get("/some/device/1234")).await;
    let response = app.oneshot(get("/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains(r#"visiontrack_ingestor_http_requests_total{route="/api/ingest",status="401"}"#), "{text}");
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(text.contains("visiontrack_ingestor_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains(r#"visiontrack_ingestor_ingest_rejected_total{reason="unauthorized"}"#), "{text}");
    assert!(text.contains(r#"visiontrack_ingestor_redis_errors_total{op="xadd"}"#), "pre-registered: {text}");
    assert!(text.contains("visiontrack_ingestor_backpressure_events_total"), "pre-registered: {text}");
    assert!(!text.contains("1234"), "raw paths must not become labels");
}

/// A body stream that yields what the channel sends (and stays open while the sender lives).
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn futures_iter(
    items: Vec<Result<&'static str, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<&'static str, std::io::Error>> + Send + 'static {
    futures_util::stream::iter(items)
}

fn thingsboard(token: &str, content_type: Option<&str>, body: &'static str) -> Request<Body> {
    let mut b = Request::builder().method(Method::POST).uri(format!("/api/v1/{token}/telemetry"));
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn thingsboard_telemetry_refuses_as_thingsboard_does() {
    let (status, _, _) = send(app(), thingsboard("vtd_unknown_but_cached", None, r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "an uncached token with Redis down is not 401");
    let state = state_with(&[]);
    state.tokens.insert(token_digest("vtd_gone"), None, Instant::now());
    let (status, _, body) = send(router(state.clone()), thingsboard("vtd_gone", None, r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthorized");
    let (status, _, _) = send(router(state.clone()), thingsboard(DISABLED, None, r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in ["{", r#"{"9a":1}"#] {
        let (status, _, _) = send(router(state.clone()), thingsboard(TOKEN, None, bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _, _) = send(router(state.clone()), thingsboard(TOKEN, Some("text/plain"), r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Valid, without a Content-Type: as far as the XADD, which Redis (down) refuses.
    let (status, headers, _) = send(router(state), thingsboard(TOKEN, None, r#"{"a":1}"#)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "3");
}

#[tokio::test]
async fn the_thingsboard_route_is_labelled_by_its_template_never_its_token() {
    let app = app();
    send(app.clone(), thingsboard("vtd_secret-in-path", None, "{}")).await;
    let response = app.oneshot(get("/metrics")).await.unwrap();
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains(r#"route="/api/v1/{token}/telemetry""#), "{text}");
    assert!(!text.contains("vtd_secret-in-path"), "{text}");
}
