//! The gate every HTTP/1 request head passes before Pingora parses it: it reads the head
//! under the header deadline (or the idle deadline between keep-alive requests), holds it
//! to the size and count limits, and refuses framing that proxies and backends could read
//! differently (request smuggling).
//!
//! Pingora's own read gives each `read()` a fresh timeout, so a client trickling a header
//! one byte at a time was served whenever it finished; and its header limits (1 MiB, 256
//! fields) are constants. Reading the head here, then handing the bytes to Pingora as the
//! session's first bytes, keeps Pingora's parser while the gateway decides how long and how
//! much.

use super::limits::ConnLimits;
use super::stop::Stop;
use crate::proxy::deadline::Deadline;
use bytes::BytesMut;
use std::mem::MaybeUninit;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Duration, Instant};

/// The HTTP/2 connection preface (RFC 9113 §3.4): what an h2c client with prior knowledge
/// sends first.
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Room made for each read: most heads fit in one.
const READ_CHUNK: usize = 4096;

/// Why a request head was refused; the client gets the status, then the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Framing that two parsers could read differently, or a malformed head.
    BadFraming,
    /// The request line alone is longer than the header limit.
    UriTooLong,
    /// The head is longer than the header limit.
    HeaderTooLarge,
    /// More header fields than allowed.
    TooManyHeaders,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::BadFraming => "bad_framing",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::TooManyHeaders => "too_many_headers",
        }
    }

    /// The whole response: a status line, a short text body, and `Connection: close`.
    fn response(self) -> &'static [u8] {
        match self {
            Refusal::BadFraming => {
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 12\r\nconnection: close\r\n\r\nbad request\n"
            }
            Refusal::UriTooLong => {
                b"HTTP/1.1 414 URI Too Long\r\ncontent-type: text/plain\r\ncontent-length: 13\r\nconnection: close\r\n\r\nuri too long\n"
            }
            Refusal::HeaderTooLarge | Refusal::TooManyHeaders => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\ncontent-length: 32\r\nconnection: close\r\n\r\nrequest header fields too large\n"
            }
        }
    }
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Inspect {
    /// A whole head, fit to hand to Pingora.
    Complete,
    /// Not yet a whole head, and within the limits.
    Partial,
    Refuse(Refusal),
}

/// Judges the bytes at the start of a connection or after the previous request. A whole
/// head within the size limit is complete here: the parse that takes it (Weir's HTTP/1
/// session, or [`check`] before Pingora's) applies the other limits and the framing rules,
/// so that a plain request is parsed once.
pub(super) fn inspect(buf: &[u8], limits: &ConnLimits) -> Inspect {
    match crate::proxy::client_h1::head_end(buf) {
        Some(len) if len <= limits.max_header_bytes => Inspect::Complete,
        _ => check(buf, limits),
    }
}

/// [`inspect`] with every limit and rule applied to a whole head too.
pub(super) fn check(buf: &[u8], limits: &ConnLimits) -> Inspect {
    // Uninitialised slots: zeroing 256 of them for every request cost more than the parse.
    let mut fields = [MaybeUninit::uninit(); super::limits::MAX_HEADERS_CEILING];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields[..limits.max_headers],
    );
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > limits.max_header_bytes => {
            Inspect::Refuse(oversized(buf, limits))
        }
        Ok(httparse::Status::Complete(len)) => match framing(&req, &buf[..len]) {
            Ok(()) => Inspect::Complete,
            Err(r) => Inspect::Refuse(r),
        },
        Ok(httparse::Status::Partial) => within(buf, limits),
        Err(httparse::Error::TooManyHeaders) => Inspect::Refuse(Refusal::TooManyHeaders),
        // Pingora escapes some bytes httparse refuses in a request target and parses again,
        // so a head it may accept is handed over once it has ended; bare line feeds are
        // refused here first, whatever Pingora would make of them.
        Err(_) => match head_end(buf) {
            Some(end) if bare_lf(&buf[..end]) => Inspect::Refuse(Refusal::BadFraming),
            Some(_) => Inspect::Complete,
            None => within(buf, limits),
        },
    }
}

fn within(buf: &[u8], limits: &ConnLimits) -> Inspect {
    if buf.len() > limits.max_header_bytes {
        Inspect::Refuse(oversized(buf, limits))
    } else {
        Inspect::Partial
    }
}

