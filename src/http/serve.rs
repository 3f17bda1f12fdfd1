//! The accept loop: hyper connections with the edge's limits. A client gets at most
//! `header_timeout_secs` to send a request's headers (the same bound holds an idle keep-alive
//! connection), a request at most `request_timeout_secs` from its headers to its answer, and
//! no more than `max_connections` connections are open at once (beyond that, connections
//! wait in the kernel's backlog until one closes). Each connection's requests are counted for
//! the intake's group commit ([`Connections`]).

use crate::config::ServerSettings;
use crate::store::group::Connections;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The address of a request's socket peer (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

/// The limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The limits `[server]` configures.
    pub fn new(settings: &ServerSettings) -> Self {
        Self {
            header_timeout: Duration::from_secs(settings.header_timeout_secs),
            max_connections: settings.max_connections,
        }
    }
}

/// Serves `router` on `listener` until `signal` completes, then lets the connections finish
/// their requests in flight (the caller bounds how long). Each connection's requests are
/// counted in `connections`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    connections: Arc<Connections>,
    signal: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    tokio::pin!(signal);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut signal => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, typically: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        // No Nagle delay on answers: callers wait for each one before they send more.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // The socket's peer, for the client's address (see `engagement::client`).
        let counted = Arc::new(connections.connection());
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            router.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                counted.request();
                req.extensions_mut().insert(Peer(peer.ip()));
                req
            },
        ));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
