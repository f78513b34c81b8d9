//! The per-request functions of the gateway, driven by one structured input: host
//! normalisation and authority ports, route matchers, session tokens, header edits, path
//! rewrites and redirects.
//!
//! Invariants checked, beyond "does not panic":
//! - `normalize_host` is idempotent, lower-cases, and agrees with `authority_port` on what
//!   the port is;
//! - a match built from a request's own path, method, headers and query (exact or as an
//!   escaped regular expression) matches that request; an exact path or prefix that matched
//!   really is the path or a segment prefix of it;
//! - a session token round-trips through encode/decode, decode accepts exactly 32 hex digits,
//!   and a token the gateway issues (header or cookie) is read back;
//! - header edits do what the Gateway API says (remove, then set, then add appending to every
//!   existing value) and leave a header block that serialises and parses back to the same;
//! - a rewrite keeps the path absolute and the query; a redirect gives a valid `Location`.

#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;
use weir_gateway::balance::session::{Persistence, Token, cohort};
use weir_gateway::route::filters::{HeaderOps, RedirectInput, redirect_location, replace_path};
use weir_gateway::route::matcher::{CompiledMatch, RequestView, prefix_matches};
use weir_gateway::route::{authority_port, normalize_host};
use weir_model::{
    self, HeaderMatch, HeaderModifier, PathMatch, PathModifier, QueryMatch, Redirect, RouteMatch,
    Scheme, SessionKind, SessionPersistence, SplitKey, StringMatch,
};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    host: &'a str,
    path_and_query: &'a str,
    method: &'a str,
    headers: Vec<(&'a str, &'a [u8])>,
    route: ArbMatch<'a>,
    token: [u32; 4],
    token_text: &'a str,
    session: ArbSession<'a>,
    modifier: ArbModifier<'a>,
    rewrite: ArbPath<'a>,
    redirect: ArbRedirect<'a>,
}

#[derive(Arbitrary, Debug)]
enum ArbString<'a> {
    Exact(&'a str),
    Regex(&'a str),
}

impl ArbString<'_> {
    fn model(&self) -> StringMatch {
        match self {
            ArbString::Exact(s) => StringMatch::Exact(s.to_string()),
            ArbString::Regex(s) => StringMatch::RegularExpression(s.to_string()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct ArbMatch<'a> {
    path_kind: u8,
    path: &'a str,
    method: Option<&'a str>,
    headers: Vec<(&'a str, ArbString<'a>)>,
    query: Vec<(&'a str, ArbString<'a>)>,
}

impl ArbMatch<'_> {
    fn model(&self) -> RouteMatch {
        RouteMatch {
            path: match self.path_kind % 3 {
                0 => PathMatch::Exact(self.path.into()),
                1 => PathMatch::PathPrefix(self.path.into()),
                _ => PathMatch::RegularExpression(self.path.into()),
            },
            method: self.method.map(Into::into),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| HeaderMatch {
                    name: n.to_string(),
                    value: v.model(),
                })
                .collect(),
            query_params: self
                .query
                .iter()
                .map(|(n, v)| QueryMatch {
                    name: n.to_string(),
                    value: v.model(),
                })
                .collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct ArbSession<'a> {
    header: bool,
    name: &'a str,
    absolute_s: Option<u32>,
    idle_s: Option<u32>,
    permanent: bool,
    backend: u32,
    endpoint: u32,
    previous: Option<[u32; 4]>,
    other_cookies: &'a str,
}

#[derive(Arbitrary, Debug)]
struct ArbModifier<'a> {
    set: Vec<(&'a str, &'a str)>,
    add: Vec<(&'a str, &'a str)>,
    remove: Vec<&'a str>,
}

#[derive(Arbitrary, Debug)]
struct ArbPath<'a> {
    full: bool,
    value: &'a str,
}

impl ArbPath<'_> {
    /// As translation validates it (`translate/filters.rs`): an absolute path, or empty for
    /// a prefix replacement, of URI path characters only.
    fn model(&self) -> Option<PathModifier> {
        let v = self.value;
        if !uri_path(v) {
            return None;
        }
        if self.full {
            v.starts_with('/')
                .then(|| PathModifier::ReplaceFullPath(v.into()))
        } else {
            (v.is_empty() || v.starts_with('/')).then(|| PathModifier::ReplacePrefixMatch(v.into()))
        }
    }
}

