//! Weir's shared model: the IR (everything a gateway needs to serve traffic, as plain
//! serde data), SPIFFE IDs ([`spiffe`]) and Gateway API durations ([`duration`]); with
//! the `otlp` feature, request spans exported over OTLP (`trace`), shared by the gateway
//! and the sidecar.
//!
//! No Kubernetes crate is a dependency, so the data plane and the sidecar never build the
//! API machinery and the whole config can be dumped as JSON (`/config`,
//! `weir-controller check`). Every name is already resolved: references became PEM,
//! endpoint lists or fixed error responses, and the route precedence of the Gateway API is
//! already applied to the order of `routes`.

pub mod authz;
mod balance;
pub mod duration;
mod filter;
mod matches;
mod mesh;
mod ratelimit;
pub mod spiffe;
mod summary;
mod tls;
#[cfg(feature = "otlp")]
pub mod trace;

pub use balance::{
    DEFAULT_RETRY_BUDGET_PERCENT, HealthCheck, LoadBalancer, Retry, SessionKind,
    SessionPersistence, SplitKey,
};
pub use filter::{
    Filter, HeaderModifier, HeaderValue, Mirror, PathModifier, Redirect, Rewrite, Scheme,
};
pub use matches::{HeaderMatch, PathMatch, QueryMatch, RouteMatch, StringMatch};
pub use mesh::{Mesh, MeshNamespaces, MeshService};
pub use ratelimit::{FailureMode, KeyPart, RateLimit, RateLimitMode, RateLimitPolicy};
pub use tls::{BackendTls, SubjectAltName, Trust};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// The whole compiled configuration of one gateway fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Programmed listeners, ordered by port, then Gateway age, then their order in the
    /// Gateway. Several listeners may share a port: the data plane picks one by SNI or Host.
    pub listeners: Vec<Listener>,
    /// Every accepted route rule, by [`RuleId`]. Listeners refer to rules by id so that a
    /// rule attached to many listeners and hostnames is stored once.
    pub rules: BTreeMap<RuleId, Rule>,
    /// Resolved backends by [`BackendKey`].
    pub backends: BTreeMap<BackendKey, Backend>,
    /// Accepted rate limit policies by `namespace/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limits: BTreeMap<String, RateLimitPolicy>,
    /// The Service frontends that mesh listeners serve (GAMMA), present when a Gateway of
    /// Weir's is a mesh Gateway.
    #[serde(default, skip_serializing_if = "Mesh::is_empty")]
    pub mesh: Mesh,
    /// Accepted AuthorizationPolicies, and the workloads they apply to for the sidecars.
    /// Rules and listeners name the ones the fleet enforces.
    #[serde(default, skip_serializing_if = "authz::Policies::is_empty")]
    pub authz: authz::Policies,
}

impl Config {
    /// A copy safe to show (`/config`, `weir-controller render`): private keys replaced.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for l in &mut c.listeners {
            for cert in l.tls.iter_mut().flat_map(|t| t.certificates.iter_mut()) {
                cert.key_pem = "<redacted>".into();
            }
            if let Some(cert) = &mut l.backend_client_certificate {
                cert.key_pem = "<redacted>".into();
            }
        }
        c
    }
}

/// `namespace/name` of a Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

impl ObjectName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
    Https,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
        })
    }
}

/// One programmed Gateway listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub gateway: ObjectName,
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Lower-cased; `None` matches every host. May be a wildcard (`*.example.com`).
    pub hostname: Option<String>,
    /// Present exactly when `protocol` is HTTPS.
    pub tls: Option<ListenerTls>,
    /// Virtual hosts, most specific first: exact names, then wildcards by length, then `*`.
    /// Empty on a mesh listener, which routes by Service name instead (see [`Mesh`]).
    pub hosts: Vec<VirtualHost>,
    /// Present on a mesh listener (a listener of a Gateway annotated `weir.dev/mesh:
    /// "true"`): the namespaces whose Services it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshNamespaces>,
    /// The rate limit policy attached to this listener's Gateway, for rules without one
    /// of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// The AuthorizationPolicies attached to this listener's Gateway, by id (see
    /// [`Config::authz`]); a request must pass these and its rule's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authz: Vec<String>,
    /// The Gateway's `tls.backend.clientCertificateRef`: presented to TLS backends reached
    /// through this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_client_certificate: Option<Certificate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// Valid certificates in `certificateRefs` order; the data plane picks one per handshake.
    pub certificates: Vec<Certificate>,
    /// Client certificate validation from the Gateway's `spec.tls.frontend` for this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<ClientValidation>,
}

