//! Weir's HTTP/1.1 client for plain-text backends: the request head written straight from
//! the edited head, the response head parsed with `httparse` straight into the client's copy
//! (no second map, hop-by-hop fields left out as they are met), and bodies relayed from one
//! read buffer that stays with the connection in the pool. pingora-core's client session
//! built a head with a case map and a copied value per field, then a body buffer per
//! response, and Weir copied that head again for the client: a third of a small request's
//! instructions.
//!
//! Framing follows RFC 9112 §6.3. A response whose framing is in doubt (differing lengths,
//! a transfer coding other than chunked) is refused as the backend's fault rather than
//! guessed at, as nginx does; one framed by the connection's close is relayed and the
//! connection is not kept.

use super::headers;
use bytes::{Buf, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, Result, RetryType};
use std::io::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most a response head may take, as for the client's (`--max-header-bytes` default).
const MAX_HEAD: usize = 64 * 1024;
/// Fields a response head may have.
const MAX_FIELDS: usize = 128;
/// Interim (1xx) answers taken before the final one: a backend that sends them without end
/// would otherwise hold the request for as long as it keeps sending.
const MAX_INTERIM: usize = 16;
/// Room made in the read buffer before each read.
const READ_ROOM: usize = 16 * 1024;
/// A chunk-size line or a trailer line longer than this is not a backend speaking HTTP.
const MAX_LINE: usize = 4096;

