//! The HTTP layer: it only routes. Each module exports `router()`; [`router`] merges them
//! under the edge's layers (request id, trace span and log line, timeout, body limit). The
//! server is assembled in [`crate::app`].

mod activities;
mod admin;
mod console;
mod edge;
pub mod error;
mod events;
pub(crate) mod extract;
mod health;
pub mod openapi;
pub mod serve;
mod tracking;
mod webhooks;

use crate::config::secret::Secret;
use crate::config::ServerSettings;
use crate::delivery::metrics::Metrics;
use crate::event::Account;
use crate::mapping::Mappings;
use crate::store::Storage;
use crate::tasks::Tasks;
use crate::template::{Plan, Variable};
use axum::extract::DefaultBodyLimit;
use axum::Router;
use error::ApiError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// What handlers share: one reference to count per request (axum clones the state for every
/// request; cloning each field's reference cost about 1% of a request's CPU).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub struct Shared {
    pub store: Storage,
    pub mappings: Mappings,
    pub account: Arc<Account>,
    pub variables: Arc<[Variable]>,
    pub plan: Plan,
    /// The `[activities]` token.
    pub activity_token: Option<Arc<Secret>>,
    /// Woken when events are committed, so the delivery worker picks them up at once.
    pub outbox: Arc<Notify>,
    /// The `[admin]` token.
    pub admin_token: Option<Arc<Secret>>,
    /// Delivery metrics.
    pub metrics: Arc<Metrics>,
    /// The supervised background tasks and their states.
    pub tasks: Arc<Tasks>,
    /// The free space `/ready` requires where a SQLite database is (`[store] min_free_mb`).
    pub min_free_bytes: u64,
    /// Woken when a trigger commits sends (`[mail]`), so the mail worker sends at once.
    pub mail: Option<Arc<Notify>>,
    /// The Kafka topic's health (`[kafka]`).
    pub kafka: Option<Arc<crate::delivery::sink::SinkHealth>>,
    /// The mail path's breaker and metrics (`[mail]`).
    pub mail_status: Option<Arc<crate::mail::status::MailStatus>>,
    /// The tracked links' tokens (`[tracking]`).
    pub tracking: Option<crate::mail::tracking::Tokens>,
    /// Mail platforms' webhooks (`[events.*]`).
    pub platforms: crate::events::platform::Platforms,
    /// Where every source's activities go.
    pub intake: crate::intake::Intake,
    /// What tracked requests are judged with.
    pub judge: Arc<crate::engagement::Judge>,
    /// Where tracked fetches wait to be judged (`[engagement] hold_secs`; none: at once).
    pub held: Option<crate::mail::held::HeldQueue>,
    /// The web console's sign-in sessions.
    pub console: Arc<crate::console::Sessions>,
    /// What the console's overview charts.
    pub samples: Arc<crate::console::samples::Samples>,
    /// Bodies read before their sender is known (see [`ServerSettings::max_unverified_bodies`]).
    pub unverified: Unverified,
}

/// The bound on requests whose sender is known only from their body.
pub struct Unverified {
    pub permits: tokio::sync::Semaphore,
    pub deadline: Duration,
    pub body_limit: usize,
}

impl Unverified {
    pub fn new(server: &ServerSettings) -> Self {
        Self {
            permits: tokio::sync::Semaphore::new(server.max_unverified_bodies.max(1)),
            deadline: Duration::from_secs(server.unverified_body_secs.max(1)),
            body_limit: server.body_limit,
        }
    }
}

/// Every route, under the edge's layers.
pub fn router(state: AppState, server: &ServerSettings) -> Router {
    let routes = Router::new()
        .merge(webhooks::router())
        .merge(activities::router())
        .merge(tracking::router())
        .merge(events::router())
        .merge(admin::router())
        .merge(health::router())
        .merge(openapi::router())
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(server.body_limit));
    let timeout = Duration::from_secs(server.request_timeout_secs);
    edge::wrap(routes, timeout, server.trusted_proxies.clone()).with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
