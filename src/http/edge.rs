//! The edge's layers, tower-http's (as axum's `request-id` example): a request id (the
//! caller's `X-Request-Id` when it is short visible ASCII, else a new UUID) set on the request
//! and answered in `X-Request-Id`; a trace span per request carrying the id, method, route and
//! the client's address (behind `[server] trusted_proxies`, the client they name),
//! so every log line of the request names them; one line per answer with its status and
//! latency: WARN for a 5xx, INFO for the first ten of each second, DEBUG beyond them, counted
//! into one INFO summary by status class (a line per request at INFO cost 6 % of the CPU under
//! load); and the request's time
//! bound (`[server] request_timeout_secs`: 503 `timeout` after it).

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

/// Request lines written at INFO per second; beyond them, answers are logged at DEBUG and
/// counted into one INFO summary when the second is over.
const INFO_LINES_PER_SECOND: u64 = 10;

/// This second's answers, and those beyond [`INFO_LINES_PER_SECOND`] by status class.
struct Summary {
    /// The current second (since `START`) and how many answers it had, packed (second << 32
    /// | count) so one atomic says both.
    window: std::sync::atomic::AtomicU64,
    classes: [std::sync::atomic::AtomicU64; 4],
}

static SUMMARY: Summary = Summary {
    window: std::sync::atomic::AtomicU64::new(0),
    classes: [const { std::sync::atomic::AtomicU64::new(0) }; 4],
};

static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

impl Summary {
    /// Whether this answer gets its own INFO line; an answer beyond the second's share is
    /// counted, and the first answer of a new second writes the last one's summary.
    fn admit(&self, status: u16) -> bool {
        let second = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs();
        self.admit_at(second, status)
    }

    /// [`Summary::admit`] in `second`; returns whether the answer gets its own INFO line.
    fn admit_at(&self, second: u64, status: u16) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let mut seen = self.window.load(Relaxed);
        loop {
            let (at, n) = (seen >> 32, seen & 0xffff_ffff);
            let next = if at == second {
                (second << 32) | (n + 1).min(0xffff_ffff)
            } else {
                (second << 32) | 1
            };
            match self
                .window
                .compare_exchange_weak(seen, next, Relaxed, Relaxed)
            {
                Ok(_) if at != second => {
                    self.summarize();
                    return true;
                }
                Ok(_) if n < INFO_LINES_PER_SECOND => return true,
                Ok(_) => break,
                Err(now) => seen = now,
            }
        }
        let class = usize::from(status.clamp(200, 599) / 100 - 2);
        self.classes[class].fetch_add(1, Relaxed);
        false
    }

    /// The answers not logged at INFO since the last summary, if any (returned for tests).
    fn summarize(&self) -> [u64; 4] {
        use std::sync::atomic::Ordering::Relaxed;
        let counts = [0, 1, 2, 3].map(|i| self.classes[i].swap(0, Relaxed));
        let [ok, redirect, client, server] = counts;
        if ok + redirect + client + server > 0 {
            tracing::info!(
                ok,
                redirect,
                client_error = client,
                server_error = server,
                "more requests answered (each at DEBUG)"
            );
        }
        counts
    }
}

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
            } else if SUMMARY.admit(status) {
                tracing::info!(status, latency_ms, "request");
            } else {
                tracing::debug!(status, latency_ms, "request");
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

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn ten_request_lines_a_second_at_info_and_the_rest_counted_into_a_summary() {
        let s = Summary {
            window: std::sync::atomic::AtomicU64::new(0),
            classes: Default::default(),
        };
        let shown = (0..15)
            .filter(|i| s.admit_at(7, if *i < 12 { 200 } else { 404 }))
            .count();
        assert_eq!(shown, 10);
        // The next second's first answer is shown, and the summary of the last one written.
        assert!(s.admit_at(8, 200));
        assert_eq!(s.summarize(), [0, 0, 0, 0], "already summarized");
        let shown = (0..12).filter(|_| s.admit_at(8, 503)).count();
        assert_eq!(shown, 9);
        assert_eq!(s.summarize(), [0, 0, 0, 3]);
    }
}
