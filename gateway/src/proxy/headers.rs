//! Request and response header hygiene: X-Forwarded-*, W3C trace context, and hop-by-hop
//! headers, which describe one connection and must not cross the proxy.

use crate::route::filters::{HeaderOps, HeaderTarget};
use crate::trace::TraceSlot;
use http::{HeaderName, HeaderValue, header};
use pingora::http::{RequestHeader, ResponseHeader};
use smallvec::SmallVec;
use std::io::Write;
use std::net::IpAddr;
use weir_model::trace::valid_traceparent;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The original caller's SPIFFE ID, for the callee's sidecar to pass on to its app; the
/// sidecar believes it only from peers it trusts to set it (the fleet).
pub(super) const CALLER_IDENTITY: HeaderName = HeaderName::from_static("x-weir-caller-identity");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Replaces whatever `x-weir-caller-identity` the client sent with the caller's verified
/// SPIFFE ID, or with nothing: a caller must never name itself. Egress backends (outside
/// the cluster) get no internal identity.
pub(super) fn caller_identity(
    req: &mut RequestHeader,
    caller: Option<&HeaderValue>,
    client_sent_none: bool,
) {
    if !client_sent_none {
        req.remove_header(&CALLER_IDENTITY);
    }
    if let Some(v) = caller {
        let _ = req.insert_header(CALLER_IDENTITY, v.clone());
    }
}

/// A request head's fields, as `forwarded` edits them: Weir's own copy is a plain map, set
/// before it becomes a `RequestHeader`; Pingora's head has a header-case map that its
/// `insert_header` keeps in step by parsing the name again (which copies a custom name: an
/// allocation per field, saved on the plain map).
pub(super) trait Fields {
    fn field(&self, name: &HeaderName) -> Option<&HeaderValue>;
    fn set_field(&mut self, name: HeaderName, value: HeaderValue);
}

/// The backend's copy while it is made, as `forwarded` edits it. The copy notes which of
/// the forwarding fields the client sent as it passes them: the others are known absent,
/// so asking for them costs no map lookup (four per request, most often all absent).
pub(super) struct Copied<'a> {
    map: &'a mut http::HeaderMap,
    /// Bits of [`forwarding_bit`] for the fields the client sent.
    sent: u8,
}

/// The fields the gateway sets on a backend's request head, in the order they are written
/// after the client's: the forwarding fields and the caller's verified identity.
static ADDED: [HeaderName; 5] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    TRACEPARENT,
    CALLER_IDENTITY,
];

/// Which of [`ADDED`] `name` is, if any. By its text: a match on a string compiles to a
/// switch on the length and one comparison, where comparing `HeaderName`s one by one cost
/// a byte comparison each, dozens of times a request.
fn added_slot(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "x-forwarded-for" => Some(0),
        "x-forwarded-proto" => Some(1),
        "x-forwarded-host" => Some(2),
        "traceparent" => Some(3),
        "x-weir-caller-identity" => Some(4),
        _ => None,
    }
}

/// The bit of one of the fields `forwarded` sets, if `name` is one.
fn forwarding_bit(name: &HeaderName) -> Option<u8> {
    added_slot(name).filter(|i| *i < 4).map(|i| 1 << i)
}

/// The fields the gateway adds to a request that goes to its backend as the client sent it
/// (no filter edits it, and the connection is Weir's own): `forwarded` reads the client's
/// head through this and sets its fields here, and the head is written with these in place
/// of the client's own ([`Added::replaces`]), with no copy of the head made.
#[derive(Default)]
pub(super) struct Added {
    slots: [Option<HeaderValue>; 5],
    /// Bits of [`forwarding_bit`] for the fields the client sent.
    sent: u8,
    /// The route's header filters, as edits: every field of these names, the client's or
    /// a slot's, gives way to these entries' values; `None` marks a name removed. Most
    /// routes have none, a filtered route one or two.
    edits: SmallVec<[(HeaderName, Option<HeaderValue>); 2]>,
}

