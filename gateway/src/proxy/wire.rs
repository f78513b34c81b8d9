//! HTTP/1.1 on the wire, shared by both of Weir's ends: the client's connection
//! ([`super::client_h1`]) and a backend's ([`super::backend_h1`]). Each keeps one read
//! buffer and one write buffer for its connection's life; bodies are read and written in
//! the framings of RFC 9112 §6–7, one piece at a time, so neither end ever holds a whole
//! body and a slow reader on one side holds back the other.

use super::deadline::Deadline;
use bytes::{Buf, BytesMut};
use http::header::HeaderName;
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, Result, RetryType};
use std::io::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Room made in the read buffer before each read.
const READ_ROOM: usize = 16 * 1024;
/// A chunk-size line or a trailer line longer than this is not a peer speaking HTTP.
const MAX_LINE: usize = 4096;
/// The largest body piece that joins a held head in `out` for one write.
const HEAD_AND_PIECE: usize = 4096;

/// A connection and its buffers.
pub(super) struct Wire {
    pub stream: Stream,
    /// Bytes read and not yet used: the rest of a head, body, or the next message.
    pub buf: BytesMut,
    /// A head being written, or a chunk with its framing.
    pub out: Vec<u8>,
    /// `out` holds a head not yet written, to leave with the first piece of its body in
    /// one write: a write of its own through the stream's buffer cost a sixth of a small
    /// response's relay.
    held: bool,
    /// Each read's limit.
    pub read_timeout: Option<Duration>,
    /// Each write's limit.
    pub write_timeout: Option<Duration>,
    /// The one timer for every wait on this connection.
    pub deadline: Deadline,
}

/// Where the body being read stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Receiving {
    Done,
    Length(u64),
    /// Responses only: the body ends when the peer closes.
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
}

/// How the body being written is framed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Sending {
    None,
    Length(u64),
    Chunked,
    /// Responses only: written as it comes, ended by closing the connection.
    UntilClose,
}

impl Receiving {
    /// `n` body bytes, counted by [`Wire::body_ready`], were taken from the buffer.
    pub(super) fn used(&mut self, n: usize) {
        let n = n as u64;
        match self {
            Receiving::Length(left) => *left -= n,
            Receiving::ChunkData(left) => {
                *left -= n;
                if *left == 0 {
                    *self = Receiving::ChunkEnd;
                }
            }
            _ => {}
        }
    }
}

impl Wire {
    pub(super) fn new(stream: Stream, buf: BytesMut, deadline: Deadline) -> Self {
        Self {
            stream,
            buf,
            out: Vec::new(),
            held: false,
            read_timeout: None,
            write_timeout: None,
            deadline,
        }
    }

