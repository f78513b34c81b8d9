//! Weir's HTTP/1.1 client for plain-text backends: the request head written straight from
//! the edited head, the response head parsed once with `httparse` into an [`Answer`] (its
//! hop-by-hop fields left out as they are met), and bodies relayed from one
//! read buffer that stays with the connection in the pool. pingora-core's client session
//! built a head with a case map and a copied value per field, then a body buffer per
//! response, and Weir copied that head again for the client: a third of a small request's
//! instructions.
//!
//! Framing follows RFC 9112 §6.3. A response whose framing is in doubt (differing lengths,
//! a transfer coding other than chunked) is refused as the backend's fault rather than
//! guessed at, as nginx does; one framed by the connection's close is relayed and the
//! connection is not kept.

use super::answer::Answer;
use super::deadline::Deadline;
use super::wire::{Receiving, Sending, Wire, head_end, invalid};
use super::{client_h1, headers};
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::RequestHeader;
#[cfg(test)]
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, Result, RetryType};
use std::time::Duration;

/// The most a response head may take, as for the client's (`--max-header-bytes` default).
const MAX_HEAD: usize = 64 * 1024;
/// Interim (1xx) answers taken before the final one: a backend that sends them without end
/// would otherwise hold the request for as long as it keeps sending.
const MAX_INTERIM: usize = 16;

/// A connection to a plain-text HTTP/1.1 backend, with its buffers.
pub(super) struct Conn {
    wire: Wire,
    sending: Sending,
    receiving: Receiving,
    /// Neither side said close, and the framing allows another exchange.
    keep: bool,
    /// The field list of the answers read, kept between them.
    fields: Vec<[u32; 4]>,
}

impl Conn {
    pub(super) fn new(stream: Stream) -> Self {
        Self {
            wire: Wire::new(stream, BytesMut::new(), Deadline::new()),
            sending: Sending::None,
            receiving: Receiving::Done,
            keep: true,
            fields: Vec::new(),
        }
    }

    /// Each read's and each write's limit, for the try that takes the connection.
    pub(super) fn set_timeouts(&mut self, read: Option<Duration>, write: Option<Duration>) {
        self.wire.read_timeout = read;
        self.wire.write_timeout = write;
    }

    pub(super) fn stream_mut(&mut self) -> &mut Stream {
        &mut self.wire.stream
    }

    /// Whether the exchange ended cleanly and the connection may carry another.
    pub(super) fn reusable(&self) -> bool {
        self.keep
            && self.receiving == Receiving::Done
            && matches!(self.sending, Sending::None | Sending::Length(0))
            && self.wire.buf.is_empty()
    }

    /// Writes the request head; its `Content-Length` or `Transfer-Encoding` frames the body.
    pub(super) async fn send_head(&mut self, req: &RequestHeader) -> Result<()> {
        let fields = req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        self.write_head(req, request_framing(req)?, fields).await
    }

    /// Writes the client's request head as it came, less its hop-by-hop fields, with the
    /// gateway's `added` fields in place of the client's own. `parsed` is what the client's
    /// parse learnt of that head's fields.
    pub(super) async fn send_client_head(
        &mut self,
        req: &RequestHeader,
        parsed: client_h1::Fields,
        added: &headers::Added,
    ) -> Result<()> {
        let listed = if parsed.connection {
            headers::connection_listed(&req.headers)
        } else {
            Vec::new()
        };
        let fields = req
            .headers
            .iter()
            .filter(|(n, v)| !headers::request_hop_by_hop(n, v, &listed) && !added.replaces(n))
            .chain(added.fields())
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        self.write_head(req, parsed.framing, fields).await
    }

