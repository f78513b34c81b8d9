//! Filters compiled for the hot path: header names and values parsed once, so applying a
//! filter to a request only edits headers.

use super::FilterSet;
use http::{HeaderName, HeaderValue, header};
use pingora::http::{RequestHeader, ResponseHeader};
use weir_model::{HeaderModifier, PathModifier, Redirect, Rewrite, Scheme};

/// Headers of a request or a response, as filters edit them: a head's own map, or a list
/// of edits over a head that goes out as it came.
pub trait HeaderTarget {
    /// Calls `f` with each value of `name`, in order.
    fn each_value(&self, name: &HeaderName, f: &mut dyn FnMut(&HeaderValue));
    fn set(&mut self, name: &HeaderName, value: HeaderValue);
    fn remove(&mut self, name: &HeaderName);
}

macro_rules! header_target {
    ($($t:ty),*) => {$(
        impl HeaderTarget for $t {
            fn each_value(&self, name: &HeaderName, f: &mut dyn FnMut(&HeaderValue)) {
                self.headers.get_all(name).iter().for_each(f)
            }
            fn set(&mut self, name: &HeaderName, value: HeaderValue) {
                // Valid by construction: names and values were parsed when compiled.
                let _ = self.insert_header(name.clone(), value);
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    )*};
}

header_target!(RequestHeader, ResponseHeader);

#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    /// Whether an edit touches a field that frames the body: judged once here, as every
    /// request on the route asks.
    frames: bool,
}

impl HeaderOps {
    pub fn compile(m: &HeaderModifier) -> Result<Self, String> {
        let pair = |h: &weir_model::HeaderValue| -> Result<_, String> {
            Ok((
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?,
                HeaderValue::from_str(&h.value).map_err(|e| e.to_string())?,
            ))
        };
        let set: Vec<_> = m.set.iter().map(pair).collect::<Result<_, _>>()?;
        let add: Vec<_> = m.add.iter().map(pair).collect::<Result<_, _>>()?;
        let remove: Vec<_> = m
            .remove
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let framing =
            |n: &HeaderName| n == header::CONTENT_LENGTH || n == header::TRANSFER_ENCODING;
        let frames = set.iter().chain(&add).any(|(n, _)| framing(n)) || remove.iter().any(framing);
        Ok(Self {
            set,
            add,
            remove,
            frames,
        })
    }

    /// Whether these edits touch a field that frames a message's body, which a head sent as
    /// it came takes from the client's own fields.
    pub fn frames(&self) -> bool {
        self.frames
    }

    /// Removes, then sets (overwriting), then adds (appending to the existing values with a
    /// comma, as the Gateway API's examples show: `foo` + add `bar` → `foo,bar`).
    pub fn apply<T: HeaderTarget>(&self, target: &mut T) {
        for name in &self.remove {
            target.remove(name);
        }
        for (name, value) in &self.set {
            target.set(name, value.clone());
        }
        for (name, value) in &self.add {
            // Appended to every value there is: a repeated header is one comma-joined list
            // (RFC 9110 5.3), and replacing it keeps each of them.
            let mut old: Option<Vec<u8>> = None;
            target.each_value(name, &mut |o| {
                let v = old.get_or_insert_with(Vec::new);
                v.extend_from_slice(o.as_bytes());
                v.push(b',');
            });
            let joined = match old {
                None => value.clone(),
                Some(mut v) => {
                    v.extend_from_slice(value.as_bytes());
                    HeaderValue::from_bytes(&v).unwrap_or_else(|_| value.clone())
                }
            };
            target.set(name, joined);
        }
    }
}

/// The path after a ReplaceFullPath or ReplacePrefixMatch, with the original query kept.
/// `prefix` is the PathPrefix the request matched.
pub fn replace_path(modifier: &PathModifier, prefix: Option<&str>, path: &str) -> String {
    let (path_only, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out = match modifier {
        PathModifier::ReplaceFullPath(full) => full.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            // `/` matches everything and so replaces nothing of the path.
            let rest = match prefix {
                Some("/") | None => path_only,
                Some(p) => path_only.get(p.len()..).unwrap_or(""),
            };
            let mut s = replacement.trim_end_matches('/').to_string();
            s.push_str(rest);
            if s.is_empty() {
                s.push('/');
            }
            s
        }
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Applies the request header modifiers and URL rewrites of `sets` (the rule's, then the
/// backend's) to the backend's request head. `prefix` is the PathPrefix the request matched.
/// Whether [`apply_request`] needs the request's own copy: a rewrite, or a header filter
/// that touches the fields framing the body. Other header filters can be applied as a
/// list of edits over the client's head ([`request_header_ops`]).
pub fn edits_request(sets: [&FilterSet; 2]) -> bool {
    sets.iter()
        .any(|s| s.rewrite.is_some() || s.request_headers.as_ref().is_some_and(HeaderOps::frames))
}

/// The request header filters of `sets`, in the order [`apply_request`] applies them.
pub fn request_header_ops(sets: [&FilterSet; 2]) -> impl Iterator<Item = &HeaderOps> {
    sets.into_iter().filter_map(|s| s.request_headers.as_ref())
}

pub fn apply_request(
    sets: [&FilterSet; 2],
    prefix: Option<&str>,
    req: &mut RequestHeader,
) -> Result<(), &'static str> {
    for set in sets {
        if let Some(ops) = &set.request_headers {
            ops.apply(req);
        }
        let Some(rw) = &set.rewrite else {
            continue;
        };
        if let Some(host) = &rw.host {
            req.insert_header(http::header::HOST, host.clone())
                .map_err(|_| "invalid rewritten host")?;
            if req.uri.authority().is_some() {
                set_uri(req, Some(host.to_str().unwrap_or_default()), None)?;
            }
        }
        if let Some(modifier) = &rw.path {
            let current = req.uri.path_and_query().map_or("/", |p| p.as_str());
            let new = replace_path(modifier, prefix, current);
            set_uri(req, None, Some(&new))?;
        }
    }
    Ok(())
}

/// Replaces the authority or the path of a request's URI, keeping the rest.
fn set_uri(
    req: &mut RequestHeader,
    authority: Option<&str>,
    path: Option<&str>,
) -> Result<(), &'static str> {
    let mut parts = req.uri.clone().into_parts();
    if let Some(a) = authority {
        parts.authority = Some(a.parse().map_err(|_| "invalid rewritten authority")?);
    }
    if let Some(p) = path {
        parts.path_and_query = Some(p.parse().map_err(|_| "invalid rewritten path")?);
    }
    let uri = http::Uri::from_parts(parts).map_err(|_| "invalid rewritten URI")?;
    req.set_uri(uri);
    Ok(())
}

/// What a redirect needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct RedirectInput<'a> {
    /// The listener's scheme and port.
    pub scheme: Scheme,
    pub listener_port: u16,
    /// The request host without port.
    pub host: &'a str,
    /// Path with query.
    pub path: &'a str,
    pub matched_prefix: Option<&'a str>,
}

/// The `Location` of a RequestRedirect. Without scheme or port the listener's port is kept;
/// a port equal to the scheme's default is left out.
pub fn redirect_location(r: &Redirect, input: &RedirectInput<'_>) -> String {
    let scheme = r.scheme.unwrap_or(input.scheme);
    let port = match (r.port, r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) => s.default_port(),
        (None, None) => input.listener_port,
    };
    let host = r.hostname.as_deref().unwrap_or(input.host);
    let path = match &r.path {
        Some(m) => replace_path(m, input.matched_prefix, input.path),
        None => input.path.to_string(),
    };
    let scheme_str = match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    if port == scheme.default_port() {
        format!("{scheme_str}://{host}{path}")
    } else {
        format!("{scheme_str}://{host}:{port}{path}")
    }
}

