//! The HTTP service: `Application::build(settings)` loads everything, binds the listener (port
//! 0 in tests) and `run_until_stopped` serves until the shutdown signal, letting requests in
//! flight finish.

mod activities;
mod admin;
pub mod error;
pub(crate) mod extract;
mod health;
mod webhooks;

use crate::config::secret::Secret;
use crate::config::Settings;
use crate::delivery::metrics::Metrics;
use crate::delivery::{DeliveryStatus, FaultHook, Worker, WorkerState};
use crate::event::Account;
use crate::mapping::Mappings;
use crate::store::{handoff, Handoff, Store};
use crate::template::{Plan, Variable};
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::Router;
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
    pub store: Store,
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
}

/// A built, bound server.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    grace: Duration,
    /// The delivery worker (none without `[pega] endpoint`).
    worker: Option<(Worker, handoff::Receiver)>,
    outbox: Arc<Notify>,
    delivery: Arc<DeliveryStatus>,
}

impl Application {
    /// Loads mappings, opens the store and binds `[server] listen`.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let loaded = Mappings::load_configured(settings)?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let store = Store::open(settings).await?;
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
        }));
        let router = Router::new()
            .merge(webhooks::router())
            .merge(activities::router())
            .merge(admin::router())
            .merge(health::router())
            .layer(DefaultBodyLimit::max(settings.server.body_limit))
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
            worker,
            outbox,
            delivery,
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
        let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = fired_tx.send(());
        };
        // No Nagle delay on answers: callers wait for each one before they send more.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let serve = axum::serve(listener, self.router).with_graceful_shutdown(signal);
        let grace_over = async {
            if fired_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.grace).await;
        };
        tokio::select! {
            result = serve => result?,
            () = grace_over => tracing::warn!("shutdown grace period over: dropping requests in flight"),
        }
        // The worker stops last: events handed over by the last requests are posted, or made
        // due again for the next start.
        let _ = stop_tx.send(true);
        if let Some(w) = worker {
            if tokio::time::timeout(self.grace, w).await.is_err() {
                tracing::warn!("shutdown grace period over: leaving a delivery round unfinished");
            }
        }
        Ok(())
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