/// RFC 3986 path characters, `%` starting an escape of two hex digits. An oracle of its own
/// rather than the controller's `uri_path`: a check that shares the code it checks proves
/// nothing.
fn uri_path(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if b
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                i += 3
            }
            c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&c) => i += 1,
            _ => return false,
        }
    }
    true
}

#[derive(Arbitrary, Debug)]
struct ArbRedirect<'a> {
    scheme: Option<bool>,
    hostname: Option<&'a str>,
    port: Option<u16>,
    path: Option<ArbPath<'a>>,
    https_listener: bool,
    listener_port: u16,
}

fuzz_target!(|input: Input<'_>| {
    hosts(input.host);
    // What the proxy sees: the request target parsed as a URI, its path and query or `/`.
    let Ok(uri) = http::Uri::try_from(input.path_and_query) else {
        return;
    };
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let method = Method::from_bytes(input.method.as_bytes()).unwrap_or(Method::GET);
    let mut headers = HeaderMap::new();
    for (n, v) in &input.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(n, v);
        }
    }
    let view = RequestView::new(pq, &method, &headers);
    matchers(&input.route, &view);
    tokens(input.token, input.token_text);
    sessions(&input.session, &headers);
    header_edits(&input.modifier, &method, pq, &headers);
    rewrites(&input.rewrite, &input.route, &view, pq);
    redirects(&input.redirect, input.host, &view, pq);
});

fn hosts(raw: &str) {
    let n = normalize_host(raw);
    assert!(
        !n.bytes().any(|b| b.is_ascii_uppercase()),
        "{raw:?} → {n:?}"
    );
    assert_eq!(
        normalize_host(&n),
        n,
        "normalize_host is not idempotent on {raw:?}"
    );
    if let Some(port) = authority_port(raw) {
        let (host, digits) = raw.rsplit_once(':').expect("a port follows a colon");
        assert!(
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
            "authority_port({raw:?}) = {port} from {digits:?}"
        );
        assert_eq!(
            n,
            normalize_host(host),
            "normalize_host does not drop the port {port} that authority_port sees in {raw:?}"
        );
    }
}

/// The request's headers, each name's values joined as the matcher compares them; `None`
/// for a name with a value that is not visible ASCII (no string match can see it).
fn joined_headers(headers: &HeaderMap) -> Vec<(HeaderName, Option<String>)> {
    headers
        .keys()
        .map(|k| {
            let values: Option<Vec<&str>> =
                headers.get_all(k).iter().map(|v| v.to_str().ok()).collect();
            (k.clone(), values.map(|v| v.join(",")))
        })
        .collect()
}

