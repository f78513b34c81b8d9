//! Graceful drain: on SIGTERM or SIGINT, `/healthz` turns 503 at once (so that the kubelet
//! stops sending traffic), every listener stops accepting, open connections are told to
//! finish (HTTP/1: `Connection: close` on the next response, an idle one closed; HTTP/2:
//! GOAWAY, in-flight streams run to the end) and the process exits as soon as the last one
//! closes, or when the drain timeout is up.
//!
//! The connection side is hyper-util's [`GracefulShutdown`]. Its one rule is that no
//! connection may start being watched after the shutdown is signalled (it would never be
//! told), so the accept loops are joined first, and only then is the shutdown sent: every
//! watcher handed out by a [`Gate`] predates it.

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long to back off after a failed `accept` (usually out of file descriptors), rather
/// than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Whether the drain has started. Cheap to clone; read by `/healthz` and by connections
/// still in their handshake.
#[derive(Debug, Clone)]
pub struct Draining(watch::Receiver<bool>);

impl Draining {
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the drain has started (at once if it already has).
    pub async fn started(&mut self) {
        // An error means the `Drain` is gone, which only happens on the way out too.
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}

/// The process's drain: hands out a [`Gate`] per listener, then runs the drain.
#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    graceful: Arc<GracefulShutdown>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            signal: watch::Sender::new(false),
            graceful: Arc::new(GracefulShutdown::new()),
        }
    }

    pub fn draining(&self) -> Draining {
        Draining(self.signal.subscribe())
    }

    /// The accept side of one listener. Deliberately not `Clone`: only accept loops hold
    /// gates, so once they are joined no new connection can be watched.
    pub fn gate(&self) -> Gate {
        Gate {
            graceful: self.graceful.clone(),
            draining: self.draining(),
        }
    }

    /// Starts the drain, waits for `accept_loops` (each returns when its [`Gate`] says so,
    /// closing its listener) and then for every open connection, for at most `timeout` in
    /// all. Whether everything finished in time.
    pub async fn run(self, mut accept_loops: JoinSet<()>, timeout: Duration) -> bool {
        let _ = self.signal.send(true);
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::info!(
            connections = self.graceful.count(),
            timeout = ?timeout,
            "draining: /healthz is 503, listeners closing, open connections finishing"
        );
        let graceful = self.graceful;
        let drained = tokio::time::timeout_at(deadline, async move {
            while accept_loops.join_next().await.is_some() {}
            match Arc::into_inner(graceful) {
                Some(graceful) => graceful.shutdown().await,
                // Only gates share it, and their loops are done: not expected.
                None => {
                    tracing::error!("a listener outlived the drain; waiting out the timeout");
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok();
        if drained {
            tracing::info!("drained: every connection closed");
        } else {
            tracing::warn!(timeout = ?timeout, "drain timeout: closing the connections left");
        }
        drained
    }
}

/// One listener's view of the drain.
#[derive(Debug)]
pub struct Gate {
    graceful: Arc<GracefulShutdown>,
    draining: Draining,
}

impl Gate {
    /// The next connection and the watcher to serve it under, or `None` once the drain has
    /// started: the caller then returns, dropping (closing) its listener.
    pub async fn accept(
        &mut self,
        listener: &TcpListener,
    ) -> Option<(TcpStream, SocketAddr, Watcher)> {
        loop {
            tokio::select! {
                biased;
                () = self.draining.started() => return None,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, remote)) => {
                        // Latency over throughput: responses go out whole, at once.
                        let _ = tcp.set_nodelay(true);
                        return Some((tcp, remote, self.graceful.watcher()));
                    }
                    Err(e) => {
                        let addr = listener.local_addr().ok();
                        tracing::warn!(?addr, error = %e, "accept failed");
                        tokio::select! {
                            () = self.draining.started() => return None,
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                },
            }
        }
    }

    pub fn draining(&self) -> Draining {
        self.draining.clone()
    }
}
