//! One request's access log line: its fields, and their JSON.

use serde::Serialize;
use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the rate limiter decided for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitDecision {
    /// A policy applied and let the request through.
    Allowed,
    /// A policy refused it (429).
    Limited,
}

impl RateLimitDecision {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
        }
    }
}

/// A request, as logged. Borrowed from the request's state: nothing is copied until the
/// line is written out. Empty strings and `None` are written as `null`.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    /// When the request started (RFC 3339, milliseconds, UTC).
    pub time: Option<SystemTime>,
    /// The Gateway (`namespace/name`) whose listener took the request.
    pub gateway: &'a str,
    /// The route (`namespace/name`) and the index of its rule that matched.
    pub route: &'a str,
    pub rule: &'a str,
    /// The backend (`namespace/name:port`) and the endpoint of the last try, with its zone.
    pub backend: &'a str,
    pub endpoint: Option<SocketAddr>,
    pub zone: Option<&'a str>,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    /// The status the client got; `None` when no response head went out.
    pub status: Option<u16>,
    /// Body bytes read from the client and sent to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From the request's start to the end of its response.
    pub duration: Duration,
    /// From the last try's start at the backend to the end of the response.
    pub upstream_duration: Option<Duration>,
    /// Tries after the first (connect failures, retried statuses, resets, timeouts).
    pub retries: u32,
    /// `None` when no rate limit policy applied.
    pub rate_limit: Option<RateLimitDecision>,
    /// Authorization's decision (`allowed`, `denied`, `audited`, `shadow_denied`,
    /// `shadow_allowed`) and the policy that made it; empty when no policy applied.
    pub authz: &'a str,
    pub authz_policy: &'a str,
    /// The caller's verified SPIFFE ID (mesh listeners).
    pub caller: &'a str,
    /// The W3C trace id the backend got in `traceparent` (32 hex digits).
    pub trace_id: &'a str,
}

impl Entry<'_> {
    /// The line, newline included. Laid out by hand, field by field: through serde's
    /// derive, escaping every string a byte at a time and formatting the time and the
    /// address through `fmt` cost 8k instructions a request, a third of the proxying.
    /// Strings that need no escaping (almost all: names, paths, hex) are copied whole;
    /// the others are escaped by serde_json.
    pub(super) fn write_line(&self, o: &mut Vec<u8>) {
        o.clear();
        o.extend_from_slice(b"{\"time\":");
        or_null(o, self.time, time);
        key(o, b",\"gateway\":");
        text(o, self.gateway);
        key(o, b",\"route\":");
        text(o, self.route);
        key(o, b",\"rule\":");
        text(o, self.rule);
        key(o, b",\"backend\":");
        text(o, self.backend);
        key(o, b",\"endpoint\":");
        or_null(o, self.endpoint, address);
        key(o, b",\"zone\":");
        text(o, self.zone.unwrap_or(""));
        key(o, b",\"method\":");
        text(o, self.method);
        key(o, b",\"authority\":");
        text(o, self.authority);
        key(o, b",\"path\":");
        text(o, self.path);
        key(o, b",\"status\":");
        or_null(o, self.status, number);
        key(o, b",\"bytes_in\":");
        number(o, self.bytes_in);
        key(o, b",\"bytes_out\":");
        number(o, self.bytes_out);
        key(o, b",\"duration_ms\":");
        millis(o, self.duration);
        key(o, b",\"upstream_duration_ms\":");
        or_null(o, self.upstream_duration, millis);
        key(o, b",\"retries\":");
        number(o, self.retries);
        key(o, b",\"rate_limit\":");
        text(o, self.rate_limit.map_or("", RateLimitDecision::as_str));
        key(o, b",\"authz\":");
        text(o, self.authz);
        key(o, b",\"authz_policy\":");
        text(o, self.authz_policy);
        key(o, b",\"caller\":");
        text(o, self.caller);
        key(o, b",\"trace_id\":");
        text(o, self.trace_id);
        o.extend_from_slice(b"}\n");
    }

    #[cfg(test)]
    pub(super) fn to_line(&self) -> Vec<u8> {
        let mut o = Vec::new();
        self.write_line(&mut o);
        o
    }
}

/// `write`'s JSON for a value, or `null`.
fn or_null<T>(o: &mut Vec<u8>, v: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => write(o, v),
        None => o.extend_from_slice(b"null"),
    }
}

/// `,"name":`, written as one piece.
fn key(o: &mut Vec<u8>, key: &[u8]) {
    o.extend_from_slice(key);
}

