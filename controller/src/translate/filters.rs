//! Route and backend filters → [`Filter`].
//!
//! The Gateway API repeats one filter schema for HTTPRoute rules, HTTPRoute backendRefs and
//! GRPCRoute (the generated types differ in name only), so filters are read through one
//! private mirror of that schema rather than four copies of the conversion.

use super::backends::{RefSpec, resolve};
use super::hostname;
use super::index::Index;
use super::status::{Outcome, reason};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use weir_model::{
    Backend, BackendKey, BackendRef, Filter, HeaderModifier, HeaderValue, Mirror, PathModifier,
    Redirect, Rewrite, RouteKind, Scheme,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FilterSpec {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    request_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default)]
    response_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default)]
    request_redirect: Option<RedirectSpec>,
    #[serde(default)]
    url_rewrite: Option<RewriteSpec>,
    #[serde(default)]
    request_mirror: Option<MirrorSpec>,
    #[serde(default)]
    extension_ref: Option<ExtensionRefSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct HeaderModifierSpec {
    #[serde(default)]
    set: Vec<HeaderValue>,
    #[serde(default)]
    add: Vec<HeaderValue>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathModifierSpec {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    replace_full_path: Option<String>,
    #[serde(default)]
    replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedirectSpec {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifierSpec>,
    #[serde(default)]
    port: Option<i32>,
    #[serde(default)]
    status_code: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
struct RewriteSpec {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifierSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MirrorSpec {
    backend_ref: RefSpec,
    #[serde(default)]
    percent: Option<i32>,
    #[serde(default)]
    fraction: Option<FractionSpec>,
}

#[derive(Debug, Clone, Deserialize)]
struct FractionSpec {
    numerator: i32,
    #[serde(default)]
    denominator: Option<i32>,
}

#[derive(Debug, Clone, Deserialize)]
struct ExtensionRefSpec {
    group: String,
    kind: String,
    name: String,
}

/// Reads any generated filter type through the shared schema.
pub(crate) fn specs<T: serde::Serialize>(
    filters: Option<&Vec<T>>,
) -> Result<Vec<FilterSpec>, String> {
    filters
        .into_iter()
        .flatten()
        .map(|f| {
            serde_json::to_value(f)
                .and_then(serde_json::from_value)
                .map_err(|e| format!("filter: {e}"))
        })
        .collect()
}

/// What converting a rule's (or backendRef's) filters produced.
#[derive(Debug, Default)]
pub(crate) struct Converted {
    pub filters: Vec<Filter>,
    /// References that did not resolve (mirror targets): reported in ResolvedRefs; the
    /// filter is left out, as the spec asks.
    pub ref_problems: Vec<Outcome>,
    /// A filter that cannot be honoured but must not be skipped (an unknown ExtensionRef):
    /// the rule answers 500 instead.
    pub unresolvable: Option<Outcome>,
}

pub(crate) struct FilterCtx<'a, 'b> {
    pub idx: &'a Index<'b>,
    pub backends: &'a mut BTreeMap<BackendKey, Backend>,
    pub route_kind: RouteKind,
    pub route_ns: &'a str,
    /// Whether every match of the rule is a PathPrefix: ReplacePrefixMatch needs one.
    pub prefix_matches_only: bool,
}

/// Converts filters; `Err` means the rule is invalid (its message says why).
pub(crate) fn convert(
    ctx: &mut FilterCtx<'_, '_>,
    specs: &[FilterSpec],
) -> Result<Converted, String> {
    let mut out = Converted::default();
    let mut seen = BTreeSet::new();
    for (i, spec) in specs.iter().enumerate() {
        let at = |m: String| format!("filters[{i}] ({}): {m}", spec.type_);
        let missing = || at(format!("type {} needs the matching field", spec.type_));
        // Every type but RequestMirror may appear once per list.
        if spec.type_ != "RequestMirror" && !seen.insert(spec.type_.clone()) {
            return Err(at("this filter type may appear only once".into()));
        }
        let filter = match spec.type_.as_str() {
            "RequestHeaderModifier" => Filter::RequestHeaderModifier(
                header_modifier(spec.request_header_modifier.as_ref().ok_or_else(missing)?)
                    .map_err(at)?,
            ),
            "ResponseHeaderModifier" => Filter::ResponseHeaderModifier(
                header_modifier(spec.response_header_modifier.as_ref().ok_or_else(missing)?)
                    .map_err(at)?,
            ),
            "RequestRedirect" => {
                let r = spec.request_redirect.as_ref().ok_or_else(missing)?;
                Filter::RequestRedirect(redirect(r, ctx.prefix_matches_only).map_err(at)?)
            }
            "URLRewrite" => {
                let r = spec.url_rewrite.as_ref().ok_or_else(missing)?;
                Filter::UrlRewrite(rewrite(r, ctx.prefix_matches_only).map_err(at)?)
            }
            "RequestMirror" => {
                let m = spec.request_mirror.as_ref().ok_or_else(missing)?;
                let (numerator, denominator) = mirror_share(m).map_err(at)?;
                match resolve(
                    ctx.idx,
                    ctx.backends,
                    ctx.route_kind,
                    ctx.route_ns,
                    &m.backend_ref,
                ) {
                    Ok(key) => Filter::RequestMirror(Mirror {
                        backend: BackendRef::Service(key),
                        numerator,
                        denominator,
                    }),
                    Err(problem) => {
                        out.ref_problems.push(Outcome::new(
                            problem.reason,
                            format!("RequestMirror {}", problem.message),
                        ));
                        continue;
                    }
                }
            }
            "ExtensionRef" => {
                let e = spec.extension_ref.as_ref().ok_or_else(missing)?;
                out.unresolvable.get_or_insert(Outcome::new(
                    reason::INVALID_KIND,
                    format!(
                        "ExtensionRef filter {}/{} {}: Weir has no filter extensions; matching requests get 500",
                        e.group, e.kind, e.name
                    ),
                ));
                continue;
            }
            other => return Err(at(format!("filter type {other} is not supported by Weir"))),
        };
        out.filters.push(filter);
    }
    if seen.contains("RequestRedirect") && seen.contains("URLRewrite") {
        return Err("RequestRedirect and URLRewrite filters cannot be used together".into());
    }
    Ok(out)
}

fn header_name(name: &str) -> Result<String, String> {
    // RFC 9110 token characters.
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

fn header_value(v: &str) -> Result<(), String> {
    if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("header value {v:?} contains CR, LF or NUL"));
    }
    Ok(())
}

fn header_modifier(m: &HeaderModifierSpec) -> Result<HeaderModifier, String> {
    let values = |list: &[HeaderValue], field: &str| -> Result<Vec<HeaderValue>, String> {
        let mut out = Vec::new();
        let mut local = BTreeSet::new();
        for h in list {
            let name = header_name(&h.name)?;
            header_value(&h.value)?;
            if !local.insert(name.clone()) {
                return Err(format!("header {name:?} appears twice in {field}"));
            }
            out.push(HeaderValue {
                name,
                value: h.value.clone(),
            });
        }
        Ok(out)
    };
    let set = values(&m.set, "set")?;
    let add = values(&m.add, "add")?;
    let remove = m
        .remove
        .iter()
        .map(|n| header_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HeaderModifier { set, add, remove })
}

fn path_modifier(p: &PathModifierSpec, prefix_matches_only: bool) -> Result<PathModifier, String> {
    match p.type_.as_str() {
        "ReplaceFullPath" => {
            let v = p
                .replace_full_path
                .clone()
                .ok_or("path type ReplaceFullPath needs replaceFullPath")?;
            if !v.starts_with('/') {
                return Err(format!("replaceFullPath {v:?} must start with '/'"));
            }
            uri_path(&v)?;
            Ok(PathModifier::ReplaceFullPath(v))
        }
        "ReplacePrefixMatch" => {
            let v = p
                .replace_prefix_match
                .clone()
                .ok_or("path type ReplacePrefixMatch needs replacePrefixMatch")?;
            if !(v.is_empty() || v.starts_with('/')) {
                return Err(format!("replacePrefixMatch {v:?} must start with '/'"));
            }
            uri_path(&v)?;
            if !prefix_matches_only {
                return Err(
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix".into(),
                );
            }
            Ok(PathModifier::ReplacePrefixMatch(v))
        }
        other => Err(format!("path type {other:?} is not supported")),
    }
}

/// A path that a rewrite or redirect puts on the wire, or that a path match compares with
/// one: RFC 3986 path characters only (the CRD's pattern for Exact and PathPrefix values), so
/// it can neither start a query or fragment (`?`, `#`) nor make an invalid request line.
pub(crate) fn uri_path(v: &str) -> Result<(), String> {
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
            _ => {
                return Err(format!(
                    "path {v:?} may hold only URI path characters (no '?', '#', space or control character; '%' starts an escape)"
                ));
            }
        }
    }
    Ok(())
}

fn redirect(r: &RedirectSpec, prefix_matches_only: bool) -> Result<Redirect, String> {
    let scheme = match r.scheme.as_deref() {
        None => None,
        Some("http") => Some(Scheme::Http),
        Some("https") => Some(Scheme::Https),
        Some(other) => return Err(format!("scheme {other:?} must be http or https")),
    };
    let status_code = match r.status_code.unwrap_or(302) {
        c @ (301 | 302 | 303 | 307 | 308) => c as u16,
        other => {
            return Err(format!(
                "statusCode {other} must be 301, 302, 303, 307 or 308"
            ));
        }
    };
    let port = match r.port {
        None => None,
        Some(p) => Some(
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or(format!("port {p} is out of range"))?,
        ),
    };
    Ok(Redirect {
        scheme,
        hostname: r
            .hostname
            .as_deref()
            .map(|h| hostname::normalize(h, false))
            .transpose()?,
        port,
        path: r
            .path
            .as_ref()
            .map(|p| path_modifier(p, prefix_matches_only))
            .transpose()?,
        status_code,
    })
}

fn rewrite(r: &RewriteSpec, prefix_matches_only: bool) -> Result<Rewrite, String> {
    Ok(Rewrite {
        hostname: r
            .hostname
            .as_deref()
            .map(|h| hostname::normalize(h, false))
            .transpose()?,
        path: r
            .path
            .as_ref()
            .map(|p| path_modifier(p, prefix_matches_only))
            .transpose()?,
    })
}

fn mirror_share(m: &MirrorSpec) -> Result<(u32, u32), String> {
    match (m.percent, &m.fraction) {
        (Some(_), Some(_)) => Err("only one of percent and fraction may be set".into()),
        (Some(p), None) if (0..=100).contains(&p) => Ok((p as u32, 100)),
        (Some(p), None) => Err(format!("percent {p} must be within 0-100")),
        (None, Some(f)) => {
            let d = f.denominator.unwrap_or(100);
            if d < 1 || f.numerator < 0 || f.numerator > d {
                return Err(format!(
                    "fraction {}/{d} must have 0 <= numerator <= denominator and denominator >= 1",
                    f.numerator
                ));
            }
            Ok((f.numerator as u32, d as u32))
        }
        (None, None) => Ok((100, 100)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `request_path` fuzz target: a replacePrefixMatch of `/a?:` moved the
    /// rest of the path into the query (`/a?:/rest`); `/a b` made an invalid request line.
    #[test]
    fn path_modifiers_are_uri_paths() {
        let spec = |full: bool, v: &str| PathModifierSpec {
            type_: if full {
                "ReplaceFullPath"
            } else {
                "ReplacePrefixMatch"
            }
            .into(),
            replace_full_path: full.then(|| v.into()),
            replace_prefix_match: (!full).then(|| v.into()),
        };
        for ok in ["/", "/a/b", "/%2Fx", "/a;b=c:@!$&'()*+,~-._", "/v1/"] {
            assert!(path_modifier(&spec(true, ok), true).is_ok(), "{ok}");
            assert!(path_modifier(&spec(false, ok), true).is_ok(), "{ok}");
        }
        assert!(path_modifier(&spec(false, ""), true).is_ok());
        for bad in [
            "/a?:", "/a#b", "/a b", "/a\nb", "/%zz", "/%2", "/é", "/a\"b", "/{x}",
        ] {
            assert!(path_modifier(&spec(true, bad), true).is_err(), "{bad:?}");
            assert!(path_modifier(&spec(false, bad), true).is_err(), "{bad:?}");
        }
    }
}
