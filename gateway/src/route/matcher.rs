//! Request matching, identical to the translation's semantics: PathPrefix by whole segments,
//! header names case-insensitive, query names case-sensitive, regular expressions anchored.

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use weir_model::{PathMatch, RouteMatch, StringMatch};

/// What a match looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The path without its query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    pub fn new(path_and_query: &'a str, method: &'a Method, headers: &'a HeaderMap) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        Self {
            path,
            query,
            method,
            headers,
        }
    }
}

#[derive(Debug)]
pub enum PathMatcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
}

impl PathMatcher {
    /// Whether `path` (without its query) matches. Only an origin-form path, starting with
    /// `/`, can: the asterisk-form target of `OPTIONS *` names no resource, so it matches no
    /// route, not even `PathPrefix /` (a rewrite or redirect would otherwise make `/new*` or
    /// `http://host*` of it).
    pub fn matches(&self, path: &str) -> bool {
        if !path.starts_with('/') {
            return false;
        }
        match self {
            PathMatcher::Exact(p) => path == &**p,
            PathMatcher::Prefix(p) => prefix_matches(p, path),
            PathMatcher::Regex(r) => r.is_match(path),
        }
    }
}

/// `/v2` matches `/v2` and `/v2/x`, never `/v2x`; `/` matches everything.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

#[derive(Debug)]
pub enum ValueMatcher {
    Exact(Box<str>),
    Regex(Regex),
}

impl ValueMatcher {
    fn compile(m: &StringMatch) -> Result<Self, regex::Error> {
        Ok(match m {
            StringMatch::Exact(v) => ValueMatcher::Exact(v.as_str().into()),
            StringMatch::RegularExpression(r) => ValueMatcher::Regex(anchored(r)?),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(v) => value == &**v,
            ValueMatcher::Regex(r) => r.is_match(value),
        }
    }
}

fn anchored(re: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
}

#[derive(Debug)]
pub struct CompiledMatch {
    path: PathMatcher,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(Box<str>, ValueMatcher)>,
}

impl CompiledMatch {
    pub fn compile(m: &RouteMatch) -> Result<Self, String> {
        let re = |e: regex::Error| e.to_string();
        let path = match &m.path {
            PathMatch::Exact(p) => PathMatcher::Exact(p.as_str().into()),
            PathMatch::PathPrefix(p) => PathMatcher::Prefix(p.as_str().into()),
            PathMatch::RegularExpression(r) => PathMatcher::Regex(anchored(r).map_err(re)?),
        };
        let method = m
            .method
            .as_deref()
            .map(|s| Method::from_bytes(s.as_bytes()).map_err(|e| e.to_string()))
            .transpose()?;
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?;
                Ok((name, ValueMatcher::compile(&h.value).map_err(re)?))
            })
            .collect::<Result<_, String>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| {
                Ok((
                    q.name.as_str().into(),
                    ValueMatcher::compile(&q.value).map_err(re)?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            path,
            method,
            headers,
            query,
        })
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.path.matches(req.path) {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return false;
        }
        for (name, want) in &self.headers {
            let mut values = req.headers.get_all(name).iter();
            let Some(first) = values.next() else {
                return false;
            };
            let ok = match values.next() {
                // The common case: one value, compared without copying.
                None => first.to_str().is_ok_and(|v| want.matches(v)),
                // Repeated headers are compared as one comma-joined value (RFC 9110 5.3).
                Some(_) => {
                    let joined: Vec<&str> = req
                        .headers
                        .get_all(name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    want.matches(&joined.join(","))
                }
            };
            if !ok {
                return false;
            }
        }
        if !self.query.is_empty() {
            let Some(query) = req.query else {
                return false;
            };
            for (name, want) in &self.query {
                // The first occurrence of a repeated parameter counts.
                let value = form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k.as_ref() == &**name)
                    .map(|(_, v)| v);
                if !value.is_some_and(|v| want.matches(&v)) {
                    return false;
                }
            }
        }
        true
    }

