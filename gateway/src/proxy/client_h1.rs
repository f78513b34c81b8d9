//! Weir's server side of HTTP/1.1: a client connection's requests, each parsed once from the
//! bytes the head gate read, and its responses, each head written from the client's copy
//! into one buffer kept for the connection and sent with the first piece of its body.
//! pingora-core's server session parsed each head a second time into a map with a case
//! map, built a session, a digest and a body reader per request, and serialised each
//! response head into a fresh buffer: a quarter of a small request's instructions.
//!
//! Only what this path serves plainly is parsed here: an origin-form target (`/…`) and a
//! head `httparse` accepts as it stands, without `Upgrade`. Anything else (an upgrade such as
//! WebSocket, absolute-form, `*`, a fragment, a target Pingora would escape first) is
//! [`Parsed::Elsewhere`], and the connection hands that request to Pingora's `HttpProxy`.

use super::deadline::Deadline;
use super::wire::{self, Receiving, Sending, Wire, field_name};
use crate::listen::head::{Refusal, framing};
use crate::tls::ConnTls;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Stream;
use pingora::protocols::tls::SslDigest;
use pingora::{Error, ErrorType, Result};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// An idempotent request's body bytes kept to send again on a retry, as Pingora keeps.
const RETRY_BUFFER: usize = 64 * 1024;

/// What the connection knows of itself, read once when it is accepted.
#[derive(Clone, Default)]
pub(crate) struct ConnInfo {
    /// The listener's port.
    pub port: u16,
    pub client_ip: Option<IpAddr>,
    /// The TLS session, when the connection has one.
    pub ssl: Option<Arc<SslDigest>>,
}

impl ConnInfo {
    pub(crate) fn tls(&self) -> Option<&ConnTls> {
        self.ssl.as_ref().and_then(|d| d.extension.get::<ConnTls>())
    }
}

/// How a head in the buffer was taken.
pub(crate) enum Parsed {
    /// The request is ready to serve.
    Request,
    /// Not for this path; the head is still at the front of the buffer.
    Elsewhere,
    /// A head whose length or authority is invalid; the client gets 400.
    Invalid(Box<Error>),
    /// A head over a limit, or framed in a way hops could read differently.
    Refused(Refusal),
}

pub(crate) use wire::head_end;

/// A client connection between requests and during one.
pub(crate) struct Session {
    wire: Wire,
    info: ConnInfo,
    req: RequestHeader,
    receiving: Receiving,
    /// What the parse learnt of the request's own fields, for a backend that gets the
    /// head as it came.
    fields: Fields,
    /// The client asked `Expect: 100-continue`.
    expects_continue: bool,
    sending: Sending,
    /// The connection may carry another request: the client's version and `Connection`
    /// allow it, the gateway is not stopping, and the response is framed.
    keep: bool,
    written: Option<u16>,
    retry: Option<BytesMut>,
    retry_truncated: bool,
    body_read: usize,
    body_sent: usize,
}

impl Session {
    /// `deadline` is the connection's timer, which read its first head.
    pub(crate) fn new(stream: Stream, buf: BytesMut, info: ConnInfo, deadline: Deadline) -> Self {
        Self {
            wire: Wire::new(stream, buf, deadline),
            info,
            req: RequestHeader::from(http::Request::new(()).into_parts().0),
            receiving: Receiving::Done,
            fields: Fields {
                framing: Sending::None,
                connection: false,
            },
            expects_continue: false,
            sending: Sending::None,
            keep: false,
            written: None,
            retry: None,
            retry_truncated: false,
            body_read: 0,
            body_sent: 0,
        }
    }

    /// Each read of the request body, and each write to the client, has its own limit.
    pub(crate) fn set_timeouts(&mut self, read: Duration, write: Duration) {
        self.wire.read_timeout = Some(read);
        self.wire.write_timeout = Some(write);
    }

