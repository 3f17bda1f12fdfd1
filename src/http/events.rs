//! `POST /events/{platform}`: mail platforms' event webhooks (see [`crate::events`]). A
//! request that fails its platform's check answers 401 and records nothing; a malformed event
//! 400 naming it; otherwise 200 with what became of the events: recorded, ignored (no metric
//! in the seed), unmatched (no or unknown `pegabridge` key: acknowledged, counted, not
//! forwarded) and duplicates (resent by the platform: no-ops).

use super::error::ApiError;
use super::AppState;
use crate::events::{self, join, Malformed, Translated};
use crate::recording::ActivityStatus;
use crate::store::StoreError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};

pub fn router() -> Router<AppState> {
    // Mandrill checks the URL with an unsigned HEAD first.
    Router::new().route("/events/{platform}", post(receive).head(head))
}

fn malformed(m: Malformed) -> ApiError {
    ApiError::BadRequest(m.to_string())
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    // Whatever the Content-Type (SNS, for one, says text/plain).
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("not JSON: {e}")))
}

async fn head(Path(platform): Path<String>) -> axum::http::StatusCode {
    if platform == "mandrill" {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::NOT_FOUND
    }
}

async fn receive(
    State(state): State<AppState>,
    Path(platform): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|_| ApiError::PayloadTooLarge)?;
    let not_configured = || ApiError::NotFound(format!("no [events.{platform}] is configured"));
    let refused = |e: events::Refused| {
        tracing::warn!(platform = platform.as_str(), why = %e, "a platform's event request was refused");
        ApiError::BadSignature(e.to_string())
    };
    let translated: Vec<Translated> = match platform.as_str() {
        "sendgrid" => {
            let key = state.events.sendgrid.as_ref().ok_or_else(not_configured)?;
            events::sendgrid::verify(key, &headers, &body).map_err(refused)?;
            events::sendgrid::translate(&parse(&body)?).map_err(malformed)?
        }
        "mailgun" => {
            let settings = state
                .events
                .settings
                .mailgun
                .as_ref()
                .ok_or_else(not_configured)?;
            let v = parse(&body)?;
            events::mailgun::verify(
                settings,
                &state.events.mailgun_tokens,
                &v,
                crate::event::now(),
            )
            .map_err(refused)?;
            events::mailgun::translate(&v).map_err(malformed)?
        }
        "postmark" => {
            let basic = state
                .events
                .settings
                .postmark
                .as_ref()
                .ok_or_else(not_configured)?;
            if !crate::config::secret::basic_matches(&headers, &basic.username, &basic.password) {
                return Err(ApiError::Unauthorized {
                    challenge: "Basic realm=\"pegabridge\"",
                });
            }
            events::postmark::translate(&parse(&body)?).map_err(malformed)?
        }
        "sparkpost" => {
            let basic = state
                .events
                .settings
                .sparkpost
                .as_ref()
                .ok_or_else(not_configured)?;
            if !crate::config::secret::basic_matches(&headers, &basic.username, &basic.password) {
                return Err(ApiError::Unauthorized {
                    challenge: "Basic realm=\"pegabridge\"",
                });
            }
            events::sparkpost::translate(&parse(&body)?).map_err(malformed)?
        }
        "ses" => {
            let settings = state
                .events
                .settings
                .ses
                .as_ref()
                .ok_or_else(not_configured)?;
            let m = parse(&body)?;
            events::ses::topic_allowed(settings, &m).map_err(refused)?;
            let key = state
                .events
                .sns_certificates
                .key(&m)
                .await
                .map_err(refused)?;
            events::ses::verify_signature(&m, &key).map_err(refused)?;
            match m["Type"].as_str() {
                Some("SubscriptionConfirmation") => {
                    events::ses::confirm(&m).await.map_err(refused)?;
                    tracing::info!(
                        topic = m["TopicArn"].as_str().unwrap_or(""),
                        "SNS subscription confirmed"
                    );
                    return Ok(Json(json!({"confirmed": true})));
                }
                Some("Notification") => events::ses::translate(&m).map_err(malformed)?,
                _ => Vec::new(),
            }
        }
        "mandrill" => {
            let settings = state
                .events
                .settings
                .mandrill
                .as_ref()
                .ok_or_else(not_configured)?;
            let fields = events::mandrill::verify(settings, &headers, &body).map_err(refused)?;
            events::mandrill::translate(&fields).map_err(malformed)?
        }
        _ => return Err(ApiError::NotFound(format!("no platform `{platform}`"))),
    };
    record(&state, &platform, translated).await
}

/// When an unmatched event was last logged (at most one line a minute).
static LAST_UNMATCHED_LOG: AtomicI64 = AtomicI64::new(0);

async fn record(
    state: &AppState,
    platform: &str,
    translated: Vec<Translated>,
) -> Result<Json<Value>, ApiError> {
    let (mut ignored, mut unmatched) = (0usize, 0usize);
    let mut pending = Vec::new();
    for t in translated {
        let Some(mut activity) = t.activity else {
            ignored += 1;
            continue;
        };
        let Some((broadcast_id, customer_id)) = t.key.as_deref().and_then(join) else {
            unmatched += 1;
            continue;
        };
        activity.insert("broadcast_id".into(), broadcast_id.into());
        activity.insert("customer_id".into(), customer_id.into());
        // The platform's event id: a resent event is a no-op.
        activity.insert("id".into(), format!("{platform}:{}", t.id).into());
        pending.push(Value::Object(activity));
    }
    let mut activities = if pending.is_empty() {
        Vec::new()
    } else {
        crate::activity::parse(Value::Array(pending)).map_err(ApiError::InvalidActivity)?
    };
    let mut answers = Vec::new();
    // An event whose personal broadcast is unknown here is unmatched: the others are recorded.
    while !activities.is_empty() {
        match state.store.record_activities(activities.clone()).await {
            Ok(a) => {
                answers = a;
                break;
            }
            Err(StoreError::UnknownBroadcast { index, .. }) if index < activities.len() => {
                activities.remove(index);
                unmatched += 1;
            }
            Err(e) => return Err(ApiError::store(e)),
        }
    }
    if unmatched > 0 {
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
    let duplicates = answers
        .iter()
        .filter(|a| a.status == ActivityStatus::Duplicate)
        .count();
    Ok(Json(json!({
        "recorded": answers.len() - duplicates,
        "duplicates": duplicates,
        "ignored": ignored,
        "unmatched": unmatched,
    })))
}
