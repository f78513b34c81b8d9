//! Just enough gRPC to test a gateway's gRPC routing: recognise a gRPC request and answer
//! it with one length-prefixed message and an OK status in the trailers.
//!
//! The message is the JSON echo document rather than protobuf, so tests need no generated
//! code to read it; a gateway never looks inside messages, so it cannot tell the difference.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

pub(crate) const CONTENT_TYPE_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC's wire prefix: one compression-flag byte and a four-byte big-endian length.
const PREFIX_LEN: usize = 5;

/// True for `application/grpc` and its `+proto`/`+json`/`;params` variants.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// One uncompressed length-prefixed message. Fails only for a message over 4 GiB, which the
/// gRPC framing cannot express.
pub(crate) fn frame(message: &[u8]) -> Result<Bytes, std::num::TryFromIntError> {
    let len = u32::try_from(message.len())?;
    let mut framed = BytesMut::with_capacity(PREFIX_LEN + message.len());
    framed.put_u8(0);
    framed.put_u32(len);
    framed.put_slice(message);
    Ok(framed.freeze())
}

pub(crate) fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    trailers.insert(GRPC_MESSAGE, HeaderValue::from_static("OK"));
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_with_flag_and_big_endian_length() {
        let framed = frame(b"hello").unwrap();
        assert_eq!(&framed[..], b"\0\0\0\0\x05hello");
    }

    #[test]
    fn recognises_grpc_content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&headers));
    }
}
