//! One route rule → its matches and a [`Rule`]: validation of every field the data plane
//! relies on, and backendRef resolution with the spec's 500-for-the-invalid-share rule.

use super::backends::{RefSpec, resolve};
use super::balance;
use super::filters::{self, FilterCtx, FilterSpec};
use super::index::Index;
use super::status::Outcome;
use gateway_api::experimental::grpcroutes::{
    GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType, GrpcRouteRulesMatchesMethodType,
};
use gateway_api::experimental::httproutes::{
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteRulesRetry, HttpRouteRulesSessionPersistence,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use weir_model::{
    Backend, BackendKey, BackendRef, Filter, HeaderMatch, ObjectName, PathMatch, QueryMatch,
    RouteKind, RouteMatch, Rule, SplitKey, StringMatch, Timeouts, WeightedBackend,
};

/// The status a request gets for the share of traffic that cannot be routed.
pub(crate) const INVALID_BACKEND_STATUS: u16 = 500;

/// A backendRef in the shape every route type shares.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BackendRefSpec {
    #[serde(flatten)]
    target: RefSpec,
    #[serde(default)]
    weight: Option<i32>,
    #[serde(default)]
    filters: Option<Vec<FilterSpec>>,
}

pub(crate) fn backend_specs<T: serde::Serialize>(
    refs: Option<&Vec<T>>,
) -> Result<Vec<BackendRefSpec>, String> {
    refs.into_iter()
        .flatten()
        .map(|r| {
            serde_json::to_value(r)
                .and_then(serde_json::from_value)
                .map_err(|e| format!("backendRef: {e}"))
        })
        .collect()
}

/// A rule before validation, in a route-type-neutral form.
pub(crate) struct RuleInput {
    pub index: usize,
    pub name: Option<String>,
    pub matches: Result<Vec<RouteMatch>, String>,
    pub filters: Result<Vec<FilterSpec>, String>,
    pub backend_refs: Result<Vec<BackendRefSpec>, String>,
    pub request_timeout: Option<String>,
    pub backend_request_timeout: Option<String>,
    /// GRPCRoute's has the same schema, read as HTTPRoute's type.
    pub session_persistence: Result<Option<HttpRouteRulesSessionPersistence>, String>,
    /// HTTPRoute only.
    pub retry: Option<HttpRouteRulesRetry>,
}

pub(crate) struct CompiledRule {
    pub matches: Vec<RouteMatch>,
    pub rule: Rule,
}

/// Per-route state while its rules compile.
pub(crate) struct RouteCtx<'a, 'b> {
    pub idx: &'a Index<'b>,
    pub backends: &'a mut BTreeMap<BackendKey, Backend>,
    pub kind: RouteKind,
    pub id: &'a ObjectName,
    /// References that failed, for the route's ResolvedRefs condition.
    pub ref_problems: Vec<Outcome>,
    /// From the route's annotations, for every rule.
    pub split_key: Option<SplitKey>,
    pub retry_budget_percent: u32,
}

