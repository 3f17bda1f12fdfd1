//! The operator API behind `[admin] token`: deliveries, replays, pausing; and `GET /metrics`.

use super::error::ApiError;
use super::extract::{Admin, JsonBody};
use super::AppState;
use crate::store::Replay;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// The admin and metrics routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/deliveries", get(list))
        .route("/admin/deliveries/replay", post(replay))
        .route("/admin/deliveries/{uuid}", get(show))
        .route("/admin/sends", get(sends))
        .route("/admin/sends/replay", post(replay_sends))
        .route("/admin/sends/{uuid}", get(send))
        .route("/admin/delivery/pause", post(pause))
        .route("/admin/delivery/resume", post(resume))
        // Operator bodies are a few bytes: a small limit of their own.
        .layer(axum::extract::DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
}

/// The largest admin request body.
const ADMIN_BODY_LIMIT: usize = 16 * 1024;

/// Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "admin",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
              (status = 503, description = "The store cannot answer now", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let stats = state
        .store
        .outbox()
        .outbox_stats()
        .await
        .map_err(ApiError::store)?;
    if let Some(mail) = &state.mail_status {
        let queue = state
            .store
            .backend()
            .send_queue()
            .await
            .map_err(ApiError::store)?;
        mail.queue(queue);
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&stats),
    ))
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/admin/deliveries", tag = "admin",
    params(("status" = Option<String>, Query, description = "pending, inflight, delivered, dead or filtered"),
           ("limit" = Option<u32>, Query, description = "At most this many (default 100, at most 10000)")),
    security(("bearer" = [])),
    responses((status = 200, description = "Events, newest first", body = Object), (status = 400, description = "Malformed query or body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q: ListQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let status = match &q.status {
        Some(s) => Some(
            s.parse::<crate::store::Status>()
                .map_err(|e| ApiError::BadRequest(format!("status: {e}")))?,
        ),
        None => None,
    };
    let rows = state
        .store
        .outbox()
        .deliveries(status, q.limit.unwrap_or(100).min(10_000))
        .await
        .map_err(ApiError::store)?;
    Ok(Json(json!({ "deliveries": rows })))
}

#[utoipa::path(get, path = "/admin/deliveries/{uuid}", tag = "admin",
    params(("uuid" = String, Path, description = "The event's uuid"),
           ("sink" = Option<String>, Query, description = "The event's row for this sink: `pega` or `kafka` (default: its first)")),
    security(("bearer" = [])),
    responses((status = 200, description = "The event and every attempt", body = Object), (status = 400, description = "Malformed query or body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such event", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn show(
    State(state): State<AppState>,
    _: Admin,
    Path(uuid): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q: ShowQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let sink = match q.sink.as_deref() {
        None => None,
        Some(s) => Some(
            s.parse::<crate::outbox::Lane>()
                .map_err(|e| ApiError::BadRequest(format!("sink: {e}")))?,
        ),
    };
    let found = state
        .store
        .outbox()
        .delivery(uuid.clone(), sink)
        .await
        .map_err(ApiError::store)?;
    let (row, event, attempts) = found.ok_or_else(|| {
        ApiError::NotFound(format!("no event with uuid `{}`", super::error::cut(&uuid)))
    })?;
    Ok(Json(
        json!({"delivery": row, "event": event, "attempts": attempts}),
    ))
}

/// `GET /admin/deliveries/{uuid}?sink=kafka`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShowQuery {
    sink: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    uuid: Option<String>,
    status: Option<String>,
    /// Unix seconds, or an age such as `2h` (as the CLI takes).
    since: Option<Value>,
}

/// A replay body's `since`: Unix seconds, or an age such as `2h` (as the CLI takes).
fn since(t: &Value) -> Result<i64, ApiError> {
    let text = match t {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    crate::outbox::parse_since(&text, crate::event::now())
        .map_err(|e| ApiError::BadRequest(format!("since: {e:#}")))
}

#[utoipa::path(post, path = "/admin/deliveries/replay", tag = "admin",
    request_body(content = Object, content_type = "application/json",
        description = "`uuid`, or `status` (dead, filtered, delivered) with an optional `since` (Unix seconds or an age like 2h)"),
    security(("bearer" = [])),
    responses((status = 200, description = "How many events will be delivered again", body = Object),
              (status = 400, description = "Malformed query or body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now", body = crate::http::openapi::ErrorBody), (status = 415, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 422, description = "A value that cannot be stored", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn replay(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let body: ReplayBody =
        serde_json::from_value(body).map_err(|e| ApiError::BadRequest(format!("replay: {e}")))?;
    let done = match &body.status {
        Some(s) => Some(
            s.parse::<crate::store::Done>()
                .map_err(|e| ApiError::BadRequest(format!("status: {e}")))?,
        ),
        None => None,
    };
    let which = match (body.uuid, done, body.since) {
        (Some(u), None, None) => Replay::Uuid(u),
        (None, Some(status), None) => Replay::Status(status),
        (None, Some(status), Some(t)) => Replay::Since {
            since: since(&t)?,
            status,
        },
        (None, None, Some(_)) => {
            return Err(ApiError::BadRequest(
                "`since` needs a `status` (dead, filtered or delivered)".into(),
            ))
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give `uuid`, or `status` (with `since` if wanted)".into(),
            ))
        }
    };
    let n = state
        .store
        .outbox()
        .replay(which)
        .await
        .map_err(ApiError::store)?;
    state.outbox.notify_one();
    state.store.wake_all();
    Ok(Json(json!({ "replayed": n })))
}

#[utoipa::path(post, path = "/admin/delivery/pause", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Paused", body = Object), (status = 400, description = "Malformed query or body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn pause(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Value>, ApiError> {
    state
        .store
        .outbox()
        .set_paused(true)
        .await
        .map_err(ApiError::store)?;
    Ok(Json(json!({ "paused": true })))
}

#[utoipa::path(post, path = "/admin/delivery/resume", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Resumed", body = Object), (status = 400, description = "Malformed query or body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn resume(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Value>, ApiError> {
    state
        .store
        .outbox()
        .set_paused(false)
        .await
        .map_err(ApiError::store)?;
    state.outbox.notify_one();
    state.store.wake_all();
    Ok(Json(json!({ "paused": false })))
}