    /// Reads more into the buffer; `Ok(0)` when the peer has closed.
    pub(super) async fn read_more(&mut self, what: &str) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 4 {
            self.buf.reserve(READ_ROOM);
        }
        let read = self.stream.read_buf(&mut self.buf);
        let t = self.read_timeout;
        let result = self.deadline.maybe(t, read).await.map_err(|_| {
            Error::explain(
                ErrorType::ReadTimedout,
                format!("reading the {what} (timeout {:?})", t.unwrap_or_default()),
            )
        })?;
        result.map_err(|e| {
            let mut err = Error::because(ErrorType::ReadError, format!("reading the {what}"), e);
            // As Pingora: a request is sent again on this only when the connection was reused.
            err.retry = RetryType::ReusedOnly;
            err
        })
    }

    /// Keeps the head in `out` back, to go with the first piece of its body
    /// ([`Self::send`]), its end ([`Self::finish`]) or [`Self::flush`], whichever comes first.
    pub(super) fn hold(&mut self) {
        self.held = true;
    }

    /// Forgets a head held back (a new message begins).
    pub(super) fn drop_held(&mut self) {
        self.held = false;
    }

    /// Writes and flushes `out` (a head, a chunk, or a held head with what follows it).
    pub(super) async fn write_out(&mut self, what: &str) -> Result<()> {
        self.held = false;
        let limit = self.write_timeout;
        write(&mut self.stream, &mut self.deadline, &self.out, limit, what).await
    }

    /// Writes and flushes `bytes`.
    pub(super) async fn write(&mut self, bytes: &[u8], what: &str) -> Result<()> {
        let limit = self.write_timeout;
        write(&mut self.stream, &mut self.deadline, bytes, limit, what).await
    }

    /// How many bytes of the body are ready at the front of the buffer, after reading more
    /// if none are; `None` at the body's end. `what` names the body in errors.
    pub(super) async fn body_ready(
        &mut self,
        r: &mut Receiving,
        what: &str,
    ) -> Result<Option<usize>> {
        loop {
            match *r {
                Receiving::Done => return Ok(None),
                Receiving::Length(0) => {
                    *r = Receiving::Done;
                    return Ok(None);
                }
                Receiving::Length(left) | Receiving::ChunkData(left) => {
                    if self.buf.is_empty() && self.read_more(what).await? == 0 {
                        return Err(cut_short(what));
                    }
                    return Ok(Some(self.buf.len().min(left as usize)));
                }
                Receiving::UntilClose => {
                    if self.buf.is_empty() && self.read_more(what).await? == 0 {
                        *r = Receiving::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.len()));
                }
                Receiving::ChunkSize => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.advance(used);
                        *r = if size == 0 {
                            Receiving::Trailers
                        } else {
                            Receiving::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => self.need_line(what).await?,
                    Err(_) => return Err(invalid(format!("an invalid chunk size in the {what}"))),
                },
                Receiving::ChunkEnd => {
                    if self.buf.len() < 2 {
                        self.need_line(what).await?;
                    } else if &self.buf[..2] == b"\r\n" {
                        self.buf.advance(2);
                        *r = Receiving::ChunkSize;
                    } else {
                        return Err(invalid(format!(
                            "a chunk without its line end in the {what}"
                        )));
                    }
                }
                Receiving::Trailers => match memchr::memmem::find(&self.buf, b"\r\n") {
                    // Trailers are not passed on: the message going out is already framed.
                    Some(0) => {
                        self.buf.advance(2);
                        *r = Receiving::Done;
                    }
                    Some(end) => self.buf.advance(end + 2),
                    None => self.need_line(what).await?,
                },
            }
        }
    }

    /// Marks `n` body bytes (counted by [`Self::body_ready`]) as used.
    pub(super) fn consume(&mut self, r: &mut Receiving, n: usize) {
        self.buf.advance(n);
        r.used(n);
    }

    /// More of a line (chunk size, chunk end, trailer) is needed.
    async fn need_line(&mut self, what: &str) -> Result<()> {
        if self.buf.len() > MAX_LINE {
            return Err(invalid(format!("a chunk line over 4 KiB in the {what}")));
        }
        if self.read_more(what).await? == 0 {
            return Err(cut_short(what));
        }
        Ok(())
    }

    /// Writes a piece of a body in its framing, flushed (with any head held back before it).
    /// Bytes past a `Content-Length` are not sent.
    pub(super) async fn send(&mut self, s: &mut Sending, data: &[u8], what: &str) -> Result<()> {
        match *s {
            Sending::None => Ok(()),
            Sending::Length(left) => {
                let n = data.len().min(left as usize);
                *s = Sending::Length(left - n as u64);
                self.write_after_head(&data[..n], what).await
            }
            Sending::UntilClose => self.write_after_head(data, what).await,
            Sending::Chunked if data.is_empty() => Ok(()),
            Sending::Chunked => {
                if !self.held {
                    self.out.clear();
                }
                // Writing to a Vec cannot fail.
                let _ = write!(self.out, "{:x}\r\n", data.len());
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
                self.write_out(what).await
            }
        }
    }

    /// Writes `data`, after the head held back if there is one. A large piece goes on its
    /// own write after the head rather than into `out`, which each connection keeps for its
    /// life: it stays the size of a head, not of the largest body piece.
    async fn write_after_head(&mut self, data: &[u8], what: &str) -> Result<()> {
        if self.held {
            if data.len() > HEAD_AND_PIECE {
                self.write_out(what).await?;
            } else {
                self.out.extend_from_slice(data);
                return self.write_out(what).await;
            }
        }
        self.write(data, what).await
    }

    /// Ends a body: the last chunk when chunked. A body short of its length is an error.
    pub(super) async fn finish(&mut self, s: &mut Sending, what: &str) -> Result<()> {
        match *s {
            Sending::Chunked => {
                *s = Sending::None;
                self.write_after_head(b"0\r\n\r\n", what).await
            }
            Sending::Length(left) if left > 0 => Err(Error::explain(
                ErrorType::WriteError,
                format!("the {what} ended {left} bytes short of its Content-Length"),
            )),
            _ => Ok(()),
        }
    }

    /// Sends a head held back, if there is one.
    pub(super) async fn flush(&mut self, what: &str) -> Result<()> {
        if self.held {
            self.write_out(what).await?;
        }
        Ok(())
    }
}