/// A JSON string, or `null` for an empty one.
fn text(o: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        o.extend_from_slice(b"null");
    } else if !s
        .bytes()
        // No early exit: the compiler turns this into a vector loop.
        .fold(false, |bad, b| {
            bad | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    {
        o.push(b'"');
        o.extend_from_slice(s.as_bytes());
        o.push(b'"');
    } else {
        serde_json::to_writer(&mut *o, s).expect("a string serialises");
    }
}

fn number(o: &mut Vec<u8>, n: impl itoa::Integer) {
    o.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with three decimals (microsecond precision, enough for loopback hops).
fn millis(o: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros();
    number(o, us / 1000);
    let frac = (us % 1000) as u16;
    if frac > 0 {
        o.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
        // No trailing zeros, as a JSON number usually has none.
        while o.last() == Some(&b'0') {
            o.pop();
        }
    }
}

fn address(o: &mut Vec<u8>, a: SocketAddr) {
    o.push(b'"');
    match a.ip() {
        IpAddr::V4(v4) => {
            for (i, n) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    o.push(b'.');
                }
                number(o, n);
            }
            o.push(b':');
            number(o, a.port());
        }
        IpAddr::V6(_) => {
            let _ = write!(o, "{a}");
        }
    }
    o.push(b'"');
}

thread_local! {
    /// The second last formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`: lines
    /// come many to a second, so the calendar arithmetic is done once a second.
    static SECOND: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// RFC 3339 in UTC with milliseconds: `"2026-12-05T15:50:35.022Z"`.
fn time(o: &mut Vec<u8>, t: SystemTime) {
    let Ok(since) = t.duration_since(UNIX_EPOCH) else {
        o.extend_from_slice(b"null");
        return;
    };
    let (secs, ms) = (since.as_secs(), since.subsec_millis());
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            text.clear();
            let Ok(ts) = jiff::Timestamp::from_second(secs as i64) else {
                return o.extend_from_slice(b"null");
            };
            let _ = write!(text, "{}", ts.strftime("%Y-%m-%dT%H:%M:%S"));
            *second = secs;
        }
        o.push(b'"');
        o.extend_from_slice(text);
        o.extend_from_slice(&[
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
            b'"',
        ]);
    });
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
            authz: "allowed",
            authz_policy: "shop/callers",
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
                "rate_limit": "allowed", "authz": "allowed", "authz_policy": "shop/callers",
                "caller": null,
                "trace_id": "0af7651916cd43dd8448eb211c80319c",
            })
        );
    }

    #[test]
    fn any_string_comes_back_as_it_went_in() {
        for path in [
            "/plain",
            "/q?a=\"b\"",
            "/back\\slash",
            "/tab\tnul\u{0}esc\u{1b}",
            "/del\u{7f}",
            "/café/日本/🦀",
            "",
        ] {
            let line = Entry {
                path,
                ..Entry::default()
            }
            .to_line();
            let v: Value = serde_json::from_slice(&line).unwrap();
            let back = if path.is_empty() {
                Value::Null
            } else {
                json!(path)
            };
            assert_eq!(v["path"], back, "{}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn times_durations_and_addresses_are_written_exactly() {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let field = |e: Entry<'_>, key: &str| {
            serde_json::from_slice::<Value>(&e.to_line()).unwrap()[key].clone()
        };
        // The same second twice, then the next: the cached prefix follows the clock.
        for (ms, text) in [
            (1_764_950_400_005, "2025-12-05T16:00:00.005Z"),
            (1_764_950_400_999, "2025-12-05T16:00:00.999Z"),
            (1_764_950_401_000, "2025-12-05T16:00:01.000Z"),
            (0, "1970-01-01T00:00:00.000Z"),
        ] {
            let e = Entry {
                time: Some(at(ms)),
                ..Entry::default()
            };
            assert_eq!(field(e, "time"), text);
        }
        for (us, ms) in [
            (1500, 1.5),
            (1, 0.001),
            (2000, 2.0),
            (123_456_789, 123_456.789),
        ] {
            let e = Entry {
                duration: Duration::from_micros(us),
                ..Entry::default()
            };
            assert_eq!(field(e, "duration_ms").as_f64(), Some(ms));
        }
        for addr in [
            "10.0.0.7:8080",
            "255.255.255.255:65535",
            "0.0.0.0:1",
            "[2001:db8::7]:443",
        ] {
            let e = Entry {
                endpoint: Some(addr.parse().unwrap()),
                ..Entry::default()
            };
            assert_eq!(field(e, "endpoint"), addr);
        }
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
            "authz",
            "authz_policy",
        ] {
            assert_eq!(v[key], Value::Null, "{key}");
        }
    }
}
