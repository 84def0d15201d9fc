//! The server's connection loop and what it bounds for every client before
//! a handler runs: time to send a request head (slowloris), the head's
//! size and field count, the request body, connections at once, and how
//! long a SIGTERM waits for responses under way.
//!
//! hyper does the enforcing; this module only configures it, which
//! `axum::serve` does not allow (it sets no timer, so hyper's header
//! timeout would never fire).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use crate::config::LimitsConfig;
use crate::error::Error;


/// Refuses a body announced larger than the limit before any handler runs
/// (a chunked body is never read by Strata's handlers: hyper closes the
/// connection instead of draining it).
pub async fn body_limit(max: u64, req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced.filter(|n| *n > max) {
        return Error::TooLarge(format!("a request body of {n} bytes (at most {max}; Strata accepts no uploads)")).into_response();
    }
    next.run(req).await
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves,
/// then stops accepting (new connections are refused) and waits at most
/// `shutdown_grace_secs` for the responses under way.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &LimitsConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let max_body = limits.max_body_bytes;
    let app = app.layer(axum::middleware::from_fn(move |req, next| body_limit(max_body, req, next)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_secs))
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, a connection reset before it
                    // was accepted, …: not a reason to stop serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(Duration::from_secs(limits.write_stall_secs)));
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(Box::pin(stream)), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = Duration::from_secs(limits.shutdown_grace_secs);
    tracing::info!(connections = graceful.count(), ?grace, "stopped accepting; finishing responses under way");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "responses still under way after the grace period; dropping them");
    }
    Ok(())
}