    /// The PathPrefix of this match, for ReplacePrefixMatch.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatcher::Prefix(p) => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_model::{HeaderMatch, QueryMatch};

    fn check(m: &RouteMatch, uri: &str, method: Method, headers: &[(&str, &str)]) -> bool {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        CompiledMatch::compile(m)
            .unwrap()
            .matches(&RequestView::new(uri, &method, &map))
    }

    fn path(p: PathMatch) -> RouteMatch {
        RouteMatch {
            path: p,
            ..RouteMatch::default()
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let m = path(PathMatch::PathPrefix("/v2".into()));
        assert!(check(&m, "/v2", Method::GET, &[]));
        assert!(check(&m, "/v2/x?y=1", Method::GET, &[]));
        assert!(!check(&m, "/v2x", Method::GET, &[]));
        assert!(!check(&m, "/v", Method::GET, &[]));
        assert!(check(
            &path(PathMatch::PathPrefix("/".into())),
            "/anything",
            Method::GET,
            &[]
        ));
    }

    #[test]
    fn exact_and_regex_paths_ignore_the_query() {
        assert!(check(
            &path(PathMatch::Exact("/a".into())),
            "/a?x=1",
            Method::GET,
            &[]
        ));
        assert!(!check(
            &path(PathMatch::Exact("/a".into())),
            "/a/",
            Method::GET,
            &[]
        ));
        let re = path(PathMatch::RegularExpression("/users/[0-9]+".into()));
        assert!(check(&re, "/users/42?full=1", Method::GET, &[]));
        assert!(
            !check(&re, "/users/42/x", Method::GET, &[]),
            "anchored at both ends"
        );
    }

    #[test]
    fn headers_are_case_insensitive_by_name_queries_case_sensitive() {
        let m = RouteMatch {
            method: Some("POST".into()),
            headers: vec![HeaderMatch {
                name: "x-env".into(),
                value: StringMatch::Exact("prod".into()),
            }],
            query_params: vec![QueryMatch {
                name: "Page".into(),
                value: StringMatch::RegularExpression("[0-9]+".into()),
            }],
            ..RouteMatch::default()
        };
        assert!(check(&m, "/?Page=2", Method::POST, &[("X-Env", "prod")]));
        assert!(!check(&m, "/?page=2", Method::POST, &[("X-Env", "prod")]));
        assert!(!check(&m, "/?Page=2", Method::GET, &[("X-Env", "prod")]));
        assert!(!check(&m, "/?Page=2", Method::POST, &[("X-Env", "Prod")]));
        assert!(!check(&m, "/?Page=x", Method::POST, &[("X-Env", "prod")]));
        assert!(
            check(&m, "/?Page=2&Page=x", Method::POST, &[("x-env", "prod")]),
            "first occurrence counts"
        );
        assert!(
            check(&m, "/?Page=%32", Method::POST, &[("x-env", "prod")]),
            "values are decoded"
        );
    }

    /// Found by the `request_path` fuzz target: `OPTIONS *` matched `PathPrefix /`, and a
    /// ReplacePrefixMatch then sent `*` upstream unchanged (or `/new*`).
    #[test]
    fn the_asterisk_form_target_matches_no_path() {
        for m in [
            PathMatch::PathPrefix("/".into()),
            PathMatch::RegularExpression(".*".into()),
            PathMatch::Exact("*".into()),
        ] {
            assert!(!check(&path(m.clone()), "*", Method::OPTIONS, &[]), "{m:?}");
        }
        assert!(check(
            &path(PathMatch::PathPrefix("/".into())),
            "/",
            Method::OPTIONS,
            &[]
        ));
    }

    #[test]
    fn repeated_headers_match_as_one_joined_value() {
        let m = RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-a".into(),
                value: StringMatch::Exact("1,2".into()),
            }],
            ..RouteMatch::default()
        };
        assert!(check(&m, "/", Method::GET, &[("x-a", "1"), ("x-a", "2")]));
        assert!(!check(&m, "/", Method::GET, &[("x-a", "1")]));
    }
}