fn matchers(arb: &ArbMatch<'_>, view: &RequestView<'_>) {
    let m = arb.model();
    // Only an origin-form path can match (`OPTIONS *` matches no route).
    let origin_form = view.path.starts_with('/');
    if let Ok(compiled) = CompiledMatch::compile(&m) {
        let hit = compiled.matches(view);
        assert!(
            origin_form || !hit,
            "{m:?} matches the target {:?}",
            view.path
        );
        match &m.path {
            PathMatch::Exact(p) if hit => assert_eq!(p, view.path),
            PathMatch::PathPrefix(p) if hit => {
                assert!(p == "/" || view.path.starts_with(p.as_str()));
                assert!(prefix_matches(p, view.path));
            }
            _ => {}
        }
    }

    // A match made of the request itself, exactly and as escaped regular expressions.
    for regex in [false, true] {
        let value = |s: &str| {
            if regex {
                StringMatch::RegularExpression(regex::escape(s))
            } else {
                StringMatch::Exact(s.to_string())
            }
        };
        let mut seen = std::collections::HashSet::new();
        let query_params = view
            .query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .filter(|(k, _)| seen.insert(k.to_string()))
                    .map(|(k, v)| QueryMatch {
                        name: k.into_owned(),
                        value: value(&v),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let own = RouteMatch {
            path: if regex {
                PathMatch::RegularExpression(regex::escape(view.path))
            } else {
                PathMatch::Exact(view.path.to_string())
            },
            method: Some(view.method.as_str().to_string()),
            headers: joined_headers(view.headers)
                .into_iter()
                .filter_map(|(k, v)| {
                    Some(HeaderMatch {
                        name: k.as_str().to_string(),
                        value: value(&v?),
                    })
                })
                .collect(),
            query_params,
        };
        match CompiledMatch::compile(&own) {
            Ok(c) => assert_eq!(
                c.matches(view),
                origin_form,
                "the request's own match {own:?}"
            ),
            // Only a regex may be refused, for its size.
            Err(e) => assert!(regex, "{own:?}: {e}"),
        }
    }

    // Every segment prefix of the path matches as a PathPrefix.
    let mut prefix_end = view.path.len();
    loop {
        let prefix = &view.path[..prefix_end];
        if !prefix.is_empty() {
            assert!(
                prefix_matches(prefix, view.path),
                "{prefix:?} is a segment prefix of {:?}",
                view.path
            );
        }
        match view.path[..prefix_end].rfind('/') {
            Some(i) if i > 0 => prefix_end = i,
            _ => break,
        }
    }
}

fn tokens(parts: [u32; 4], text: &str) {
    let t = Token {
        backend: parts[0],
        endpoint: parts[1],
        absolute: parts[2],
        idle: parts[3],
    };
    let encoded = t.encode();
    assert_eq!(Token::decode(&encoded), Some(t), "{encoded}");
    match Token::decode(text) {
        Some(d) => {
            assert!(
                text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()),
                "decode accepts {text:?}"
            );
            assert_eq!(d.encode(), text.to_ascii_lowercase());
        }
        None => assert!(
            !(text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())),
            "decode refuses {text:?}"
        ),
    }
}

/// An RFC 9110 token, as translation requires of session names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn sessions(arb: &ArbSession<'_>, headers: &HeaderMap) {
    // Whatever the request carries, reading never panics.
    let _ = cohort(&SplitKey::Cookie(arb.name.into()), headers);
    let _ = cohort(&SplitKey::Header(arb.name.into()), headers);
    if !is_token(arb.name) {
        return;
    }
    // Timeouts of at least 10 s: the token must still be live when read back.
    let ms = |s: Option<u32>| s.map(|s| (u64::from(s) + 10) * 1000);
    let sp = SessionPersistence {
        kind: if arb.header {
            SessionKind::Header
        } else {
            SessionKind::Cookie
        },
        name: arb.name.to_string(),
        absolute_timeout_ms: ms(arb.absolute_s),
        idle_timeout_ms: ms(arb.idle_s),
        permanent: arb.permanent && arb.absolute_s.is_some(),
    };
    let p = Persistence::compile(&sp).expect("a token name compiles");
    let _ = p.read(headers);
    let previous = arb.previous.map(|t| Token {
        backend: t[0],
        endpoint: t[1],
        absolute: t[2],
        idle: t[3],
    });
    let (name, value) = p.issue(arb.backend, arb.endpoint, previous, arb.permanent);
    let text = value.to_str().expect("an issued token is text").to_string();
    let mut req = HeaderMap::new();
    if arb.header {
        assert_eq!(name.as_str(), arb.name.to_ascii_lowercase());
        req.insert(name, value);
    } else {
        assert_eq!(name, http::header::SET_COOKIE);
        let pair = text.split(';').next().unwrap_or_default();
        let mut cookie = pair.to_string();
        if let Ok(v) = HeaderValue::from_str(arb.other_cookies)
            && !arb.other_cookies.is_empty()
        {
            cookie = format!("{pair}; {}", v.to_str().unwrap_or_default());
        }
        req.insert(http::header::COOKIE, cookie.parse().expect("cookie header"));
    }
    let Some(back) = p.read(&req) else {
        // An absolute deadline kept from an expired previous token ends the session.
        if previous.is_some_and(|t| t.backend == arb.backend && t.absolute != 0) {
            return;
        }
        panic!("issued session {text:?} is not read back from {req:?}");
    };
    assert_eq!((back.backend, back.endpoint), (arb.backend, arb.endpoint));
    if let Some(prev) = previous.filter(|t| t.backend == arb.backend) {
        assert_eq!(
            back.absolute, prev.absolute,
            "the absolute deadline is kept"
        );
    }
}

