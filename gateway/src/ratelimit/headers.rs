//! The IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers-10)
//! for the limit closest to refusing a request, and `Retry-After` on a 429.
//!
//! Both fields are Structured Field lists with one item: the limit's name as a String, with
//! `q` (quota) and `w` (window, seconds) on the policy, `r` (remaining) and `t` (seconds
//! until the quota resets) on the current state.

use super::policy::LimitRt;
use pingora::http::ResponseHeader;

/// The rendered fields of one limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    pub policy: String,
    pub state: String,
}

impl Fields {
    pub fn new(limit: &LimitRt, remaining: u64, reset_ms: u64) -> Self {
        let name = sf_string(&limit.name);
        Self {
            policy: format!(
                "{name};q={};w={}",
                limit.shape.cap,
                limit.shape.window_ms.div_ceil(1000).max(1)
            ),
            state: format!("{name};r={remaining};t={}", reset_ms.div_ceil(1000)),
        }
    }

    /// Adds both fields to a response, replacing any the upstream sent: the gateway's limit
    /// is the one the client meets first.
    pub fn apply(&self, resp: &mut ResponseHeader) {
        // Both values are printable ASCII by construction, so inserting cannot fail.
        let _ = resp.insert_header("ratelimit-policy", self.policy.as_str());
        let _ = resp.insert_header("ratelimit", self.state.as_str());
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
    use crate::ratelimit::PolicyRt;
    use weir_controller::model::{self, FailureMode, RateLimitMode};

    #[test]
    fn fields_follow_draft_10() {
        let p = PolicyRt::compile(&model::RateLimitPolicy {
            id: "shop/checkout".into(),
            mode: RateLimitMode::Enforce,
            failure_mode: FailureMode::Local,
            response_headers: true,
            limits: vec![model::RateLimit {
                name: "per-client".into(),
                requests: 100,
                burst: 20,
                window_ms: 60_000,
                key: vec![],
                when: vec![],
            }],
        })
        .unwrap();
        let f = Fields::new(&p.limits[0], 7, 1500);
        assert_eq!(f.policy, r#""per-client";q=120;w=60"#);
        assert_eq!(f.state, r#""per-client";r=7;t=2"#);
        assert_eq!(sf_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