/// Compiles one rule; `Err` drops the rule (with the message in PartiallyInvalid or
/// Accepted) while the route's other rules keep working.
pub(crate) fn compile(
    ctx: &mut RouteCtx<'_, '_>,
    input: RuleInput,
) -> Result<CompiledRule, String> {
    let at = |m: String| format!("rules[{}]: {m}", input.index);
    let matches = input.matches.map_err(at)?;
    let filter_specs = input.filters.map_err(at)?;
    let backend_refs = input.backend_refs.map_err(at)?;
    let timeouts = timeouts(
        input.request_timeout.as_deref(),
        input.backend_request_timeout.as_deref(),
    )
    .map_err(at)?;
    let session_persistence = input
        .session_persistence
        .map_err(at)?
        .as_ref()
        .map(balance::session_persistence)
        .transpose()
        .map_err(at)?;
    let retry = input
        .retry
        .as_ref()
        .map(|r| balance::retry(r, ctx.retry_budget_percent))
        .transpose()
        .map_err(at)?;

    let prefix_matches_only = matches
        .iter()
        .all(|m| matches!(m.path, PathMatch::PathPrefix(_)));
    let mut fctx = FilterCtx {
        idx: ctx.idx,
        backends: ctx.backends,
        route_kind: ctx.kind,
        route_ns: &ctx.id.namespace,
        prefix_matches_only,
    };
    let converted = filters::convert(&mut fctx, &filter_specs).map_err(at)?;
    let redirects = converted
        .filters
        .iter()
        .any(|f| matches!(f, Filter::RequestRedirect(_)));
    if redirects && !backend_refs.is_empty() {
        return Err(at(
            "RequestRedirect cannot be combined with backendRefs".into()
        ));
    }

    let mut ref_problems = converted.ref_problems;
    let mut backends = Vec::new();
    for (i, b) in backend_refs.iter().enumerate() {
        let weight = match b.weight.unwrap_or(1) {
            w @ 0..=1_000_000 => w as u32,
            w => {
                return Err(at(format!(
                    "backendRefs[{i}].weight {w} must be within 0-1000000"
                )));
            }
        };
        let specs = b.filters.as_deref().unwrap_or_default();
        let bf =
            filters::convert(&mut fctx, specs).map_err(|m| at(format!("backendRefs[{i}].{m}")))?;
        ref_problems.extend(bf.ref_problems);
        let resolved = resolve(
            ctx.idx,
            fctx.backends,
            ctx.kind,
            &ctx.id.namespace,
            &b.target,
        );
        let (backend, filters) = match (resolved, bf.unresolvable) {
            (Ok(key), None) => (BackendRef::Service(key), bf.filters),
            (Ok(_), Some(problem)) | (Err(problem), _) => {
                let reason = problem.message.clone();
                ref_problems.push(problem);
                // Its filters run only for requests sent to it, and none will be.
                (
                    BackendRef::Error {
                        status: INVALID_BACKEND_STATUS,
                        reason,
                    },
                    Vec::new(),
                )
            }
        };
        backends.push(WeightedBackend {
            weight,
            backend,
            filters,
        });
    }
    if let Some(problem) = converted.unresolvable {
        // A filter that cannot run must not be skipped: the whole rule answers 500.
        backends = vec![WeightedBackend {
            weight: 1,
            backend: BackendRef::Error {
                status: INVALID_BACKEND_STATUS,
                reason: problem.message.clone(),
            },
            filters: Vec::new(),
        }];
        ref_problems.push(problem);
    } else if backends.is_empty() && !redirects {
        backends.push(WeightedBackend {
            weight: 1,
            backend: BackendRef::Error {
                status: INVALID_BACKEND_STATUS,
                reason: "rule has no backendRefs".into(),
            },
            filters: Vec::new(),
        });
    }
    ctx.ref_problems.extend(ref_problems);
    Ok(CompiledRule {
        matches,
        rule: Rule {
            kind: ctx.kind,
            route: ctx.id.clone(),
            index: input.index,
            name: input.name,
            filters: converted.filters,
            backends,
            timeouts,
            rate_limit: None,
            authz: Vec::new(),
            session_persistence,
            split_key: ctx.split_key.clone(),
            retry,
        },
    })
}

fn timeouts(request: Option<&str>, backend: Option<&str>) -> Result<Timeouts, String> {
    let parse = |field: &str, v: Option<&str>| -> Result<Option<u64>, String> {
        v.map(|s| balance::millis(s).map_err(|e| format!("timeouts.{field} {s:?}: {e}")))
            .transpose()
    };
    let request_ms = parse("request", request)?;
    let backend_request_ms = parse("backendRequest", backend)?;
    if let (Some(r), Some(b)) = (request_ms, backend_request_ms)
        && r != 0
        && b > r
    {
        return Err(format!(
            "timeouts.backendRequest ({b}ms) must not exceed timeouts.request ({r}ms)"
        ));
    }
    // Zero disables a timeout.
    Ok(Timeouts {
        request_ms: request_ms.filter(|v| *v != 0),
        backend_request_ms: backend_request_ms.filter(|v| *v != 0),
    })
}