impl Added {
    /// The forwarding fields for `req` (see [`forwarded`]), the route's header filters
    /// `ops` applied after them, and the caller's identity: the fields an edited copy
    /// would get ([`backend_copy`], then the filters, then [`caller_identity`]).
    pub(super) fn for_request<'o>(
        req: &RequestHeader,
        client: Option<IpAddr>,
        scheme: &'static str,
        caller: Option<&HeaderValue>,
        ops: impl Iterator<Item = &'o HeaderOps>,
        trace: &TraceSlot,
    ) -> Self {
        let sent = req
            .headers
            .keys()
            .fold(0, |bits, n| bits | forwarding_bit(n).unwrap_or(0));
        let mut added = Self {
            sent,
            ..Self::default()
        };
        forwarded(&mut Reading(&mut added, req), client, scheme, req, trace);
        for ops in ops {
            ops.apply(&mut Editing(&mut added, req));
        }
        added.slots[4] = caller.cloned();
        added
    }

    /// Whether the client's field `name` gives way to one set here.
    pub(super) fn replaces(&self, name: &HeaderName) -> bool {
        added_slot(name).is_some_and(|i| self.slots[i].is_some()) || self.edited(name)
    }

    fn edited(&self, name: &HeaderName) -> bool {
        self.edits.iter().any(|(n, _)| n == name)
    }

    /// The fields set here, in order.
    pub(super) fn fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let slots = ADDED
            .iter()
            .zip(&self.slots)
            .filter_map(|(n, v)| Some((n, v.as_ref()?)))
            .filter(|(n, _)| !self.edited(n));
        let edits = self
            .edits
            .iter()
            .filter_map(|(n, v)| Some((n, v.as_ref()?)));
        slots.chain(edits)
    }
}

/// [`Added`] as a route's header filters edit it, over the client's head: the fields the
/// backend would get so far are the client's passed-on ones, replaced by the slots, then
/// by the edits. The caller's identity is the gateway's alone, never a filter's.
struct Editing<'a>(&'a mut Added, &'a RequestHeader);

impl HeaderTarget for Editing<'_> {
    fn each_value(&self, name: &HeaderName, f: &mut dyn FnMut(&HeaderValue)) {
        let added = &*self.0;
        if added.edited(name) {
            added
                .edits
                .iter()
                .filter(|(n, _)| n == name)
                .filter_map(|(_, v)| v.as_ref())
                .for_each(f);
        } else if let Some(v) = added_slot(name).and_then(|i| added.slots[i].as_ref()) {
            f(v);
        } else {
            let listed = connection_listed(&self.1.headers);
            self.1
                .headers
                .get_all(name)
                .iter()
                .filter(|v| !request_hop_by_hop(name, v, &listed))
                .for_each(f);
        }
    }
    fn set(&mut self, name: &HeaderName, value: HeaderValue) {
        if *name != CALLER_IDENTITY {
            self.0.edits.retain(|(n, _)| n != name);
            self.0.edits.push((name.clone(), Some(value)));
        }
    }
    fn remove(&mut self, name: &HeaderName) {
        if *name != CALLER_IDENTITY {
            self.0.edits.retain(|(n, _)| n != name);
            self.0.edits.push((name.clone(), None));
        }
    }
}

/// [`Added`] as `forwarded` edits it: reads from the client's head, sets into the list.
struct Reading<'a>(&'a mut Added, &'a RequestHeader);

impl Fields for Reading<'_> {
    fn field(&self, name: &HeaderName) -> Option<&HeaderValue> {
        if let Some(i) = added_slot(name)
            && let Some(v) = &self.0.slots[i]
        {
            return Some(v);
        }
        match forwarding_bit(name) {
            Some(bit) if self.0.sent & bit == 0 => None,
            _ => self.1.headers.get(name),
        }
    }
    fn set_field(&mut self, name: HeaderName, value: HeaderValue) {
        // `forwarded` sets only the fields of `ADDED`.
        if let Some(i) = added_slot(&name) {
            self.0.slots[i] = Some(value);
        }
    }
}

