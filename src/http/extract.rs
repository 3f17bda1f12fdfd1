//! Request parts the endpoints need: the mapping, authentication, a JSON body.

use super::error::ApiError;
use super::AppState;
use crate::config::secret::{constant_time_eq, Secret};
use crate::mapping::{Mapping, TriggerAuth};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;
use std::sync::Arc;

/// The mapping called `name`, or 404.
pub fn mapping(state: &AppState, name: &str) -> Result<Arc<Mapping>, ApiError> {
    state
        .mappings
        .get(name)
        .ok_or_else(|| ApiError::NotFound(format!("no mapping named `{name}`")))
}

/// Checks the `Authorization` header against the mapping's credentials (constant time).
pub fn authorize(auth: &TriggerAuth, headers: &HeaderMap) -> Result<(), ApiError> {
    match auth {
        TriggerAuth::Bearer { token } => require_bearer(token, headers),
        TriggerAuth::Basic { username, password } => basic_matches(headers, username, password)
            .then_some(())
            .ok_or(ApiError::Unauthorized {
                challenge: "Basic realm=\"pegabridge\"",
            }),
    }
}

/// Whether `Authorization: Basic` carries this user name and password (both compared, always,
/// in constant time: no early exit on a wrong user name).
pub(crate) fn basic_matches(headers: &HeaderMap, username: &str, password: &Secret) -> bool {
    presented(headers, "Basic ")
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|d| d.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
        .is_some_and(|(u, p)| {
            constant_time_eq(username.as_bytes(), u.as_bytes()) & password.matches(p.as_bytes())
        })
}

/// Checks `Authorization: Bearer TOKEN` (constant time).
pub fn require_bearer(token: &Secret, headers: &HeaderMap) -> Result<(), ApiError> {
    presented(headers, "Bearer ")
        .is_some_and(|t| token.matches(t.trim().as_bytes()))
        .then_some(())
        .ok_or(ApiError::Unauthorized {
            challenge: "Bearer realm=\"pegabridge\"",
        })
}

/// The credentials after `scheme` in the `Authorization` header.
fn presented<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(scheme))
}

/// The body as JSON: 413 over the limit, 415 when not declared JSON, 400 when malformed.
pub fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Value, ApiError> {
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::BadRequest(r.body_text()),
    })?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
}