    async fn write_head<'f>(
        &mut self,
        req: &RequestHeader,
        framing: Sending,
        fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
    ) -> Result<()> {
        self.keep = true;
        self.sending = framing;
        let out = &mut self.wire.out;
        out.clear();
        out.extend_from_slice(req.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.raw_path());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in fields {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.wire.write_out("request head").await
    }

    /// Writes a piece of the request body, chunk-encoded when the head said chunked.
    pub(super) async fn send_body(&mut self, data: &[u8]) -> Result<()> {
        self.wire
            .send(&mut self.sending, data, "request body")
            .await
    }

    /// Ends the request body: the last chunk when chunked.
    pub(super) async fn finish_body(&mut self) -> Result<()> {
        self.wire.finish(&mut self.sending, "request body").await
    }

    /// Reads the final response head (interim 1xx answers are dropped) as the client's copy:
    /// with room for `extra` fields and without the hop-by-hop ones.
    #[cfg(test)]
    pub(super) async fn read_head(
        &mut self,
        head_request: bool,
        extra: usize,
    ) -> Result<ResponseHeader> {
        let answer = self.read_answer(head_request).await?;
        let head = answer.to_header(extra);
        self.reclaim(answer);
        head
    }

    /// Reads the final response head; interim 1xx answers are dropped. `head_request`: the
    /// response has no body whatever its head says. Give it back with [`Self::reclaim`].
    pub(super) async fn read_answer(&mut self, head_request: bool) -> Result<Answer> {
        for _ in 0..=MAX_INTERIM {
            let head = self.next_head().await?;
            let answer = Answer::parse(head, head_request, std::mem::take(&mut self.fields))?;
            if answer.status == http::StatusCode::SWITCHING_PROTOCOLS {
                // Upgrade requests take Pingora's path; here nobody asked to switch.
                return Err(invalid(
                    "101 Switching Protocols to a request without Upgrade",
                ));
            }
            if answer.status.is_informational() {
                self.reclaim(answer);
                continue;
            }
            self.receiving = answer.framing;
            self.keep &= answer.keep;
            return Ok(answer);
        }
        Err(invalid(format!(
            "more than {MAX_INTERIM} interim answers from the backend"
        )))
    }

    /// Keeps an answer's field list for the next head.
    pub(super) fn reclaim(&mut self, answer: Answer) {
        self.fields = answer.into_fields();
    }

    /// The next whole head's bytes, read as needed.
    async fn next_head(&mut self) -> Result<Bytes> {
        let mut read = 0;
        loop {
            if let Some(len) = head_end(&self.wire.buf) {
                // Parsed once, from the bytes the client's copy keeps slices of.
                return Ok(self.wire.buf.split_to(len).freeze());
            }
            if self.wire.buf.len() >= MAX_HEAD {
                return Err(invalid(format!(
                    "the backend's response head is over {MAX_HEAD} bytes"
                )));
            }
            let n = self.wire.read_more("response head").await?;
            if n == 0 {
                let mut e = Error::explain(
                    ErrorType::ConnectionClosed,
                    format!("the backend closed the connection after {read} bytes of head"),
                );
                // As Pingora: safe to send again only on a connection that was reused.
                e.retry = RetryType::ReusedOnly;
                return Err(e);
            }
            read += n;
        }
    }

    /// How many bytes of the response body are ready at the front of [`Self::body`], after
    /// reading more if none are; `None` at the body's end.
    pub(super) async fn body_ready(&mut self) -> Result<Option<usize>> {
        self.wire
            .body_ready(&mut self.receiving, "response body")
            .await
    }

    /// Whether body bytes are already read (a wait for more would read the socket).
    pub(super) fn has_buffered(&self) -> bool {
        !self.wire.buf.is_empty()
    }

    /// The body bytes [`Self::body_ready`] counted.
    pub(super) fn body(&self, n: usize) -> &[u8] {
        &self.wire.buf[..n]
    }

    /// Marks `n` body bytes as relayed.
    pub(super) fn consume(&mut self, n: usize) {
        self.wire.consume(&mut self.receiving, n);
    }
}

fn request_framing(req: &RequestHeader) -> Result<Sending> {
    if let Some(te) = req.headers.get(header::TRANSFER_ENCODING) {
        let last = te.as_bytes().rsplit(|b| *b == b',').next().unwrap_or(b"");
        if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Ok(Sending::Chunked);
        }
        return Err(Error::explain(
            ErrorType::InvalidHTTPHeader,
            "a request transfer coding other than chunked",
        ));
    }
    match req.headers.get(header::CONTENT_LENGTH) {
        Some(v) => std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Sending::Length)
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "invalid Content-Length")),
        None => Ok(Sending::None),
    }
}

