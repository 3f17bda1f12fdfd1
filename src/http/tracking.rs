//! The tracked links of sent mail (`[tracking]`): `GET /t/c/TOKEN` records a click and
//! redirects to the original URL, `GET /t/o/TOKEN` records an open and answers a 1x1 GIF,
//! `POST /t/u/TOKEN` unsubscribes in one click (RFC 8058: no redirect, no login) and
//! `GET /t/u/TOKEN` shows a page with a button that does. A token that is not ours, or
//! altered, answers 404 and records nothing. Image proxies and link scanners are marked
//! `machine_generated` by the same detection as `POST /activities`.

use super::error::ApiError;
use super::AppState;
use crate::activity::Raw;
use crate::event::Metric;
use crate::intake::{Intake, Unknown};
use crate::mail::tracking::{Kind, Target};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/t/c/{token}", get(click))
        .route("/t/o/{token}", get(open))
        .route("/t/u/{token}", get(unsubscribe_page).post(unsubscribe))
}

/// The smallest transparent GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

fn target(state: &AppState, kind: Kind, token: &str) -> Result<Target, ApiError> {
    target_issued(state, kind, token).map(|(t, _)| t)
}

/// The token's target and when it was made (Unix seconds), if it is one of ours.
fn target_issued(
    state: &AppState,
    kind: Kind,
    token: &str,
) -> Result<(Target, Option<i64>), ApiError> {
    let tokens = state
        .tracking
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("no tracking is configured".into()))?;
    tokens
        .check_issued(kind, token)
        .ok_or_else(|| ApiError::NotFound("no such link".into()))
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(512)
        .collect()
}

/// Who fetched a tracked URL, as far as the request tells.
struct Fetch<'r> {
    client: std::net::IpAddr,
    evidence: crate::engagement::Evidence<'r>,
}

impl<'r> Fetch<'r> {
    fn of(
        state: &AppState,
        method: &axum::http::Method,
        headers: &'r HeaderMap,
        peer: Option<&crate::http::serve::Peer>,
        ua: &'r str,
    ) -> Self {
        let peer = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0);
        let client =
            crate::engagement::client::client_address(peer, headers, &state.judge.trusted_proxies);
        let prefetch = ["purpose", "sec-purpose", "x-moz", "x-purpose"]
            .iter()
            .any(|h| {
                headers
                    .get(*h)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| {
                        v.to_ascii_lowercase().contains("prefetch")
                            || v.eq_ignore_ascii_case("preview")
                    })
            });
        Self {
            client,
            evidence: crate::engagement::Evidence {
                head: method == axum::http::Method::HEAD,
                prefetch,
                user_agent: ua,
                client: Some(client),
                since_sent: None,
                too_soon_secs: state.judge.too_soon_secs,
            },
        }
    }

    /// The verdict on a fetch of `link` (the pixel: -1) of personal broadcast `pb` through
    /// a token made at `issued`, or `None` when it repeats a fetch just recorded.
    fn judged(
        &mut self,
        state: &AppState,
        token: &str,
        pb: (i64, i64),
        link: i64,
        issued: Option<i64>,
    ) -> Option<crate::engagement::Reason> {
        let now = std::time::Instant::now();
        state.judge.recent.saw(now, pb, self.client, link);
        if state.judge.repeats.is_repeat(token, self.client, now) {
            return None;
        }
        self.evidence.since_sent = issued.map(|t| crate::event::now() - t);
        Some(state.judge.judge(&self.evidence).reason)
    }

    /// Holds `raw` to be judged with the fetches around it, or judges and records it now.
    async fn record(&self, state: &AppState, raw: Raw) {
        use crate::mail::held::{finish, Held};
        let held = Held {
            raw,
            at: tokio::time::Instant::now(),
            client: self.client,
        };
        let now = match &state.held {
            Some(queue) => match queue.hold(held) {
                Ok(()) => return,
                Err(full) => *full,
            },
            None => held,
        };
        let (b, c) = (now.raw.broadcast_id, now.raw.customer_id);
        if let Err(e) = record(state, finish(&state.judge, now)).await {
            tracing::warn!(error = ?e, broadcast_id = b, customer_id = c, "a tracked fetch could not be recorded");
        }
    }
}

/// Records one activity through the intake (checked and enriched as `POST /activities`).
async fn record(state: &AppState, activity: Raw) -> Result<(), ApiError> {
    let activities = Intake::check(vec![activity]).map_err(ApiError::InvalidActivity)?;
    (state.intake.record(activities, Unknown::Refuse).await).map_err(ApiError::store)?;
    Ok(())
}