async fn write(
    stream: &mut Stream,
    deadline: &mut Deadline,
    bytes: &[u8],
    timeout: Option<Duration>,
    what: &str,
) -> Result<()> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await?;
        Ok::<_, std::io::Error>(())
    };
    let result = deadline.maybe(timeout, write).await.map_err(|_| {
        Error::explain(
            ErrorType::WriteTimedout,
            format!(
                "writing the {what} (timeout {:?})",
                timeout.unwrap_or_default()
            ),
        )
    })?;
    result.map_err(|e| Error::because(ErrorType::WriteError, format!("writing the {what}"), e))
}

/// Where a head ends: after its empty line (CRLF, or a bare LF as `httparse` allows).
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
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

/// Whether a `Connection` field's values name `token`.
pub(super) fn says<'a>(mut connection: impl Iterator<Item = &'a [u8]>, token: &[u8]) -> bool {
    connection.any(|v| {
        v.split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// A `Content-Length` field's value (`1`, or identical values `1, 1`), checked with `seen`,
/// the value of the fields before it: differing values are refused (RFC 9110 §8.6).
pub(super) fn content_length(value: &[u8], seen: Option<u64>) -> Option<u64> {
    // The usual field: a few digits, said once. Parsed by hand; the general path below
    // cost two hundred instructions a head.
    if seen.is_none()
        && !value.is_empty()
        && value.len() <= 18
        && value.iter().all(u8::is_ascii_digit)
    {
        return Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')));
    }
    let mut length = seen;
    for v in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        let n = std::str::from_utf8(v)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

thread_local! {
    /// Field names this thread has met, by their bytes as sent, each parsed once:
    /// `HeaderName::from_bytes` copies a custom name into an allocation of its own at every
    /// parse, where a clone of a parsed one only counts a reference. Hashed, since a head's
    /// every field is looked up.
    pub(super) static NAMES: std::cell::RefCell<Names> = std::cell::RefCell::new(Names::default());
}

type Names = std::collections::HashMap<Box<[u8]>, HeaderName, foldhash::fast::RandomState>;

/// Names remembered per thread; a peer that sends ever new ones gets them parsed afresh.
pub(super) const MAX_NAMES: usize = 128;

/// A field name as a `HeaderName`, from this thread's cache when it has been met before.
pub(super) fn field_name(raw: &str) -> Option<HeaderName> {
    NAMES.with_borrow_mut(|names| {
        if let Some(n) = names.get(raw.as_bytes()) {
            return Some(n.clone());
        }
        let n = HeaderName::from_bytes(raw.as_bytes()).ok()?;
        if names.len() < MAX_NAMES {
            names.insert(raw.as_bytes().into(), n.clone());
        }
        Some(n)
    })
}

pub(super) fn invalid(what: impl Into<String>) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, what.into())
}

fn cut_short(what: &str) -> Box<Error> {
    Error::explain(
        ErrorType::ConnectionClosed,
        format!("the connection closed before the {what} ended"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_digits_said_once_or_repeated_alike() {
        assert_eq!(content_length(b"0", None), Some(0));
        assert_eq!(content_length(b"1234", None), Some(1234));
        assert_eq!(
            content_length(b"999999999999999999", None),
            Some(999_999_999_999_999_999)
        );
        assert_eq!(
            content_length(b"18446744073709551615", None),
            Some(u64::MAX)
        );
        assert_eq!(content_length(b"18446744073709551616", None), None);
        assert_eq!(content_length(b"12, 12", None), Some(12));
        assert_eq!(content_length(b" 7 ", None), Some(7));
        assert_eq!(content_length(b"7", Some(7)), Some(7));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 2",
            b"0x10",
            b"12, 13",
            b"1,",
            b"\xff",
        ] {
            assert_eq!(content_length(bad, None), None, "{bad:?}");
        }
        assert_eq!(
            content_length(b"8", Some(7)),
            None,
            "differs from the field before"
        );
    }
}
