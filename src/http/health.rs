//! `GET /health` (liveness: is the process serving and is delivery running) and `GET /ready`
//! (can it take work: the store answers, delivery runs). Every store call has a timeout, so
//! neither hangs while a database is down.

use super::error::ApiError;
use super::AppState;
use crate::tasks::TaskState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::time::Duration;

/// How long `/health` waits to learn whether delivery is paused.
const PAUSED_TIMEOUT: Duration = Duration::from_millis(500);
/// How long `/health` waits for the Kafka brokers' metadata.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/ready` waits for the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// The health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// The delivery worker's state as the answers name it: `Err` with the reason while a
/// supervised task is not running (restarting after a panic, or stopped); `paused` read from
/// the store within `wait` (`None` if it did not answer).
async fn delivery(
    state: &AppState,
    wait: Duration,
) -> Result<(&'static str, Option<bool>), ApiError> {
    for (name, status) in state.tasks.all() {
        match status.state {
            TaskState::Running => {}
            TaskState::Restarting => {
                let why = status.last_failure.unwrap_or_default();
                let message =
                    format!("{name} is not running: it panicked ({why}) and is restarting");
                return Err(if name == "delivery" {
                    ApiError::NotRunning(format!(
                        "delivery is not running: the worker panicked ({why}) and is restarting"
                    ))
                } else {
                    ApiError::TaskNotRunning(message)
                });
            }
            TaskState::Stopped if name == "delivery" => {
                return Err(ApiError::NotRunning("delivery is not running".into()))
            }
            TaskState::Stopped => {
                return Err(ApiError::TaskNotRunning(format!("{name} is not running")))
            }
        }
    }
    if state.tasks.status("delivery").is_none() && state.tasks.status("kafka").is_none() {
        return Ok(("not configured", None));
    }
    let paused = tokio::time::timeout(wait, state.store.outbox().is_paused())
        .await
        .ok()
        .and_then(Result::ok);
    let shown = if paused == Some(true) {
        "paused"
    } else {
        "running"
    };
    Ok((shown, paused))
}

/// 200 while the process serves and delivery runs (or is not configured), saying whether it
/// is paused; 503 with the reason while the delivery worker is down.
#[utoipa::path(get, path = "/health", tag = "meta",
    responses((status = 200, description = "Serving; delivery running, paused or not configured", body = Object),
              (status = 503, description = "A background task (delivery, mail, retention) is down", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (delivery, paused) = delivery(&state, PAUSED_TIMEOUT).await?;
    let tasks: serde_json::Map<String, Value> = (state.tasks.all().into_iter())
        .map(|(name, s)| (name.to_owned(), json!(s.state)))
        .collect();
    let mut body = json!({
        "status": "ok",
        "mappings": state.mappings.len(),
        "delivery": delivery,
        "paused": paused,
        "tasks": tasks,
    });
    if let Some(mail) = &state.mail_status {
        body["mail"] = mail_health(mail);
    }
    if let Some(kafka) = &state.kafka {
        body["kafka"] = kafka_health(kafka).await;
    }
    Ok(Json(body))
}

/// 200 when the store takes a small write within its timeout (a full disk or a read-only
/// database fails it) and delivery runs; 503 otherwise.
#[utoipa::path(get, path = "/ready", tag = "meta",
    responses((status = 200, description = "The store takes writes and delivery runs", body = Object),
              (status = 503, description = "The store takes no writes, or the delivery worker is down", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(
        STORE_TIMEOUT,
        state.store.backend().writable(state.min_free_bytes),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "not ready: the store takes no writes"
            );
            return Err(ApiError::Unavailable);
        }
        Err(_) => {
            tracing::warn!("not ready: the store did not answer in time");
            return Err(ApiError::Unavailable);
        }
    }
    let (delivery, paused) = delivery(&state, STORE_TIMEOUT).await?;
    Ok(Json(json!({
        "status": "ready",
        "delivery": delivery,
        "paused": paused,
    })))
}

/// The Kafka topic in `/health`: `reachable` (the brokers answered with the topic's metadata,
/// asked at most every few seconds) or `unreachable` with why, and the last delivery's
/// failure if it failed. Never a 503: a broker down is retried, not a reason to restart.
async fn kafka_health(kafka: &crate::delivery::sink::SinkHealth) -> Value {
    let asked = tokio::time::timeout(KAFKA_TIMEOUT, kafka.reach()).await;
    let (state, reach) = match asked {
        Ok(Ok(answer)) => ("reachable", answer),
        Ok(Err(why)) => ("unreachable", why),
        Err(_) => (
            "unreachable",
            format!(
                "{}: no answer within {} s",
                kafka.describe(),
                KAFKA_TIMEOUT.as_secs()
            ),
        ),
    };
    json!({
        "sink": kafka.describe(),
        "state": state,
        "reason": reach,
        "last_failure": kafka.last_failure(),
    })
}

/// The mail path in `/health`: `sending`, or `paused` by its breaker with the relay's answer
/// that opened it (`probing` while its probe is out).
fn mail_health(mail: &crate::mail::status::MailStatus) -> Value {
    use crate::delivery::breaker::BreakerState;
    let (state, why) = mail.breaker();
    let shown = match state {
        BreakerState::Closed => "sending",
        BreakerState::Open => "paused",
        BreakerState::HalfOpen => "probing",
    };
    json!({ "state": shown, "reason": why })
}
