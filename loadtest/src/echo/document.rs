//! The JSON document every echo response carries: what the request looked like on
//! arrival, plus this instance's identity.
//!
//! It serializes straight from the request's parts through borrowing wrappers, so building
//! it costs one output buffer rather than a copy of every header.

use std::borrow::Cow;

use http::Version;
use http::header::{GetAll, HOST, HeaderMap, HeaderValue};
use http::request::Parts;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::Identity;

#[derive(Debug, Serialize)]
struct EchoDocument<'a> {
    path: &'a str,
    host: Cow<'a, str>,
    method: &'a str,
    proto: &'static str,
    headers: Headers<'a>,
    namespace: &'a str,
    service: &'a str,
    pod: &'a str,
    zone: &'a str,
    body_bytes: u64,
}

/// Renders the document for a request whose body held `body_bytes` bytes.
pub(crate) fn render(
    parts: &Parts,
    body_bytes: u64,
    identity: &Identity,
) -> serde_json::Result<Vec<u8>> {
    let document = EchoDocument {
        path: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        host: host(parts),
        method: parts.method.as_str(),
        proto: proto(parts.version),
        headers: Headers(&parts.headers),
        namespace: &identity.namespace,
        service: &identity.service,
        pod: &identity.pod,
        zone: &identity.zone,
        body_bytes,
    };
    serde_json::to_vec(&document)
}

/// The authority the client addressed. The request target's authority (HTTP/2
/// `:authority`, or an HTTP/1.1 absolute-form target) takes precedence over `Host`, as
/// RFC 9110 and RFC 9113 require of servers.
fn host(parts: &Parts) -> Cow<'_, str> {
    match parts.uri.authority() {
        Some(authority) => Cow::Borrowed(authority.as_str()),
        None => parts.headers.get(HOST).map_or(Cow::Borrowed(""), lossy),
    }
}

fn proto(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

/// Header values may carry obs-text bytes; the document replaces those rather than failing
/// the whole response over one header.
fn lossy(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

/// A header map as `{"name": ["value", ...]}`, names in first-seen order, values in
/// arrival order. The `http` crate already lower-cases names.
#[derive(Debug)]
struct Headers<'a>(&'a HeaderMap);

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.keys_len()))?;
        for name in self.0.keys() {
            map.serialize_entry(name.as_str(), &Values(self.0.get_all(name)))?;
        }
        map.end()
    }
}

struct Values<'a>(GetAll<'a, HeaderValue>);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for value in self.0.iter() {
            seq.serialize_element(&lossy(value))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use serde_json::{Value, json};

    #[test]
    fn renders_request_and_identity() {
        let request = Request::post("/a/b?x=1")
            .header("host", "example.test")
            .header("x-multi", "one")
            .header("X-Multi", "two")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let identity = Identity {
            service: "svc".into(),
            namespace: "ns".into(),
            pod: "pod-1".into(),
            zone: String::new(),
        };
        let document: Value =
            serde_json::from_slice(&render(&parts, 7, &identity).unwrap()).unwrap();
        assert_eq!(
            document,
            json!({
                "path": "/a/b?x=1",
                "host": "example.test",
                "method": "POST",
                "proto": "HTTP/1.1",
                "headers": {"host": ["example.test"], "x-multi": ["one", "two"]},
                "namespace": "ns",
                "service": "svc",
                "pod": "pod-1",
                "zone": "",
                "body_bytes": 7,
            })
        );
    }

    #[test]
    fn authority_wins_over_host_header() {
        let request = Request::get("http://authority.test/p")
            .header("host", "header.test")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        assert_eq!(host(&parts), "authority.test");
    }
}
