//! An HTTP/1 connection: each request head passes the [`head`](super::head) gate, then Weir's
//! own request loop (`proxy::h1`) serves it, or Pingora's `HttpProxy` when it asks for an
//! upgrade (WebSocket and the like), and the connection waits for the next one under the
//! idle timeout. Weir runs this loop rather than Pingora's own because Pingora's keep-alive
//! wait has no end once a client has said `keep-alive` (and none on the first request's
//! h2c sniff), and its idle wait does not see the shutdown signal.

use super::conn::Conn;
use super::head::{self, End, Wait};
use super::stop::Stop;
use crate::proxy::client_h1::{ConnInfo, Parsed, Session};
use crate::proxy::deadline::Deadline;
use bytes::BytesMut;
use pingora::apps::HttpServerApp;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;

/// Serves requests until the client or the gateway ends the connection. `buf` holds the
/// first request's head, already read and checked.
/// `timer` is the connection's, which timed that read.
pub(super) async fn serve(
    conn: &Conn,
    stop: &mut Stop,
    stream: Stream,
    buf: BytesMut,
    timer: Deadline,
) {
    let limits = conn.limits.clone();
    let info = info(&stream);
    let mut s = Session::new(stream, buf, info, timer);
    s.set_timeouts(limits.client_body_timeout, limits.client_write_timeout);
    loop {
        match s.begin(limits.max_headers) {
            Parsed::Request => {
                if stop.is_set() {
                    s.close_after();
                }
                if !conn.weir.serve_h1(&mut s).await || !s.reusable().await {
                    s.shutdown().await;
                    return;
                }
            }
            Parsed::Elsewhere => {
                if let head::Inspect::Refuse(r) = head::check(s.io().1, &limits) {
                    conn.ended(s.io().0, End::Refused(r), false).await;
                    return;
                }
                let (stream, buf, info, timer) = s.into_parts();
                let Some(stream) = pingora_path(conn, stream, buf).await else {
                    return;
                };
                s = Session::new(stream, BytesMut::new(), info, timer);
                s.set_timeouts(limits.client_body_timeout, limits.client_write_timeout);
            }
            Parsed::Refused(r) => {
                conn.ended(s.io().0, End::Refused(r), false).await;
                return;
            }
            Parsed::Invalid(e) => {
                tracing::debug!(error = %e, "a request head refused");
                conn.ended(s.io().0, End::Refused(head::Refusal::BadFraming), false)
                    .await;
                return;
            }
        }
        if stop.is_set() {
            conn.metrics.listen.closed("shutdown");
            return;
        }
        let (stream, buf, timer) = s.io();
        let read = head::read(stream, buf, timer, Wait::Next, false, &limits, stop).await;
        if let Err(end) = read {
            conn.ended(s.io().0, end, false).await;
            return;
        }
    }
}

/// The addresses and TLS session of the connection, read once for all its requests.
fn info(stream: &Stream) -> ConnInfo {
    let socket = stream.get_socket_digest();
    let addr = |f: fn(
        &pingora::protocols::SocketDigest,
    ) -> Option<&pingora::protocols::l4::socket::SocketAddr>| {
        socket
            .as_deref()
            .and_then(f)
            .and_then(|a| a.as_inet())
            .copied()
    };
    ConnInfo {
        port: addr(|d| d.local_addr()).map_or(0, |a| a.port()),
        client_ip: addr(|d| d.peer_addr()).map(|a| a.ip()),
        ssl: stream.get_ssl_digest(),
    }
}

/// A request this loop does not serve itself (an upgrade such as WebSocket, or a head
/// Pingora's parser reads in its own way) goes through Pingora's `HttpProxy`, which also
/// relays an upgraded connection both ways.
async fn pingora_path(conn: &Conn, stream: Stream, buf: BytesMut) -> Option<Stream> {
    let limits = &conn.limits;
    let mut session = ServerSession::new_http1(stream);
    session.set_keepalive(Some(limits.idle_timeout.as_secs().max(1)));
    session.set_read_timeout(Some(limits.client_body_timeout));
    session.set_write_timeout(Some(limits.client_write_timeout));
    session.set_pipelined_prefix(buf);
    let reused = conn.proxy.process_new_http(session, &conn.shutdown).await?;
    let (stream, _) = reused.consume();
    Some(stream)
}

impl Conn {
    /// Counts why a connection ends without a request, and answers the client if it is
    /// owed an answer. A connection silent from its start (`first`) ran out of header
    /// time, not idle time; it gets no 408, as nothing was asked.
    pub(super) async fn ended<S>(&self, io: &mut S, end: End, first: bool)
    where
        S: tokio::io::AsyncWrite + Unpin,
    {
        let m = &self.metrics.listen;
        match end {
            End::Idle if first => m.closed("header_timeout"),
            End::Idle => m.closed("idle_timeout"),
            End::HeaderTimeout => m.closed("header_timeout"),
            End::Shutdown => m.closed("shutdown"),
            End::Refused(r) => m.refused(r.reason()),
            End::Closed => {}
        }
        head::respond(io, &end).await;
    }
}