    /// The connection, the bytes read from it and not yet used, and its timer.
    pub(crate) fn io(&mut self) -> (&mut Stream, &mut BytesMut, &mut Deadline) {
        (
            &mut self.wire.stream,
            &mut self.wire.buf,
            &mut self.wire.deadline,
        )
    }

    pub(crate) fn into_parts(self) -> (Stream, BytesMut, ConnInfo, Deadline) {
        (
            self.wire.stream,
            self.wire.buf,
            self.info,
            self.wire.deadline,
        )
    }

    pub(crate) fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Takes the head at the front of the buffer, which the head gate found whole and
    /// within its size limit, as the next request: at most `max_headers` fields, and the
    /// gate's framing rules.
    pub(crate) fn begin(&mut self, max_headers: usize) -> Parsed {
        let Some(len) = wire::head_end(&self.wire.buf) else {
            return Parsed::Elsewhere;
        };
        // Parsed once, from the bytes the request head keeps slices of.
        let head = self.wire.buf.split_to(len).freeze();
        match parse(&head, max_headers) {
            Ok(Some(head)) => {
                let done = std::mem::replace(&mut self.req, head.req);
                super::headers::recycle(http::request::Parts::from(done).headers);
                self.receiving = head.receiving;
                self.fields = Fields {
                    framing: match head.receiving {
                        Receiving::ChunkSize => Sending::Chunked,
                        Receiving::Length(n) => Sending::Length(n),
                        _ => Sending::None,
                    },
                    connection: head.connection,
                };
                self.expects_continue = head.expects_continue;
                self.keep = head.keep;
                self.sending = Sending::None;
                self.wire.drop_held();
                self.written = None;
                self.retry = None;
                self.retry_truncated = false;
                self.body_read = 0;
                self.body_sent = 0;
                Parsed::Request
            }
            Ok(None) => {
                // Put back, for Pingora's parser. Rare: a copy is fine.
                let rest = std::mem::take(&mut self.wire.buf);
                self.wire.buf = BytesMut::from(&head[..]);
                self.wire.buf.unsplit(rest);
                Parsed::Elsewhere
            }
            Err(bad) => {
                self.keep = false;
                match bad {
                    Bad::Invalid(e) => Parsed::Invalid(e),
                    Bad::Refused(r) => Parsed::Refused(r),
                }
            }
        }
    }

    pub(crate) fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    /// What the parse learnt of the request head's fields.
    pub(super) fn fields(&self) -> Fields {
        self.fields
    }

    /// Whether the client waits for `100 Continue` before it sends the body.
    pub(crate) fn expects_continue(&self) -> bool {
        self.expects_continue
    }

    /// No response is to say keep-alive: the gateway is stopping.
    pub(crate) fn close_after(&mut self) {
        self.keep = false;
    }

    /// Whether the request came without a body.
    pub(crate) fn is_body_empty(&self) -> bool {
        self.body_read == 0 && self.is_body_done()
    }

    pub(crate) fn is_body_done(&self) -> bool {
        matches!(self.receiving, Receiving::Done | Receiving::Length(0))
    }

    /// Keeps the body's first 64 KiB as it is read, to send again on a retry.
    pub(crate) fn enable_retry_buffering(&mut self) {
        if self.retry.is_none() && !self.retry_truncated {
            self.retry = Some(BytesMut::new());
        }
    }

