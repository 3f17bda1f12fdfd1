//! The operator API behind `[admin] token`: deliveries, replays, pausing; and `GET /metrics`.

use super::error::ApiError;
use super::extract::require_bearer;
use super::AppState;
use crate::store::Replay;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
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
        .route("/admin/delivery/pause", post(pause))
        .route("/admin/delivery/resume", post(resume))
}

fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = state.admin_token.as_ref().ok_or(ApiError::Unauthorized {
        challenge: "Bearer realm=\"pegabridge-admin\"",
    })?;
    require_bearer(token, headers)
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let stats = state
        .store
        .outbox_stats()
        .await
        .map_err(ApiError::Internal)?;
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

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    let rows = state
        .store
        .deliveries(q.status, q.limit.unwrap_or(100))
        .await
        .map_err(ApiError::Internal)?;
    Ok(Json(json!({ "deliveries": rows })))
}

async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    let found = state
        .store
        .delivery(uuid.clone())
        .await
        .map_err(ApiError::Internal)?;
    let (row, event, attempts) =
        found.ok_or_else(|| ApiError::NotFound(format!("no event with uuid `{uuid}`")))?;
    Ok(Json(
        json!({"delivery": row, "event": event, "attempts": attempts}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    uuid: Option<String>,
    status: Option<String>,
    since: Option<i64>,
}

async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<ReplayBody>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    let which = match body {
        ReplayBody {
            uuid: Some(u),
            status: None,
            since: None,
        } => Replay::Uuid(u),
        ReplayBody {
            uuid: None,
            status: Some(s),
            since: None,
        } => Replay::Status(s),
        ReplayBody {
            uuid: None,
            status: None,
            since: Some(t),
        } => Replay::Since(t),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `uuid`, `status`, `since`".into(),
            ))
        }
    };
    let n = state
        .store
        .replay(which)
        .await
        .map_err(ApiError::Internal)?;
    state.outbox.notify_one();
    Ok(Json(json!({ "replayed": n })))
}

async fn pause(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    state
        .store
        .set_paused(true)
        .await
        .map_err(ApiError::Internal)?;
    Ok(Json(json!({ "paused": true })))
}

async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers)?;
    state
        .store
        .set_paused(false)
        .await
        .map_err(ApiError::Internal)?;
    state.outbox.notify_one();
    Ok(Json(json!({ "paused": false })))
}
