//! `GET /health`: 200 when the store answers, 503 otherwise.

use super::error::ApiError;
use super::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The health route.
pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.store.ping().await {
        Ok(Json(
            json!({"status": "ok", "mappings": state.mappings.len()}),
        ))
    } else {
        Err(ApiError::Unavailable)
    }
}
