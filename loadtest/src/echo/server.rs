//! The accept loop: one task per connection, HTTP/1.1 and h2c (prior knowledge) on the
//! same port, and a graceful drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::handler::{self, Shared};
use super::{Failure, Identity};

/// How long in-flight requests get to finish after the shutdown signal. Long enough for a
/// test's `?delay=` of a few seconds, short enough not to stall a test run or a pod's
/// termination grace period.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to back off after a failed `accept`, which is usually descriptor exhaustion:
/// retrying at once would spin a core while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves the echo backend on `listener` until `shutdown` completes, then stops accepting
/// and lets in-flight requests finish for up to a few seconds. `failure` sets how often
/// (and with what status) counted requests fail on purpose.
///
/// Fails only if `identity` cannot be sent in response headers.
pub async fn serve(
    listener: TcpListener,
    identity: Identity,
    failure: Failure,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::new(identity, failure)?);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timers let hyper drop connections that never finish sending a request head.
    builder.http1().keep_alive(true).timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Responses are small and written whole; Nagle would only add latency.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, %peer, "could not set TCP_NODELAY");
        }
        let shared = Arc::clone(&shared);
        let connection = shared.new_connection();
        let service = service_fn(move |request| {
            handler::handle(Arc::clone(&shared), connection.clone(), request)
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, %peer, "connection ended with an error");
            }
        });
    }

    drop(listener);
    info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(timeout = ?DRAIN_TIMEOUT, "connections still open after the drain timeout");
    }
    Ok(())
}