    /// The body read so far, when all of it was kept.
    pub(crate) fn get_retry_buffer(&self) -> Option<Bytes> {
        self.retry
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|b| Bytes::copy_from_slice(b))
    }

    /// More of the body was read than was kept: it cannot be sent again.
    pub(crate) fn retry_buffer_truncated(&self) -> bool {
        self.retry_truncated
    }

    /// The next piece of the request body; `None` at its end.
    pub(crate) async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        let Some(n) = self
            .wire
            .body_ready(&mut self.receiving, "request body")
            .await?
        else {
            return Ok(None);
        };
        let piece = self.wire.buf.split_to(n).freeze();
        self.receiving.used(n);
        self.body_read += n;
        if let Some(kept) = &mut self.retry {
            if kept.len() + n <= RETRY_BUFFER {
                kept.extend_from_slice(&piece);
            } else {
                self.retry = None;
                self.retry_truncated = true;
            }
        }
        Ok(Some(piece))
    }

    /// `100 Continue`, before the body is read, when nothing else has been answered.
    pub(crate) async fn write_continue_response(&mut self) -> Result<()> {
        if self.written.is_none() {
            self.wire
                .write(b"HTTP/1.1 100 Continue\r\n\r\n", "interim response")
                .await?;
        }
        Ok(())
    }

    /// The status of the response head sent, if one was.
    pub(crate) fn response_written(&self) -> Option<u16> {
        self.written
    }

    /// Writes the response head. It leaves with the first piece of its body (or is flushed
    /// at once when it has none); `Date` and `Connection` are the gateway's, and a body with
    /// neither length nor coding is chunked for an HTTP/1.1 client and ended by the close
    /// for an HTTP/1.0 one.
    pub(crate) async fn write_response_header(&mut self, resp: &ResponseHeader) -> Result<()> {
        let chunked = resp.headers.contains_key(header::TRANSFER_ENCODING);
        let length = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| wire::content_length(v.as_bytes(), None));
        let fields = resp
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        let reason = resp.get_reason_phrase();
        self.write_head(resp.status, reason, fields, (chunked, length))
            .await
    }

    /// [`Self::write_response_header`] for fields as a backend sent them, names in any case;
    /// `framing` says whether a coding frames the body, and the length the fields give.
    pub(crate) async fn write_fields<'f>(
        &mut self,
        status: http::StatusCode,
        fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
        framing: (bool, Option<u64>),
    ) -> Result<()> {
        self.write_head(status, status.canonical_reason(), fields, framing)
            .await
    }

    async fn write_head<'f>(
        &mut self,
        status: http::StatusCode,
        reason: Option<&str>,
        fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
        (chunked, length): (bool, Option<u64>),
    ) -> Result<()> {
        if self.written.is_some() {
            return Ok(());
        }
        let code = status.as_u16();
        let head_request = self.req.method == http::Method::HEAD;
        let http10 = self.req.version == http::Version::HTTP_10;
        let mut add_chunked = false;
        self.sending = if head_request || code == 204 || code == 304 {
            Sending::None
        } else if chunked && !http10 {
            Sending::Chunked
        } else if let (Some(n), false) = (length, chunked) {
            Sending::Length(n)
        } else if http10 {
            self.keep = false;
            Sending::UntilClose
        } else {
            add_chunked = true;
            Sending::Chunked
        };
        let out = &mut self.wire.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in fields {
            // An HTTP/1.0 client cannot read chunks: the body goes as it comes. `Date` and
            // `Connection` are the gateway's own, as with nginx and Pingora.
            if (http10 && chunked && name.eq_ignore_ascii_case(b"transfer-encoding"))
                || name.eq_ignore_ascii_case(b"date")
                || name.eq_ignore_ascii_case(b"connection")
            {
                continue;
            }
            // Names go out lower-cased, whichever way the head was kept.
            let at = out.len();
            field(out, name, value);
            out[at..at + name.len()].make_ascii_lowercase();
        }
        let date = pingora::protocols::http::date::get_cached_date();
        field(out, b"date", date.as_bytes());
        if add_chunked {
            field(out, b"transfer-encoding", b"chunked");
        }
        let connection: &[u8] = if self.keep { b"keep-alive" } else { b"close" };
        field(out, b"connection", connection);
        out.extend_from_slice(b"\r\n");
        if self.sending == Sending::None {
            self.wire.write_out("response head").await?;
        } else {
            self.wire.hold();
        }
        self.written = Some(code);
        Ok(())
    }

    /// Writes a piece of the response body (with the head, when it was held back).
    pub(crate) async fn write_body(&mut self, data: &[u8]) -> Result<()> {
        if self.written.is_none() {
            return Err(Error::explain(
                ErrorType::InternalError,
                "a response body before its head",
            ));
        }
        self.wire
            .send(&mut self.sending, data, "response body")
            .await?;
        self.body_sent += data.len();
        Ok(())
    }

    /// Sends a head held back for its body, before a wait for that body.
    pub(crate) async fn flush_held(&mut self) -> Result<()> {
        self.wire.flush("response head").await
    }

    /// Ends the response body.
    pub(crate) async fn finish_body(&mut self) -> Result<()> {
        self.wire.finish(&mut self.sending, "response body").await?;
        self.flush_held().await
    }

    pub(crate) fn body_bytes_read(&self) -> usize {
        self.body_read
    }

    pub(crate) fn body_bytes_sent(&self) -> usize {
        self.body_sent
    }

    /// After a response: whether the connection may carry another request. The rest of an
    /// unread request body is read and dropped first, within the body read timeout.
    pub(crate) async fn reusable(&mut self) -> bool {
        self.keep
            && self.written.is_some()
            && matches!(self.sending, Sending::None | Sending::Length(0))
            && self.drain().await
    }

    async fn drain(&mut self) -> bool {
        loop {
            match self
                .wire
                .body_ready(&mut self.receiving, "request body")
                .await
            {
                Ok(Some(n)) => self.wire.consume(&mut self.receiving, n),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Closes the connection's sending side.
    pub(crate) async fn shutdown(&mut self) {
        let limit = self.wire.write_timeout.unwrap_or(Duration::from_secs(1));
        let _ = self
            .wire
            .deadline
            .within(limit, self.wire.stream.shutdown())
            .await;
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A request head as parsed; `Ok(None)` stands for a head this path leaves to Pingora.
struct Head {
    req: RequestHeader,
    /// Its body's framing.
    receiving: Receiving,
    /// The client keeps the connection.
    keep: bool,
    expects_continue: bool,
    /// It has a `Connection` field.
    connection: bool,
}

/// What the parse learnt of a request head's fields, judged once as they went by, for a
/// backend that gets the head as it came: no lookup asks again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fields {
    /// How the head frames its body.
    pub framing: Sending,
    /// The head has a `Connection` field, whose list names more fields to leave out.
    pub connection: bool,
}

enum Bad {
    Invalid(Box<Error>),
    Refused(Refusal),
}

impl From<Box<Error>> for Bad {
    fn from(e: Box<Error>) -> Self {
        Bad::Invalid(e)
    }
}

fn parse(head: &Bytes, max_headers: usize) -> std::result::Result<Option<Head>, Bad> {
    let mut fields = [MaybeUninit::uninit(); crate::listen::limits::MAX_HEADERS_CEILING];
    let mut parsed = httparse::Request::new(&mut []);
    let max = max_headers.min(fields.len());
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        head,
        &mut fields[..max],
    ) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(Bad::Refused(Refusal::TooManyHeaders)),
        // The full check, then Pingora's parser, judge what httparse refuses as it stands.
        _ => return Ok(None),
    }
    framing(&parsed, head).map_err(Bad::Refused)?;
    let (Some(method), Some(path), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Ok(None);
    };
    if !path.starts_with('/') || path.contains('#') {
        return Ok(None);
    }
    let Ok(uri) = http::Uri::from_maybe_shared(head.slice_ref(path.as_bytes())) else {
        return Ok(None);
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return Ok(None);
    };
    let http10 = version == 0;
    let mut map = super::headers::map(parsed.headers.len() + super::h1::EXTRA_FIELDS);
    let (mut length, mut chunked, mut close, mut keep_alive) = (None, false, false, false);
    let (mut expects_continue, mut connection) = (false, false);
    let (mut hosts, mut host_userinfo) = (0, false);
    for f in parsed.headers.iter() {
        let Some(name) = field_name(f.name) else {
            return Ok(None);
        };
        if name == header::CONTENT_LENGTH {
            length =
                Some(wire::content_length(f.value, length).ok_or_else(|| {
                    wire::invalid("an invalid Content-Length, or differing ones")
                })?);
        } else if name == header::TRANSFER_ENCODING {
            // The gate let through exactly one `chunked`, and no length beside it.
            chunked = true;
        } else if name == header::CONNECTION {
            connection = true;
            close |= wire::says(std::iter::once(f.value), b"close");
            keep_alive |= wire::says(std::iter::once(f.value), b"keep-alive");
        } else if name == header::UPGRADE {
            // It may turn the connection into a tunnel, which Pingora's `HttpProxy` relays.
            return Ok(None);
        } else if name == header::EXPECT {
            expects_continue |= f.value.eq_ignore_ascii_case(b"100-continue");
        } else if name == header::HOST {
            hosts += 1;
            host_userinfo |= f.value.contains(&b'@');
        }
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice_ref(f.value)) else {
            return Ok(None);
        };
        map.append(name, value);
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = if http10 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    };
    parts.headers = map;
    let req = RequestHeader::from(parts);
    // Pingora's authority check, of which an origin-form target (all this path takes) needs
    // only the Host part, judged while the fields went by: one Host, without userinfo
    // (`http::Uri::host` would drop it). CONNECT has rules of its own.
    if req.method == http::Method::CONNECT {
        pingora::protocols::http::authority::validate_request_authority(&req)?;
    } else if hosts > 1 {
        return Err(wire::invalid("multiple Host header fields").into());
    } else if host_userinfo {
        return Err(wire::invalid("userinfo in Host header").into());
    }
    let receiving = match (chunked, length) {
        (true, _) => Receiving::ChunkSize,
        (false, Some(n)) => Receiving::Length(n),
        (false, None) => Receiving::Done,
    };
    let keep = !close && (!http10 || keep_alive);
    Ok(Some(Head {
        req,
        receiving,
        keep,
        expects_continue,
        connection,
    }))
}

