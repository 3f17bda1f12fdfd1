//! One error shape for every answer that is not a success:
//! `{"error": {"code": "...", "message": "...", "field": "...", "fields": [...]}}`.

use crate::broadcast::TriggerError;
use crate::mapping::apply::FieldError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub enum ApiError {
    NotFound(String),
    Unauthorized {
        challenge: &'static str,
    },
    UnsupportedMediaType,
    BadRequest(String),
    PayloadTooLarge,
    Unprocessable(Vec<FieldError>),
    Unavailable,
    /// The route exists, the method does not.
    MethodNotAllowed(String),
    /// The request took longer than `[server] request_timeout_secs`.
    Timeout(std::time::Duration),
    /// Delivery is not running (the worker is restarting or stopped).
    NotRunning(String),
    Internal(anyhow::Error),
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        match e {
            TriggerError::Invalid(fields) => Self::Unprocessable(fields),
            TriggerError::Render(e) => Self::Internal(e.into()),
            TriggerError::Store(e) => Self::Internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, field, fields) = match self {
            Self::NotFound(what) => (StatusCode::NOT_FOUND, "not_found", what, None, None),
            Self::Unauthorized { challenge } => {
                let mut r = error_body(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or wrong credentials".into(),
                    Some("Authorization"),
                    None,
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                return r;
            }
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)".into(),
                Some("Content-Type"),
                None,
            ),
            Self::BadRequest(msg) => (StatusCode::BAD_REQUEST, "malformed_json", msg, None, None),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than server.body_limit".into(),
                None,
                None,
            ),
            Self::Unprocessable(errors) => {
                let first = errors.first().map(|e| e.field.clone());
                let message = errors
                    .iter()
                    .map(|e| format!("{} ({}): {}", e.field, e.path, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                return error_body(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_trigger",
                    message,
                    first.as_deref(),
                    Some(json!(errors)),
                );
            }
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the store does not answer".into(),
                None,
                None,
            ),
            Self::MethodNotAllowed(method) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on this route"),
                None,
                None,
            ),
            Self::Timeout(limit) => {
                let mut r = error_body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    format!(
                        "the request took longer than server.request_timeout_secs ({} s)",
                        limit.as_secs()
                    ),
                    None,
                    None,
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
            Self::NotRunning(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "delivery_not_running",
                why,
                None,
                None,
            ),
            Self::Internal(e) => {
                // Logged once here; the answer never carries internals.
                tracing::error!(error = format!("{e:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".into(),
                    None,
                    None,
                )
            }
        };
        error_body(status, code, message, field, fields)
    }
}

fn error_body(
    status: StatusCode,
    code: &str,
    message: String,
    field: Option<&str>,
    fields: Option<serde_json::Value>,
) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some(f) = field {
        error["field"] = json!(f);
    }
    if let Some(fs) = fields {
        error["fields"] = fs;
    }
    (status, Json(json!({ "error": error }))).into_response()
}
