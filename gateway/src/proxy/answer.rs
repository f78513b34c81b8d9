//! A plain backend's response head as it came off the wire, made ready for the client: the
//! fields the client gets (the hop-by-hop ones left out), the body's framing, and whether
//! the backend keeps the connection.
//!
//! Most responses reach the client unedited: no response filter, session cookie or
//! rate-limit field on their route. Those are written from these bytes, and no header map is
//! built for them only to be read back by the write: the map's appends, with a name lookup
//! and a value check per field, came to a tenth of a small request's instructions. A head
//! something edits becomes a `ResponseHeader` ([`Answer::to_header`]) first.

use super::headers;
use super::wire::{self, Receiving, field_name, invalid};
use bytes::Bytes;
use http::HeaderValue;
use pingora::Result;
use pingora::http::ResponseHeader;
use std::mem::MaybeUninit;

/// Fields a response head may have.
const MAX_FIELDS: usize = 128;

/// A parsed response head.
pub(super) struct Answer {
    head: Bytes,
    pub status: http::StatusCode,
    /// Where each field the client gets lies in `head`: name, then value, as offsets.
    fields: Vec<[u32; 4]>,
    /// The body's framing, as the head and the request's method give it.
    pub framing: Receiving,
    /// Neither `Connection` nor the framing stops the backend's connection carrying another
    /// request.
    pub keep: bool,
    /// Whether the fields kept frame the body with a coding, or with a length.
    chunked: bool,
    length: Option<u64>,
}

impl Answer {
    /// Parses the whole head in `head`. `head_request`: the response has no body, whatever
    /// its head says. `fields` is an emptied list to fill, kept by the connection.
    pub(super) fn parse(
        head: Bytes,
        head_request: bool,
        mut fields: Vec<[u32; 4]>,
    ) -> Result<Self> {
        // Uninitialised slots: zeroing 128 of them for every response cost a third of the parse.
        let mut slots = [MaybeUninit::uninit(); MAX_FIELDS];
        let mut parsed = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &head,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(invalid("an incomplete response head")),
            Err(e) => return Err(invalid(format!("the backend's response head: {e}"))),
        }
        // Checked once here: the write and the copy for the edits take it as it is.
        let code = parsed.code.unwrap_or(0);
        let status = http::StatusCode::from_u16(code)
            .map_err(|_| invalid(format!("an invalid status {code}")))?;
        let connection = || {
            parsed
                .headers
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case("connection"))
                .map(|f| f.value)
        };
        let close = wire::says(connection(), b"close");
        let keep_alive = wire::says(connection(), b"keep-alive");
        // Fields the backend's `Connection` names are hop-by-hop too.
        let listed = headers::listed_in(connection());
        let (mut length, mut chunked) = (None, None);
        let at = |s: &[u8]| (s.as_ptr() as usize - head.as_ptr() as usize) as u32;
        fields.clear();
        for f in parsed.headers.iter() {
            let name = f.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                length = Some(wire::content_length(f.value, length).ok_or_else(|| {
                    invalid("an invalid Content-Length, or differing ones, from the backend")
                })?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let last = f.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            if headers::response_hop_by_hop_raw(name, &listed) {
                continue;
            }
            let (n, v) = (at(name), at(f.value));
            fields.push([n, n + name.len() as u32, v, v + f.value.len() as u32]);
        }
        let framing = if head_request || code == 204 || code == 304 || code < 200 {
            Receiving::Done
        } else {
            match (chunked, length) {
                (Some(true), _) => Receiving::ChunkSize,
                (Some(false), _) => return Err(invalid("a transfer coding other than chunked")),
                (None, Some(n)) => Receiving::Length(n),
                (None, None) => Receiving::UntilClose,
            }
        };
        let mut keep = !close && (parsed.version != Some(0) || keep_alive);
        if chunked.is_some() && length.is_some() {
            // Both: the coding wins (RFC 9112 §6.3), the length is not passed on, and the
            // connection is not trusted with another request.
            fields.retain(|f| {
                !head[f[0] as usize..f[1] as usize].eq_ignore_ascii_case(b"content-length")
            });
            length = None;
            keep = false;
        }
        if framing == Receiving::UntilClose {
            keep = false;
        }
        Ok(Self {
            head,
            status,
            fields,
            framing,
            keep,
            chunked: chunked.is_some(),
            length,
        })
    }

    /// The fields the client gets, as the backend sent them.
    pub(super) fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|f| {
            let h = &self.head[..];
            (
                &h[f[0] as usize..f[1] as usize],
                &h[f[2] as usize..f[3] as usize],
            )
        })
    }

    /// Whether a transfer coding frames the body, and the length the fields give.
    pub(super) fn framing_fields(&self) -> (bool, Option<u64>) {
        (self.chunked, self.length)
    }

    /// The head as a `ResponseHeader` with room for `extra` more fields, for the edits.
    pub(super) fn to_header(&self, extra: usize) -> Result<ResponseHeader> {
        let mut map = headers::map(self.fields.len() + extra);
        for (name, value) in self.fields() {
            let raw = std::str::from_utf8(name).unwrap_or("");
            let name = field_name(raw)
                .ok_or_else(|| invalid(format!("a field name the backend sent: {raw:?}")))?;
            let value = HeaderValue::from_maybe_shared(self.head.slice_ref(value))
                .map_err(|_| invalid(format!("a field value the backend sent in {name}")))?;
            map.append(name, value);
        }
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = self.status;
        parts.headers = map;
        Ok(ResponseHeader::from(parts))
    }

    /// The list of fields, emptied, for the connection's next head.
    pub(super) fn into_fields(self) -> Vec<[u32; 4]> {
        self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &'static [u8], head_request: bool) -> Result<Answer> {
        Answer::parse(Bytes::from_static(raw), head_request, Vec::new())
    }

    fn names(a: &Answer) -> Vec<String> {
        a.fields()
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_and_the_rest_kept_as_sent() {
        let a = parse(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            names(&a),
            [
                "Content-Type=text/plain",
                "Set-Cookie=a=1",
                "Set-Cookie=b=2",
                "Content-Length=5"
            ]
        );
        assert_eq!(
            (a.status.as_u16(), a.framing, a.keep),
            (200, Receiving::Length(5), true)
        );
        assert_eq!(a.framing_fields(), (false, Some(5)));
        let head = a.to_header(2).unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert!(head.headers.get("x-hop").is_none());
    }

    #[test]
    fn framing_and_keep_alive_follow_the_head() {
        // A coding beside a length: the coding frames the body, the length is dropped, and
        // the connection is not trusted again.
        let a = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((a.framing, a.keep), (Receiving::ChunkSize, false));
        assert_eq!(names(&a), ["Transfer-Encoding=chunked"]);
        assert_eq!(a.framing_fields(), (true, None));

        let until_close = parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!(
            (until_close.framing, until_close.keep),
            (Receiving::UntilClose, false)
        );
        let closing = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!closing.keep);
        let old = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).unwrap();
        assert!(!old.keep, "HTTP/1.0 without keep-alive");
        let old_kept = parse(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(old_kept.keep);
        let head = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).unwrap();
        assert_eq!((head.framing, head.keep), (Receiving::Done, true));
        for no_body in [
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        ] {
            let a = Answer::parse(Bytes::from_static(no_body), false, Vec::new()).unwrap();
            assert_eq!(a.framing, Receiving::Done);
        }
    }

    #[test]
    fn heads_in_doubt_are_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1",
            b"HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(
                Answer::parse(Bytes::from_static(bad), false, Vec::new()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