/// RE2-style expressions (the `regex` crate), bounded in size so that a hostile route cannot
/// make the data plane compile a huge automaton.
pub(crate) fn check_regex(re: &str) -> Result<(), String> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| format!("invalid regular expression {re:?}: {e}"))
}

fn exact_or_regex(regex: bool, value: &str) -> Result<StringMatch, String> {
    if regex {
        check_regex(value)?;
        Ok(StringMatch::RegularExpression(value.into()))
    } else {
        Ok(StringMatch::Exact(value.into()))
    }
}

/// Validates a path match value as the Gateway API's CEL rules do.
fn path_match(
    kind: Option<&HttpRouteRulesMatchesPathType>,
    value: Option<&str>,
) -> Result<PathMatch, String> {
    let value = value.unwrap_or("/");
    if !value.starts_with('/') {
        return Err(format!("path {value:?} must start with '/'"));
    }
    let plain = |v: &str| -> Result<(), String> {
        let bad = ["//", "/./", "/../", "%2f", "%2F", "#"];
        if bad.iter().any(|b| v.contains(b)) || v.ends_with("/..") || v.ends_with("/.") {
            return Err(format!(
                "path {v:?} must not contain '//', '/./', '/../', '%2f' or '#'"
            ));
        }
        filters::uri_path(v)
    };
    match kind.unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix) {
        HttpRouteRulesMatchesPathType::Exact => {
            plain(value)?;
            Ok(PathMatch::Exact(value.into()))
        }
        HttpRouteRulesMatchesPathType::PathPrefix => {
            plain(value)?;
            // Matching is by whole segments, so a trailing slash adds nothing.
            let trimmed = value.trim_end_matches('/');
            Ok(PathMatch::PathPrefix(
                if trimmed.is_empty() { "/" } else { trimmed }.into(),
            ))
        }
        HttpRouteRulesMatchesPathType::RegularExpression => {
            check_regex(value)?;
            Ok(PathMatch::RegularExpression(value.into()))
        }
    }
}

/// Header matches with lower-cased names; of several entries for one name only the first
/// counts, as the spec says.
fn header_matches<'a>(
    items: impl Iterator<Item = (&'a str, bool, &'a str)>,
) -> Result<Vec<HeaderMatch>, String> {
    let mut out: Vec<HeaderMatch> = Vec::new();
    for (name, regex, value) in items {
        let name = name.to_ascii_lowercase();
        // The CRD's HTTPHeaderName pattern: an RFC 9110 token, as the data plane parses it.
        if !balance::is_token(&name) {
            return Err(format!("{name:?} is not a valid header name"));
        }
        if out.iter().any(|h| h.name == name) {
            continue;
        }
        out.push(HeaderMatch {
            name,
            value: exact_or_regex(regex, value)?,
        });
    }
    Ok(out)
}

/// A rate limit's `when` entry, validated like an HTTPRouteMatch: `path` is (type, value)
/// with the type `Exact`, `PathPrefix` (default) or `RegularExpression`; headers are
/// (name, type, value) with `Exact` (default) or `RegularExpression`.
pub(crate) fn limit_match(
    path: Option<(Option<&str>, &str)>,
    method: Option<&str>,
    headers: &[(&str, Option<&str>, &str)],
) -> Result<RouteMatch, String> {
    let path = match path {
        None => PathMatch::PathPrefix("/".into()),
        Some((kind, value)) => {
            let kind = match kind.unwrap_or("PathPrefix") {
                "Exact" => HttpRouteRulesMatchesPathType::Exact,
                "PathPrefix" => HttpRouteRulesMatchesPathType::PathPrefix,
                "RegularExpression" => HttpRouteRulesMatchesPathType::RegularExpression,
                other => {
                    return Err(format!(
                        "path type {other:?} is not Exact, PathPrefix or RegularExpression"
                    ));
                }
            };
            path_match(Some(&kind), Some(value))?
        }
    };
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if let Some(m) = method.filter(|m| !METHODS.contains(m)) {
        return Err(format!("method {m:?} is not an HTTP method"));
    }
    let mut parsed = Vec::with_capacity(headers.len());
    for (name, kind, value) in headers {
        let regex = match kind.unwrap_or("Exact") {
            "Exact" => false,
            "RegularExpression" => true,
            other => {
                return Err(format!(
                    "header match type {other:?} is not Exact or RegularExpression"
                ));
            }
        };
        parsed.push((*name, regex, *value));
    }
    Ok(RouteMatch {
        path,
        method: method.map(str::to_owned),
        headers: header_matches(parsed.into_iter())?,
        query_params: Vec::new(),
    })
}

