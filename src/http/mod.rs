//! The HTTP service: `Application::build(settings)` loads everything, binds the listener (port
//! 0 in tests) and `run_until_stopped` serves until the shutdown signal, letting requests in
//! flight finish.

pub mod error;
mod extract;
mod health;
mod webhooks;

use crate::config::Settings;
use crate::event::Account;
use crate::mapping::Mappings;
use crate::store::Store;
use crate::template::{Plan, Variable};
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub mappings: Mappings,
    pub account: Arc<Account>,
    pub variables: Arc<[Variable]>,
    pub plan: Plan,
}

/// A built, bound server.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    grace: Duration,
}

impl Application {
    /// Loads mappings, opens the store and binds `[server] listen`.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let loaded = Mappings::load_configured(settings)?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let store = Store::connect(&store_url(settings), &settings.store.synchronous).await?;
        let state = AppState {
            store,
            mappings: loaded.mappings,
            account: Arc::new(settings.account.clone()),
            variables: settings.variables.clone().into(),
            plan: settings.plan(),
        };
        let router = Router::new()
            .merge(webhooks::router())
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
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` completes; requests in flight then get `[server]
    /// shutdown_grace_secs` to finish before they are dropped. Nothing is lost either way: a
    /// request is answered only after its commit.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = fired_tx.send(());
        };
        let serve = axum::serve(self.listener, self.router).with_graceful_shutdown(signal);
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
        Ok(())
    }
}

/// `sqlite://FILE` with FILE resolved against the config file's folder.
fn store_url(settings: &Settings) -> String {
    let url = &settings.store.url;
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.starts_with('/') && !path.starts_with(':') => {
            format!(
                "sqlite://{}",
                settings.resolve(std::path::Path::new(path)).display()
            )
        }
        _ => url.clone(),
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
