//! `POST /webhooks/{mapping}` (Pega's triggers) and `POST /preview/{mapping}`.

use super::error::ApiError;
use super::extract::{idempotency_key, JsonBody, JsonText, MappingCaller};
use super::AppState;
use crate::broadcast::{accept, preview, Preview, Trigger};
use crate::recording::TriggerAnswer;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};

/// The trigger routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/{mapping}", post(trigger))
        .route("/preview/{mapping}", post(preview_trigger))
}

/// Pega's trigger: recipients and manual fields where the mapping says.
#[utoipa::path(post, path = "/webhooks/{mapping}", tag = "triggers",
    params(("mapping" = String, Path, description = "The mapping's name (mappings/NAME.toml)", example = "offer"),
           ("Idempotency-Key" = Option<String>, Header, description = "A repeat answers the first answer")),
    request_body(content = Object, content_type = "application/json",
        example = json!({"Offer": {"UniqueOfferId": "OFFER-1"}, "Customers": [{"Email": "ann@example.com", "CustomerID": "194076", "InteractionID": "-563481321460449721"}]})),
    security(("bearer" = []), ("basic" = [])),
    responses((status = 202, description = "Committed", body = TriggerAnswer), (status = 400, description = "Malformed JSON, query or header", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong credentials", body = crate::http::openapi::ErrorBody), (status = 404, description = "Unknown mapping or route", body = crate::http::openapi::ErrorBody), (status = 405, description = "Method not allowed", body = crate::http::openapi::ErrorBody), (status = 413, description = "Body or expansion over a limit", body = crate::http::openapi::ErrorBody), (status = 415, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 422, description = "Fields break the rules", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now, or the request timed out", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn trigger(
    State(state): State<AppState>,
    MappingCaller { name, mapping }: MappingCaller,
    headers: HeaderMap,
    body: JsonText,
) -> Result<(StatusCode, Json<TriggerAnswer>), ApiError> {
    // A bulk trigger's recipients are parsed one at a time; anything else whole.
    let trigger = match crate::mapping::bulk::split(&body.0, &mapping) {
        Some(split) => Trigger::Split(split),
        None => Trigger::Whole(body.value()?),
    };
    let key = idempotency_key(&headers)?;
    let answer = accept(
        &state.store,
        &state.account,
        &state.variables,
        &mapping,
        trigger,
        key.as_deref(),
    )
    .await?;
    if let Some(mail) = &state.mail {
        mail.notify_one();
    }
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

/// What a trigger would send, stored and sent nowhere.
#[utoipa::path(post, path = "/preview/{mapping}", tag = "triggers",
    params(("mapping" = String, Path, description = "The mapping's name", example = "offer"),
           ("html" = Option<bool>, Query, description = "Include the personalized HTML")),
    request_body(content = Object, content_type = "application/json",
        example = json!({"Offer": {"UniqueOfferId": "OFFER-1"}, "Customers": [{"Email": "ann@example.com", "CustomerID": "194076", "InteractionID": "-563481321460449721"}]})),
    security(("bearer" = []), ("basic" = [])),
    responses((status = 200, description = "The preview", body = crate::broadcast::Preview), (status = 400, description = "Malformed JSON, query or header", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong credentials", body = crate::http::openapi::ErrorBody), (status = 404, description = "Unknown mapping or route", body = crate::http::openapi::ErrorBody), (status = 405, description = "Method not allowed", body = crate::http::openapi::ErrorBody), (status = 413, description = "Body or expansion over a limit", body = crate::http::openapi::ErrorBody), (status = 415, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 422, description = "Fields break the rules", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now, or the request timed out", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn preview_trigger(
    State(state): State<AppState>,
    MappingCaller { mapping, .. }: MappingCaller,
    RawQuery(query): RawQuery,
    JsonBody(trigger): JsonBody,
) -> Result<Json<Preview>, ApiError> {
    // Parsed only once the caller is known.
    let query: PreviewQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
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