pub(crate) fn http_matches(
    matches: Option<&Vec<HttpRouteRulesMatches>>,
) -> Result<Vec<RouteMatch>, String> {
    all_matches(matches, http_match)
}

/// A rule's matches; none at all means the spec's default, `PathPrefix /`.
fn all_matches<T>(
    matches: Option<&Vec<T>>,
    one: fn(&T) -> Result<RouteMatch, String>,
) -> Result<Vec<RouteMatch>, String> {
    let Some(matches) = matches.filter(|m| !m.is_empty()) else {
        return Ok(vec![RouteMatch::default()]);
    };
    matches
        .iter()
        .enumerate()
        .map(|(i, m)| one(m).map_err(|e| format!("matches[{i}]: {e}")))
        .collect()
}

fn http_match(m: &HttpRouteRulesMatches) -> Result<RouteMatch, String> {
    let path = match &m.path {
        None => PathMatch::PathPrefix("/".into()),
        Some(p) => path_match(p.r#type.as_ref(), p.value.as_deref())?,
    };
    let method = m
        .method
        .as_ref()
        .map(|v| {
            serde_json::to_value(v)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
        })
        .map(|v| v.ok_or("method is not a string"))
        .transpose()?;
    let headers = header_matches(m.headers.iter().flatten().map(|h| {
        let regex = h.r#type.as_ref() == Some(&HttpRouteRulesMatchesHeadersType::RegularExpression);
        (h.name.as_str(), regex, h.value.as_str())
    }))?;
    let mut query_params: Vec<QueryMatch> = Vec::new();
    for q in m.query_params.iter().flatten() {
        if q.name.is_empty() {
            return Err("query parameter name must not be empty".into());
        }
        if query_params.iter().any(|p| p.name == q.name) {
            continue;
        }
        let regex =
            q.r#type.as_ref() == Some(&HttpRouteRulesMatchesQueryParamsType::RegularExpression);
        query_params.push(QueryMatch {
            name: q.name.clone(),
            value: exact_or_regex(regex, &q.value)?,
        });
    }
    Ok(RouteMatch {
        path,
        method,
        headers,
        query_params,
    })
}

pub(crate) fn grpc_matches(
    matches: Option<&Vec<GrpcRouteRulesMatches>>,
) -> Result<Vec<RouteMatch>, String> {
    all_matches(matches, grpc_match)
}

/// gRPC calls are `POST /<service>/<method>`, so a method match is a path match: exact
/// service and method → Exact, service only → PathPrefix, anything else → a regex.
fn grpc_match(m: &GrpcRouteRulesMatches) -> Result<RouteMatch, String> {
    let path = match &m.method {
        None => PathMatch::PathPrefix("/".into()),
        Some(method) => {
            let service = method.service.as_deref().filter(|s| !s.is_empty());
            let name = method.method.as_deref().filter(|s| !s.is_empty());
            let regex =
                method.r#type.as_ref() == Some(&GrpcRouteRulesMatchesMethodType::RegularExpression);
            if service.is_none() && name.is_none() {
                return Err("method match needs a service or a method".into());
            }
            if regex {
                for part in [service, name].into_iter().flatten() {
                    check_regex(part)?;
                }
                let re = format!(
                    "/(?:{})/(?:{})",
                    service.unwrap_or("[^/]+"),
                    name.unwrap_or("[^/]+")
                );
                check_regex(&re)?;
                PathMatch::RegularExpression(re)
            } else {
                let service_ok = |s: &str| {
                    let s = s.strip_prefix('.').unwrap_or(s);
                    !s.is_empty() && s.split('.').all(ident)
                };
                if let Some(s) = service.filter(|s| !service_ok(s)) {
                    return Err(format!("service {s:?} is not a valid gRPC service name"));
                }
                if let Some(n) = name.filter(|n| !ident(n)) {
                    return Err(format!("method {n:?} is not a valid gRPC method name"));
                }
                match (service, name) {
                    (Some(s), Some(n)) => PathMatch::Exact(format!("/{s}/{n}")),
                    (Some(s), None) => PathMatch::PathPrefix(format!("/{s}")),
                    (None, Some(n)) => {
                        PathMatch::RegularExpression(format!("/[^/]+/{}", regex::escape(n)))
                    }
                    (None, None) => unreachable!("checked above"),
                }
            }
        }
    };
    let headers = header_matches(m.headers.iter().flatten().map(|h| {
        let regex = h.r#type.as_ref() == Some(&GrpcRouteRulesMatchesHeadersType::RegularExpression);
        (h.name.as_str(), regex, h.value.as_str())
    }))?;
    Ok(RouteMatch {
        path,
        method: None,
        headers,
        query_params: Vec::new(),
    })
}

fn ident(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_gep_2257() {
        assert_eq!(
            timeouts(Some("1m30s"), Some("500ms")).unwrap(),
            Timeouts {
                request_ms: Some(90_000),
                backend_request_ms: Some(500)
            }
        );
        assert_eq!(timeouts(Some("0s"), Some("1h")).unwrap().request_ms, None);
        assert_eq!(timeouts(None, None).unwrap(), Timeouts::default());
        assert!(
            timeouts(Some("1s"), Some("2s")).is_err(),
            "backendRequest > request"
        );
        assert!(
            timeouts(Some("1.5s"), None).is_err(),
            "fractions are not GEP-2257"
        );
        assert!(timeouts(Some("10 seconds"), None).is_err());
    }

    #[test]
    fn path_values_are_validated_like_the_crd() {
        let prefix = Some(&HttpRouteRulesMatchesPathType::PathPrefix);
        let exact = Some(&HttpRouteRulesMatchesPathType::Exact);
        assert_eq!(
            path_match(prefix, Some("/a/")).unwrap(),
            PathMatch::PathPrefix("/a".into())
        );
        assert_eq!(
            path_match(prefix, Some("///")),
            Err("path \"///\" must not contain '//', '/./', '/../', '%2f' or '#'".into())
        );
        assert_eq!(
            path_match(None, None).unwrap(),
            PathMatch::PathPrefix("/".into())
        );
        for bad in [
            "relative", "/a/../b", "/a/./b", "/a%2fb", "/a#frag", "/a/..", "/a b", "/a?b", "/%zz",
            "/é",
        ] {
            assert!(path_match(exact, Some(bad)).is_err(), "{bad}");
        }
        let regex = Some(&HttpRouteRulesMatchesPathType::RegularExpression);
        assert!(path_match(regex, Some("/v[0-9]+/.*")).is_ok());
        assert!(path_match(regex, Some("/(")).is_err());
    }

    #[test]
    fn huge_regexes_are_refused() {
        assert!(check_regex(&"(a|b)".repeat(10)).is_ok());
        assert!(check_regex("[a-z]{1000}{1000}").is_err(), "size limit");
    }

    /// Found by the `manifests` fuzz target: a header match named `True/Accepted` was
    /// accepted here, then dropped by the gateway's compile (not a token), so the route
    /// reported Accepted for a match that was never programmed.
    #[test]
    fn header_match_names_are_tokens() {
        let names = |n: &'static str| header_matches([(n, false, "v")].into_iter());
        assert_eq!(names("X-Env").unwrap()[0].name, "x-env");
        assert!(names("x~!#$%&'*+-.^_`|").is_ok());
        for bad in [
            "True/Accepted",
            "a(b)",
            "a\"b",
            "a,b",
            "a@b",
            "[x]",
            "",
            "a b",
            "é",
        ] {
            assert!(names(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grpc_names_are_validated() {
        assert!(ident("Add_2"));
        assert!(!ident("2Add"));
        assert!(!ident("a/b"));
        assert!(!ident(""));
    }
}
