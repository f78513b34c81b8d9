//! An HTTP/2 connection (TLS with ALPN h2, or h2c with prior knowledge): the handshake and
//! the first request must come within the header timeout, an idle connection gets GOAWAY
//! after the idle timeout, and on shutdown an idle connection gets GOAWAY at once while a
//! busy one finishes its streams. Each stream is served by Pingora's `HttpProxy`.
//!
//! Abuse is bounded by the `h2` crate's limits, set here: streams over the concurrency
//! limit are refused and, past a budget of refusals and protocol-error resets, the client
//! gets GOAWAY (ENHANCE_YOUR_CALM); so do floods of streams the client resets before they
//! are served (rapid reset, CVE-2023-44487).

use super::conn::Conn;
use super::limits::ConnLimits;
use super::stop::Stop;
use bytes::Bytes;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::{self, H2Accept, H2Options, HttpSession};
use pingora::protocols::{Digest, Stream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant, sleep_until, timeout};

/// Streams refused while being accepted (malformed target, ambiguous length or authority)
/// before the connection is given up, as Pingora's own loop allows.
const MAX_REJECTED_STREAMS: usize = 32;
/// Streams the client may reset before the gateway accepted them; more is a rapid-reset
/// flood.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// How long a GOAWAY may take to leave before the connection is dropped anyway.
const GOAWAY_FLUSH: Duration = Duration::from_secs(1);

type Connection = h2::server::Connection<Stream, Bytes>;

/// The server settings: Pingora's bounded defaults, with Weir's limits.
fn options(limits: &ConnLimits) -> H2Options {
    let mut o = server::default_h2_options();
    o.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        // Each stream opened over the limit is refused with a reset: a client that keeps
        // doing so after a few rounds of its own limit is not confused, it is pushing.
        .max_local_error_reset_streams(Some(
            (limits.max_concurrent_streams as usize)
                .saturating_mul(2)
                .max(64),
        ));
    o
}

/// Streams being served on one connection, so the accept loop knows when it is idle.
#[derive(Debug, Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

struct StreamGuard(Arc<Active>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Active {
    fn start(self: &Arc<Self>) -> StreamGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    fn is_idle(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Resolves once no stream is in flight, then after `after` more, or at `deadline`.
    async fn idle_until(&self, deadline: Option<Instant>, after: Duration) {
        while !self.is_idle() {
            self.idle.notified().await;
        }
        sleep_until(deadline.unwrap_or_else(|| Instant::now() + after)).await;
    }
}

/// Serves an HTTP/2 connection. `deadline` is when the first request must have arrived.
pub(super) async fn serve(conn: &Conn, stop: &mut Stop, stream: Stream, deadline: Instant) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let metrics = conn.metrics.clone();
    let handshake = tokio::time::timeout_at(
        deadline,
        server::handshake(stream, Some(options(&conn.limits))),
    );
    let mut h2 = match handshake.await {
        Ok(Ok(h2)) => h2,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            metrics.listen.closed("handshake_timeout");
            return;
        }
    };
    let active = Arc::new(Active::default());
    // Until the first stream arrives, the header deadline; then idle periods.
    let mut first = Some(deadline);
    let mut rejected = 0usize;
    let mut draining = false;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait(), if !draining => {
                draining = true;
                if active.is_idle() {
                    metrics.listen.closed("shutdown");
                    return goaway(&mut h2, h2::Reason::NO_ERROR).await;
                }
                // In-flight streams finish; the client learns not to start new ones.
                h2.graceful_shutdown();
                continue;
            }
            _ = active.idle_until(first, conn.limits.idle_timeout), if !draining => {
                metrics.listen.closed(if first.is_some() { "header_timeout" } else { "idle_timeout" });
                return goaway(&mut h2, h2::Reason::NO_ERROR).await;
            }
            // A draining connection whose last stream ended closes now, even if the client
            // never answers the graceful shutdown's PING.
            _ = active.idle_until(None, Duration::ZERO), if draining => {
                return goaway(&mut h2, h2::Reason::NO_ERROR).await;
            }
            accepted = HttpSession::from_h2_conn(&mut h2, digest.clone()) => accepted,
        };
        match accepted {
            Ok(Some(H2Accept::Session(session))) => {
                first = None;
                serve_stream(conn, &active, session);
                // h2 stops counting a stream the client resets, while its task may still
                // be at work: more tasks than twice the stream limit means a client is
                // resetting streams as fast as it opens them after they were accepted.
                if active.count.load(Ordering::Acquire)
                    > 2 * conn.limits.max_concurrent_streams as usize
                {
                    metrics.listen.closed("h2_abuse");
                    return goaway(&mut h2, h2::Reason::ENHANCE_YOUR_CALM).await;
                }
            }
            Ok(Some(H2Accept::Rejected)) => {
                rejected += 1;
                if rejected >= MAX_REJECTED_STREAMS {
                    metrics.listen.closed("h2_abuse");
                    return goaway(&mut h2, h2::Reason::ENHANCE_YOUR_CALM).await;
                }
            }
            Ok(None) => return,
            Err(e) => {
                // The h2 crate ends a connection that exceeded its reset budgets with
                // GOAWAY(ENHANCE_YOUR_CALM); other errors are clients going away.
                let calm = e
                    .cause
                    .as_ref()
                    .and_then(|c| c.downcast_ref::<h2::Error>())
                    .and_then(h2::Error::reason);
                if calm == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                    metrics.listen.closed("h2_abuse");
                }
                tracing::debug!(error = %e, "HTTP/2 connection ended");
                return;
            }
        }
    }
}

/// Serves one stream on a task of its own, or answers 431 when it has more header fields
/// than allowed (h2 bounds their total size, not their number).
fn serve_stream(conn: &Conn, active: &Arc<Active>, session: HttpSession) {
    let guard = active.start();
    let proxy = conn.proxy.clone();
    let shutdown = conn.shutdown.clone();
    let (max_headers, write_timeout) = (conn.limits.max_headers, conn.limits.client_write_timeout);
    let metrics = conn.metrics.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let mut session = ServerSession::new_http2(session);
        session.set_write_timeout(Some(write_timeout));
        if session.req_header().headers.len() > max_headers {
            metrics.listen.refused("too_many_headers");
            let _ = session.respond_error(431).await;
            let _ = session.finish().await;
            return;
        }
        proxy.process_new_http(session, &shutdown).await;
    });
}

/// Sends GOAWAY and drives the connection until it is flushed and closed.
async fn goaway(h2: &mut Connection, reason: h2::Reason) {
    h2.abrupt_shutdown(reason);
    let _ = timeout(GOAWAY_FLUSH, async {
        while let Some(Ok(_)) = h2.accept().await {
            // Streams arriving after GOAWAY are dropped, which resets them.
        }
    })
    .await;
}