#[utoipa::path(get, path = "/admin/sends", tag = "admin",
    params(("status" = Option<String>, Query, description = "pending, inflight, sent, bounced, failed or dead"),
           ("limit" = Option<u32>, Query, description = "At most this many (default 100, at most 10000)")),
    security(("bearer" = [])),
    responses((status = 200, description = "Sends of `[mail]`, newest first, each with its last failure (the stage and the relay's answer)", body = Object), (status = 400, description = "Malformed query", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn sends(
    State(state): State<AppState>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q: ListQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<crate::store::SendStatus>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("status: {e}")))?;
    let rows = state
        .store
        .backend()
        .sends(status, q.limit.unwrap_or(100).min(10_000))
        .await
        .map_err(ApiError::store)?;
    Ok(Json(json!({ "sends": rows })))
}

#[utoipa::path(get, path = "/admin/sends/{uuid}", tag = "admin",
    params(("uuid" = String, Path, description = "The personal broadcast's uuid")),
    security(("bearer" = [])),
    responses((status = 200, description = "The send", body = Object), (status = 401, description = "Missing or wrong admin token", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such send", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn send(
    State(state): State<AppState>,
    _: Admin,
    Path(uuid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = state
        .store
        .backend()
        .send(uuid.clone())
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| {
            ApiError::NotFound(format!("no send with uuid `{}`", super::error::cut(&uuid)))
        })?;
    Ok(Json(json!({ "send": row })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendReplayBody {
    uuid: Option<String>,
    /// Only `dead`: a bounced or failed send's customer got a bounce.
    status: Option<String>,
    since: Option<Value>,
}

#[utoipa::path(post, path = "/admin/sends/replay", tag = "admin",
    request_body(content = Object, content_type = "application/json",
        description = "`uuid` of a dead send, or `status: \"dead\"` with an optional `since` (Unix seconds or an age like 2h)"),
    security(("bearer" = [])),
    responses((status = 200, description = "How many dead sends will be sent again", body = Object),
              (status = 400, description = "Malformed body", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = crate::http::openapi::ErrorBody), (status = 415, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 422, description = "A value that cannot be stored", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn replay_sends(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    use crate::store::SendReplay;
    let body: SendReplayBody =
        serde_json::from_value(body).map_err(|e| ApiError::BadRequest(format!("replay: {e}")))?;
    if let Some(s) = body.status.as_deref().filter(|s| *s != "dead") {
        return Err(ApiError::BadRequest(format!(
            "status: only dead sends are sent again (`{}`: its customer got a bounce, or it is on its way)",
            super::error::cut(s)
        )));
    }
    let which = match (body.uuid, body.status, body.since) {
        (Some(u), None, None) => SendReplay::Uuid(u),
        (None, Some(_), t) => SendReplay::Dead {
            since: t.as_ref().map(since).transpose()?,
        },
        _ => {
            return Err(ApiError::BadRequest(
                "give `uuid`, or `status: \"dead\"` (with `since` if wanted)".into(),
            ))
        }
    };
    let n = state
        .store
        .backend()
        .replay_sends(which)
        .await
        .map_err(ApiError::store)?;
    if let Some(wake) = &state.mail {
        wake.notify_one();
    }
    Ok(Json(json!({ "replayed": n })))
}
