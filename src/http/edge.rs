//! The edge's layers, tower-http's (as axum's `request-id` example): a request id (the
//! caller's `X-Request-Id` when it is short visible ASCII, else a new UUID) set on the request
//! and answered in `X-Request-Id`; a trace span per request carrying the id, method, route and
//! the client's address (behind `[server] trusted_proxies`, the client they name),
//! so every log line of the request names them; one log line per answer with its status and
//! latency (WARN for a 5xx); and the request's time bound (`[server] request_timeout_secs`:
//! 503 `timeout` after it).

use super::error::ApiError;
use super::AppState;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::Router;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use tracing::Span;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A new request id: a UUID without dashes.
#[derive(Clone, Copy, Default)]
struct NewId;

impl MakeRequestId for NewId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// Whether a caller's request id is kept: 1 to 64 visible ASCII characters.
fn acceptable(id: &HeaderValue) -> bool {
    let b = id.as_bytes();
    !b.is_empty() && b.len() <= 64 && b.iter().all(u8::is_ascii_graphic)
}

/// `routes` under the edge's layers.
pub fn wrap(
    routes: Router<AppState>,
    timeout: Duration,
    trusted_proxies: Vec<crate::engagement::client::Cidr>,
) -> Router<AppState> {
    let trace = TraceLayer::new_for_http()
        .make_span_with(move |req: &Request| {
            let id = (req.headers().get(&REQUEST_ID))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let route =
                (req.extensions().get::<MatchedPath>()).map_or("(no route)", MatchedPath::as_str);
            // The client's address: the peer, or behind a trusted proxy what it says.
            let client = (req.extensions().get::<super::serve::Peer>()).map(|p| {
                crate::engagement::client::client_address(p.0, req.headers(), &trusted_proxies)
            });
            match client {
                Some(client) => tracing::info_span!(
                    "request", request_id = id, method = %req.method(), route, %client
                ),
                None => {
                    tracing::info_span!("request", request_id = id, method = %req.method(), route)
                }
            }
        })
        .on_request(())
        .on_response(|res: &Response, latency: Duration, _: &Span| {
            let status = res.status().as_u16();
            let latency_ms = latency.as_secs_f64() * 1000.0;
            if status >= 500 {
                tracing::warn!(status, latency_ms, "request");
            } else {
                tracing::info!(status, latency_ms, "request");
            }
        })
        .on_failure(());
    let timeout = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(
            move |_: tower::BoxError| async move { ApiError::Timeout(timeout) },
        ))
        .timeout(timeout);
    routes
        .layer(timeout)
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, NewId))
        // Outermost: a caller's id that is not acceptable is replaced by a new one.
        .layer(tower::util::MapRequestLayer::new(|mut req: Request| {
            if (req.headers().get(&REQUEST_ID)).is_some_and(|v| !acceptable(v)) {
                req.headers_mut().remove(&REQUEST_ID);
            }
            req
        }))
}