/// A compiled URLRewrite.
#[derive(Debug)]
pub struct RewriteOps {
    pub host: Option<HeaderValue>,
    pub path: Option<PathModifier>,
}

impl RewriteOps {
    pub fn compile(r: &Rewrite) -> Result<Self, String> {
        Ok(Self {
            host: r
                .hostname
                .as_deref()
                .map(HeaderValue::from_str)
                .transpose()
                .map_err(|e| e.to_string())?,
            path: r.path.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement_follows_the_spec_table() {
        let p = |r: &str| PathModifier::ReplacePrefixMatch(r.into());
        assert_eq!(
            replace_path(&p("/xyz"), Some("/foo"), "/foo/bar"),
            "/xyz/bar"
        );
        assert_eq!(replace_path(&p("/xyz"), Some("/foo"), "/foo"), "/xyz");
        assert_eq!(
            replace_path(&p("/xyz/"), Some("/foo"), "/foo/bar"),
            "/xyz/bar"
        );
        assert_eq!(replace_path(&p("/"), Some("/foo"), "/foo/bar"), "/bar");
        assert_eq!(
            replace_path(&p("/"), Some("/strip-prefix"), "/strip-prefix"),
            "/"
        );
        assert_eq!(
            replace_path(&p(""), Some("/foo"), "/foo/bar?x=1"),
            "/bar?x=1"
        );
        assert_eq!(replace_path(&p("/abc"), Some("/"), "/foo"), "/abc/foo");
        let full = PathModifier::ReplaceFullPath("/new".into());
        assert_eq!(replace_path(&full, None, "/old/path?q=1"), "/new?q=1");
    }

    #[test]
    fn redirects_keep_or_drop_ports_as_the_spec_says() {
        let input = RedirectInput {
            scheme: Scheme::Http,
            listener_port: 8080,
            host: "example.com",
            path: "/a?b=1",
            matched_prefix: Some("/"),
        };
        let r = |scheme, port, host: Option<&str>| Redirect {
            scheme,
            hostname: host.map(Into::into),
            port,
            path: None,
            status_code: 301,
        };
        // Neither scheme nor port: keep the listener's port.
        assert_eq!(
            redirect_location(&r(None, None, None), &input),
            "http://example.com:8080/a?b=1"
        );
        // Scheme set: its well-known port, omitted.
        assert_eq!(
            redirect_location(&r(Some(Scheme::Https), None, None), &input),
            "https://example.com/a?b=1"
        );
        // An explicit port equal to the default is omitted too.
        assert_eq!(
            redirect_location(&r(Some(Scheme::Https), Some(443), None), &input),
            "https://example.com/a?b=1"
        );
        assert_eq!(
            redirect_location(&r(Some(Scheme::Https), Some(8443), Some("b.org")), &input),
            "https://b.org:8443/a?b=1"
        );
        let on_80 = RedirectInput {
            listener_port: 80,
            ..input
        };
        assert_eq!(
            redirect_location(&r(None, None, None), &on_80),
            "http://example.com/a?b=1"
        );
    }

    #[test]
    fn header_ops_remove_set_then_add_comma_joined() {
        let m = HeaderModifier {
            set: vec![weir_model::HeaderValue {
                name: "x-set".into(),
                value: "new".into(),
            }],
            add: vec![weir_model::HeaderValue {
                name: "x-add".into(),
                value: "bar".into(),
            }],
            remove: vec!["x-gone".into()],
        };
        let ops = HeaderOps::compile(&m).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-set", "old").unwrap();
        req.insert_header("x-add", "foo").unwrap();
        req.insert_header("x-gone", "1").unwrap();
        ops.apply(&mut req);
        assert_eq!(req.headers["x-set"], "new");
        assert_eq!(req.headers["x-add"], "foo,bar");
        assert!(req.headers.get("x-gone").is_none());
        let mut resp = ResponseHeader::build(200, None).unwrap();
        ops.apply(&mut resp);
        assert_eq!(resp.headers["x-add"], "bar");
    }

    /// Found by the `request_path` fuzz target: with the header sent twice, an add kept only
    /// the first value (`a: 1`, `a: 2` plus `a: 3` gave `a: 1,3`).
    #[test]
    fn header_ops_add_to_every_value_of_a_repeated_header() {
        let m = HeaderModifier {
            add: vec![weir_model::HeaderValue {
                name: "x-add".into(),
                value: "3".into(),
            }],
            ..HeaderModifier::default()
        };
        let ops = HeaderOps::compile(&m).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-add", "1").unwrap();
        req.append_header("X-Add", "2").unwrap();
        ops.apply(&mut req);
        let values: Vec<_> = req.headers.get_all("x-add").iter().collect();
        assert_eq!(values, ["1,2,3"]);
    }

    /// Header filters go out as edits over the client's head unless they touch the body's
    /// framing, which that head's own fields decide; rewrites always need a copy.
    #[test]
    fn only_rewrites_and_framing_edits_need_a_copy_of_the_head() {
        let set = |name: &str| FilterSet {
            request_headers: Some(
                HeaderOps::compile(&HeaderModifier {
                    set: vec![weir_model::HeaderValue {
                        name: name.into(),
                        value: "1".into(),
                    }],
                    ..HeaderModifier::default()
                })
                .unwrap(),
            ),
            ..FilterSet::default()
        };
        let removes = |name: &str| FilterSet {
            request_headers: Some(
                HeaderOps::compile(&HeaderModifier {
                    remove: vec![name.into()],
                    ..HeaderModifier::default()
                })
                .unwrap(),
            ),
            ..FilterSet::default()
        };
        let none = FilterSet::default();
        assert!(!edits_request([&none, &none]));
        assert!(!edits_request([&set("x-bench"), &removes("x-other")]));
        assert!(edits_request([&none, &set("Content-Length")]));
        assert!(edits_request([&removes("transfer-encoding"), &none]));
        let rewrite = FilterSet {
            rewrite: Some(RewriteOps {
                host: None,
                path: Some(PathModifier::ReplaceFullPath("/x".into())),
            }),
            ..FilterSet::default()
        };
        assert!(edits_request([&none, &rewrite]));
        assert_eq!(
            request_header_ops([&set("a"), &removes("b")]).count(),
            2,
            "the rule's filter, then the backend's"
        );
    }
}