/// 414 when not even the request line fits in the limit, else 431.
fn oversized(buf: &[u8], limits: &ConnLimits) -> Refusal {
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    if memchr::memchr(b'\n', window).is_none() {
        Refusal::UriTooLong
    } else {
        Refusal::HeaderTooLarge
    }
}

/// The end of the head by CRLFCRLF, for heads httparse could not parse.
fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// A line feed without its carriage return. httparse accepts them (RFC 9112 allows it);
/// a backend or another proxy in the path may not, which is what smuggling feeds on.
fn bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// Refuses heads whose body framing is ambiguous (RFC 9112 §6.1, §6.3):
/// - Transfer-Encoding with Content-Length: whichever one a hop believes, the other's view
///   of where the request ends differs;
/// - Transfer-Encoding other than exactly one `chunked`;
/// - Transfer-Encoding on HTTP/1.0, which predates it;
/// - bare line feeds.
///
/// Differing duplicate Content-Length values are refused by Pingora's own validation.
pub(crate) fn framing(req: &httparse::Request<'_, '_>, head: &[u8]) -> Result<(), Refusal> {
    if bare_lf(head) {
        return Err(Refusal::BadFraming);
    }
    let (mut te, mut cl) = (0usize, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te += 1;
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::BadFraming);
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl = true;
        }
    }
    if te > 1 || (te == 1 && (cl || req.version == Some(0))) {
        return Err(Refusal::BadFraming);
    }
    Ok(())
}

/// What the connection sends first, once its first head is read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum First {
    /// An HTTP/1 request head, complete and checked.
    Http1,
    /// The HTTP/2 preface, in full: cleartext HTTP/2 with prior knowledge.
    H2c,
}

/// How a read of a head ended without one.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Nothing came before the idle deadline (or the first request's header deadline).
    Idle,
    /// Part of a head came, the rest not before the header deadline.
    HeaderTimeout,
    /// The client closed, or the connection broke.
    Closed,
    /// The gateway is stopping and no request had begun.
    Shutdown,
    Refused(Refusal),
}

/// When the head being read must be complete.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wait {
    /// The first request: the header deadline runs from the accept.
    First(Instant),
    /// A later keep-alive request: idle until its first byte, then the header timeout.
    Next,
}

/// Reads into `buf` until it holds a whole head (or, with `sniff_h2c`, the HTTP/2 preface).
/// `buf` may already hold bytes. On a refusal, the caller sends [`respond`].
pub(super) async fn read<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    timer: &mut Deadline,
    wait: Wait,
    sniff_h2c: bool,
    limits: &ConnLimits,
    stop: &mut Stop,
) -> Result<First, End> {
    let mut deadline = match wait {
        Wait::First(d) => Some(d),
        Wait::Next => None,
    };
    loop {
        if !buf.is_empty() {
            if sniff_h2c && buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
                // Could still be the preface; a valid HTTP/1 request diverges by its
                // first bytes, so it is never held here waiting for 24 bytes.
            } else if sniff_h2c && buf.starts_with(H2_PREFACE) {
                return Ok(First::H2c);
            } else {
                match inspect(buf, limits) {
                    Inspect::Complete => return Ok(First::Http1),
                    Inspect::Refuse(r) => return Err(End::Refused(r)),
                    Inspect::Partial => {}
                }
            }
        } else if stop.is_set() {
            return Err(End::Shutdown);
        }
        // The first request's head is due a fixed time after the accept; a later one idles
        // until its first byte, then has the header time from there.
        let due = match deadline {
            Some(d) => Some(d),
            None if buf.is_empty() => None,
            None => Some(*deadline.insert(Instant::now() + limits.header_timeout)),
        };
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let idle = buf.is_empty();
        let read = tokio::select! {
            biased;
            r = async {
                match due {
                    Some(d) => timer.until(d, io.read_buf(buf)).await,
                    None => timer.within(limits.idle_timeout, io.read_buf(buf)).await,
                }
            } => r,
            // Only a connection with no request begun stops at once; a head under way
            // gets its header time, and its request is served before the close.
            _ = stop.wait(), if idle => return Err(End::Shutdown),
        };
        match read {
            Err(_) if buf.is_empty() => return Err(End::Idle),
            Err(_) => return Err(End::HeaderTimeout),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Closed),
            Ok(Ok(_)) => {}
        }
    }
}

