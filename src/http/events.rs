//! `POST /events/{platform}`: mail platforms' event webhooks (see [`crate::events`]). The
//! platform is looked up in the registry; a request that fails its check answers 401 and
//! records nothing; a malformed event 400 naming it; otherwise 200 with what became of the
//! events: recorded, ignored (no metric in the seed), unmatched (no or unknown `pegabridge`
//! key: acknowledged, counted, not forwarded) and duplicates (resent by the platform: no-ops).

use super::error::ApiError;
use super::AppState;
use crate::activity::Raw;
use crate::event::JoinKey;
use crate::events::platform::Rejected;
use crate::events::{Malformed, Translated};
use crate::intake::{Intake, Tally, Unknown};
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};

pub fn router() -> Router<AppState> {
    // Mandrill checks the URL with an unsigned HEAD first.
    Router::new().route("/events/{platform}", post(receive).head(head))
}

fn platform<'s>(
    state: &'s AppState,
    name: &str,
) -> Result<&'s dyn crate::events::platform::Platform, ApiError> {
    state.platforms.get(name).ok_or_else(|| {
        if crate::events::platform::KNOWN.contains(&name) {
            ApiError::NotFound(format!("no [events.{name}] is configured"))
        } else {
            ApiError::NotFound(format!("no platform `{}`", super::error::cut(name)))
        }
    })
}

/// Mandrill's check of the webhook URL (unsigned): 200 where Mandrill is configured.
#[utoipa::path(head, path = "/events/{platform}", tag = "events",
    params(("platform" = String, Path, description = "mandrill (the others answer 404)")),
    responses((status = 200, description = "The URL takes Mandrill's events"), (status = 404, description = "Not a configured platform that checks so")))]
pub(super) async fn head(State(state): State<AppState>, Path(name): Path<String>) -> StatusCode {
    match state.platforms.get(&name) {
        Some(p) if p.answers_head() => StatusCode::OK,
        _ => StatusCode::NOT_FOUND,
    }
}

/// A configured platform whose credentials in headers (Basic auth) check out: 404 for an
/// unknown platform, 401 for wrong credentials, both before the body is read.
pub(super) struct Caller(&'static str);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let platform = platform(state, &name)?;
        let name = platform.name();
        (platform.check_headers(&parts.headers)).map_err(|r| rejected(name, r))?;
        Ok(Self(name))
    }
}

fn rejected(platform: &str, r: Rejected) -> ApiError {
    match r {
        Rejected::Unauthorized => ApiError::Unauthorized {
            challenge: "Basic realm=\"pegabridge\"",
        },
        Rejected::NotJson(e) => ApiError::BadRequest(format!("not JSON: {e}")),
        Rejected::Refused(e) => {
            tracing::warn!(platform, why = %e, "a platform's event request was refused");
            ApiError::BadSignature(e.to_string())
        }
    }
}

fn malformed(m: Malformed) -> ApiError {
    ApiError::BadRequest(m.to_string())
}

#[utoipa::path(post, path = "/events/{platform}", tag = "events",
    params(("platform" = String, Path, description = "sendgrid, mailgun, postmark, ses, sparkpost or mandrill")),
    request_body(content = Object, description = "The platform's own webhook body (JSON, or Mandrill's form)"),
    responses((status = 200, description = "Taken: what became of the events", body = EventsAnswer), (status = 400, description = "Not JSON, or a malformed event", body = crate::http::openapi::ErrorBody), (status = 401, description = "The platform's check failed", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such platform configured", body = crate::http::openapi::ErrorBody), (status = 413, description = "Body over the limit", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn receive(
    State(state): State<AppState>,
    Caller(name): Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let platform = self::platform(&state, name)?;
    let body = if platform.sender_in_headers() {
        let limit = state.unverified.body_limit;
        (axum::body::to_bytes(body, limit).await).map_err(|_| ApiError::PayloadTooLarge)?
    } else {
        read_unverified(&state.unverified, body).await?
    };
    let payload = (platform.verify(&headers, &body, crate::event::now()).await)
        .map_err(|r| rejected(name, r))?;
    if let Some(answer) = platform
        .confirm(&payload)
        .await
        .map_err(|r| rejected(name, r))?
    {
        return Ok(Json(answer));
    }
    let translated = platform.translate(&payload).map_err(malformed)?;
    record(&state.intake, &state, name, translated).await
}

/// The body of a request whose sender is known only once it is read: at most
/// `max_unverified_bodies` at once (503 beyond), under the body limit (413), arriving within
/// `unverified_body_secs` (408), so unknown senders cannot hold many connections or much
/// memory.
async fn read_unverified(
    unverified: &crate::http::Unverified,
    body: axum::body::Body,
) -> Result<Bytes, ApiError> {
    let _permit = unverified
        .permits
        .try_acquire()
        .map_err(|_| ApiError::Busy("too many platform requests are being read at once".into()))?;
    let read = axum::body::to_bytes(body, unverified.body_limit);
    match tokio::time::timeout(unverified.deadline, read).await {
        Err(_) => Err(ApiError::BodyTimeout(unverified.deadline)),
        Ok(Err(_)) => Err(ApiError::PayloadTooLarge),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// The answer to a platform's request.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct EventsAnswer {
    recorded: usize,
    duplicates: usize,
    ignored: usize,
    unmatched: usize,
}

/// When an unmatched event was last logged (at most one line a minute).
static LAST_UNMATCHED_LOG: AtomicI64 = AtomicI64::new(0);

/// Joins the events to their personal broadcasts and records them in one batch: events
/// without a key or whose personal broadcast is unknown here are unmatched.
async fn record(
    intake: &Intake,
    state: &AppState,
    platform: &str,
    translated: Vec<Translated>,
) -> Result<Json<Value>, ApiError> {
    let (mut ignored, mut unmatched) = (0usize, 0usize);
    let mut raws: Vec<Raw> = Vec::with_capacity(translated.len());
    for t in translated {
        let Some(raw) = t.activity else {
            ignored += 1;
            continue;
        };
        let Some(key) = t.key.as_deref().and_then(JoinKey::parse) else {
            unmatched += 1;
            continue;
        };
        raws.push(Raw {
            broadcast_id: key.broadcast_id,
            customer_id: key.customer_id,
            // The platform's event id: a resent event is a no-op.
            id: Some(format!("{platform}:{}", t.id)),
            ..raw
        });
    }
    let activities = Intake::check(raws).map_err(ApiError::InvalidActivity)?;
    let outcomes = (intake.record(activities, Unknown::Skip).await).map_err(ApiError::store)?;
    let tally = Tally::of(&outcomes);
    unmatched += tally.unknown;
    if unmatched > 0 {
        note_unmatched(state, platform, unmatched);
    }
    let answer = EventsAnswer {
        recorded: tally.recorded,
        duplicates: tally.duplicates,
        ignored,
        unmatched,
    };
    Ok(Json(json!(answer)))
}

/// Counts unmatched events, and logs them at most once a minute.
fn note_unmatched(state: &AppState, platform: &str, unmatched: usize) {
    state.metrics.unmatched(platform, unmatched);
    let now = crate::event::now();
    let last = LAST_UNMATCHED_LOG.load(Ordering::Relaxed);
    if now - last >= 60
        && LAST_UNMATCHED_LOG
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            platform,
            unmatched,
            "platform events without a known `pegabridge` key: acknowledged, not forwarded (logged at most once a minute; see pegabridge_events_unmatched_total)"
        );
    }
}
