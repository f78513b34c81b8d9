//! One request's access log line: its fields, and their JSON.

use serde::{Serialize, Serializer};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// What the rate limiter decided for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitDecision {
    /// A policy applied and let the request through.
    Allowed,
    /// A policy refused it (429).
    Limited,
}

/// A request, as logged. Borrowed from the request's state: nothing is copied until the
/// line is written out. Empty strings and `None` are written as `null`.
#[derive(Debug, Default, Serialize)]
pub struct Entry<'a> {
    /// When the request started (RFC 3339, milliseconds, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub time: Option<SystemTime>,
    /// The Gateway (`namespace/name`) whose listener took the request.
    #[serde(serialize_with = "text")]
    pub gateway: &'a str,
    /// The route (`namespace/name`) and the index of its rule that matched.
    #[serde(serialize_with = "text")]
    pub route: &'a str,
    #[serde(serialize_with = "text")]
    pub rule: &'a str,
    /// The backend (`namespace/name:port`) and the endpoint of the last try, with its zone.
    #[serde(serialize_with = "text")]
    pub backend: &'a str,
    pub endpoint: Option<SocketAddr>,
    pub zone: Option<&'a str>,
    #[serde(serialize_with = "text")]
    pub method: &'a str,
    #[serde(serialize_with = "text")]
    pub authority: &'a str,
    #[serde(serialize_with = "text")]
    pub path: &'a str,
    /// The status the client got; `null` when no response head went out.
    pub status: Option<u16>,
    /// Body bytes read from the client and sent to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From the request's start to the end of its response.
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// From the last try's start at the backend to the end of the response.
    #[serde(rename = "upstream_duration_ms", serialize_with = "maybe_millis")]
    pub upstream_duration: Option<Duration>,
    /// Tries after the first (connect failures, retried statuses, resets, timeouts).
    pub retries: u32,
    /// `null` when no rate limit policy applied.
    pub rate_limit: Option<RateLimitDecision>,
    /// The caller's verified SPIFFE ID (mesh listeners).
    #[serde(serialize_with = "text")]
    pub caller: &'a str,
    /// The W3C trace id the backend got in `traceparent` (32 hex digits).
    #[serde(serialize_with = "text")]
    pub trace_id: &'a str,
}

impl Entry<'_> {
    /// The line, newline included.
    pub(super) fn to_line(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(512);
        serde_json::to_writer(&mut line, self).expect("an entry always serialises");
        line.push(b'\n');
        line
    }
}

fn text<S: Serializer>(s: &&str, ser: S) -> Result<S::Ok, S::Error> {
    if s.is_empty() {
        ser.serialize_none()
    } else {
        ser.serialize_str(s)
    }
}

fn rfc3339<S: Serializer>(t: &Option<SystemTime>, ser: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| jiff::Timestamp::try_from(t).ok()) {
        Some(ts) => ser.collect_str(&format_args!("{ts:.3}")),
        None => ser.serialize_none(),
    }
}

fn millis<S: Serializer>(d: &Duration, ser: S) -> Result<S::Ok, S::Error> {
    // Microsecond precision: enough for loopback hops, and short.
    ser.serialize_f64((d.as_micros() as f64) / 1000.0)
}

fn maybe_millis<S: Serializer>(d: &Option<Duration>, ser: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, ser),
        None => ser.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let e = Entry {
            time: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_950_400_123)),
            gateway: "edge/web",
            route: "shop/store",
            rule: "0",
            backend: "shop/store:80",
            endpoint: Some("10.0.0.7:8080".parse().unwrap()),
            zone: Some("zone-a"),
            method: "GET",
            authority: "shop.example.com",
            path: "/cart?id=\"1\"\n",
            status: Some(200),
            bytes_in: 0,
            bytes_out: 1234,
            duration: Duration::from_micros(1500),
            upstream_duration: Some(Duration::from_micros(1250)),
            retries: 1,
            rate_limit: Some(RateLimitDecision::Allowed),
            caller: "",
            trace_id: "0af7651916cd43dd8448eb211c80319c",
        };
        let line = e.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(
            line.iter().filter(|b| **b == b'\n').count(),
            1,
            "one line, even with a newline in the path"
        );
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({
                "time": "2025-12-05T16:00:00.123Z",
                "gateway": "edge/web", "route": "shop/store", "rule": "0",
                "backend": "shop/store:80", "endpoint": "10.0.0.7:8080", "zone": "zone-a",
                "method": "GET", "authority": "shop.example.com", "path": "/cart?id=\"1\"\n",
                "status": 200, "bytes_in": 0, "bytes_out": 1234,
                "duration_ms": 1.5, "upstream_duration_ms": 1.25, "retries": 1,
                "rate_limit": "allowed", "caller": null,
                "trace_id": "0af7651916cd43dd8448eb211c80319c",
            })
        );
    }

    #[test]
    fn a_request_that_matched_nothing_logs_nulls() {
        let v: Value = serde_json::from_slice(&Entry::default().to_line()).unwrap();
        for key in [
            "time",
            "gateway",
            "route",
            "backend",
            "endpoint",
            "status",
            "rate_limit",
        ] {
            assert_eq!(v[key], Value::Null, "{key}");
        }
    }
}
