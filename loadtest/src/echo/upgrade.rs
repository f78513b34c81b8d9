//! HTTP/1.1 `Upgrade` (WebSocket and any other protocol): answer `101 Switching
//! Protocols`, then echo raw bytes until the client closes.
//!
//! Echoing raw bytes rather than speaking WebSocket frames is deliberate: a gateway only
//! has to carry the byte stream both ways, and a byte echo checks exactly that for every
//! protocol at once.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{
    CONNECTION, HeaderMap, HeaderName, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    UPGRADE,
};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::body::EchoBody;

/// RFC 6455 section 1.3: the GUID appended to the client's key before hashing.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const ECHO_BUFFER: usize = 16 * 1024;

/// The protocol to switch to, if the request asks for an upgrade we accept.
///
/// `h2c` is never accepted: clients such as curl offer it opportunistically alongside an
/// ordinary request, and hijacking those connections into a byte echo would break them. They
/// get an ordinary HTTP/1.1 answer; h2c is served with prior knowledge instead.
pub(crate) fn requested_protocol<B>(request: &Request<B>) -> Option<HeaderValue> {
    // HTTP/2 forbids the Upgrade mechanism, and hyper can only hand over HTTP/1.1 connections.
    if request.version() != Version::HTTP_11 || !has_token(request.headers(), CONNECTION, "upgrade")
    {
        return None;
    }
    request
        .headers()
        .get_all(UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find(|protocol| !protocol.is_empty() && !protocol.eq_ignore_ascii_case("h2c"))
        .and_then(|protocol| HeaderValue::from_str(protocol).ok())
}

/// Whether a comma-separated header such as `Connection` lists `token`, in any case.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub(crate) fn websocket_accept(key: &[u8]) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.digest().bytes())
}

/// Builds the 101 response and starts the byte echo that takes over once hyper has sent it.
pub(crate) fn switch(request: &mut Request<Incoming>, protocol: HeaderValue) -> Response<EchoBody> {
    let mut response = Response::new(EchoBody::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, protocol);
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(key) = request.headers().get(SEC_WEBSOCKET_KEY) {
        // base64 output is always a valid header value; the fallback never fires.
        if let Ok(accept) = HeaderValue::from_str(&websocket_accept(key.as_bytes())) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
    }
    tokio::spawn(echo_bytes(hyper::upgrade::on(request)));
    response
}

async fn echo_bytes(on_upgrade: OnUpgrade) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(%error, "upgrade did not complete");
            return;
        }
    };
    let mut io = TokioIo::new(upgraded);
    // One buffer and a read/write loop on the whole stream, rather than splitting it, keeps
    // the echo free of the lock `tokio::io::split` needs.
    let mut buffer = vec![0; ECHO_BUFFER];
    let result = async {
        loop {
            let read = io.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            io.write_all(&buffer[..read]).await?;
        }
        io.shutdown().await
    }
    .await;
    if let Err(error) = result {
        debug!(%error, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455_example() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn picks_first_protocol_other_than_h2c() {
        let request = |connection: &str, upgrade: &str| {
            Request::get("/")
                .header(CONNECTION, connection)
                .header(UPGRADE, upgrade)
                .body(())
                .unwrap()
        };
        assert_eq!(
            requested_protocol(&request("keep-alive, Upgrade", "websocket")),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(
            requested_protocol(&request("upgrade", "h2c, foo/1")),
            Some(HeaderValue::from_static("foo/1"))
        );
        assert_eq!(
            requested_protocol(&request("Upgrade, HTTP2-Settings", "h2c")),
            None
        );
        assert_eq!(
            requested_protocol(&request("keep-alive", "websocket")),
            None
        );
    }
}
