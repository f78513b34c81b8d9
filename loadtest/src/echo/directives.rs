//! The request-controlled response knobs other than the delay: `/status/NNN` and the
//! `X-Echo-Set-Header` request header.
//!
//! Both reject malformed input with an error message instead of ignoring it, for the same
//! reason as the delay: a test must fail loudly on a typo rather than pass by accident.

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) const SET_HEADER: HeaderName = HeaderName::from_static("x-echo-set-header");

const STATUS_PREFIX: &str = "/status/";

/// The status `/status/NNN` asks for, `Ok(None)` for any other path.
///
/// 1xx codes are refused: hyper would treat them as interim responses (or reject them),
/// which would leave the client waiting for a final response that never comes.
pub(crate) fn status_from_path(path: &str) -> Result<Option<StatusCode>, String> {
    let Some(code) = path.strip_prefix(STATUS_PREFIX) else {
        return Ok(None);
    };
    code.parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .map(Some)
        .ok_or_else(|| format!("invalid status {code:?}: expected a number in 200..=599"))
}

/// The headers `X-Echo-Set-Header: Name:value,Other:value2` asks for, in order.
///
/// Several `X-Echo-Set-Header` headers are read in order too, and a name may repeat: the
/// response gets every value, which is how tests build multi-valued response headers.
pub(crate) fn headers_to_set(
    request: &HeaderMap,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut headers = Vec::new();
    for value in request.get_all(SET_HEADER) {
        let value = value
            .to_str()
            .map_err(|_| format!("{SET_HEADER} is not visible ASCII"))?;
        for entry in value
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let (name, value) = entry
                .split_once(':')
                .ok_or_else(|| format!("{SET_HEADER} entry {entry:?} is not Name:value"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("{SET_HEADER} entry {entry:?} has an invalid name"))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("{SET_HEADER} entry {entry:?} has an invalid value"))?;
            headers.push((name, value));
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_path_accepts_final_codes_only() {
        assert_eq!(status_from_path("/"), Ok(None));
        assert_eq!(status_from_path("/statusx"), Ok(None));
        assert_eq!(
            status_from_path("/status/503"),
            Ok(Some(StatusCode::SERVICE_UNAVAILABLE))
        );
        assert_eq!(
            status_from_path("/status/599").map(|s| s.map(|s| s.as_u16())),
            Ok(Some(599))
        );
        for bad in [
            "/status/",
            "/status/101",
            "/status/600",
            "/status/abc",
            "/status/200/x",
        ] {
            assert!(status_from_path(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn set_header_keeps_order_and_repeats() {
        let mut request = HeaderMap::new();
        request.append(SET_HEADER, HeaderValue::from_static("X-One: 1, x-two:2,"));
        request.append(SET_HEADER, HeaderValue::from_static("x-one:again"));
        let set = headers_to_set(&request).unwrap();
        let pairs: Vec<_> = set
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        assert_eq!(pairs, [("x-one", "1"), ("x-two", "2"), ("x-one", "again")]);
    }

    #[test]
    fn set_header_rejects_malformed_entries() {
        for bad in ["novalue", ":v", "bad name:v"] {
            let mut request = HeaderMap::new();
            request.insert(SET_HEADER, HeaderValue::from_static(bad));
            assert!(
                headers_to_set(&request).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
