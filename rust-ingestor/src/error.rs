//! The one error type of the service and its JSON shape
//! `{"error": code, "message": text, "details": [...]}` (docs/api.md, "Errors").

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One problem with one message of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detail {
    pub index: usize,
    /// `None` for a problem of the whole message (serialized as `null`).
    pub field: Option<String>,
    pub message: Cow<'static, str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("body is not valid JSON")]
    MalformedJson,
    #[error("{message}")]
    Validation { message: Cow<'static, str>, details: Vec<Detail> },
    #[error("missing or unknown device token")]
    Unauthorized,
    #[error("device is disabled")]
    Forbidden,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Redis is unreachable, too slow, or the stream is over its high-water mark.
    #[error("{message}")]
    Unavailable { message: &'static str, retry_after_seconds: u32 },
    /// The device is over its rate limit (`reason`: which budget, the metrics' label).
    #[error("{message}")]
    RateLimited { message: String, retry_after_seconds: u32, reason: &'static str },
}

impl ApiError {
    pub fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Validation { message: message.into(), details: Vec::new() }
    }

    /// The `error` code of the JSON body; also the `reason` label of rejections.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::MalformedJson => "malformed_json",
            Self::Validation { .. } => "validation_error",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable { .. } => "unavailable",
            Self::RateLimited { .. } => "rate_limited",
        }
    }

    /// The `reason` label of rejections: the code, or which rate limit refused.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RateLimited { reason, .. } => reason,
            other => other.code(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MalformedJson | Self::Validation { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn details(&self) -> &[Detail] {
        match self {
            Self::Validation { details, .. } => details,
            _ => &[],
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    message: String,
    details: &'a [Detail],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body { error: self.code(), message: self.to_string(), details: self.details() };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status(), [(header::CONTENT_TYPE, "application/json")], json).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unavailable { retry_after_seconds, .. } | Self::RateLimited { retry_after_seconds, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
            }
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn render(e: ApiError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let r = e.into_response();
        let (parts, body) = r.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn validation_errors_carry_their_details() {
        let e = ApiError::Validation {
            message: "invalid readings; see details".into(),
            details: vec![Detail { index: 2, field: None, message: "must be an object".into() }],
        };
        let (status, headers, body) = render(e).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body,
            serde_json::json!({"error": "validation_error", "message": "invalid readings; see details",
                "details": [{"index": 2, "field": null, "message": "must be an object"}]})
        );
    }

    #[tokio::test]
    async fn unavailable_sets_retry_after() {
        let (status, headers, body) =
            render(ApiError::Unavailable { message: "stream backlog over high-water mark", retry_after_seconds: 7 })
                .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "7");
        assert_eq!(body["error"], "unavailable");
        assert_eq!(body["details"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn rate_limited_is_429_with_retry_after() {
        let e = ApiError::RateLimited {
            message: "device 12 exceeds its 1000 readings/s limit (burst 5000); retry after 2 s".into(),
            retry_after_seconds: 2,
            reason: "rate_limited",
        };
        let (status, headers, body) = render(e).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(
            body,
            serde_json::json!({"error": "rate_limited", "details": [],
                "message": "device 12 exceeds its 1000 readings/s limit (burst 5000); retry after 2 s"})
        );
    }

    #[tokio::test]
    async fn every_code_maps_to_its_status() {
        for (e, code, status) in [
            (ApiError::UnsupportedMediaType, "unsupported_media_type", 415),
            (ApiError::PayloadTooLarge(10), "payload_too_large", 413),
            (ApiError::MalformedJson, "malformed_json", 400),
            (ApiError::Unauthorized, "unauthorized", 401),
            (ApiError::Forbidden, "forbidden", 403),
            (ApiError::NotFound, "not_found", 404),
            (ApiError::MethodNotAllowed, "method_not_allowed", 405),
        ] {
            let (s, _, body) = render(e).await;
            assert_eq!(s.as_u16(), status);
            assert_eq!(body["error"], code);
        }
    }
}