/// A connection to a plain-text HTTP/1.1 backend, with its read buffer.
pub(super) struct Conn {
    stream: Stream,
    buf: BytesMut,
    out: Vec<u8>,
    sending: Sending,
    receiving: Receiving,
    /// Neither side said close, and the framing allows another exchange.
    keep: bool,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sending {
    None,
    Length(u64),
    Chunked,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Receiving {
    Done,
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
}

impl Conn {
    pub(super) fn new(stream: Stream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            out: Vec::new(),
            sending: Sending::None,
            receiving: Receiving::Done,
            keep: true,
            read_timeout: None,
            write_timeout: None,
        }
    }

    pub(super) fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Whether the exchange ended cleanly and the connection may carry another.
    pub(super) fn reusable(&self) -> bool {
        self.keep
            && self.receiving == Receiving::Done
            && matches!(self.sending, Sending::None | Sending::Length(0))
            && self.buf.is_empty()
    }

    /// Writes the request head; its `Content-Length` or `Transfer-Encoding` frames the body.
    pub(super) async fn send_head(&mut self, req: &RequestHeader) -> Result<()> {
        self.keep = true;
        self.sending = request_framing(req)?;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(req.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.raw_path());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &req.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        write(
            &mut self.stream,
            &self.out,
            self.write_timeout,
            "request head",
        )
        .await
    }

    /// Writes a piece of the request body, chunk-encoded when the head said chunked.
    pub(super) async fn send_body(&mut self, data: &[u8]) -> Result<()> {
        match self.sending {
            Sending::None => Ok(()),
            Sending::Length(left) => {
                let n = data.len().min(left as usize);
                self.sending = Sending::Length(left - n as u64);
                write(
                    &mut self.stream,
                    &data[..n],
                    self.write_timeout,
                    "request body",
                )
                .await
            }
            Sending::Chunked if data.is_empty() => Ok(()),
            Sending::Chunked => {
                self.out.clear();
                // Writing to a Vec cannot fail.
                let _ = write!(self.out, "{:x}\r\n", data.len());
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
                write(
                    &mut self.stream,
                    &self.out,
                    self.write_timeout,
                    "request body",
                )
                .await
            }
        }
    }

    /// Ends the request body: the last chunk when chunked.
    pub(super) async fn finish_body(&mut self) -> Result<()> {
        match self.sending {
            Sending::Chunked => {
                self.sending = Sending::None;
                write(
                    &mut self.stream,
                    b"0\r\n\r\n",
                    self.write_timeout,
                    "request body",
                )
                .await
            }
            Sending::Length(left) if left > 0 => Err(Error::explain(
                ErrorType::WriteError,
                format!("the request body ended {left} bytes short of its Content-Length"),
            )),
            _ => Ok(()),
        }
    }

    /// Reads the final response head (interim 1xx answers are dropped) as the client's copy:
    /// with room for `extra` fields and without the hop-by-hop ones. `head_request`: the
    /// response has no body whatever its head says.
    pub(super) async fn read_head(
        &mut self,
        head_request: bool,
        extra: usize,
    ) -> Result<Box<ResponseHeader>> {
        for _ in 0..=MAX_INTERIM {
            let (resp, framing) = self.parse_head(head_request, extra).await?;
            let status = resp.status.as_u16();
            if status == 101 {
                // Upgrade requests take Pingora's path; here nobody asked to switch.
                return Err(invalid(
                    "101 Switching Protocols to a request without Upgrade",
                ));
            }
            if (100..200).contains(&status) {
                continue;
            }
            self.receiving = framing;
            if framing == Receiving::UntilClose {
                self.keep = false;
            }
            return Ok(resp);
        }
        Err(invalid(format!(
            "more than {MAX_INTERIM} interim answers from the backend"
        )))
    }

    async fn parse_head(
        &mut self,
        head_request: bool,
        extra: usize,
    ) -> Result<(Box<ResponseHeader>, Receiving)> {
        let mut read = 0;
        loop {
            if let Some(len) = head_end(&self.buf) {
                // Parsed once, from the bytes the client's copy keeps slices of.
                let head = self.buf.split_to(len).freeze();
                let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                let mut parsed = httparse::Response::new(&mut fields);
                return match parsed.parse(&head) {
                    Ok(httparse::Status::Complete(_)) => {
                        self.client_copy(&parsed, &head, head_request, extra)
                    }
                    Ok(httparse::Status::Partial) => Err(invalid("an incomplete response head")),
                    Err(e) => Err(invalid(format!("the backend's response head: {e}"))),
                };
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(invalid(format!(
                    "the backend's response head is over {MAX_HEAD} bytes"
                )));
            }
            let n = self.read_more("response head").await?;
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

    /// The client's copy of a parsed head, and the framing of the body after it.
    fn client_copy(
        &mut self,
        parsed: &httparse::Response<'_, '_>,
        head: &bytes::Bytes,
        head_request: bool,
        extra: usize,
    ) -> Result<(Box<ResponseHeader>, Receiving)> {
        let status = parsed.code.unwrap_or(0);
        let http10 = parsed.version == Some(0);
        let connection = || {
            parsed
                .headers
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case("connection"))
                .map(|f| f.value)
        };
        let says = |token: &[u8]| {
            connection()
                .flat_map(|v| v.split(|b| *b == b',').map(<[u8]>::trim_ascii))
                .any(|t| t.eq_ignore_ascii_case(token))
        };
        let (close, keep_alive) = (says(b"close"), says(b"keep-alive"));
        // Fields the backend's `Connection` names are hop-by-hop too.
        let listed = headers::listed_in(connection());
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut map = http::HeaderMap::with_capacity(parsed.headers.len() + extra);
        for f in parsed.headers.iter() {
            let name = field_name(f.name)
                .ok_or_else(|| invalid(format!("a field name the backend sent: {:?}", f.name)))?;
            if name == header::CONTENT_LENGTH {
                for v in f.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    let n = std::str::from_utf8(v)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| invalid("an invalid Content-Length from the backend"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(invalid("differing Content-Lengths from the backend"));
                    }
                    length = Some(n);
                }
            } else if name == header::TRANSFER_ENCODING {
                let last = f.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            if headers::response_hop_by_hop(&name, &listed) {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice_ref(f.value))
                .map_err(|_| invalid(format!("a field value the backend sent in {name}")))?;
            map.append(name, value);
        }
        let framing = if head_request || status == 204 || status == 304 || status < 200 {
            Receiving::Done
        } else {
            match (chunked, length) {
                (Some(true), _) => Receiving::ChunkSize,
                (Some(false), _) => {
                    return Err(invalid("a transfer coding other than chunked"));
                }
                (None, Some(n)) => Receiving::Length(n),
                (None, None) => Receiving::UntilClose,
            }
        };
        if chunked.is_some() && length.is_some() {
            // Both: the coding wins (RFC 9112 §6.3), the length is not passed on, and the
            // connection is not trusted with another request.
            map.remove(header::CONTENT_LENGTH);
            self.keep = false;
        }
        if close || (http10 && !keep_alive) {
            self.keep = false;
        }
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(status)
            .map_err(|_| invalid(format!("an invalid status {status}")))?;
        parts.headers = map;
        Ok((Box::new(ResponseHeader::from(parts)), framing))
    }

    /// How many bytes of the response body are ready at the front of [`Self::body`], after
    /// reading more if none are; `None` at the body's end.
    pub(super) async fn body_ready(&mut self) -> Result<Option<usize>> {
        loop {
            match self.receiving {
                Receiving::Done => return Ok(None),
                Receiving::Length(0) => {
                    self.receiving = Receiving::Done;
                    return Ok(None);
                }
                Receiving::Length(left) | Receiving::ChunkData(left) => {
                    if self.buf.is_empty() && self.read_more("response body").await? == 0 {
                        return Err(cut_short());
                    }
                    return Ok(Some(self.buf.len().min(left as usize)));
                }
                Receiving::UntilClose => {
                    if self.buf.is_empty() && self.read_more("response body").await? == 0 {
                        self.receiving = Receiving::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.len()));
                }
                Receiving::ChunkSize => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.advance(used);
                        self.receiving = if size == 0 {
                            Receiving::Trailers
                        } else {
                            Receiving::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => self.need_line().await?,
                    Err(_) => return Err(invalid("an invalid chunk size from the backend")),
                },
                Receiving::ChunkEnd => {
                    if self.buf.len() < 2 {
                        self.need_line().await?;
                    } else if &self.buf[..2] == b"\r\n" {
                        self.buf.advance(2);
                        self.receiving = Receiving::ChunkSize;
                    } else {
                        return Err(invalid("a chunk without its line end"));
                    }
                }
                Receiving::Trailers => match self.buf.windows(2).position(|w| w == b"\r\n") {
                    // Trailers are not passed on: the client's response is already framed.
                    Some(0) => {
                        self.buf.advance(2);
                        self.receiving = Receiving::Done;
                    }
                    Some(end) => self.buf.advance(end + 2),
                    None => self.need_line().await?,
                },
            }
        }
    }

    /// The body bytes [`Self::body_ready`] counted.
    pub(super) fn body(&self, n: usize) -> &[u8] {
        &self.buf[..n]
    }

    /// Marks `n` body bytes as relayed.
    pub(super) fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        let n = n as u64;
        match &mut self.receiving {
            Receiving::Length(left) => *left -= n,
            Receiving::ChunkData(left) => {
                *left -= n;
                if *left == 0 {
                    self.receiving = Receiving::ChunkEnd;
                }
            }
            _ => {}
        }
    }

