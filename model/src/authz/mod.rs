//! AuthorizationPolicy, resolved, and the one evaluation that the fleet and the sidecars
//! share, so that a policy means the same wherever it is enforced.
//!
//! The order is Istio's, so that policies carry over:
//! 1. an enforced DENY policy with a matching rule denies;
//! 2. AUDIT policies with a matching rule are recorded, and change nothing;
//! 3. if any enforced ALLOW policy applies, the request must match a rule of one of them;
//! 4. otherwise the request is allowed (no policy, or only DENY/AUDIT ones).
//!
//! An ALLOW policy without rules therefore denies everything. Policies in Shadow mode are
//! then evaluated as if they were enforced too, and only recorded: what they would deny
//! goes through.

mod jwt;
mod matching;
mod path;
mod sidecar;
#[cfg(test)]
mod tests;

pub use jwt::{JwtProvider, TokenError, Verified, Verifier};
pub use path::normalize_path;
pub use sidecar::{Policies, ServicePolicies, ServicePort};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One accepted AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzPolicy {
    /// `namespace/name`; the key in [`crate::Config::authz`].
    pub id: String,
    pub action: AuthzAction,
    /// `mode: Shadow`: what it would deny is recorded and let through.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// A request matches the policy when it matches any rule.
    pub rules: Vec<AuthzRule>,
    /// The issuers whose end-user tokens this policy verifies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<JwtProvider>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuthzAction {
    Allow,
    Deny,
    Audit,
}

impl AuthzAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzAction::Allow => "ALLOW",
            AuthzAction::Deny => "DENY",
            AuthzAction::Audit => "AUDIT",
        }
    }
}

/// A rule matches when each of its parts holds: one of `from` (or `from` is empty), one of
/// `to` (or `to` is empty), and every `when`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Source>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Operation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// Who calls. Every field that is set must hold. Patterns are exact, `prefix*`, `*suffix`
/// or `*`; a caller without a verified identity matches no principal or namespace
/// pattern, so `notPrincipals: ["*"]` means "callers without an identity".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// SPIFFE IDs, `spiffe://` included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// The namespace in the caller's SPIFFE ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// The connection's peer address (not `X-Forwarded-For`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<IpNet>,
    /// `iss/sub` of a verified end-user token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
}

impl Source {
    /// Whether it reads the request's token, which a handshake cannot know.
    fn per_request(&self) -> bool {
        !self.request_principals.is_empty() || !self.not_request_principals.is_empty()
    }
}

/// What is called. Every field that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Upper-case methods, exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Path patterns, matched against the normalized path without its query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// The port the caller addressed: a Service port in the mesh, the listener's port on a
    /// Gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
}

/// A request attribute that must hold: a header, or a claim of the verified token. It
/// holds when one of its values matches `values` (if set) and none matches `notValues`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// A lower-case request header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A claim's path, one key per level of nesting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// What the evaluation knows of a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The caller's verified SPIFFE ID.
    pub principal: Option<&'a str>,
    /// The connection's peer.
    pub ip: Option<IpAddr>,
    pub method: &'a str,
    /// Normalized ([`normalize_path`]), without the query.
    pub path: &'a str,
    /// The ports the caller may be said to have addressed (one at the fleet; at a sidecar,
    /// its inbound port and the Service ports that lead to it).
    pub ports: &'a [u16],
    pub headers: &'a http::HeaderMap,
    /// The verified end-user token, if the request carried one.
    pub auth: Option<&'a Verified>,
}

/// What a connection's handshake knows: enough for rules on `from` alone.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub principal: Option<&'a str>,
    pub ip: Option<IpAddr>,
}

/// One policy's part in a decision, as counted in `weir_authz_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The ALLOW policy whose rule matched.
    Allowed,
    /// An enforced policy refused the request: the DENY policy that matched, or each ALLOW
    /// policy when none matched.
    Denied,
    /// An AUDIT policy matched.
    Audited,
    /// A Shadow policy would have refused a request that was let through.
    ShadowDenied,
    /// A Shadow ALLOW policy matched.
    ShadowAllowed,
}

impl Decision {
    pub const ALL: [Decision; 5] = [
        Decision::Allowed,
        Decision::Denied,
        Decision::Audited,
        Decision::ShadowDenied,
        Decision::ShadowAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Audited => "audited",
            Decision::ShadowDenied => "shadow_denied",
            Decision::ShadowAllowed => "shadow_allowed",
        }
    }

    /// Whether a policy of `action` (in Shadow mode or not) can reach this decision: the
    /// metric series worth creating up front.
    pub fn possible(self, action: AuthzAction, shadow: bool) -> bool {
        match (action, shadow, self) {
            (AuthzAction::Audit, _, d) => d == Decision::Audited,
            (AuthzAction::Deny, false, d) => d == Decision::Denied,
            (AuthzAction::Deny, true, d) => d == Decision::ShadowDenied,
            (AuthzAction::Allow, false, d) => matches!(d, Decision::Allowed | Decision::Denied),
            (AuthzAction::Allow, true, d) => {
                matches!(d, Decision::ShadowAllowed | Decision::ShadowDenied)
            }
        }
    }
}