fn header_edits(arb: &ArbModifier<'_>, method: &Method, pq: &str, headers: &HeaderMap) {
    let hv = |(n, v): &(&str, &str)| weir_model::HeaderValue {
        name: n.to_string(),
        value: v.to_string(),
    };
    let m = HeaderModifier {
        set: arb.set.iter().map(hv).collect(),
        add: arb.add.iter().map(hv).collect(),
        remove: arb.remove.iter().map(|s| s.to_string()).collect(),
    };
    let Ok(ops) = HeaderOps::compile(&m) else {
        return;
    };
    let Ok(mut req) = RequestHeader::build(method.clone(), pq.as_bytes(), None) else {
        return;
    };
    for (k, v) in headers {
        req.append_header(k.clone(), v.clone()).expect("append");
    }
    ops.apply(&mut req);

    // What the Gateway API says: remove, then set, then add (appending to what is there).
    let name = |s: &str| HeaderName::from_bytes(s.as_bytes()).expect("compiled");
    let mut want = headers.clone();
    for r in &m.remove {
        want.remove(name(r));
    }
    for h in &m.set {
        want.insert(
            name(&h.name),
            HeaderValue::from_str(&h.value).expect("compiled"),
        );
    }
    for h in &m.add {
        let n = name(&h.name);
        let mut joined: Vec<u8> = Vec::new();
        for v in want.get_all(&n) {
            joined.extend_from_slice(v.as_bytes());
            joined.push(b',');
        }
        joined.extend_from_slice(h.value.as_bytes());
        want.insert(n, HeaderValue::from_bytes(&joined).expect("joined values"));
    }
    for (n, _) in &want {
        let got: Vec<&HeaderValue> = req.headers.get_all(n).iter().collect();
        let exp: Vec<&HeaderValue> = want.get_all(n).iter().collect();
        assert_eq!(got, exp, "header {n} after {m:?} on {headers:?}");
    }
    assert_eq!(
        req.headers.len(),
        want.len(),
        "{:?} vs {want:?}",
        req.headers
    );

    // The edited header block is still well-formed on the wire.
    let mut wire = Vec::new();
    req.header_to_h1_wire(&mut wire);
    wire.extend_from_slice(b"\r\n");
    let mut parsed = [httparse::EMPTY_HEADER; 256];
    let mut reparsed = httparse::Request::new(&mut parsed);
    let prefix = format!("GET {pq} HTTP/1.1\r\n");
    let mut full = prefix.into_bytes();
    full.extend_from_slice(&wire);
    if want.len() <= 256 && pq.bytes().all(|b| b > b' ' && b < 0x7f) {
        match reparsed.parse(&full) {
            Ok(httparse::Status::Complete(_)) => {
                assert_eq!(reparsed.headers.len(), want.len(), "{wire:?}");
            }
            other => panic!(
                "edited headers do not parse: {other:?} {:?}",
                String::from_utf8_lossy(&wire)
            ),
        }
    }
}