    /// More of a line (chunk size, chunk end, trailer) is needed.
    async fn need_line(&mut self) -> Result<()> {
        if self.buf.len() > MAX_LINE {
            return Err(invalid("a chunk line over 4 KiB from the backend"));
        }
        if self.read_more("response body").await? == 0 {
            return Err(cut_short());
        }
        Ok(())
    }

    async fn read_more(&mut self, what: &str) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 4 {
            self.buf.reserve(READ_ROOM);
        }
        let read = self.stream.read_buf(&mut self.buf);
        let result = match self.read_timeout {
            Some(t) => tokio::time::timeout(t, read).await.map_err(|_| {
                Error::explain(
                    ErrorType::ReadTimedout,
                    format!("reading the {what} (timeout {t:?})"),
                )
            })?,
            None => read.await,
        };
        result.map_err(|e| {
            let mut err = Error::because(ErrorType::ReadError, format!("reading the {what}"), e);
            err.retry = RetryType::ReusedOnly;
            err
        })
    }
}

thread_local! {
    /// Field names this thread has met in backends' answers, each parsed once:
    /// `HeaderName::from_bytes` copies a custom name into an allocation of its own at every
    /// parse, where a clone of a parsed one only counts a reference.
    static NAMES: std::cell::RefCell<Vec<HeaderName>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Names remembered per thread; a backend that sends ever new ones gets them parsed afresh.
const MAX_NAMES: usize = 64;

fn field_name(raw: &str) -> Option<HeaderName> {
    NAMES.with_borrow_mut(|names| {
        if let Some(n) = names
            .iter()
            .find(|n| n.as_str().len() == raw.len() && n.as_str().eq_ignore_ascii_case(raw))
        {
            return Some(n.clone());
        }
        let n = HeaderName::from_bytes(raw.as_bytes()).ok()?;
        if names.len() < MAX_NAMES {
            names.push(n.clone());
        }
        Some(n)
    })
}

/// Where a head ends: after its empty line (CRLF, or a bare LF as `httparse` allows).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let at = from + i;
        match (buf.get(at + 1), buf.get(at + 2)) {
            (Some(b'\n'), _) => return Some(at + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(at + 3),
            (None, _) | (Some(b'\r'), None) => return None,
            _ => from = at + 1,
        }
    }
    None
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

async fn write(
    stream: &mut Stream,
    bytes: &[u8],
    timeout: Option<Duration>,
    what: &str,
) -> Result<()> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, write).await.map_err(|_| {
            Error::explain(
                ErrorType::WriteTimedout,
                format!("writing the {what} (timeout {t:?})"),
            )
        })?,
        None => write.await,
    };
    result.map_err(|e| Error::because(ErrorType::WriteError, format!("writing the {what}"), e))
}

fn invalid(what: impl Into<String>) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, what.into())
}

fn cut_short() -> Box<Error> {
    Error::explain(
        ErrorType::ConnectionClosed,
        "the backend closed the connection before the response body ended",
    )
}

#[cfg(test)]
mod tests {
    //! Raw backends on loopback, each answering with the bytes under test.
    use super::*;
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
    ) -> Result<(Box<ResponseHeader>, Vec<u8>)> {
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
        assert!(NAMES.with_borrow(Vec::len) <= MAX_NAMES);
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