#[cfg(test)]
mod tests {
    //! A real loopback connection: the client's raw bytes in, the gateway's raw bytes out.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A session whose buffer holds all of `raw`, as the head gate would leave it, and
    /// the client's end of its connection.
    async fn session(raw: &[u8]) -> (Session, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(raw).await.unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(server));
        let mut s = Session::new(
            stream,
            BytesMut::new(),
            ConnInfo::default(),
            Deadline::new(),
        );
        s.set_timeouts(Duration::from_secs(5), Duration::from_secs(5));
        while s.io().1.len() < raw.len() {
            let (stream, buf, _) = s.io();
            assert!(stream.read_buf(buf).await.unwrap() > 0);
        }
        (s, client)
    }

    /// What the client has received once the gateway closes its side.
    async fn received(mut s: Session, mut client: TcpStream) -> String {
        s.shutdown().await;
        drop(s);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        String::from_utf8(got).unwrap()
    }

    fn ok(fields: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build_no_case(200, None).unwrap();
        for (n, v) in fields {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    /// Answers the request: a 200 with `fields`, then `body` (when there is one) and its end.
    async fn answer(s: &mut Session, fields: &[(&str, &str)], body: &[u8]) {
        s.write_response_header(&ok(fields)).await.unwrap();
        if !body.is_empty() {
            s.write_body(body).await.unwrap();
        }
        s.finish_body().await.unwrap();
    }

    /// Answers the request with an empty 200.
    async fn answer_empty(s: &mut Session) {
        answer(s, &[("content-length", "0")], b"").await;
    }

    fn is_request(p: Parsed) -> bool {
        matches!(p, Parsed::Request)
    }

    #[tokio::test]
    async fn fields_as_a_backend_sent_them_go_out_lower_cased_with_the_gateways_own() {
        let (mut s, c) = session(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
        assert!(is_request(s.begin(100)));
        let fields: [(&[u8], &[u8]); 4] = [
            (b"Content-Type", b"text/plain"),
            (b"DATE", b"Thu, 01 Jan 1970 00:00:00 GMT"),
            (b"X-Mixed-Case", b"Kept As Sent"),
            (b"Content-Length", b"2"),
        ];
        s.write_fields(
            http::StatusCode::IM_A_TEAPOT,
            fields.into_iter(),
            (false, Some(2)),
        )
        .await
        .unwrap();
        s.write_body(b"hi").await.unwrap();
        s.finish_body().await.unwrap();
        let got = received(s, c).await;
        assert!(got.starts_with("HTTP/1.1 418 I'm a teapot\r\n"), "{got}");
        assert!(got.contains("\r\ncontent-type: text/plain\r\n"), "{got}");
        assert!(got.contains("\r\nx-mixed-case: Kept As Sent\r\n"), "{got}");
        assert!(!got.contains("1970"), "the gateway's own Date: {got}");
        assert!(got.contains("\r\ndate: "), "{got}");
        assert!(
            got.ends_with("\r\nconnection: keep-alive\r\n\r\nhi"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn origin_form_requests_are_taken_and_others_left_to_pingora() {
        let (mut s, _c) = session(b"GET /a?b=1 HTTP/1.1\r\nHost: app\r\nX-A: 1\r\n\r\n").await;
        assert!(is_request(s.begin(100)));
        assert_eq!(s.req_header().uri.path_and_query().unwrap(), "/a?b=1");
        assert_eq!(s.req_header().headers.get("x-a").unwrap(), "1");
        assert!(s.is_body_empty());
        assert!(s.io().1.is_empty());

        for raw in [
            &b"GET http://app/a HTTP/1.1\r\nHost: app\r\n\r\n"[..],
            b"OPTIONS * HTTP/1.1\r\nHost: app\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: app\r\n\r\n",
            b"GET /a\xffb HTTP/1.1\r\nHost: app\r\n\r\n",
            b"GET /a<b HTTP/1.1\r\nHost: app\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUPGRADE: websocket\r\n\r\n",
        ] {
            let (mut s, _c) = session(raw).await;
            assert!(
                matches!(s.begin(100), Parsed::Elsewhere),
                "{}",
                raw.escape_ascii()
            );
            assert_eq!(&s.io().1[..], raw, "the head is put back whole");
        }
    }

    /// A backend that gets the head as it came frames the body as that head does; each
    /// request of a connection is judged afresh.
    #[tokio::test]
    async fn each_heads_framing_and_expectation_are_judged_while_parsing() {
        let raw = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-Continue\r\n\r\n";
        let (mut s, _c) = session(raw).await;
        assert!(is_request(s.begin(100)));
        assert_eq!(s.fields().framing, Sending::Chunked);
        assert!(!s.fields().connection);
        assert!(s.expects_continue());
        let (mut s, _c) = session(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\n\r\n").await;
        assert!(is_request(s.begin(100)));
        assert!(s.fields().connection, "its list names fields to leave out");
        for (raw, framing) in [
            (
                &b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n"[..],
                Sending::Length(7),
            ),
            (
                b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                Sending::Length(0),
            ),
            (
                b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: nothing\r\n\r\n",
                Sending::None,
            ),
        ] {
            let (mut s, _c) = session(raw).await;
            assert!(is_request(s.begin(100)));
            assert_eq!(s.fields().framing, framing, "{}", raw.escape_ascii());
            assert!(!s.expects_continue(), "{}", raw.escape_ascii());
        }
    }

    #[tokio::test]
    async fn ambiguous_lengths_and_hosts_are_invalid() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nHOST: a\r\n\r\n",
            b"CONNECT / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        ] {
            let (mut s, _c) = session(raw).await;
            assert!(
                matches!(s.begin(100), Parsed::Invalid(_)),
                "{}",
                raw.escape_ascii()
            );
        }
        let (mut s, _c) =
            session(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nok").await;
        assert!(is_request(s.begin(100)), "identical values are one length");
    }

    #[tokio::test]
    async fn bodies_are_read_in_their_framing_and_the_next_request_follows() {
        let raw = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n";
        let (mut s, _c) = session(raw).await;
        assert!(is_request(s.begin(100)));
        s.enable_retry_buffering();
        let mut body = Vec::new();
        while let Some(piece) = s.read_body_bytes().await.unwrap() {
            body.extend_from_slice(&piece);
        }
        assert_eq!(body, b"hello!");
        assert_eq!(s.get_retry_buffer().unwrap(), "hello!");
        assert_eq!(s.body_bytes_read(), 6);
        answer_empty(&mut s).await;
        assert!(s.reusable().await);
        assert!(is_request(s.begin(100)));
        assert_eq!(s.req_header().uri.path(), "/next");
    }

    #[tokio::test]
    async fn an_unread_body_is_drained_before_the_next_request() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
        let (mut s, _c) = session(raw).await;
        assert!(is_request(s.begin(100)));
        answer_empty(&mut s).await;
        assert!(s.reusable().await);
        assert!(is_request(s.begin(100)));
        assert_eq!(s.req_header().uri.path(), "/2");
    }

    #[tokio::test]
    async fn a_body_over_the_retry_buffer_cannot_be_replayed() {
        let mut raw = format!(
            "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            RETRY_BUFFER + 1
        )
        .into_bytes();
        raw.resize(raw.len() + RETRY_BUFFER + 1, b'x');
        let (mut s, _c) = session(&raw).await;
        assert!(is_request(s.begin(100)));
        s.enable_retry_buffering();
        while s.read_body_bytes().await.unwrap().is_some() {}
        assert!(s.retry_buffer_truncated());
        assert!(s.get_retry_buffer().is_none());
    }

    #[tokio::test]
    async fn an_unframed_answer_is_chunked_for_http11_clients() {
        let (mut s, c) = session(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(is_request(s.begin(100)));
        let resp = ok(&[("x-a", "1"), ("date", "old"), ("connection", "x")]);
        s.write_response_header(&resp).await.unwrap();
        s.write_body(b"hello").await.unwrap();
        s.finish_body().await.unwrap();
        assert!(s.reusable().await);
        let got = received(s, c).await;
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: "),
            "{got}"
        );
        assert!(!got.contains("old") && got.matches("connection").count() == 1);
        assert!(got.contains("\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"));
        assert!(got.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{got}");
    }

    #[tokio::test]
    async fn http10_clients_get_the_body_as_it_comes_and_a_close() {
        let (mut s, c) = session(b"GET / HTTP/1.0\r\n\r\n").await;
        assert!(is_request(s.begin(100)));
        answer(&mut s, &[("transfer-encoding", "chunked")], b"hello").await;
        assert!(!s.reusable().await);
        let got = received(s, c).await;
        assert!(!got.contains("transfer-encoding"), "{got}");
        assert!(got.ends_with("connection: close\r\n\r\nhello"), "{got}");

        let (mut s, c) = session(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
        assert!(is_request(s.begin(100)));
        answer(&mut s, &[("content-length", "2")], b"ok").await;
        assert!(s.reusable().await, "a length-framed answer keeps it");
        assert!(
            received(s, c)
                .await
                .ends_with("connection: keep-alive\r\n\r\nok")
        );
    }

    #[tokio::test]
    async fn head_answers_have_no_body_and_a_close_is_said() {
        let (mut s, c) = session(b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        assert!(is_request(s.begin(100)));
        answer(&mut s, &[("content-length", "10")], b"ignored").await;
        assert!(!s.reusable().await);
        let got = received(s, c).await;
        assert!(got.contains("content-length: 10\r\n"), "{got}");
        assert!(got.ends_with("connection: close\r\n\r\n"), "{got}");
    }

    #[tokio::test]
    async fn an_answer_short_of_its_length_is_not_kept() {
        let (mut s, _c) = session(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(is_request(s.begin(100)));
        s.write_response_header(&ok(&[("content-length", "10")]))
            .await
            .unwrap();
        s.write_body(b"abc").await.unwrap();
        assert!(s.finish_body().await.is_err());
        assert!(!s.reusable().await);
    }
}
