//! Request parts the endpoints need, as extractors whose rejection is the API's own error:
//! the callers' credentials ([`ActivityCaller`], [`Admin`], [`MappingCaller`]) are checked
//! from the headers, before the body is read; the body comes last ([`JsonBody`]).

use super::error::ApiError;
use super::AppState;
use crate::config::secret::{basic_matches, presented, Secret};
use crate::mapping::{Mapping, TriggerAuth};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use std::sync::Arc;

/// A caller of `POST /activities`: the `[activities]` token, checked before the body is read.
pub struct ActivityCaller;

impl FromRequestParts<AppState> for ActivityCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = state
            .activity_token
            .as_ref()
            .ok_or(ApiError::Unauthorized {
                challenge: "Bearer realm=\"pegabridge\"",
            })?;
        require_bearer(token, &parts.headers)?;
        Ok(Self)
    }
}

/// An operator: the `[admin]` token (no token configured: nobody).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = state.admin_token.as_ref().ok_or(ApiError::Unauthorized {
            challenge: "Bearer realm=\"pegabridge-admin\"",
        })?;
        require_bearer(token, &parts.headers)?;
        Ok(Self)
    }
}

/// The mapping of the path (`/webhooks/{mapping}`, `/preview/{mapping}`), its caller
/// authorized by the mapping's credentials: 404 for an unknown mapping, 401 for wrong
/// credentials, both before the body is read.
pub struct MappingCaller {
    pub name: String,
    pub mapping: Arc<Mapping>,
}

impl FromRequestParts<AppState> for MappingCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let mapping = mapping(state, &name)?;
        authorize(&mapping.file.auth, &parts.headers)?;
        Ok(Self { name, mapping })
    }
}

/// A JSON body: 413 over the limit, 415 when not declared JSON, 400 when malformed, 422 with
/// what a backend cannot store. Read last, after the credentials.
pub struct JsonBody(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        JsonText::from_request(req, state)
            .await?
            .value()
            .map(JsonBody)
    }
}

/// The mapping called `name` (cut when quoted), or 404.
pub fn mapping(state: &AppState, name: &str) -> Result<Arc<Mapping>, ApiError> {
    state.mappings.get(name).ok_or_else(|| {
        ApiError::NotFound(format!("no mapping named `{}`", super::error::cut(name)))
    })
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

/// Checks `Authorization: Bearer TOKEN` (constant time).
pub fn require_bearer(token: &Secret, headers: &HeaderMap) -> Result<(), ApiError> {
    presented(headers, "Bearer ")
        .is_some_and(|t| token.matches(t.trim().as_bytes()))
        .then_some(())
        .ok_or(ApiError::Unauthorized {
            challenge: "Bearer realm=\"pegabridge\"",
        })
}

/// Whether the request says its body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || v.ends_with("+json"))
}

/// A JSON body as its text, for a caller that may read part of it apart (a bulk trigger's
/// recipients): 413 over the limit, 415 when not declared JSON; [`JsonText::value`] parses it
/// whole as [`JsonBody`] does. Read last, after the credentials.
pub struct JsonText(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonText {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let declared_json = is_json(req.headers());
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|r| match r.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                _ => ApiError::BadRequest(r.body_text()),
            })?;
        if !declared_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        Ok(JsonText(body))
    }
}

impl JsonText {
    /// The whole body parsed: 400 when malformed, 422 with what a backend cannot store.
    pub fn value(&self) -> Result<serde_json::Value, ApiError> {
        let value: serde_json::Value = serde_json::from_slice(&self.0)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
        storable(&value, &mut String::new())?;
        Ok(value)
    }
}

/// Refuses what a backend cannot store (a NUL character, which PostgreSQL's text and jsonb
/// refuse), on both backends alike, naming where it is.
fn storable(value: &serde_json::Value, path: &mut String) -> Result<(), ApiError> {
    use serde_json::Value;
    let nul = |path: &str| {
        Err(ApiError::Unstorable(crate::mapping::apply::FieldError {
            field: path.rsplit('.').next().unwrap_or_default().to_owned(),
            path: path.to_owned(),
            message: "contains a NUL character (U+0000), which cannot be stored".into(),
        }))
    };
    match value {
        Value::String(s) if s.contains('\0') => nul(path),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&i.to_string());
                storable(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                if key.contains('\0') {
                    return nul(path);
                }
                storable(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The longest `Idempotency-Key` accepted.
const IDEMPOTENCY_KEY_BYTES: usize = 255;

/// The `Idempotency-Key` header: absent, or visible ASCII of at most 255 bytes (anything
/// else is refused, never ignored: an ignored key would store the trigger twice).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > IDEMPOTENCY_KEY_BYTES
        || !bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
    {
        return Err(ApiError::BadHeader {
            name: "Idempotency-Key",
            message: format!(
                "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES} bytes of visible ASCII"
            ),
        });
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}