/// Decides one request against the policies `ids` name (looked up through `policy`), and
/// tells `record` each policy's part. Returns whether the request may proceed.
pub fn evaluate<'p, I>(
    ids: I,
    policy: impl Fn(I::Item) -> &'p AuthzPolicy,
    req: &Request<'_>,
    mut record: impl FnMut(I::Item, Decision),
) -> bool
where
    I: Iterator + Clone,
    I::Item: Copy,
{
    let policy = &policy;
    let of = |action: AuthzAction, shadow: bool| {
        ids.clone().filter(move |i| {
            let p = policy(*i);
            p.action == action && p.shadow == shadow
        })
    };
    if let Some(i) = of(AuthzAction::Deny, false).find(|i| policy(*i).matches(req)) {
        record(i, Decision::Denied);
        return false;
    }
    for i in of(AuthzAction::Audit, false).chain(of(AuthzAction::Audit, true)) {
        if policy(i).matches(req) {
            record(i, Decision::Audited);
        }
    }
    let mut allows = of(AuthzAction::Allow, false).peekable();
    let allow_applies = allows.peek().is_some();
    let allowed_by = allows.find(|i| policy(*i).matches(req));
    if allow_applies && allowed_by.is_none() {
        for i in of(AuthzAction::Allow, false) {
            record(i, Decision::Denied);
        }
        return false;
    }
    if let Some(i) = allowed_by {
        record(i, Decision::Allowed);
    }
    // What the Shadow policies would have done, had they been enforced as well.
    if let Some(i) = of(AuthzAction::Deny, true).find(|i| policy(*i).matches(req)) {
        record(i, Decision::ShadowDenied);
        return true;
    }
    if allowed_by.is_none() {
        let mut shadows = of(AuthzAction::Allow, true).peekable();
        if shadows.peek().is_some() {
            match shadows.find(|i| policy(*i).matches(req)) {
                Some(i) => record(i, Decision::ShadowAllowed),
                None => {
                    for i in of(AuthzAction::Allow, true) {
                        record(i, Decision::ShadowDenied);
                    }
                }
            }
        }
    }
    true
}

/// Decides at a connection's handshake what can be decided from the peer alone: whether
/// every request on it would be denied. That holds when an enforced DENY policy has a rule
/// on `from` only that the peer matches, or when enforced ALLOW policies apply and none
/// has a rule the peer could match. Each such policy is recorded as `Denied`. Returns
/// whether the connection may proceed (its requests are then decided one by one).
pub fn admit_peer<'p, I>(
    ids: I,
    policy: impl Fn(I::Item) -> &'p AuthzPolicy,
    peer: &Peer<'_>,
    mut record: impl FnMut(I::Item, Decision),
) -> bool
where
    I: Iterator + Clone,
    I::Item: Copy,
{
    let policy = &policy;
    let enforced = |action: AuthzAction| {
        ids.clone()
            .filter(move |i| policy(*i).action == action && !policy(*i).shadow)
    };
    if let Some(i) = enforced(AuthzAction::Deny).find(|i| policy(*i).denies_peer(peer)) {
        record(i, Decision::Denied);
        return false;
    }
    let mut allows = enforced(AuthzAction::Allow).peekable();
    if allows.peek().is_none() || allows.any(|i| policy(i).may_allow_peer(peer)) {
        return true;
    }
    for i in enforced(AuthzAction::Allow) {
        record(i, Decision::Denied);
    }
    false
}

/// The request's end-user token, verified by the providers of the policies `ids` name
/// (`verifier` gives a policy's, if it has any): `Ok(None)` without a token or without
/// providers. A token no provider verifies is an error, to be answered with 401.
pub fn authenticate<'v, I>(
    ids: I,
    verifier: impl Fn(I::Item) -> Option<&'v Verifier>,
    headers: &http::HeaderMap,
) -> Result<Option<Verified>, TokenError>
where
    I: Iterator,
{
    let mut error = None;
    for v in ids.filter_map(verifier) {
        match v.verify(headers) {
            Ok(Some(verified)) => return Ok(Some(verified)),
            Ok(None) => {}
            // Another policy's providers may know this issuer.
            Err(e) => error = Some(e),
        }
    }
    error.map_or(Ok(None), Err)
}
