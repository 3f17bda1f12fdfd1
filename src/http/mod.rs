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
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` completes; requests in flight finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
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