/// Gateway `spec.tls.frontend` validation: which CAs client certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientValidation {
    /// The CA certificates, PEM, from `caCertificateRefs`.
    pub ca_pem: String,
    /// `AllowValidOnly` (false): a client without a valid certificate is refused in the
    /// handshake. `AllowInsecureFallback` (true): a client may present none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// The Secret it came from, for logs and `/config`.
    pub secret: ObjectName,
    /// The certificate chain, leaf first, PEM.
    pub cert_pem: String,
    /// The private key, PEM. `Debug` hides it; whoever serialises a Config for display must
    /// redact it too.
    pub key_pem: String,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("secret", &self.secret)
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The routes that serve one hostname on a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    /// Lower-case exact name, `*.suffix` wildcard, or `*` for any host.
    pub hostname: String,
    /// In precedence order: the first entry whose match holds serves the request.
    pub routes: Vec<RouteEntry>,
}

/// One match of one rule, placed in precedence order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteEntry {
    pub rule: RuleId,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
}

/// `Kind/namespace/name/index` of a route rule. Stable across reloads as long as the route's
/// rule list keeps its order, which makes it a good key for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuleId(pub String);

impl RuleId {
    pub fn new(kind: RouteKind, route: &ObjectName, index: usize) -> Self {
        Self(format!("{kind}/{route}/{index}"))
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RouteKind {
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
    /// No route at all: the default rule of a mesh Service that no route attaches to. Its
    /// rule index is the Service port.
    #[serde(rename = "Service")]
    Service,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Service => "Service",
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a request once a route entry matched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub kind: RouteKind,
    pub route: ObjectName,
    /// Position in the route's `rules`.
    pub index: usize,
    /// The rule's `name`, if any (policies may target it via `sectionName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Applied in order. A redirect answers the request itself; backends are not used then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Weighted choice. Empty only when a RequestRedirect filter answers every request; a
    /// rule with nothing valid to route to carries [`BackendRef::Error`] entries instead, so
    /// the data plane needs no special case. All weights zero means 500, as the spec says.
    pub backends: Vec<WeightedBackend>,
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// The rate limit policy for this rule: one naming the rule, else the route, else a
    /// Service it routes to. See [`Config::rate_limits`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// The AuthorizationPolicies for this rule, by id: those naming the rule or its route,
    /// a Service it routes to or whose mesh frontend it serves, or such a Service's
    /// namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authz: Vec<String>,
    /// `sessionPersistence`: requests carrying a session token go back to the backend and
    /// endpoint that served the session first, whatever the weights say now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
    /// `weir.dev/split-key` of the route: the weighted split hashes this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_key: Option<SplitKey>,
    /// `retry`. Without it, only connect failures are retried (nothing was sent yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// Gateway API `HTTPRouteTimeouts`, in milliseconds. `None` means no limit (zero in the
/// spec disables a timeout too, and is translated to `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_ms: Option<u64>,
}

impl Timeouts {
    pub fn is_empty(&self) -> bool {
        self.request_ms.is_none() && self.backend_request_ms.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    /// Relative weight. Zero means this backend never receives a request.
    pub weight: u32,
    #[serde(flatten)]
    pub backend: BackendRef,
    /// Filters of the `backendRef`, applied after the rule's filters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendRef {
    /// A resolved Service port, found in [`Config::backends`].
    Service(BackendKey),
    /// The share of a reference that could not be resolved, or of a rule without backends,
    /// answered with a fixed status (500, as the spec requires).
    Error { status: u16, reason: String },
}

/// `namespace/name:port` of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackendKey(pub String);

impl BackendKey {
    pub fn new(service: &ObjectName, port: u16) -> Self {
        Self(format!("{service}:{port}"))
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Service port and the endpoints behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub service: ObjectName,
    /// The Service port (what routes refer to), not the target port.
    pub port: u16,
    /// From the Service port, else the EndpointSlice port: e.g. `kubernetes.io/h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// For an ExternalName Service, the DNS name to resolve (egress); `endpoints` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    /// Zone affinity: `trafficDistribution: PreferClose` or `PreferSameZone`, or the
    /// annotation `weir.dev/zone-affinity: "true"`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zone_affinity: bool,
    #[serde(default, skip_serializing_if = "LoadBalancer::is_default")]
    pub load_balancer: LoadBalancer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Reached over TLS, per the BackendTLSPolicy targeting the Service (or its port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
    /// Every endpoint with an address, ready or not; the data plane filters by condition so
    /// that it can fall back to serving-but-terminating endpoints as kube-proxy does.
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}
