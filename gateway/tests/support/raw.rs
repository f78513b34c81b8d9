//! Raw bytes on the wire, for the hostile-client tests: a plaintext or TLS socket that
//! writes exactly what a test gives it, HTTP/2 frames built by hand, and what came back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The longest any raw read waits: a test fails rather than hangs when the gateway keeps a
/// connection it should have closed.
pub const READ_BOUND: Duration = Duration::from_secs(20);

/// What a raw exchange got back.
#[derive(Debug)]
pub struct Got {
    pub bytes: Vec<u8>,
    /// The gateway closed the connection (EOF or reset) before the read bound.
    pub closed: bool,
    pub elapsed: Duration,
}

impl Got {
    /// The status codes of every HTTP/1 response in the bytes, in order.
    pub fn statuses(&self) -> Vec<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        text.match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("gateway accepts");
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until the peer closes, `enough` holds, or the read bound passes.
pub fn read_until(s: &mut impl Read, mut enough: impl FnMut(&[u8]) -> bool) -> Got {
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        if enough(&bytes) {
            break false;
        }
        if start.elapsed() > READ_BOUND {
            break false;
        }
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break true,
        }
    };
    Got {
        bytes,
        closed,
        elapsed: start.elapsed(),
    }
}

/// Sends `bytes` on a new connection and reads until the gateway closes it.
pub fn exchange(port: u16, bytes: &[u8]) -> Got {
    let mut s = connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(bytes).unwrap();
    read_until(&mut s, |_| false)
}

/// Whether one whole HTTP/1 response (head and a Content-Length body) is in `bytes`.
pub fn has_response(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let len = text[..end]
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    bytes.len() >= end + 4 + len
}

/// A blocking TLS client to the gateway that trusts `ca`, offering `alpn`.
pub fn tls(
    port: u16,
    name: &str,
    config: rustls::ClientConfig,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = connect(port);
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    // Drive the handshake to its end so a test's timing starts after it.
    let deadline = Instant::now() + READ_BOUND;
    while stream.conn.is_handshaking() && Instant::now() < deadline {
        match stream.conn.complete_io(&mut stream.sock) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("TLS handshake with the gateway failed: {e}"),
        }
    }
    stream
}

/// HTTP/2 frames by hand (RFC 9113 §4.1), for clients that misbehave on purpose.
pub mod h2 {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The preface and an empty SETTINGS frame.
    pub fn hello() -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        v.extend(frame(SETTINGS, 0, 0, &[]));
        v
    }

    /// A literal header field without indexing, with a literal name (RFC 7541 §6.2.2).
    fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
        assert!(name.len() < 127 && value.len() < 127);
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }

    /// HEADERS for `GET http://{authority}/` with extra fields; HPACK with the static
    /// table and literals only, so no encoder state is needed.
    pub fn get(stream: u32, authority: &str, extra: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
        // :method GET, :scheme http, :path /
        let mut block = vec![0x82, 0x86, 0x84];
        literal(&mut block, ":authority", authority);
        for (n, v) in extra {
            literal(&mut block, n, v);
        }
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, &block)
    }

    pub fn rst(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// One frame as read: (type, flags, stream, payload).
    pub type Frame = (u8, u8, u32, Vec<u8>);

    /// Splits whole frames off the front of `buf`.
    pub fn parse(buf: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            let stream = u32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
            out.push((
                buf[at + 3],
                buf[at + 4],
                stream,
                buf[at + 9..at + 9 + len].to_vec(),
            ));
            at += 9 + len;
        }
        out
    }

    /// The error code of the first GOAWAY among `frames`.
    pub fn goaway(frames: &[Frame]) -> Option<u32> {
        frames
            .iter()
            .find(|f| f.0 == GOAWAY)
            .map(|f| u32::from_be_bytes(f.3[4..8].try_into().unwrap()))
    }
}
