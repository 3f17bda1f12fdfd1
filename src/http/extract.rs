//! Request parts every trigger endpoint needs: the mapping, its authentication, a JSON body.

use super::error::ApiError;
use super::AppState;
use crate::config::secret::constant_time_eq;
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
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = match auth {
        TriggerAuth::Bearer { token } => presented
            .strip_prefix("Bearer ")
            .is_some_and(|t| token.matches(t.trim().as_bytes())),
        TriggerAuth::Basic { username, password } => presented
            .strip_prefix("Basic ")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|d| d.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
            // Both compared, always: no early exit on a wrong user name.
            .is_some_and(|(u, p)| {
                constant_time_eq(username.as_bytes(), u.as_bytes()) & password.matches(p.as_bytes())
            }),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unauthorized {
            challenge: match auth {
                TriggerAuth::Bearer { .. } => "Bearer realm=\"pegabridge\"",
                TriggerAuth::Basic { .. } => "Basic realm=\"pegabridge\"",
            },
        })
    }
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