/// Whether a request field belongs to the client's connection, or is one the gateway never
/// passes on; `listed` are the names the client's `Connection` lists.
pub(super) fn request_hop_by_hop(n: &HeaderName, v: &HeaderValue, listed: &[HeaderName]) -> bool {
    *n == header::CONNECTION
        || *n == header::UPGRADE
        || *n == KEEP_ALIVE
        || *n == PROXY_CONNECTION
        || *n == header::PROXY_AUTHORIZATION
        || *n == CALLER_IDENTITY
        || (*n == header::TE && !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        || (*n == header::EXPECT && v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        || listed.contains(n)
}

impl Fields for Copied<'_> {
    fn field(&self, name: &HeaderName) -> Option<&HeaderValue> {
        match forwarding_bit(name) {
            Some(bit) if self.sent & bit == 0 => None,
            _ => self.map.get(name),
        }
    }
    fn set_field(&mut self, name: HeaderName, value: HeaderValue) {
        match forwarding_bit(&name) {
            Some(bit) if self.sent & bit == 0 => {
                self.sent |= bit;
                self.map.append(name, value);
            }
            _ => {
                self.map.insert(name, value);
            }
        }
    }
}

impl Fields for RequestHeader {
    fn field(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.get(name)
    }
    fn set_field(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.insert_header(name, value);
    }
}

thread_local! {
    /// Where a new X-Forwarded-For value is put together; reused, so the value costs only
    /// its own allocation.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes an address as text; IPv4 by hand, since `Display` goes through the formatting
/// machinery (about a thousand instructions a request).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, n) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if n >= 100 {
                    out.push(b'0' + n / 100);
                }
                if n >= 10 {
                    out.push(b'0' + n / 10 % 10);
                }
                out.push(b'0' + n % 10);
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// Appends the client to X-Forwarded-For; sets X-Forwarded-Proto and -Host when the client
/// did not send them; keeps a valid `traceparent`, or starts a trace. `trace` holds the
/// request's trace id across its tries: a retry carries on the trace it started, with a
/// span of its own, and the access log names the trace the backend got. `downstream` is
/// the request as the client sent it. Each new value costs one allocation; the Host is
/// shared.
pub(super) fn forwarded(
    req: &mut impl Fields,
    client: Option<IpAddr>,
    scheme: &'static str,
    downstream: &RequestHeader,
    trace: &TraceSlot,
) {
    if let Some(ip) = client {
        let value = SCRATCH.with_borrow_mut(|value| {
            value.clear();
            if let Some(prev) = req.field(&X_FORWARDED_FOR).filter(|v| !v.is_empty()) {
                value.extend_from_slice(prev.as_bytes());
                value.extend_from_slice(b", ");
            }
            push_ip(value, ip);
            HeaderValue::from_bytes(value)
        });
        if let Ok(v) = value {
            req.set_field(X_FORWARDED_FOR, v);
        }
    }
    if req.field(&X_FORWARDED_PROTO).is_none() {
        req.set_field(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    if req.field(&X_FORWARDED_HOST).is_none() {
        let host = downstream.headers.get(header::HOST).cloned().or_else(|| {
            downstream
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(host) = host {
            req.set_field(X_FORWARDED_HOST, host);
        }
    }
    // A traced request is a span of its own: the backend's parent is the gateway.
    if let Some(span) = trace.span() {
        if let Ok(v) = HeaderValue::from_bytes(&span.traceparent()) {
            req.set_field(TRACEPARENT, v);
        }
        return;
    }
    match req.field(&TRACEPARENT).and_then(|v| trace_id(v.as_bytes())) {
        Some(id) => {
            let _ = trace.id().set(id);
        }
        None => {
            let id = *trace.id().get_or_init(new_trace_id);
            req.set_field(TRACEPARENT, traceparent(&id));
        }
    }
}

/// The trace id of a `traceparent` value, if it is a valid one.
pub(super) fn trace_id(traceparent: &[u8]) -> Option<[u8; 32]> {
    if !valid_traceparent(traceparent) {
        return None;
    }
    traceparent[3..35].try_into().ok()
}

/// A new trace id, in hex. Hex by hand: `format!` cost a tenth of the header work of a
/// request. The id is drawn and written as 64-bit halves: a 128-bit draw in a range and
/// 128-bit shifts cost twice as much, on every request that starts a trace.
fn new_trace_id() -> [u8; 32] {
    let (high, low) = (fastrand::u64(..), fastrand::u64(..));
    // An all-zero trace id is invalid (W3C): one draw in 2^128, made valid.
    let low = if high == 0 && low == 0 { 1 } else { low };
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(&hex16(high));
    id[16..].copy_from_slice(&hex16(low));
    id
}

/// A sampled `traceparent` in trace `id`, with a new span of Weir's as the parent.
fn traceparent(id: &[u8; 32]) -> HeaderValue {
    let span = fastrand::u64(1..);
    let mut v = [0u8; 55];
    v[..3].copy_from_slice(b"00-");
    v[3..35].copy_from_slice(id);
    v[35] = b'-';
    v[36..52].copy_from_slice(&hex16(span));
    v[52..].copy_from_slice(b"-01");
    HeaderValue::from_bytes(&v).expect("hex is a valid header value")
}

/// The 16 lower-case hex digits of `n`, most significant first. All digits at once, eight
/// to a word: a digit at a time (a shift, a mask and a table load each) was half of the
/// id's cost.
fn hex16(n: u64) -> [u8; 16] {
    // Each of the eight nibbles of `x` into the low half of its own byte, nibble i to byte
    // i, so that the most significant digit lands in the most significant byte.
    fn spread(x: u32) -> u64 {
        let x = x as u64;
        let x = ((x & 0xffff_0000) << 16) | (x & 0xffff);
        let x = ((x & 0x0000_ff00_0000_ff00) << 8) | (x & 0x0000_00ff_0000_00ff);
        ((x & 0x00f0_00f0_00f0_00f0) << 4) | (x & 0x000f_000f_000f_000f)
    }
    // A nibble of ten or more carries into bit 4 once 6 is added: those bytes get
    // 'a' - '0' - 10 more. No byte can carry into the next (at most 15 + 48 + 39).
    fn digits(x: u64) -> [u8; 8] {
        const ONES: u64 = 0x0101_0101_0101_0101;
        let letters = ((x + 6 * ONES) >> 4) & ONES;
        (x + b'0' as u64 * ONES + letters * (b'a' - b'0' - 10) as u64).to_be_bytes()
    }
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&digits(spread((n >> 32) as u32)));
    out[8..].copy_from_slice(&digits(spread(n as u32)));
    out
}

/// A copy of `req` for the backend with room for `extra` more fields, so that the fields
/// the gateway adds never regrow the map, and without what must not reach a backend: the
/// hop-by-hop fields ([`strip_request_hop_by_hop`] for a request that is no upgrade), any
/// `x-weir-caller-identity` (see [`caller_identity`]), and `Expect: 100-continue`, which the
/// gateway answers itself on this path (`h1.rs`). Leaving them out while copying saves
/// a map lookup per name. The copy keeps no record of the client's header name case (HTTP
/// field names are case-insensitive): writing both maps cost as much again.
/// `edit` edits the copy's fields before it becomes a `RequestHeader` (see [`Fields`]).
pub(super) fn backend_copy(
    req: &RequestHeader,
    extra: usize,
    edit: impl FnOnce(&mut Copied<'_>),
) -> RequestHeader {
    let listed = connection_listed(&req.headers);
    let hop = |n: &HeaderName, v: &HeaderValue| request_hop_by_hop(n, v, &listed);
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = req.method.clone();
    parts.uri = req.uri.clone();
    parts.version = req.version;
    parts.headers = map(req.headers.len() + extra);
    let mut sent = 0;
    for (n, v) in req.headers.iter().filter(|(n, v)| !hop(n, v)) {
        sent |= forwarding_bit(n).unwrap_or(0);
        parts.headers.append(n.clone(), v.clone());
    }
    edit(&mut Copied {
        map: &mut parts.headers,
        sent,
    });
    let mut copy = RequestHeader::from(parts);
    // A target the URI could not hold as sent (Pingora escapes some bytes) goes as sent.
    let uri_target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if req.raw_path() != uri_target.as_bytes() && req.uri.authority().is_none() {
        let _ = copy.set_raw_path(req.raw_path());
    }
    copy
}

thread_local! {
    /// Emptied header maps kept for the next head this thread builds: each head's map was
    /// two allocations (its index table and its entries), three heads per request.
    static SPARE: std::cell::RefCell<Vec<http::HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Maps kept per thread, and the largest kept: one odd head with thousands of fields does
/// not pin its memory.
const SPARE_MAPS: usize = 16;
const SPARE_CAPACITY: usize = 256;

/// An empty map with room for `capacity` fields, a spare one when this thread has one.
pub(super) fn map(capacity: usize) -> http::HeaderMap {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| http::HeaderMap::with_capacity(capacity))
}

/// Gives a head's map back for [`map`] to hand out again.
pub(super) fn recycle(mut map: http::HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_CAPACITY {
        return;
    }
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_MAPS {
            spare.push(map);
        }
    });
}

/// A copy of a backend's response head for the client, with room for `extra` more fields
/// (the session cookie, filters, `Date`, `Connection`) and without the hop-by-hop fields
/// ([`strip_response_hop_by_hop`]); header name case is not kept.
pub(super) fn client_copy(resp: &ResponseHeader, extra: usize) -> ResponseHeader {
    let upgraded = resp.status.as_u16() == 101;
    let listed = connection_listed(&resp.headers);
    let hop = |n: &HeaderName| !upgraded && response_hop_by_hop(n, &listed);
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = resp.status;
    parts.version = resp.version;
    parts.headers = http::HeaderMap::with_capacity(resp.headers.len() + extra);
    parts.headers.extend(
        resp.headers
            .iter()
            .filter(|(n, _)| !hop(n))
            .map(|(n, v)| (n.clone(), v.clone())),
    );
    ResponseHeader::from(parts)
}

const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Drops a client's `Upgrade: h2c` (RFC 7540 §3.2, removed in RFC 9113): a backend that
/// accepted it would speak HTTP/2 on a connection the gateway forwards as opaque bytes,
/// and every later request on it would bypass routing, filters and policies (h2c
/// smuggling). The request goes on as a plain HTTP/1.1 request.
pub(super) fn drop_h2c_upgrade(req: &mut RequestHeader) {
    let h2c = req.headers.get(header::UPGRADE).is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    });
    if h2c {
        req.remove_header(&header::UPGRADE);
        req.remove_header(&HTTP2_SETTINGS);
    }
}

/// Removes hop-by-hop headers from a request, keeping what an upgrade (WebSocket) and
/// gRPC (`te: trailers`) need. Body framing headers are Pingora's to manage.
pub(super) fn strip_request_hop_by_hop(req: &mut RequestHeader, upgrade: bool) {
    for name in connection_listed(&req.headers) {
        if upgrade && name == header::UPGRADE {
            continue;
        }
        req.remove_header(&name);
    }
    req.remove_header(&KEEP_ALIVE);
    req.remove_header(&PROXY_CONNECTION);
    req.remove_header(&header::PROXY_AUTHORIZATION);
    if req
        .headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        req.remove_header(&header::TE);
    }
    if upgrade {
        let _ = req.insert_header(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        req.remove_header(&header::CONNECTION);
        req.remove_header(&header::UPGRADE);
    }
}

/// Removes hop-by-hop headers from an upstream response, except on a 101 that completes an
/// upgrade.
pub(super) fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status.as_u16() == 101 {
        return;
    }
    for name in connection_listed(&resp.headers) {
        resp.remove_header(&name);
    }
    resp.remove_header(&KEEP_ALIVE);
    resp.remove_header(&PROXY_CONNECTION);
    resp.remove_header(&header::PROXY_AUTHENTICATE);
    resp.remove_header(&header::CONNECTION);
    resp.remove_header(&header::UPGRADE);
}

