//! The accept loop: warp's routes as a hyper service, over connections configured here rather than by warp's
//! `serve`, which fixes hyper's limits.
//!
//! - Header limits: hyper answers heads over its limits with a bare 431 (no body). Its limits are set well above
//!   ours ([`super::edge::MAX_HEADER_BYTES`], [`super::edge::MAX_HEADERS`]), so the router sees such a request
//!   and answers an OpenAI-shaped 431. Only a head past hyper's buffer ([`HYPER_MAX_BUF`]) still gets hyper's own.
//! - Half-closed connections are closed (hyper's default, kept explicit): a client that goes away drops its
//!   request's future, and with it the engine stream, which cancels the generation wherever it is.
//! - Graceful stop: the listener closes, open connections finish their requests.

use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::AppState;

/// hyper's buffer for a request head: past this, hyper itself refuses it.
const HYPER_MAX_BUF: usize = 1 << 20;
/// hyper's header count limit (its default is 100).
const HYPER_MAX_HEADERS: usize = 1024;

/// Serves the routes on `listener` until `shutdown` resolves, then waits for open connections.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let svc = TowerToHyperService::new(warp::service(super::routes::routes(state.clone())));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().half_close(false).max_buf_size(HYPER_MAX_BUF).max_headers(HYPER_MAX_HEADERS);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!("connection: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