#[cfg(test)]
mod tests {
    //! Raw backends on loopback, each answering with the bytes under test.
    use super::*;
    use crate::proxy::wire::{MAX_NAMES, NAMES, field_name};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A backend that reads one request head (and `body` more bytes), answers `answer`, then
    /// closes or holds the connection; returns what it received.
    async fn backend(
        answer: &'static [u8],
        body: usize,
        close: bool,
    ) -> (Conn, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while head_end(&got).is_none_or(|end| got.len() < end + body) {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed early: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            if !close {
                // Held open until the client is done with it.
                let _ = s.read(&mut buf).await;
            }
            got
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
        (Conn::new(stream), server)
    }

    fn get(path: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        r.insert_header("host", "app").unwrap();
        r
    }

    /// Sends `req` (with `body`), reads the answer: its head and its relayed body.
    async fn exchange(
        c: &mut Conn,
        req: &RequestHeader,
        body: &[u8],
    ) -> Result<(ResponseHeader, Vec<u8>)> {
        c.send_head(req).await?;
        c.send_body(body).await?;
        c.finish_body().await?;
        let resp = c.read_head(req.method == http::Method::HEAD, 4).await?;
        let mut relayed = Vec::new();
        while let Some(n) = c.body_ready().await? {
            relayed.extend_from_slice(c.body(n));
            c.consume(n);
        }
        Ok((resp, relayed))
    }

    #[tokio::test]
    async fn a_length_framed_answer_keeps_the_connection_and_drops_hop_by_hop_fields() {
        let (mut c, server) = backend(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: a\r\n\r\nhello",
            0,
            false,
        )
        .await;
        let (resp, body) = exchange(&mut c, &get("/a?b=1"), b"").await.unwrap();
        assert_eq!(resp.status, 200, "the interim 100 is dropped");
        assert_eq!(body, b"hello");
        assert_eq!(resp.headers.get("x-kept").unwrap(), "a");
        for gone in ["connection", "x-hop", "keep-alive"] {
            assert!(resp.headers.get(gone).is_none(), "{gone}");
        }
        assert_eq!(resp.headers.get("content-length").unwrap(), "5");
        assert!(c.reusable());
        drop(c);
        let got = server.await.unwrap();
        assert!(
            got.starts_with(b"GET /a?b=1 HTTP/1.1\r\nhost: app\r\n\r\n"),
            "{got:?}"
        );
    }

    #[test]
    fn field_names_are_remembered_whatever_their_case() {
        let a = field_name("X-Remembered-Name").unwrap();
        let b = field_name("x-remembered-name").unwrap();
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("x-remembered-name", "x-remembered-name")
        );
        assert!(field_name("bad name").is_none());
        assert!(field_name("").is_none());
        for i in 0..2 * MAX_NAMES {
            assert_eq!(
                field_name(&format!("X-N{i}")).unwrap().as_str(),
                format!("x-n{i}")
            );
        }
        assert!(NAMES.with_borrow(|n| n.len()) <= MAX_NAMES);
    }

    #[tokio::test]
    async fn a_framing_field_named_in_connection_stays() {
        let (mut c, _server) = backend(
            b"HTTP/1.1 200 OK\r\nConnection: X-Hop, Content-Length\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok",
            0,
            false,
        )
        .await;
        let (resp, body) = exchange(&mut c, &get("/"), b"").await.unwrap();
        assert_eq!(body, b"ok");
        assert!(resp.headers.get("x-hop").is_none());
        assert_eq!(resp.headers.get("content-length").unwrap(), "2");
    }

    #[tokio::test]
    async fn chunked_answers_are_decoded_and_their_trailers_dropped() {
        let (mut c, _server) = backend(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n",
            0,
            false,
        )
        .await;
        let (resp, body) = exchange(&mut c, &get("/"), b"").await.unwrap();
        assert_eq!(body, b"hello!");
        assert_eq!(resp.headers.get("transfer-encoding").unwrap(), "chunked");
        assert!(c.reusable(), "the trailers were read to their end");
    }

    #[tokio::test]
    async fn interim_answers_without_end_are_the_backends_fault() {
        let mut many = Vec::new();
        for _ in 0..=MAX_INTERIM {
            many.extend_from_slice(b"HTTP/1.1 102 Processing\r\n\r\n");
        }
        many.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let (mut c, _server) = backend(Box::leak(many.into_boxed_slice()), 0, false).await;
        let e = exchange(&mut c, &get("/"), b"").await.unwrap_err();
        assert_eq!(e.etype(), &ErrorType::InvalidHTTPHeader, "{e}");
    }

