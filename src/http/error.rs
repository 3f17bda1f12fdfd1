//! One error shape for every answer that is not a success:
//! `{"error": {"code": "...", "message": "...", "field": "...", "fields": [...]}}`.

use crate::broadcast::TriggerError;
use crate::mapping::apply::FieldError;
use crate::store::StoreError;
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
    /// A request expands beyond a configured limit (`field` names the limit's key).
    TooLarge(FieldError),
    /// A trigger breaks its mapping's rules.
    Unprocessable(Vec<FieldError>),
    /// Activities break the activity rules.
    InvalidActivity(Vec<FieldError>),
    /// A value one of the backends cannot store.
    Unstorable(FieldError),
    /// A header that cannot be used.
    BadHeader {
        name: &'static str,
        message: String,
    },
    Unavailable,
    /// Another writer changed the same thing at the same time.
    Conflict(String),
    /// A mail platform's request failed its signature check.
    BadSignature(String),
    /// The route exists, the method does not.
    MethodNotAllowed(String),
    /// The request took longer than `[server] request_timeout_secs`.
    Timeout(std::time::Duration),
    /// Delivery is not running (the worker is restarting or stopped).
    NotRunning(String),
    /// Another background task (mail, retention) is not running.
    TaskNotRunning(String),
    /// Too many requests of a kind at once (503 with `Retry-After`).
    Busy(String),
    /// A request body that did not arrive in time (408).
    BodyTimeout(std::time::Duration),
    Internal(anyhow::Error),
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        match e {
            TriggerError::Invalid(fields) => Self::Unprocessable(fields),
            TriggerError::TooLarge(limit) => Self::TooLarge(limit),
            TriggerError::Render(e) => Self::Internal(e.into()),
            TriggerError::Store(e) => Self::store(e),
        }
    }
}

impl ApiError {
    /// A store failure: 503 with `Retry-After` when the store cannot take the request now (a
    /// full disk, a locked or unreachable database), 409 for a race that retries did not
    /// settle, 422 for an unknown personal broadcast, 404 for what does not exist, 500 else.
    pub fn store(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "the store cannot take the request");
                Self::Unavailable
            }
            StoreError::UnknownBroadcast { index, .. } => Self::InvalidActivity(vec![FieldError {
                field: "broadcast_id".into(),
                path: format!("{index}.broadcast_id"),
                message: e.to_string(),
            }]),
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            StoreError::Conflict(why) => Self::Conflict(why),
            StoreError::Other(e) => Self::Internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthorized { challenge } => {
                tracing::warn!("refused: missing or wrong credentials");
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
                r
            }
            Self::TooLarge(limit) => error_body(
                StatusCode::PAYLOAD_TOO_LARGE,
                "limit_exceeded",
                format!("{} ({})", limit.message, limit.path),
                Some(&limit.field),
                None,
            ),
            Self::Unprocessable(errors) => unprocessable("invalid_trigger", errors),
            Self::InvalidActivity(errors) => unprocessable("invalid_activity", errors),
            Self::Unstorable(e) => error_body(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unstorable_value",
                format!("{} ({}): {}", e.field, e.path, e.message),
                Some(&e.field),
                Some(json!([e])),
            ),
            Self::Unavailable => retry_after(
                "5",
                "unavailable",
                "the store cannot take the request now; retry later".into(),
            ),
            Self::Busy(why) => retry_after("1", "busy", why),
            Self::Timeout(limit) => retry_after(
                "1",
                "timeout",
                format!(
                    "the request took longer than server.request_timeout_secs ({} s)",
                    limit.as_secs()
                ),
            ),
            plain => {
                let (status, code, message, field) = plain.plain();
                error_body(status, code, message, field, None)
            }
        }
    }
}

impl ApiError {
    /// The status, code, message and field of an error whose answer is the plain body.
    fn plain(self) -> (StatusCode, &'static str, String, Option<&'static str>) {
        match self {
            Self::NotFound(what) => (StatusCode::NOT_FOUND, "not_found", what, None),
            Self::Conflict(why) => (StatusCode::CONFLICT, "conflict", why, None),
            Self::BadSignature(why) => (StatusCode::UNAUTHORIZED, "bad_signature", why, None),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)".into(),
                Some("Content-Type"),
            ),
            Self::BadRequest(msg) => (StatusCode::BAD_REQUEST, "malformed_json", msg, None),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than server.body_limit".into(),
                None,
            ),
            Self::BadHeader { name, message } => (
                StatusCode::BAD_REQUEST,
                "invalid_header",
                message,
                Some(name),
            ),
            Self::MethodNotAllowed(method) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on this route"),
                None,
            ),
            Self::NotRunning(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "delivery_not_running",
                why,
                None,
            ),
            Self::BodyTimeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {} s (server.unverified_body_secs)",
                    limit.as_secs()
                ),
                None,
            ),
            Self::TaskNotRunning(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "task_not_running",
                why,
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
                )
            }
            other => unreachable!("answered with its own body: {other:?}"),
        }
    }
}

/// 503 with `Retry-After: secs`.
fn retry_after(secs: &'static str, code: &str, message: String) -> Response {
    let mut r = error_body(StatusCode::SERVICE_UNAVAILABLE, code, message, None, None);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
    r
}

/// Most field errors listed in one answer (the count of the others is given).
const LISTED_ERRORS: usize = 100;

/// 422 with every failing field (up to [`LISTED_ERRORS`]), each with its path.
fn unprocessable(code: &str, errors: Vec<FieldError>) -> Response {
    let first = errors.first().map(|e| e.field.clone());
    let total = errors.len();
    let listed = &errors[..total.min(LISTED_ERRORS)];
    let mut message = listed
        .iter()
        .take(10)
        .map(|e| format!("{} ({}): {}", e.field, e.path, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    if total > 10 {
        message.push_str(&format!("; and {} more", total - 10));
    }
    let mut r = error_body(
        StatusCode::UNPROCESSABLE_ENTITY,
        code,
        message,
        first.as_deref(),
        Some(json!(listed)),
    );
    if total > LISTED_ERRORS {
        if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
            r.headers_mut().insert("x-error-count", v);
        }
    }
    r
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

pub use crate::quote::cut;
