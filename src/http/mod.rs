//! The HTTP service: `Application::build(settings)` loads everything, binds the listener (port
//! 0 in tests) and `run_until_stopped` serves until the shutdown signal, letting requests in
//! flight finish.

mod activities;
mod admin;
pub mod error;
mod events;
pub(crate) mod extract;
mod health;
pub mod openapi;
mod serve;
mod tracking;
mod webhooks;

use crate::config::secret::Secret;
use crate::config::Settings;
use crate::delivery::metrics::Metrics;
use crate::delivery::{DeliveryStatus, FaultHook, Worker, WorkerState};
use crate::event::Account;
use crate::mapping::Mappings;
use crate::store::{handoff, Handoff, Storage};
use crate::template::{Plan, Variable};
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use error::ApiError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What handlers share: one reference to count per request (axum clones the state for every
/// request; cloning each field's reference cost about 1% of a request's CPU).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

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
    /// Whether the delivery worker is running.
    pub delivery: Arc<DeliveryStatus>,
    /// The free space `/ready` requires where a SQLite database is (`[store] min_free_mb`).
    pub min_free_bytes: u64,
    /// Woken when a trigger commits sends (`[mail]`), so the mail worker sends at once.
    pub mail: Option<Arc<Notify>>,
    /// The tracked links' tokens (`[tracking]`).
    pub tracking: Option<crate::mail::tracking::Tokens>,
    /// Mail platforms' webhooks (`[events.*]`).
    pub platforms: crate::events::platform::Platforms,
    /// Where every source's activities go.
    pub intake: crate::intake::Intake,
}

/// A built, bound server.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    grace: Duration,
    limits: serve::Limits,
    /// The delivery worker (none without `[pega] endpoint`).
    worker: Option<(Worker, handoff::Receiver)>,
    outbox: Arc<Notify>,
    delivery: Arc<DeliveryStatus>,
    /// For the retention task.
    store: Storage,
    retention_days: u64,
    /// The mail worker and what wakes it (with `[mail]`).
    mailer: Option<(crate::mail::MailWorker, Arc<Notify>)>,
}