/// How long a refusal may take to reach a client before the connection is dropped anyway.
const REFUSAL_WRITE: Duration = Duration::from_secs(2);

/// Sends a refusal's response (or, after a partial head timed out, 408), then closes.
pub(super) async fn respond<S: AsyncWrite + Unpin>(io: &mut S, end: &End) {
    let bytes: &[u8] = match end {
        End::Refused(r) => r.response(),
        End::HeaderTimeout => {
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n"
        }
        End::Idle | End::Closed | End::Shutdown => b"",
    };
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        if !bytes.is_empty() {
            io.write_all(bytes).await?;
            io.flush().await?;
        }
        io.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(raw: &[u8]) -> Inspect {
        check(raw, &ConnLimits::default())
    }

    #[test]
    fn the_shortest_requests_are_complete() {
        assert_eq!(checked(b"GET / HTTP/1.0\r\n\r\n"), Inspect::Complete);
        assert_eq!(checked(b"OPTIONS / HTTP/1.0\r\n\r\n"), Inspect::Complete);
        assert_eq!(checked(b"GET / HTTP/1.1\r\nHost: a\r\n"), Inspect::Partial);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let bad = Inspect::Refuse(Refusal::BadFraming);
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
        ] {
            assert_eq!(checked(raw), bad, "{}", raw.escape_ascii());
        }
        assert_eq!(
            checked(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n"),
            Inspect::Complete
        );
    }

    #[test]
    fn obs_fold_is_not_accepted_as_complete() {
        // httparse refuses the folded line; Pingora then answers 400 for the same reason.
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n";
        let mut fields = [httparse::EMPTY_HEADER; 8];
        assert!(httparse::Request::new(&mut fields).parse(raw).is_err());
    }

    #[test]
    fn limits_answer_414_then_431() {
        let limits = ConnLimits {
            max_header_bytes: 1024,
            max_headers: 3,
            ..Default::default()
        };
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
        assert_eq!(
            inspect(long_line.as_bytes(), &limits),
            Inspect::Refuse(Refusal::UriTooLong)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(2000));
        assert_eq!(
            inspect(big.as_bytes(), &limits),
            Inspect::Refuse(Refusal::HeaderTooLarge)
        );
        let many = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n";
        assert_eq!(
            inspect(many, &limits),
            Inspect::Refuse(Refusal::TooManyHeaders)
        );
        let three = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(inspect(three, &limits), Inspect::Complete);
    }

    #[tokio::test]
    async fn a_short_request_is_not_held_for_the_h2_preface() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let mut stop = Stop::new(&shutdown);
        let mut buf = BytesMut::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let limits = ConnLimits::default();
        let first = read(
            &mut server,
            &mut buf,
            &mut Deadline::new(),
            Wait::First(deadline),
            true,
            &limits,
            &mut stop,
        )
        .await;
        assert_eq!(first, Ok(First::Http1));

        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        let mut buf = BytesMut::new();
        let first = read(
            &mut server,
            &mut buf,
            &mut Deadline::new(),
            Wait::First(deadline),
            true,
            &limits,
            &mut stop,
        )
        .await;
        assert_eq!(first, Ok(First::H2c));
        assert_eq!(&buf[..], H2_PREFACE);
    }

    #[tokio::test]
    async fn a_trickled_head_times_out_and_an_idle_one_stops_at_shutdown() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let (tx, shutdown) = tokio::sync::watch::channel(false);
        let mut stop = Stop::new(&shutdown);
        // Real time, as a client trickles it.
        let limits = ConnLimits {
            header_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        // 26 bytes, 100 ms apart: 2.5 s for the head, far over its 300 ms.
        let trickle = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\nHost: a\r\n" {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        let mut buf = BytesMut::new();
        let end = read(
            &mut server,
            &mut buf,
            &mut Deadline::new(),
            Wait::Next,
            false,
            &limits,
            &mut stop,
        )
        .await;
        assert_eq!(end, Err(End::HeaderTimeout));
        drop(server);
        let _client = trickle.await.unwrap();

        let (_client, mut server) = tokio::io::duplex(1024);
        let waiting = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            read(
                &mut server,
                &mut buf,
                &mut Deadline::new(),
                Wait::Next,
                false,
                &ConnLimits::default(),
                &mut stop,
            )
            .await
        });
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        assert_eq!(waiting.await.unwrap(), Err(End::Shutdown));
    }
}
