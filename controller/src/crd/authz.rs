//! `AuthorizationPolicy` (`weir.dev/v1alpha1`): who may call whom, by SPIFFE identity,
//! namespace, address, method, path, port and request headers. A flatter form of Istio's
//! policy of the same name, with the same evaluation, so that policies carry over.
//!
//! How a request is decided, for the policies attached to what it reaches (its Gateway,
//! route, the Service it is routed to, and that Service's namespace):
//! 1. a DENY policy with a matching rule denies it (403);
//! 2. AUDIT policies with a matching rule are logged and counted;
//! 3. if any ALLOW policy applies, a rule of one of them must match, else 403;
//! 4. otherwise it is allowed: with no policy, everything is.
//!
//! An ALLOW policy without rules denies everything. `mode: Shadow` only logs and counts.

use super::{Owner, PolicyStatus, PolicyTargetRef};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    shortname = "azp",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner.team"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// What the policy guards: a Service (its mesh traffic, at the fleet and at its pods'
    /// sidecars, and edge traffic routed to it), a Gateway (every request its listeners
    /// take), an HTTPRoute or GRPCRoute (or the rule named by `sectionName`), or the
    /// policy's own Namespace (every Service and workload in it).
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,
    /// `ALLOW`, `DENY` or `AUDIT`. DENY is evaluated first; once any ALLOW policy applies,
    /// a request must match one of them.
    #[serde(default)]
    pub action: Action,
    /// `Enforce`, or `Shadow`: what the policy would deny is logged and counted, and let
    /// through.
    #[serde(default)]
    pub mode: super::Mode,
    /// Who owns the policy, and when it must be looked at again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// A request matches the policy when it matches any rule. No rules: an ALLOW policy
    /// allows nothing, a DENY policy denies nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<Rule>,
    /// End-user token issuers (Istio's RequestAuthentication, folded in). A request whose
    /// token one of them verifies has the request principal `iss/sub` and its claims; a
    /// request with a token none verifies gets 401; one without a token has neither.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub jwt: Vec<JwtIssuer>,
}

/// A trusted issuer of end-user JWTs (RS256, ES256 or EdDSA).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// The JWKS: a ConfigMap or a Secret in the policy's namespace, key `jwks`. A JWKS
    /// holds public keys, so a ConfigMap is enough; for a Secret, the controller lets the
    /// gateways read that one Secret (a Role naming it) and nothing else there.
    pub jwks_ref: JwksRef,
    /// A token must name one of these in `aud`; empty: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The header the token comes in: `Authorization` (the default) as `Bearer <token>`,
    /// any other header as the bare token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_header: Option<String>,
    /// Whether the backend gets the token too. By default it is removed, as Istio does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_token: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwksRef {
    /// `ConfigMap` (the default) or `Secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
}

/// A rule matches when one of `from` (or `from` is empty), one of `to` (or `to` is
/// empty) and every `when` hold. An empty rule matches every request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<When>,
}

/// The caller. Each field that is set must hold. Identities are verified mTLS ones: on an
/// edge listener only a client certificate checked by the Gateway's frontend validation
/// gives one, and a caller without one matches no principal or namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct From {
    /// SPIFFE IDs: exact, `prefix*`, `*suffix` or `*` (any verified caller).
    /// `spiffe://` may be left out, as Istio writes them (`cluster.local/ns/a/sa/b`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// `["*"]` matches callers without a verified identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// The namespace of the caller's identity, same patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// The connection's peer address, as IPs or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// `iss/sub` of the request's verified end-user token, same patterns
    /// (`https://issuer.example.com/*`: any subject of that issuer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// `["*"]` matches requests without a verified token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
}

/// The operation. Each field that is set must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct To {
    /// HTTP methods, exact (upper case). gRPC calls are `POST`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Paths: exact, `prefix*`, `*suffix` or `*`, matched against the path without its
    /// query, after dot segments and repeated slashes are resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// The port the caller addressed: the Service port in the mesh, the listener port on
    /// a Gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
}

/// A request attribute that must hold: one of its values matches `values` (when set), and
/// none matches `notValues`. Same patterns as paths. Exactly one of `header` and `claim`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct When {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A claim of the verified token: `groups`, or `[realm_access][roles]` for a nested
    /// one (Istio's `request.auth.claims[...]`). Each string of an array claim is a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}
