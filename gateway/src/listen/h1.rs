//! An HTTP/1 connection: each request head passes the [`head`](super::head) gate, then Weir's
//! own request loop (`proxy::h1`) serves it, or Pingora's `HttpProxy` when it asks for an
//! upgrade (WebSocket and the like), and the connection waits for the next one under the
//! idle timeout. Weir runs this loop rather than Pingora's own because Pingora's keep-alive
//! wait has no end once a client has said `keep-alive` (and none on the first request's
//! h2c sniff), and its idle wait does not see the shutdown signal.

use super::conn::Conn;
use super::head::{self, End, Wait};
use super::stop::Stop;
use bytes::BytesMut;
use pingora::apps::HttpServerApp;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v1::server::HttpSession as ServerV1;

/// Serves requests until the client or the gateway ends the connection. `buf` holds the
/// first request's head, already read and checked.
pub(super) async fn serve(conn: &Conn, stop: &mut Stop, mut stream: Stream, mut buf: BytesMut) {
    let limits = conn.limits.clone();
    loop {
        let next = if head::wants_upgrade(&buf) {
            upgrade(conn, stream, std::mem::take(&mut buf)).await
        } else {
            let mut s = ServerV1::new(stream);
            // Reuse allowed; the wait for the next request is this loop's, not Pingora's.
            s.set_server_keepalive(Some(limits.idle_timeout.as_secs().max(1)));
            s.set_read_timeout(Some(limits.client_body_timeout));
            s.set_write_timeout(Some(limits.client_write_timeout));
            // Bytes after a request's body are the next request's: they come back from
            // `reuse` and pass the head gate like any other.
            s.set_pipelining_enabled(true);
            // The head is in `buf`: Pingora parses it from there without reading again.
            s.set_pipelined_prefix(std::mem::take(&mut buf));
            match s.read_request().await {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    // The gate let through a head Pingora's parser refuses.
                    conn.metrics.listen.refused("bad_framing");
                    let _ = s.write_response_header(bad_request()).await;
                    let _ = s.finish_body().await;
                    return;
                }
            }
            if stop.is_set() {
                s.set_server_keepalive(None);
            }
            if !conn.weir.serve_h1(&mut s).await {
                s.shutdown().await;
                return;
            }
            match s.reuse().await {
                Ok(Some(r)) => Some(r.into_parts()),
                _ => None,
            }
        };
        let Some((next, prefix)) = next else {
            return;
        };
        stream = next;
        buf = prefix.unwrap_or_default();
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

/// A request that asks for an upgrade goes through Pingora's `HttpProxy`, which relays the
/// upgraded connection both ways.
async fn upgrade(conn: &Conn, stream: Stream, buf: BytesMut) -> Option<(Stream, Option<BytesMut>)> {
    let limits = &conn.limits;
    let mut session = ServerSession::new_http1(stream);
    session.set_keepalive(Some(limits.idle_timeout.as_secs().max(1)));
    session.set_read_timeout(Some(limits.client_body_timeout));
    session.set_write_timeout(Some(limits.client_write_timeout));
    session.set_pipelined_prefix(buf);
    let reused = conn.proxy.process_new_http(session, &conn.shutdown).await?;
    let (stream, _) = reused.consume();
    Some((stream, None))
}

fn bad_request() -> Box<pingora::http::ResponseHeader> {
    let mut resp = pingora::http::ResponseHeader::build(400, Some(2)).expect("a valid status");
    let _ = resp.insert_header("content-length", "0");
    let _ = resp.insert_header("connection", "close");
    Box::new(resp)
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