fn rewrites(arb: &ArbPath<'_>, route: &ArbMatch<'_>, view: &RequestView<'_>, pq: &str) {
    // Filters apply to requests a route matched: origin-form paths only.
    let Some(modifier) = arb.model().filter(|_| view.path.starts_with('/')) else {
        return;
    };
    // The prefix a ReplacePrefixMatch sees is the PathPrefix the request matched.
    let prefix = match &modifier {
        PathModifier::ReplacePrefixMatch(_) => {
            // As translation leaves it: absolute, without a trailing slash unless it is `/`.
            let p = route.path;
            if p.starts_with('/') && (p == "/" || !p.ends_with('/')) && prefix_matches(p, view.path)
            {
                Some(p)
            } else {
                Some("/")
            }
        }
        PathModifier::ReplaceFullPath(_) => None,
    };
    let new = replace_path(&modifier, prefix, pq);
    assert!(
        new.starts_with('/'),
        "{modifier:?} {prefix:?} {pq:?} → {new:?}"
    );
    if let Some(q) = view.query {
        assert!(
            new.ends_with(&format!("?{q}")),
            "the query is kept: {new:?}"
        );
    }
    if let PathModifier::ReplacePrefixMatch(r) = &modifier {
        let rest = match prefix {
            Some("/") | None => view.path,
            Some(p) => &view.path[p.len()..],
        };
        let path_only = new.split_once('?').map_or(new.as_str(), |(p, _)| p);
        assert!(
            path_only.ends_with(rest),
            "{r:?} on {pq:?} drops {rest:?}: {new:?}"
        );
    }
}

fn redirects(arb: &ArbRedirect<'_>, raw_host: &str, view: &RequestView<'_>, pq: &str) {
    // The host comes from a valid Host header; a configured hostname and path passed
    // translation (a DNS name; an absolute path).
    if HeaderValue::from_str(raw_host).is_err() || !view.path.starts_with('/') {
        return;
    }
    let host = normalize_host(raw_host);
    let hostname = arb.hostname.filter(|h| {
        !h.is_empty()
            && h.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    });
    let path = match &arb.path {
        Some(p) => match p.model() {
            Some(m) => Some(m),
            None => return,
        },
        None => None,
    };
    let r = Redirect {
        scheme: arb
            .scheme
            .map(|https| if https { Scheme::Https } else { Scheme::Http }),
        hostname: hostname.map(Into::into),
        port: arb.port,
        path,
        status_code: 302,
    };
    let matched = prefix_matches("/", view.path).then_some("/");
    let input = RedirectInput {
        scheme: if arb.https_listener {
            Scheme::Https
        } else {
            Scheme::Http
        },
        listener_port: arb.listener_port,
        host: &host,
        path: pq,
        matched_prefix: matched,
    };
    let loc = redirect_location(&r, &input);
    assert!(
        HeaderValue::from_str(&loc).is_ok(),
        "{r:?} {input:?} gives Location {loc:?}"
    );
    let scheme = r.scheme.unwrap_or(input.scheme);
    let want = match scheme {
        Scheme::Http => "http://",
        Scheme::Https => "https://",
    };
    assert!(loc.starts_with(want), "{loc:?}");
    let expect_host: &str = r.hostname.as_deref().unwrap_or(&host);
    let after = loc[want.len()..]
        .strip_prefix(expect_host)
        .unwrap_or_else(|| panic!("{loc:?} does not name the host"));
    let port = r
        .port
        .or(r.scheme.map(Scheme::default_port))
        .unwrap_or(input.listener_port);
    if port == scheme.default_port() {
        assert!(after.starts_with('/') || after.starts_with('?'), "{loc:?}");
    } else {
        assert!(after.starts_with(&format!(":{port}")), "{loc:?}");
    }
}
