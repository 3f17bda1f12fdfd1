//! `POST /webhooks/{mapping}` (Pega's triggers) and `POST /preview/{mapping}`.

use super::error::ApiError;
use super::extract::{authorize, idempotency_key, json_body, mapping};
use super::AppState;
use crate::broadcast::{accept, preview, Preview};
use crate::store::TriggerAnswer;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};

/// The trigger routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/{mapping}", post(trigger))
        .route("/preview/{mapping}", post(preview_trigger))
}

async fn trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TriggerAnswer>), ApiError> {
    let mapping = mapping(&state, &name)?;
    authorize(&mapping.file.auth, &headers)?;
    let key = idempotency_key(&headers)?;
    let trigger = json_body(&headers, body)?;
    let answer = accept(
        &state.store,
        &state.account,
        &state.variables,
        &mapping,
        &trigger,
        key.as_deref(),
    )
    .await?;
    tracing::info!(
        mapping = name.as_str(),
        broadcast_id = answer.broadcast_id,
        recipients = answer.recipients.len(),
        "trigger accepted"
    );
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

#[derive(serde::Deserialize)]
struct PreviewQuery {
    #[serde(default)]
    html: bool,
}

async fn preview_trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Preview>, ApiError> {
    let mapping = mapping(&state, &name)?;
    authorize(&mapping.file.auth, &headers)?;
    // Parsed only once the caller is known.
    let query: PreviewQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let trigger = json_body(&headers, body)?;
    let p = preview(
        &state.account,
        &state.plan,
        &state.variables,
        &mapping,
        &trigger,
        query.html,
    )?;
    Ok(Json(p))
}