impl Application {
    /// Loads mappings, opens the store and binds `[server] listen`.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let loaded = Mappings::load_configured(settings)?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        match &settings.source {
            Some(file) => tracing::info!(config = %file.display(), "configuration read"),
            None => tracing::warn!(
                "no configuration file (no --config, no ./pegabridge.toml here): built-in defaults"
            ),
        }
        let mappings_dir = settings.resolve(&settings.mappings.dir);
        if loaded.mappings.is_empty() {
            tracing::warn!(
                dir = %mappings_dir.display(),
                "no mappings loaded: every trigger will answer 404 (started from the wrong folder?)"
            );
        } else {
            tracing::info!(
                count = loaded.mappings.len(),
                names = loaded.mappings.names().join(", "),
                dir = %mappings_dir.display(),
                "mappings loaded"
            );
        }
        for weak in settings
            .weak_tokens()
            .into_iter()
            .chain(loaded.mappings.weak_credentials())
        {
            tracing::warn!("{weak}: set a secret before production");
        }
        let store = Storage::open(settings).await?;
        tracing::info!(store = settings.store_display(), "store opened");
        if let Some(endpoint) = &settings.pega.endpoint {
            tracing::info!(endpoint = endpoint.as_str(), "delivering to Pega");
        }
        if store.is_paused().await.unwrap_or(false) {
            tracing::warn!("delivery is paused (pegabridge deliveries resume)");
        }
        let metrics = Arc::new(Metrics::new());
        let worker = Worker::new(
            store.clone(),
            Arc::new(settings.pega.clone()),
            metrics.clone(),
        )?;
        let delivery = Arc::new(DeliveryStatus::new(if worker.is_none() {
            tracing::warn!("no [pega] endpoint: events wait in the outbox");
            WorkerState::NotConfigured
        } else {
            WorkerState::Stopped
        }));
        let outbox = Arc::new(Notify::new());
        // With a worker, requests hand their events to it (see `store::handoff`), up to two
        // rounds' worth.
        let (store, worker) = match worker {
            Some(worker) => {
                store.listen(outbox.clone()).await?;
                let capacity = 2 * worker.round_limit();
                let (handoff, handed) =
                    Handoff::new(capacity, settings.pega.lease_secs, outbox.clone());
                (store.with_handoff(handoff), Some((worker, handed)))
            }
            None => (store, None),
        };
        let store = store.with_sending(settings.mail.is_some());
        let mailer = match &settings.mail {
            Some(mail) => {
                tracing::info!(relay = %format!("{}:{}", mail.host, mail.port), "sending the mail through the relay");
                let worker = crate::mail::MailWorker::new(
                    store.clone(),
                    mail,
                    settings.tracking.as_ref(),
                    loaded.mappings.clone(),
                )?;
                Some((worker, Arc::new(Notify::new())))
            }
            None => None,
        };
        let retained = store.clone();
        let state = AppState(Arc::new(Shared {
            store,
            mappings: loaded.mappings,
            account: Arc::new(settings.account.clone()),
            variables: settings.variables.clone().into(),
            plan: settings.plan(),
            activity_token: settings.activities.token.clone().map(Arc::new),
            outbox: outbox.clone(),
            admin_token: settings.admin.token.clone().map(Arc::new),
            metrics,
            delivery: delivery.clone(),
            min_free_bytes: settings.store.min_free_mb.saturating_mul(1024 * 1024),
            mail: mailer.as_ref().map(|(_, wake)| wake.clone()),
            tracking: settings
                .tracking
                .as_ref()
                .map(crate::mail::tracking::Tokens::new),
            platforms: crate::events::platform::Platforms::new(&settings.events)
                .map_err(anyhow::Error::msg)?,
            intake: crate::intake::Intake::new(retained.clone()),
        }));
        let router = Router::new()
            .merge(webhooks::router())
            .merge(activities::router())
            .merge(tracking::router())
            .merge(events::router())
            .merge(admin::router())
            .merge(health::router())
            .merge(openapi::router())
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(settings.server.body_limit))
            .layer(axum::middleware::from_fn_with_state(
                Duration::from_secs(settings.server.request_timeout_secs),
                edge,
            ))
            .with_state(state);
        let listener = TcpListener::bind(&settings.server.listen)
            .await
            .with_context(|| {
                format!("server.listen: cannot listen on {}", settings.server.listen)
            })?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            router,
            port,
            grace: Duration::from_secs(settings.server.shutdown_grace_secs),
            limits: serve::Limits::new(&settings.server),
            worker,
            outbox,
            delivery,
            store: retained,
            retention_days: settings.store.retention_days,
            mailer,
        })
    }

    /// Makes the delivery worker call `hook` at the start of every round (tests use it to
    /// make the worker panic).
    #[doc(hidden)]
    pub fn set_delivery_fault_hook(&mut self, hook: FaultHook) {
        if let Some((worker, _)) = &mut self.worker {
            worker.set_fault_hook(hook);
        }
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves (and delivers) until `shutdown` completes; requests in flight and the delivery
    /// round in progress then get `[server] shutdown_grace_secs` to finish before they are
    /// dropped; the worker then finishes its round. Nothing is lost either way: a request is
    /// answered only after its commit, and an event whose delivery was cut short is claimed
    /// again when its lease runs out.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let delivery = self.delivery.clone();
        if self.worker.is_some() {
            delivery.set(WorkerState::Running);
        }
        let worker = self.worker.map(|(w, handed)| {
            let mut stop = stop_rx.clone();
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::spawn(w.run(self.outbox.clone(), handed, stopped, delivery))
        });
        let mailer = self.mailer.map(|(m, wake)| {
            let mut stop = stop_rx.clone();
            tokio::spawn(m.run(wake, async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        });
        let retention = tokio::spawn(retain(self.store.clone(), self.retention_days, stop_rx));
        let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = fired_tx.send(());
        };
        let serve = serve::serve(self.listener, self.router, self.limits, signal);
        let grace_over = async {
            if fired_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.grace).await;
        };
        tokio::select! {
            () = serve => {},
            () = grace_over => tracing::warn!("shutdown grace period over: dropping requests in flight"),
        }
        // The worker stops last: events handed over by the last requests are posted, or made
        // due again for the next start.
        let _ = stop_tx.send(true);
        let _ = retention.await;
        if let Some(m) = mailer {
            if tokio::time::timeout(self.grace, m).await.is_err() {
                tracing::warn!("shutdown grace period over: leaving a mail round unfinished");
            }
        }
        if let Some(w) = worker {
            if tokio::time::timeout(self.grace, w).await.is_err() {
                tracing::warn!("shutdown grace period over: leaving a delivery round unfinished");
            }
        }
        Ok(())
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

/// Every request: a request id (the caller's `X-Request-Id` if it is short visible ASCII,
/// else a new one), answered in `X-Request-Id`; a bound on its time (`request_timeout_secs`:
/// 503 after it); one log line with method, route, status, latency and the id.
async fn edge(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    let method = request.method().clone();
    // A clone of the matched path is a reference count, not a copy of the text.
    let matched = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = match tokio::time::timeout(timeout, next.run(request).instrument(span)).await
    {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(timeout).into_response(),
    };
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let route = matched.as_ref().map_or("(no route)", |p| p.as_str());
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(%method, route, status, latency_ms, request_id = %id, "request");
    } else {
        tracing::info!(%method, route, status, latency_ms, request_id = %id, "request");
    }
    response
}

/// How often the retention task looks for old delivered events.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// Events removed per transaction (small: other writes wait for each).
const RETENTION_BATCH: usize = 1000;

/// Removes delivered events older than `days` (none when 0), every [`RETENTION_EVERY`], in
/// batches of [`RETENTION_BATCH`], until `stop` says so.
async fn retain(store: Storage, days: u64, mut stop: tokio::sync::watch::Receiver<bool>) {
    if days == 0 {
        return;
    }
    let mut every = tokio::time::interval(RETENTION_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let age = i64::try_from(days.saturating_mul(86_400)).unwrap_or(i64::MAX);
        let before = crate::event::now().saturating_sub(age);
        let stopping = || *stop.borrow();
        match store
            .purge_all(
                crate::store::Purge::Delivered,
                before,
                RETENTION_BATCH,
                stopping,
            )
            .await
        {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, days, "retention: delivered events removed"),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "retention: removing delivered events failed"
            ),
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
