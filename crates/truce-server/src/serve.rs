//! Accepting connections, timing out slow clients, and shutting down gracefully.
//!
//! Each connection is served by hyper (HTTP/1.1) on its own task. A client that does
//! not send its request head within `header_timeout` (which also bounds idle
//! keep-alive connections) is disconnected; bodies have their own timeout in the
//! extractors. On shutdown the listener closes first, streams and long polls are told
//! to end, in-flight requests get `shutdown_grace` to finish, and finally the store
//! commits what is queued and closes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;

use crate::bare_answers::ProblemIo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use truce_engine::Store;

use crate::config::ServerConfig;
use crate::state::AppState;

/// A server accepting connections; stop it with [`RunningServer::shutdown`].
pub struct RunningServer {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts a graceful shutdown; [`RunningServer::stopped`] resolves when it is done.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A token that starts the shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server has drained and the store is closed.
    pub async fn stopped(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "server task failed");
        }
    }
}

/// Serves the API on an already bound listener until shut down.
pub fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
) -> io::Result<RunningServer> {
    crate::metrics::install();
    let local_addr = listener.local_addr()?;
    let state = AppState::new(store, config);
    let shutdown = state.shutdown.clone();
    if let Some(interval) = state.config.compaction_interval {
        tokio::spawn(compaction_loop(state.clone(), interval));
    }
    tokio::spawn(forget_idle_principals(state.clone()));
    tokio::spawn(crate::routes::locks::keeper(state.clone()));
    let node = crate::webhooks::node_name(local_addr);
    tokio::spawn(crate::webhooks::delivery_loop(state.clone(), node));
    let task = tokio::spawn(accept_loop(listener, state));
    Ok(RunningServer {
        local_addr,
        shutdown,
        task,
    })
}

async fn accept_loop(listener: TcpListener, state: AppState) {
    let app = crate::routes::app(state.clone());
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout)
        .keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(ProblemIo::new(stream)), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            () = state.shutdown.cancelled() => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    state.store.close().await;
    tracing::info!("stopped");
}

/// Runs age-based retention periodically until shutdown.
/// How often the rate limiters drop principals whose quota is whole again.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// Keeps the rate limiters' memory to the principals seen lately.
async fn forget_idle_principals(state: AppState) {
    let mut ticker = tokio::time::interval(FORGET_IDLE_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => state.rates.forget_idle(),
            () = state.shutdown.cancelled() => return,
        }
    }
}

async fn compaction_loop(state: AppState, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                match state.store.compact().await {
                    Ok(report)
                        if report.versions_removed
                            + report.changes_removed
                            + report.conflicts_removed
                            + report.conflict_events_removed
                            + report.idempotency_removed
                            > 0 =>
                    {
                        tracing::info!(
                            versions_removed = report.versions_removed,
                            changes_removed = report.changes_removed,
                            conflicts_removed = report.conflicts_removed,
                            conflict_events_removed = report.conflict_events_removed,
                            idempotency_removed = report.idempotency_removed,
                            "compaction"
                        );
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "compaction failed"),
                }
            }
            () = state.shutdown.cancelled() => break,
        }
    }
}
