//! `POST /activities`: opens, clicks, bounces, complaints, unsubscribes and conversions from
//! the mail platform, committed with their events before the answer.

use super::error::ApiError;
use super::extract::{ActivityCaller, JsonText};
use super::AppState;
use crate::intake::{ActivityAnswer, ActivityOutcome, Unknown};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;

/// The activity route.
pub fn router() -> Router<AppState> {
    Router::new().route("/activities", post(receive))
}

/// The answer: one entry per activity, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Answer {
    activities: Vec<ActivityAnswer>,
}

/// Opens, clicks, bounces, complaints, unsubscribes and conversions: one or an array.
#[utoipa::path(post, path = "/activities", tag = "activities",
    request_body(content = Object, content_type = "application/json",
        example = json!({"metric": "opens", "broadcast_id": 1, "customer_id": 1, "timestamp": 1_700_000_000})),
    security(("bearer" = [])),
    responses((status = 202, description = "Committed", body = Answer), (status = 400, description = "Malformed JSON, query or header", body = crate::http::openapi::ErrorBody), (status = 401, description = "Missing or wrong credentials", body = crate::http::openapi::ErrorBody), (status = 405, description = "Method not allowed", body = crate::http::openapi::ErrorBody), (status = 413, description = "Body or expansion over a limit", body = crate::http::openapi::ErrorBody), (status = 415, description = "Not JSON", body = crate::http::openapi::ErrorBody), (status = 422, description = "Fields break the rules", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now, or the request timed out", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn receive(
    State(state): State<AppState>,
    _: ActivityCaller,
    body: JsonText,
) -> Result<(StatusCode, Json<Answer>), ApiError> {
    // Read straight from the text; only a body with a problem is parsed as a whole to name it.
    let activities = match crate::activity::parse_text(&body.0) {
        Some(activities) => activities,
        None => crate::activity::parse(body.value()?).map_err(ApiError::InvalidActivity)?,
    };
    // All or nothing: an unknown personal broadcast is the caller's mistake (422).
    let outcomes =
        (state.intake.record(activities, Unknown::Refuse).await).map_err(ApiError::store)?;
    let answers: Vec<ActivityAnswer> = outcomes
        .into_iter()
        .filter_map(|o| match o {
            ActivityOutcome::Answered(a) => Some(a),
            ActivityOutcome::UnknownBroadcast => None,
        })
        .collect();
    tracing::debug!(activities = answers.len(), "activities accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(Answer {
            activities: answers,
        }),
    ))
}
