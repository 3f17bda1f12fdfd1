//! `GET /health`: 200 when the store answers, 503 otherwise.

use super::error::ApiError;
use super::AppState;
use crate::delivery::WorkerState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The health route.
pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

/// 200 while the store answers and delivery runs (or is not configured), with whether it is
/// paused; 503 with the reason otherwise.
async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if !state.store.ping().await {
        return Err(ApiError::Unavailable);
    }
    let delivery = match state.delivery.state() {
        WorkerState::NotConfigured => "not configured",
        WorkerState::Running => match state.store.is_paused().await {
            Ok(true) => "paused",
            Ok(false) => "running",
            Err(_) => return Err(ApiError::Unavailable),
        },
        WorkerState::Restarting => {
            let why = state.delivery.last_failure().unwrap_or_default();
            return Err(ApiError::NotRunning(format!(
                "delivery is not running: the worker panicked ({why}) and is restarting"
            )));
        }
        WorkerState::Stopped => {
            return Err(ApiError::NotRunning("delivery is not running".into()));
        }
    };
    Ok(Json(json!({
        "status": "ok",
        "mappings": state.mappings.len(),
        "delivery": delivery,
    })))
}