/// Whether a response field belongs to the backend's connection, not the client's: the
/// fixed hop-by-hop fields and those its `Connection` lists (`listed`). Both of Weir's
/// response copies ask here: [`client_copy`] and `backend_h1`'s parse.
pub(super) fn response_hop_by_hop(n: &HeaderName, listed: &[HeaderName]) -> bool {
    response_hop_by_hop_raw(n.as_str().as_bytes(), listed)
}

/// [`response_hop_by_hop`] for a name as it came, in any case.
pub(super) fn response_hop_by_hop_raw(n: &[u8], listed: &[HeaderName]) -> bool {
    const FIXED: [&[u8]; 5] = [
        b"connection",
        b"upgrade",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
    ];
    FIXED.iter().any(|f| n.eq_ignore_ascii_case(f))
        || listed
            .iter()
            .any(|l| n.eq_ignore_ascii_case(l.as_str().as_bytes()))
}

/// Header names listed in `Connection`, except the framing ones Pingora manages.
pub(super) fn connection_listed(headers: &http::HeaderMap) -> Vec<HeaderName> {
    listed_in(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// The header names that `Connection` values list, except `close`, `keep-alive` and the
/// framing fields (`Content-Length`, `Transfer-Encoding`), which stay.
pub(super) fn listed_in<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for v in values {
        for token in v.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
            {
                continue;
            }
            // `from_bytes` takes the name in any case and keeps it lower-cased.
            if let Ok(name) = HeaderName::from_bytes(token)
                && name != header::TRANSFER_ENCODING
                && name != header::CONTENT_LENGTH
            {
                out.push(name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn forwarded_headers_append_or_start() {
        let mut r = req(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "http"),
        ]);
        let down = req(&[("host", "shop.example.com")]);
        forwarded(
            &mut r,
            Some("10.1.2.3".parse().unwrap()),
            "https",
            &down,
            &TraceSlot::default(),
        );
        assert_eq!(r.headers["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(r.headers["x-forwarded-proto"], "http", "passed through");
        assert_eq!(r.headers["x-forwarded-host"], "shop.example.com");
        let tp = r.headers["traceparent"].to_str().unwrap().to_string();
        assert!(valid_traceparent(tp.as_bytes()), "{tp}");

        // Weir's own copy gets the same fields, whether the client sent them or not.
        let fresh = backend_copy(&down, 4, |c| {
            forwarded(
                c,
                Some("10.1.2.3".parse().unwrap()),
                "https",
                &down,
                &TraceSlot::default(),
            )
        });
        assert_eq!(fresh.headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(fresh.headers["x-forwarded-proto"], "https");
        assert_eq!(fresh.headers["x-forwarded-host"], "shop.example.com");
        assert!(valid_traceparent(fresh.headers["traceparent"].as_bytes()));
        let sent = req(&[
            ("host", "shop.example.com"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("x-forwarded-host", "edge.example.com"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        let copy = backend_copy(&sent, 4, |c| {
            forwarded(
                c,
                Some("10.1.2.3".parse().unwrap()),
                "https",
                &sent,
                &TraceSlot::default(),
            )
        });
        let all = |n: &str| -> Vec<&str> {
            copy.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-forwarded-for"), ["203.0.113.9, 10.1.2.3"]);
        assert_eq!(all("x-forwarded-proto"), ["https"]);
        assert_eq!(
            all("x-forwarded-host"),
            ["edge.example.com"],
            "passed through"
        );
        assert_eq!(
            all("traceparent"),
            ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
        );
    }

    #[test]
    fn a_head_sent_as_it_came_gets_the_fields_a_copy_would() {
        let ip = Some("10.1.2.3".parse().unwrap());
        let caller = HeaderValue::from_static("spiffe://cluster.local/ns/a/sa/b");
        let plain: &[(&str, &str)] = &[("host", "a")];
        let busy: &[(&str, &str)] = &[
            ("host", "a"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("traceparent", "not-a-trace"),
            ("connection", "x-drop, close"),
            ("x-drop", "1"),
            ("x-weir-caller-identity", "spiffe://forged"),
            ("te", "gzip"),
            ("x-keep", "k"),
        ];
        let traced: &[(&str, &str)] = &[
            ("host", "a"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-forwarded-host", "edge"),
        ];
        // Trace ids are new each time: a valid one is all that is compared.
        let seen = |pairs: Vec<(&HeaderName, &HeaderValue)>| {
            let mut out: Vec<(String, String)> = pairs
                .into_iter()
                .map(|(n, v)| {
                    let v = v.to_str().unwrap();
                    let new_trace = *n == TRACEPARENT && v != traced[1].1;
                    let v = if new_trace && valid_traceparent(v.as_bytes()) {
                        "new"
                    } else {
                        v
                    };
                    (n.to_string(), v.to_string())
                })
                .collect();
            out.sort();
            out
        };
        // A rule's and a backend's header filters, over the gateway's own fields, over
        // fields the client sent and did not send, and over one that is hop-by-hop.
        let pair = |name: &str, value: &str| weir_model::HeaderValue {
            name: name.into(),
            value: value.into(),
        };
        let rule = HeaderOps::compile(&weir_model::HeaderModifier {
            set: vec![
                pair("x-keep", "set"),
                pair("x-weir-caller-identity", "spiffe://by-filter"),
            ],
            add: vec![
                pair("x-forwarded-for", "198.51.100.7"),
                pair("x-new", "n"),
                pair("x-drop", "d"),
            ],
            remove: vec!["traceparent".into(), "x-gone".into()],
        })
        .unwrap();
        let backend = HeaderOps::compile(&weir_model::HeaderModifier {
            set: vec![pair("x-forwarded-host", "h")],
            add: vec![pair("x-keep", "2"), pair("x-new", "m")],
            remove: vec!["x-forwarded-proto".into(), "x-weir-caller-identity".into()],
        })
        .unwrap();
        let filters: [&[&HeaderOps]; 3] = [&[], &[&rule], &[&rule, &backend]];
        for fields in [plain, busy, traced] {
            let r = req(fields);
            for identity in [None, Some(&caller)] {
                for ops in filters {
                    let mut copy = backend_copy(&r, 8, |c| {
                        forwarded(c, ip, "http", &r, &TraceSlot::default())
                    });
                    for o in ops {
                        o.apply(&mut copy);
                    }
                    caller_identity(&mut copy, identity, ops.is_empty());
                    let added = Added::for_request(
                        &r,
                        ip,
                        "http",
                        identity,
                        ops.iter().copied(),
                        &TraceSlot::default(),
                    );
                    let listed = connection_listed(&r.headers);
                    let as_sent: Vec<_> = r
                        .headers
                        .iter()
                        .filter(|(n, v)| !request_hop_by_hop(n, v, &listed) && !added.replaces(n))
                        .chain(added.fields())
                        .collect();
                    // A filter never names the caller.
                    let named = as_sent.iter().find(|(n, _)| **n == CALLER_IDENTITY);
                    assert_eq!(named.map(|(_, v)| *v), identity, "{fields:?}");
                    assert_eq!(
                        seen(as_sent),
                        seen(copy.headers.iter().collect()),
                        "{fields:?} {identity:?} {} filters",
                        ops.len()
                    );
                }
            }
        }
    }

    #[test]
    fn added_fields_are_known_by_name() {
        for (i, name) in ADDED.iter().enumerate() {
            assert_eq!(added_slot(name), Some(i), "{name}");
        }
        assert_eq!(added_slot(&header::HOST), None);
        assert_eq!(
            added_slot(&HeaderName::from_static("x-forwarded-port")),
            None
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().into_bytes());
        }
    }

    #[test]
    fn new_traces_are_valid_and_differ() {
        let (a, b) = (traceparent(&new_trace_id()), traceparent(&new_trace_id()));
        assert!(valid_traceparent(a.as_bytes()), "{a:?}");
        assert_ne!(a, b);
        for n in [
            0,
            1,
            9,
            10,
            15,
            0xbeef,
            0x0123_4567_89ab_cdef,
            u64::MAX,
            fastrand::u64(..),
        ] {
            assert_eq!(hex16(n), *format!("{n:016x}").as_bytes(), "{n:#x}");
        }
    }

    #[test]
    fn copies_leave_out_what_stripping_would_remove() {
        let fields = [
            ("Host", "h"),
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "gzip"),
            ("Proxy-Authorization", "x"),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "websocket"),
            ("X-Weir-Caller-Identity", "spiffe://forged"),
            ("X-Kept", "2"),
        ];
        let r = req(&fields);
        let mut stripped = r.clone();
        strip_request_hop_by_hop(&mut stripped, false);
        caller_identity(&mut stripped, None, false);
        let names = |h: &http::HeaderMap| {
            let mut v: Vec<String> = h.keys().map(|k| k.to_string()).collect();
            v.sort();
            v
        };
        let copy = backend_copy(&r, 4, |_| {});
        assert_eq!(names(&copy.headers), names(&stripped.headers));
        assert_eq!(names(&copy.headers), ["host", "x-kept"]);

        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (k, v) in fields {
            resp.append_header(k.to_string(), v).unwrap();
        }
        resp.append_header("Proxy-Authenticate", "Basic").unwrap();
        let mut stripped = resp.clone();
        strip_response_hop_by_hop(&mut stripped);
        assert_eq!(
            names(&client_copy(&resp, 4).headers),
            names(&stripped.headers)
        );
    }

    #[test]
    fn copies_keep_every_field_in_order_and_the_target() {
        let mut r = RequestHeader::build("POST", b"/a%20b?q=1", None).unwrap();
        for (k, v) in [("Host", "h"), ("X-Dup", "1"), ("x-dup", "2")] {
            r.append_header(k.to_string(), v).unwrap();
        }
        let copy = backend_copy(&r, 8, |_| {});
        assert_eq!(copy.method, "POST");
        assert_eq!(copy.raw_path(), b"/a%20b?q=1");
        let dups: Vec<_> = copy.headers.get_all("x-dup").iter().collect();
        assert_eq!(dups, ["1", "2"]);
        assert!(copy.headers.capacity() >= r.headers.len() + 8);

        let mut resp = ResponseHeader::build(404, None).unwrap();
        resp.append_header("set-cookie", "a=1").unwrap();
        resp.append_header("set-cookie", "b=2").unwrap();
        let copy = client_copy(&resp, 4);
        assert_eq!(copy.status, 404);
        assert_eq!(copy.headers.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn valid_traceparents_pass_through_invalid_are_replaced() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut r = req(&[("traceparent", good)]);
        forwarded(&mut r, None, "http", &req(&[]), &TraceSlot::default());
        assert_eq!(r.headers["traceparent"], good);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let mut r = req(&[("traceparent", bad)]);
            let trace = TraceSlot::default();
            forwarded(&mut r, None, "http", &req(&[]), &trace);
            let sent = r.headers["traceparent"].as_bytes();
            assert_ne!(sent, bad.as_bytes());
            // The access log's trace id is the one the backend got.
            assert_eq!(trace.id().get(), Some(&trace_id(sent).unwrap()));
        }
        let trace = TraceSlot::default();
        forwarded(
            &mut req(&[("traceparent", good)]),
            None,
            "http",
            &req(&[]),
            &trace,
        );
        assert_eq!(trace.id().get(), Some(b"4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn a_retry_carries_on_the_trace_it_started_with_a_new_span() {
        let trace = TraceSlot::default();
        let tries: Vec<String> = (0..2)
            .map(|_| {
                let mut r = req(&[]);
                forwarded(&mut r, None, "http", &req(&[]), &trace);
                r.headers["traceparent"].to_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(tries[0][..36], tries[1][..36], "one trace: {tries:?}");
        assert_ne!(tries[0][36..52], tries[1][36..52], "two spans: {tries:?}");
        assert_eq!(trace.id().get().unwrap()[..], tries[1].as_bytes()[3..35]);
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_but_upgrades_survive() {
        let mut r = req(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "x"),
        ]);
        strip_request_hop_by_hop(&mut r, false);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-authorization",
        ] {
            assert!(r.headers.get(gone).is_none(), "{gone}");
        }
        assert_eq!(r.headers["te"], "trailers", "gRPC needs it");
        let mut ws = req(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_request_hop_by_hop(&mut ws, true);
        assert_eq!(ws.headers["upgrade"], "websocket");
        assert_eq!(ws.headers["connection"], "upgrade");
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "close").unwrap();
        resp.insert_header("keep-alive", "timeout=5").unwrap();
        strip_response_hop_by_hop(&mut resp);
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("connection").is_none());
    }
}
