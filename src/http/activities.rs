//! `POST /activities`: opens, clicks, bounces, complaints, unsubscribes and conversions from
//! the mail platform, committed with their events before the answer.

use super::error::ApiError;
use super::extract::{json_body, require_bearer};
use super::AppState;
use crate::mapping::apply::FieldError;
use crate::store::{ActivityAnswer, UnknownBroadcast};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;

/// The activity route.
pub fn router() -> Router<AppState> {
    Router::new().route("/activities", post(receive))
}

/// The answer: one entry per activity, in order.
#[derive(Debug, Serialize)]
struct Answer {
    activities: Vec<ActivityAnswer>,
}

async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Answer>), ApiError> {
    let token = state
        .activity_token
        .as_ref()
        .ok_or(ApiError::Unauthorized {
            challenge: "Bearer realm=\"pegabridge\"",
        })?;
    require_bearer(token, &headers)?;
    let activities =
        crate::activity::parse(json_body(&headers, body)?).map_err(ApiError::InvalidActivity)?;
    let answers = match state.store.record_activities(activities).await {
        Ok(a) => a,
        Err(e) => match e.downcast_ref::<UnknownBroadcast>() {
            Some(u) => {
                return Err(ApiError::InvalidActivity(vec![FieldError {
                    field: "broadcast_id".into(),
                    path: format!("{}.broadcast_id", u.index),
                    message: u.to_string(),
                }]))
            }
            None => return Err(ApiError::store(e)),
        },
    };
    tracing::info!(activities = answers.len(), "activities accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(Answer {
            activities: answers,
        }),
    ))
}
