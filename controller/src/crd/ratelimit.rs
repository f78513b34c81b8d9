//! `RateLimitPolicy` (`weir.dev/v1alpha1`): distributed rate limits attached, Gateway API
//! policy style, to Gateways, HTTPRoutes (or one named rule) and Services.

use super::PolicyStatus;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    plural = "ratelimitpolicies",
    shortname = "rlp",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner.team"}"#,
    printcolumn = r#"{"name":"Review by","type":"string","jsonPath":".spec.owner.reviewBy"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// What the limits apply to: Gateways (every route they serve), HTTPRoutes (every rule,
    /// or the rule named by `sectionName`) and Services (requests routed to them).
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,
    /// `Enforce` rejects requests over a limit; `Shadow` only counts and reports them.
    #[serde(default)]
    pub mode: Mode,
    /// What happens while Redis cannot be reached.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Who owns these limits, and when they must be looked at again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Every limit applies; a request over any of them is rejected.
    #[schemars(length(min = 1, max = 16))]
    pub limits: Vec<Limit>,
    /// Whether responses carry the `RateLimit-Policy` and `RateLimit` header fields (IETF
    /// draft-ietf-httpapi-ratelimit-headers-10).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub response_headers: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// `gateway.networking.k8s.io` for Gateway and routes, `""` (the default) for Service
    /// and Namespace.
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    /// For an HTTPRoute, the name of one of its rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailureMode {
    /// Each gateway enforces its share of the limit (the limit divided by the live gateway
    /// replicas) on its own.
    #[default]
    Local,
    /// Every request is admitted.
    Open,
    /// Every request is rejected.
    Closed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub team: String,
    /// Where to reach the owner, e.g. a chat channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// The date (YYYY-MM-DD) by which the owner should confirm the limits still fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_by: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    /// Unique within the policy; it names the limit in headers, metrics and logs.
    pub name: String,
    /// Requests allowed per window.
    #[schemars(range(min = 1))]
    pub requests: u32,
    /// The window, a Gateway API duration such as `1s` or `1m`. It slides: there is no
    /// window edge at which twice the limit gets through.
    pub window: String,
    /// Extra requests allowed above `requests` for short bursts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What makes a separate counter. Empty: one counter for every request the limit applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<KeyPart>,
    /// Which requests the limit applies to (any match); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<LimitMatch>,
}

/// One part of a limit's key. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPart {
    /// The client's IP address (the connection's peer).
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<Empty>,
    /// The value of a request header; a request without it is not limited by this limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderKey>,
    /// The SPIFFE ID of an mTLS peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<Empty>,
    /// The route rule that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Empty>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Empty {}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct HeaderKey {
    pub name: String,
}

/// Like an HTTPRouteMatch: path, method and headers must all hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct PathMatchSpec {
    /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct HeaderMatchSpec {
    pub name: String,
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: String,
}
