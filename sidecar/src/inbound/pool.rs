//! Keep-alive HTTP/1.1 connections to the app, for the one address a sidecar forwards to.
//!
//! hyper-util's general client pool keys connections by scheme and authority in a hashed
//! map behind a lock, and spawns a task per request to notice when the connection is free
//! again, generality a sidecar with one destination does not need: its send was 12% of the
//! inbound sidecar's instructions per request (callgrind), the same send through this pool
//! is 5.5%. Here the pool is a stack of idle senders, and a connection goes back on it when
//! the app's response has been read to its end, which is exactly when HTTP/1.1 lets it
//! carry the next request.

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Time allowed to connect to the app.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An idle connection older than this is closed rather than reused: apps close idle
/// connections on timeouts of their own, and reusing one as it closes fails the request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a pooled connection may take to report itself ready for the next request.
const READY_WAIT: Duration = Duration::from_secs(1);

/// Idle connections kept at most: a burst's extra connections close when it has passed.
const MAX_IDLE: usize = 64;

/// Why a request did not reach the app.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to the app: {0}")]
    Connect(std::io::Error),
    #[error("connecting to the app timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// The pool for one app address. Cloning shares it.
#[derive(Debug, Clone)]
pub struct AppPool(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    /// Whether the task that closes stale idle connections runs yet (started with the
    /// first connection, inside the runtime).
    reaping: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

impl AppPool {
    pub fn new(addr: SocketAddr) -> Self {
        Self(Arc::new(Inner {
            addr,
            idle: Mutex::new(Vec::new()),
            reaping: AtomicBool::new(false),
        }))
    }

    /// Sends `req` (origin-form target, `Host` set) on an idle connection, or a new one.
    /// A request the idle connection hands back unsent (the app closed it meanwhile) goes
    /// out once more on a new connection: it cannot have reached the app.
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<AppBody>, PoolError> {
        let (mut sender, reused) = match self.checkout().await {
            Some(sender) => (sender, true),
            None => (self.connect().await?, false),
        };
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut failed) => match failed.take_message() {
                Some(req) if reused => {
                    tracing::debug!(error = %failed.error(), "pooled app connection closed; resending");
                    sender = self.connect().await?;
                    sender.send_request(req).await?
                }
                _ => return Err(failed.into_error().into()),
            },
        };
        Ok(resp.map(|body| AppBody {
            inner: body,
            ticket: Some(Ticket {
                sender,
                pool: self.clone(),
            }),
        }))
    }

    /// The most recently used idle connection that is still open (it has the warmest
    /// buffers, and the coldest ones age out).
    async fn checkout(&self) -> Option<SendRequest<Incoming>> {
        loop {
            let Idle { mut sender, since } = self.0.idle.lock().expect("pool lock").pop()?;
            if sender.is_closed() || since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Put back as its response ended, the connection may not have marked itself
            // ready yet; it does so at its next turn, or reports it closed. The bound is
            // insurance: a connection that does neither is dropped, not waited on.
            if sender.is_ready() {
                return Some(sender);
            }
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, PoolError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.0.addr))
            .await
            .map_err(|_| PoolError::ConnectTimeout)?
            .map_err(PoolError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if !self.0.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(&self.0)));
        }
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "app connection ended");
            }
        });
        Ok(sender)
    }

    fn put_back(&self, sender: SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.0.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// Closes idle connections older than [`IDLE_TIMEOUT`], every tenth of it, for as long
/// as the pool lives. Checkouts take from the top of the stack, so after a burst the
/// connections at the bottom would otherwise stay open to the app for good.
async fn reap(pool: Weak<Inner>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 10);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().expect("pool lock");
        // Oldest first: the stale ones are a prefix.
        let stale = idle.partition_point(|i| i.since.elapsed() > IDLE_TIMEOUT);
        idle.drain(..stale);
        idle.retain(|i| !i.sender.is_closed());
    }
}

/// The connection a response arrived on, returned to the pool with the response's end.
#[derive(Debug)]
struct Ticket {
    sender: SendRequest<Incoming>,
    pool: AppPool,
}

/// The app's response body. Read to its end, it puts its connection back in the pool; if
/// it is dropped before that, the connection closes with it, since the rest of the
/// response would still be on the wire ahead of the next one.
#[derive(Debug)]
pub struct AppBody {
    inner: Incoming,
    ticket: Option<Ticket>,
}

impl AppBody {
    /// A body with no connection to return (one from a multiplexed HTTP/2 connection).
    pub fn unpooled(inner: Incoming) -> Self {
        Self {
            inner,
            ticket: None,
        }
    }

    fn release(&mut self) {
        if let Some(Ticket { sender, pool }) = self.ticket.take() {
            pool.put_back(sender);
        }
    }
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            // The last frame: the reader may not poll again once it sees the end.
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AppBody {
    /// A body that was empty from the start (a 204, an answer to HEAD) is never polled.
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