    #[tokio::test]
    async fn an_answer_framed_by_close_is_relayed_and_not_kept() {
        let (mut c, _server) =
            backend(b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nall of it", 0, true).await;
        let (_, body) = exchange(&mut c, &get("/"), b"").await.unwrap();
        assert_eq!(body, b"all of it");
        assert!(!c.reusable());
    }

    #[tokio::test]
    async fn length_and_chunked_together_trust_the_coding_and_close() {
        let (mut c, _server) = backend(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            0,
            false,
        )
        .await;
        let (resp, body) = exchange(&mut c, &get("/"), b"").await.unwrap();
        assert_eq!(body, b"ok");
        assert!(resp.headers.get("content-length").is_none());
        assert!(!c.reusable());
    }

    #[tokio::test]
    async fn heads_in_doubt_are_the_backends_fault() {
        for (answer, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"[..],
                "differing",
            ),
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"[..],
                "invalid",
            ),
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n"[..],
                "invalid",
            ),
            (
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
                "coding",
            ),
            (
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
                "chunk size",
            ),
            (
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX"[..],
                "line end",
            ),
            (&b"HTTP/1.1 2000 OK\r\n\r\n"[..], "backend"),
            (
                &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"[..],
                "unasked",
            ),
            (&b"NOT HTTP\r\n\r\n"[..], "backend"),
        ] {
            let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
            let (mut c, _server) = backend(answer, 0, false).await;
            let e = exchange(&mut c, &get("/"), b"").await.unwrap_err();
            assert_eq!(e.etype(), &ErrorType::InvalidHTTPHeader, "{why}: {e}");
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_or_a_head_too_large_fails() {
        let (mut c, _server) =
            backend(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0, true).await;
        let e = exchange(&mut c, &get("/"), b"").await.unwrap_err();
        assert_eq!(e.etype(), &ErrorType::ConnectionClosed, "{e}");

        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() <= MAX_HEAD {
            huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let (mut c, _server) = backend(Box::leak(huge.into_boxed_slice()), 0, false).await;
        let e = exchange(&mut c, &get("/"), b"").await.unwrap_err();
        assert_eq!(e.etype(), &ErrorType::InvalidHTTPHeader, "{e}");

        let (mut c, _server) = backend(b"", 0, true).await;
        let e = exchange(&mut c, &get("/"), b"").await.unwrap_err();
        assert_eq!(e.etype(), &ErrorType::ConnectionClosed, "{e}");
        assert_eq!(e.retry, RetryType::ReusedOnly);
    }

    #[tokio::test]
    async fn head_204_and_304_answers_have_no_body_whatever_they_say() {
        let mut head = get("/");
        head.set_method(http::Method::HEAD);
        let (mut c, _server) =
            backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", 0, false).await;
        let (resp, body) = exchange(&mut c, &head, b"").await.unwrap();
        assert!(body.is_empty());
        assert_eq!(resp.headers.get("content-length").unwrap(), "1000");
        assert!(c.reusable());
        for answer in [
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            &b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"[..],
        ] {
            let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
            let (mut c, _server) = backend(answer, 0, false).await;
            let (_, body) = exchange(&mut c, &get("/"), b"").await.unwrap();
            assert!(body.is_empty());
            assert!(c.reusable());
        }
    }

    #[tokio::test]
    async fn request_bodies_go_out_as_their_head_frames_them() {
        let mut post = get("/up");
        post.set_method(http::Method::POST);
        post.insert_header("transfer-encoding", "chunked").unwrap();
        let (mut c, server) =
            backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 19, false).await;
        c.send_head(&post).await.unwrap();
        c.send_body(b"hello").await.unwrap();
        c.send_body(b"").await.unwrap();
        c.send_body(b"world!").await.unwrap();
        c.finish_body().await.unwrap();
        c.read_head(false, 0).await.unwrap();
        assert_eq!(c.body_ready().await.unwrap(), None);
        drop(c);
        let got = server.await.unwrap();
        let end = head_end(&got).unwrap();
        assert_eq!(&got[end..], b"5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n");

        let mut sized = get("/up");
        sized.set_method(http::Method::POST);
        sized.insert_header("content-length", "4").unwrap();
        let (mut c, _server) =
            backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4, false).await;
        c.send_head(&sized).await.unwrap();
        c.send_body(b"ab").await.unwrap();
        let e = c.finish_body().await.unwrap_err();
        assert_eq!(e.etype(), &ErrorType::WriteError, "2 bytes short: {e}");
    }
}
