//! An HTTP/1 connection: each request head passes the [`head`](super::head) gate, then
//! Pingora's `HttpProxy` serves the request, and the connection waits for the next one
//! under the idle timeout. Weir runs this loop rather than Pingora's own because Pingora's
//! keep-alive wait has no end once a client has said `keep-alive` (and none on the first
//! request's h2c sniff), and its idle wait does not see the shutdown signal.

use super::conn::Conn;
use super::head::{self, End, Wait};
use super::stop::Stop;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;

/// Serves requests until the client or the gateway ends the connection. `buf` holds the
/// first request's head, already read and checked.
pub(super) async fn serve(conn: &Conn, stop: &mut Stop, mut stream: Stream, mut buf: BytesMut) {
    let limits = conn.limits.clone();
    let mut settings: Option<HttpPersistentSettings> = None;
    loop {
        let mut session = ServerSession::new_http1(stream);
        if let Some(s) = settings.take() {
            s.apply_to_session(&mut session);
        }
        // Reuse allowed; the wait for the next request is this loop's, not Pingora's.
        session.set_keepalive(Some(limits.idle_timeout.as_secs().max(1)));
        session.set_read_timeout(Some(limits.client_body_timeout));
        session.set_write_timeout(Some(limits.client_write_timeout));
        // The head is in `buf`: Pingora parses it from there without reading again.
        session.set_pipelined_prefix(std::mem::take(&mut buf));
        let Some(reused) = conn.proxy.process_new_http(session, &conn.shutdown).await else {
            return;
        };
        let (next, persistent) = reused.consume();
        stream = next;
        settings = persistent;
        if stop.is_set() {
            conn.metrics.listen.closed("shutdown");
            return;
        }
        let read = head::read(&mut stream, &mut buf, Wait::Next, false, &limits, stop).await;
        if let Err(end) = read {
            conn.ended(&mut stream, end, false).await;
            return;
        }
    }
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
