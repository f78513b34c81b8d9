//! The IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers-10)
//! for the limit closest to refusing a request, and `Retry-After` on a 429.
//!
//! Both fields are Structured Field lists with one item: the limit's name as a String, with
//! `q` (quota) and `w` (window, seconds) on the policy, `r` (remaining) and `t` (seconds
//! until the quota resets) on the current state.

use super::policy::LimitRt;
use super::window::Shape;
use pingora::http::ResponseHeader;
use std::sync::Arc;

/// The rendered fields of one limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    pub policy: Arc<str>,
    pub state: String,
}

/// What a limit's fields are on every response, rendered once when the config compiles:
/// only the state changes from request to request.
#[derive(Debug)]
pub(super) struct Rendered {
    name: Box<str>,
    policy: Arc<str>,
}

impl Rendered {
    pub(super) fn new(name: &str, shape: Shape) -> Self {
        let name = sf_string(name);
        let policy = format!(
            "{name};q={};w={}",
            shape.cap,
            shape.window_ms.div_ceil(1000).max(1)
        );
        Self {
            name: name.into(),
            policy: policy.into(),
        }
    }
}

impl Fields {
    pub fn new(limit: &LimitRt, remaining: u64, reset_ms: u64) -> Self {
        let rendered = limit.rendered();
        Self {
            policy: rendered.policy.clone(),
            state: format!(
                "{};r={remaining};t={}",
                rendered.name,
                reset_ms.div_ceil(1000)
            ),
        }
    }

    /// Adds both fields to a response, replacing any the upstream sent: the gateway's limit
    /// is the one the client meets first.
    pub fn apply(&self, resp: &mut ResponseHeader) {
        // Both values are printable ASCII by construction, so inserting cannot fail.
        let _ = resp.insert_header("ratelimit-policy", &*self.policy);
        let _ = resp.insert_header("ratelimit", self.state.as_str());
    }
}

/// The header fields of a 429: `Retry-After` (whole seconds until a request may be
/// admitted), then the refusing limit's `RateLimit-Policy` and `RateLimit` fields when the
/// policy sends them.
pub fn refusal(retry_after_s: u64, fields: Option<&Fields>) -> Refused {
    let mut out = vec![("retry-after", retry_after_s.to_string())];
    if let Some(f) = fields {
        out.push(("ratelimit-policy", f.policy.to_string()));
        out.push(("ratelimit", f.state.clone()));
    }
    Refused(out)
}

/// A refused request's 429 header fields, in order.
#[derive(Debug)]
pub struct Refused(Vec<(&'static str, String)>);

impl Refused {
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        self.0.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }
}

/// A Structured Field String: quoted, with `"` and `\` escaped. Limit names are validated
/// DNS-like names, but the escaping keeps the field valid whatever they hold.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::policy::tests::compiled;

    #[test]
    fn fields_follow_draft_10() {
        let limit = compiled(100, 20, 60_000, vec![], vec![]);
        let f = Fields::new(&limit, 7, 1500);
        assert_eq!(&*f.policy, r#""per-client";q=120;w=60"#);
        assert_eq!(f.state, r#""per-client";r=7;t=2"#);
        assert_eq!(sf_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