/// A tracked link: records a click and redirects to the link's target.
#[utoipa::path(get, path = "/t/c/{token}", tag = "tracking",
    params(("token" = String, Path, description = "The link's signed token, as written into the sent message")),
    responses((status = 302, description = "To the original link (the click is recorded)"), (status = 404, description = "Not a token of ours, altered, or no [tracking]", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn click(
    State(state): State<AppState>,
    Path(token): Path<String>,
    method: axum::http::Method,
    peer: Option<axum::Extension<crate::http::serve::Peer>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (found, issued) = target_issued(&state, Kind::Click, &token)?;
    let Target::Click {
        broadcast_id,
        customer_id,
        link_id,
        url,
        alt,
    } = found
    else {
        return Err(ApiError::NotFound("no such link".into()));
    };
    // A token made before targets were checked may carry one no browser opens (a line
    // break): no redirect to it, nothing recorded.
    let Ok(location) = header::HeaderValue::from_str(&url) else {
        return Err(ApiError::NotFound(
            "the link's target is not a URL a browser opens".into(),
        ));
    };
    let ua = user_agent(&headers);
    let mut fetch = Fetch::of(&state, &method, &headers, peer.as_deref(), &ua);
    // A repeat by the same client records nothing new; the reader still gets where the link
    // goes, even when the click cannot be recorded now.
    let pb = (broadcast_id, customer_id);
    if let Some(reason) = fetch.judged(&state, &token, pb, link_id, issued) {
        let activity = Raw {
            url: Some(url.clone()),
            link_id: Some(link_id),
            alt: Some(alt),
            user_agent: Some(ua.clone()),
            timestamp: Some(crate::event::now()),
            machine_reason: Some(reason),
            ..Raw::new(Metric::Clicks, broadcast_id, customer_id)
        };
        fetch.record(&state, activity).await;
    }
    Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// The open pixel: records an open and answers a 1x1 GIF.
#[utoipa::path(get, path = "/t/o/{token}", tag = "tracking",
    params(("token" = String, Path, description = "The pixel's signed token")),
    responses((status = 200, description = "A 1x1 transparent GIF (the open is recorded)", content_type = "image/gif"), (status = 404, description = "Not a token of ours, altered, or no [tracking]", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn open(
    State(state): State<AppState>,
    Path(token): Path<String>,
    method: axum::http::Method,
    peer: Option<axum::Extension<crate::http::serve::Peer>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (found, issued) = target_issued(&state, Kind::Open, &token)?;
    let Target::Open {
        broadcast_id,
        customer_id,
    } = found
    else {
        return Err(ApiError::NotFound("no such link".into()));
    };
    let ua = user_agent(&headers);
    let mut fetch = Fetch::of(&state, &method, &headers, peer.as_deref(), &ua);
    let pb = (broadcast_id, customer_id);
    if let Some(reason) = fetch.judged(&state, &token, pb, -1, issued) {
        let activity = Raw {
            user_agent: Some(ua.clone()),
            timestamp: Some(crate::event::now()),
            machine_reason: Some(reason),
            ..Raw::new(Metric::Opens, broadcast_id, customer_id)
        };
        fetch.record(&state, activity).await;
    }
    Ok((
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, max-age=0"),
        ],
        PIXEL,
    )
        .into_response())
}

/// One-click unsubscribe (RFC 8058): records the unsubscribe once and suppresses the customer.
#[utoipa::path(post, path = "/t/u/{token}", tag = "tracking",
    params(("token" = String, Path, description = "The unsubscribe link's signed token")),
    responses((status = 200, description = "Unsubscribed (a page saying so)", content_type = "text/html"), (status = 404, description = "Not a token of ours, altered, or no [tracking]", body = crate::http::openapi::ErrorBody), (status = 503, description = "The store cannot take it now", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let Target::Unsubscribe {
        broadcast_id,
        customer_id,
    } = target(&state, Kind::Unsubscribe, &token)?
    else {
        return Err(ApiError::NotFound("no such link".into()));
    };
    // One per personal broadcast: a second POST (a client retrying) records nothing more.
    let activity = Raw {
        id: Some(format!(
            "pegabridge-unsubscribe:{broadcast_id}-{customer_id}"
        )),
        ..Raw::new(Metric::Unsubscribes, broadcast_id, customer_id)
    };
    record(&state, activity).await?;
    Ok(Html("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head><body><p>You are unsubscribed. You will not receive these emails any more.</p></body></html>").into_response())
}

/// The unsubscribe page: a button that unsubscribes (the POST above).
#[utoipa::path(get, path = "/t/u/{token}", tag = "tracking",
    params(("token" = String, Path, description = "The unsubscribe link's signed token")),
    responses((status = 200, description = "A page with an Unsubscribe button", content_type = "text/html"), (status = 404, description = "Not a token of ours, altered, or no [tracking]", body = crate::http::openapi::ErrorBody)))]
pub(super) async fn unsubscribe_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    target(&state, Kind::Unsubscribe, &token)?;
    Ok(Html("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head><body><form method=\"post\"><p>Stop receiving these emails?</p><button type=\"submit\">Unsubscribe</button></form></body></html>").into_response())
}
