//! AuthorizationPolicy: validation, target resolution, and where each policy applies.
//!
//! Unlike rate limits, where the most specific policy wins, every policy attached to what a
//! request reaches is evaluated together (Istio's semantics, see [`weir_model::authz`]):
//! the listener's Gateway, the rule and its route, each Service the rule routes to or
//! whose mesh frontend it serves, and those Services' namespaces. Service and Namespace
//! policies also go to the sidecars, through [`weir_model::authz::Policies`].

use super::index::{GATEWAY_GROUP, Index};
use super::policy::{self, MeshParents, Target};
use super::state::{GatewayState, RouteView};
use super::status::{Outcome, PolicyReport, StatusReport, condition, condition_from};
use crate::crd::{self, AuthorizationPolicySpec};
use crate::source::Snapshot;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use weir_model::authz::{
    AuthzAction, AuthzPolicy, AuthzRule, Condition, Operation, ServicePolicies, ServicePort, Source,
};
use weir_model::{BackendRef, Config, ObjectName};

use super::policy::reason;

/// What a policy is attached to: [`Target`]s, or a whole namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Attached {
    Target(Target),
    Namespace(String),
}

pub(crate) fn apply(
    snapshot: &Snapshot,
    idx: &Index<'_>,
    gateways: &[GatewayState<'_>],
    routes: &[RouteView<'_>],
    mesh_parents: &MeshParents,
    config: &mut Config,
    report: &mut StatusReport,
) {
    let mut attached: Vec<(String, Attached)> = Vec::new();
    for p in &snapshot.authorization_policies {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let id = ObjectName::new(ns, p.metadata.name.as_deref().unwrap_or_default());
        let generation = p.metadata.generation;
        let mut missing = Vec::new();
        let mut won = Vec::new();
        for t in &p.spec.target_refs {
            match resolve(idx, gateways, routes, ns, t) {
                Ok(targets) => won.extend(targets),
                Err(m) => missing.push(m),
            }
        }
        let accepted = match compile(&id, &p.spec, snapshot) {
            // Fail closed, as Istio does: a policy that cannot be understood might have
            // been meant to refuse anything, so its targets refuse everything until it is
            // fixed. Leaving it out would open whatever it guarded.
            Err(e) if !won.is_empty() && p.spec.action != crd::Action::Audit => {
                let key = id.to_string();
                attached.extend(won.into_iter().map(|t| (key.clone(), t)));
                config
                    .authz
                    .policies
                    .insert(key.clone(), deny_all(key, &p.spec));
                Err(Outcome::new(
                    reason::INVALID,
                    format!("{e}; until it is fixed, its targets deny every request"),
                ))
            }
            Err(e) => Err(Outcome::new(reason::INVALID, e)),
            Ok(policy) => {
                if won.is_empty() {
                    Err(Outcome::new(reason::TARGET_NOT_FOUND, missing.join("; ")))
                } else {
                    let key = id.to_string();
                    attached.extend(won.into_iter().map(|t| (key.clone(), t)));
                    config.authz.policies.insert(key, policy);
                    Ok(super::policy::attached(&missing))
                }
            }
        };
        let mut conditions = vec![condition_from(reason::ACCEPTED, &accepted, generation)];
        if accepted.is_ok() {
            conditions.push(match p.spec.mode {
                crd::Mode::Enforce => condition(
                    reason::ENFORCED,
                    true,
                    &Outcome::new(reason::ENFORCED, "requests it does not allow get 403"),
                    generation,
                ),
                crd::Mode::Shadow => condition(
                    reason::ENFORCED,
                    false,
                    &Outcome::new(
                        reason::SHADOW,
                        "shadow mode: what it would deny is logged and counted, and let through",
                    ),
                    generation,
                ),
            });
        }
        report.authorization_policies.insert(
            id,
            PolicyReport {
                status: crd::PolicyStatus { conditions },
                generation: p.metadata.generation,
                review: policy::review(p.spec.owner.as_ref()),
            },
        );
    }
    attached.sort();
    attached.dedup();
    attach(idx, config, mesh_parents, &attached);
}

/// What an invalid policy becomes: an ALLOW that matches nothing, or a DENY that matches
/// everything.
fn deny_all(id: String, spec: &AuthorizationPolicySpec) -> AuthzPolicy {
    let deny = spec.action == crd::Action::Deny;
    AuthzPolicy {
        id,
        action: if deny {
            AuthzAction::Deny
        } else {
            AuthzAction::Allow
        },
        shadow: spec.mode == crd::Mode::Shadow,
        rules: if deny {
            vec![AuthzRule::default()]
        } else {
            Vec::new()
        },
        jwt: Vec::new(),
    }
}

fn resolve(
    idx: &Index<'_>,
    gateways: &[GatewayState<'_>],
    routes: &[RouteView<'_>],
    ns: &str,
    t: &crd::PolicyTargetRef,
) -> Result<Vec<Attached>, String> {
    match (t.group.as_str(), t.kind.as_str()) {
        ("" | "core", "Namespace") if t.name == ns => Ok(vec![Attached::Namespace(ns.to_string())]),
        ("" | "core", "Namespace") => Err(format!(
            "Namespace {}: a policy may only target its own namespace",
            t.name
        )),
        _ => Ok(policy::resolve(idx, gateways, routes, ns, t)?
            .into_iter()
            .map(Attached::Target)
            .collect()),
    }
}

/// Records each policy on the listeners and rules it applies to, and the Service and
/// Namespace ones for the sidecars.
fn attach(
    idx: &Index<'_>,
    config: &mut Config,
    mesh_parents: &MeshParents,
    attached: &[(String, Attached)],
) {
    for l in &mut config.listeners {
        l.authz = attached
            .iter()
            .filter(|(_, a)| *a == Attached::Target(Target::Gateway(l.gateway.clone())))
            .map(|(id, _)| id.clone())
            .collect();
    }
    for (rule_id, rule) in &mut config.rules {
        let parents = mesh_parents
            .get(&(rule.kind, rule.route.clone()))
            .map_or(&[][..], Vec::as_slice);
        // The Services the rule reaches: its mesh frontends and its backends.
        let services: Vec<String> = parents
            .iter()
            .map(|s| format!("{s}:"))
            .chain(rule.backends.iter().filter_map(|b| match &b.backend {
                BackendRef::Service(k) => Some(k.0.rsplit_once(':')?.0.to_string() + ":"),
                BackendRef::Error { .. } => None,
            }))
            .collect();
        let reaches = |svc: &ObjectName| services.contains(&format!("{svc}:"));
        let in_namespace = |ns: &str| services.iter().any(|s| s.starts_with(&format!("{ns}/")));
        let mut ids: Vec<String> = attached
            .iter()
            .filter(|(_, a)| match a {
                Attached::Target(Target::Rule(r)) => r == rule_id,
                Attached::Target(Target::Route(kind, route)) => {
                    rule.kind == *kind && rule.route == *route
                }
                Attached::Target(Target::Service(svc)) => reaches(svc),
                Attached::Target(Target::Gateway(_)) => false,
                Attached::Namespace(ns) => in_namespace(ns),
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.dedup();
        rule.authz = ids;
    }
    let mut services: BTreeMap<ObjectName, Vec<String>> = BTreeMap::new();
    for (id, a) in attached {
        match a {
            Attached::Target(Target::Service(svc)) => {
                services.entry(svc.clone()).or_default().push(id.clone())
            }
            Attached::Namespace(ns) => config
                .authz
                .namespaces
                .entry(ns.clone())
                .or_default()
                .push(id.clone()),
            _ => {}
        }
    }
    config.authz.services = services
        .into_iter()
        .map(|(svc, policies)| service_policies(idx, svc, policies))
        .collect();
}

/// A Service's selector, and its ports with the pod ports they lead to.
fn service_policies(idx: &Index<'_>, svc: ObjectName, policies: Vec<String>) -> ServicePolicies {
    let spec = idx
        .service(&svc.namespace, &svc.name)
        .and_then(|s| s.spec.as_ref());
    let selector = spec.and_then(|s| s.selector.clone()).unwrap_or_default();
    let slices = idx.endpoint_slices(&svc.namespace, &svc.name);
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let mut target_ports: Vec<u16> = match &p.target_port {
                None => vec![port],
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok().into_iter().collect(),
                // A named port is resolved per pod; the EndpointSlices say to what.
                Some(IntOrString::String(_)) => slices
                    .iter()
                    .flat_map(|s| s.ports.iter().flatten())
                    .filter(|sp| sp.name == p.name)
                    .filter_map(|sp| u16::try_from(sp.port?).ok())
                    .collect(),
            };
            target_ports.sort_unstable();
            target_ports.dedup();
            Some(ServicePort { port, target_ports })
        })
        .collect();
    ServicePolicies {
        service: svc,
        selector,
        ports,
        policies,
    }
}

/// Validates a policy into the IR. Every mistake is named with its place in the spec.
fn compile(
    id: &ObjectName,
    spec: &AuthorizationPolicySpec,
    snapshot: &Snapshot,
) -> Result<AuthzPolicy, String> {
    if spec.target_refs.is_empty() {
        return Err("targetRefs must not be empty".into());
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        let at = |m: &str| format!("targetRefs[{i}]: {m}");
        match (t.group.as_str(), t.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway" | "HTTPRoute" | "GRPCRoute") | ("" | "core", "Service") => {}
            ("" | "core", "Namespace") if t.name == id.namespace => {}
            ("" | "core", "Namespace") => {
                return Err(at(&format!(
                    "a policy may only target its own namespace ({:?}), not {:?}",
                    id.namespace, t.name
                )));
            }
            (group, kind) => {
                return Err(at(&format!(
                    "kind {kind:?} in group {group:?} cannot be targeted; use a Gateway, HTTPRoute, GRPCRoute, Service or Namespace"
                )));
            }
        }
        if t.section_name.is_some() && !matches!(t.kind.as_str(), "HTTPRoute" | "GRPCRoute") {
            return Err(at("sectionName names a route rule: only routes have one"));
        }
    }
    if let Some(date) = spec.owner.as_ref().and_then(|o| o.review_by.as_deref())
        && policy::review_date(date).is_none()
    {
        return Err(format!(
            "owner.reviewBy {date:?} is not a date (YYYY-MM-DD)"
        ));
    }
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(r).map_err(|e| within(format!("rules[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let jwt = spec
        .jwt
        .iter()
        .enumerate()
        .map(|(i, j)| issuer(&id.namespace, j, snapshot).map_err(|e| format!("jwt[{i}].{e}")))
        .collect::<Result<Vec<_>, _>>()?;
    // The keys must decode here, or the data plane would refuse every token.
    weir_model::authz::Verifier::new(&jwt)?;
    Ok(AuthzPolicy {
        id: id.to_string(),
        action: match spec.action {
            crd::Action::Allow => AuthzAction::Allow,
            crd::Action::Deny => AuthzAction::Deny,
            crd::Action::Audit => AuthzAction::Audit,
        },
        shadow: spec.mode == crd::Mode::Shadow,
        rules,
        jwt,
    })
}

/// The key of a JWKS ConfigMap or Secret (the Kubernetes source keeps it, and `ca.crt`, of
/// every ConfigMap, and watches each Secret a policy names).
pub const JWKS_KEY: &str = "jwks";

fn issuer(
    ns: &str,
    j: &crd::JwtIssuer,
    snapshot: &Snapshot,
) -> Result<weir_model::authz::JwtProvider, String> {
    if j.issuer.is_empty() {
        return Err("issuer: must not be empty".into());
    }
    let r = &j.jwks_ref;
    let key = JWKS_KEY;
    let named = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.namespace.as_deref() == Some(ns) && meta.name.as_deref() == Some(r.name.as_str())
    };
    let jwks = match r.kind.as_deref().unwrap_or("ConfigMap") {
        "ConfigMap" => {
            let cm = snapshot
                .config_maps
                .iter()
                .find(|c| named(&c.metadata))
                .ok_or_else(|| format!("jwksRef: ConfigMap {ns}/{} not found", r.name))?;
            cm.data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
                .ok_or_else(|| format!("jwksRef: ConfigMap {ns}/{} has no key {key:?}", r.name))?
        }
        "Secret" => {
            let secret = snapshot
                .secrets
                .iter()
                .find(|s| named(&s.metadata))
                .ok_or_else(|| format!("jwksRef: Secret {ns}/{} not found", r.name))?;
            let bytes = super::tls::secret_field(secret, key)
                .ok_or_else(|| format!("jwksRef: Secret {ns}/{} has no key {key:?}", r.name))?;
            String::from_utf8(bytes)
                .map_err(|_| format!("jwksRef: Secret {ns}/{} key {key:?} is not UTF-8", r.name))?
        }
        other => {
            return Err(format!(
                "jwksRef.kind: {other:?} is neither ConfigMap nor Secret"
            ));
        }
    };
    let header = j
        .from_header
        .as_deref()
        .unwrap_or("authorization")
        .to_ascii_lowercase();
    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        return Err(format!("fromHeader: {header:?} is not a header name"));
    }
    Ok(weir_model::authz::JwtProvider {
        issuer: j.issuer.clone(),
        audiences: j.audiences.clone(),
        jwks,
        header,
        forward: j.forward_token,
    })
}

/// `groups` → `[groups]`; `[a][b]` → `[a, b]`.
fn claim_path(text: &str) -> Result<Vec<String>, String> {
    if !text.starts_with('[') {
        return if text.is_empty() {
            Err("claim: must not be empty".into())
        } else {
            Ok(vec![text.to_string()])
        };
    }
    let mut path = Vec::new();
    let mut rest = text;
    while let Some(inner) = rest.strip_prefix('[') {
        let (key, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("claim: {text:?} has an unclosed ["))?;
        if key.is_empty() {
            return Err(format!("claim: {text:?} has an empty []"));
        }
        path.push(key.to_string());
        rest = after;
    }
    if !rest.is_empty() {
        return Err(format!("claim: {text:?}: write [a][b] for a nested claim"));
    }
    Ok(path)
}

/// `place` and an error inside it: `place.field: why`, or `place: why` for the place itself
/// (errors about a whole entry start with `:`).
fn within(place: String, e: String) -> String {
    if e.starts_with(':') {
        format!("{place}{e}")
    } else {
        format!("{place}.{e}")
    }
}

fn rule(r: &crd::Rule) -> Result<AuthzRule, String> {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, f)| source(f).map_err(|e| within(format!("from[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let to =
        r.to.iter()
            .enumerate()
            .map(|(i, t)| operation(t).map_err(|e| within(format!("to[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
    let when = r
        .when
        .iter()
        .enumerate()
        .map(|(i, w)| condition_of(w).map_err(|e| within(format!("when[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AuthzRule { from, to, when })
}

fn source(f: &crd::From) -> Result<Source, String> {
    let s = Source {
        principals: principals("principals", &f.principals)?,
        not_principals: principals("notPrincipals", &f.not_principals)?,
        namespaces: patterns("namespaces", &f.namespaces)?,
        not_namespaces: patterns("notNamespaces", &f.not_namespaces)?,
        ip_blocks: blocks("ipBlocks", &f.ip_blocks)?,
        not_ip_blocks: blocks("notIpBlocks", &f.not_ip_blocks)?,
        request_principals: patterns("requestPrincipals", &f.request_principals)?,
        not_request_principals: patterns("notRequestPrincipals", &f.not_request_principals)?,
    };
    if s == Source::default() {
        return Err(": must set at least one field".into());
    }
    Ok(s)
}

fn operation(t: &crd::To) -> Result<Operation, String> {
    let o = Operation {
        methods: methods("methods", &t.methods)?,
        not_methods: methods("notMethods", &t.not_methods)?,
        paths: paths("paths", &t.paths)?,
        not_paths: paths("notPaths", &t.not_paths)?,
        ports: ports("ports", &t.ports)?,
        not_ports: ports("notPorts", &t.not_ports)?,
    };
    if o == Operation::default() {
        return Err(": must set at least one field".into());
    }
    Ok(o)
}

fn condition_of(w: &crd::When) -> Result<Condition, String> {
    let (header, claim) = match (&w.header, &w.claim) {
        (Some(h), None) => {
            let header = h.to_ascii_lowercase();
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(format!("header: {h:?} is not a header name"));
            }
            (Some(header), None)
        }
        (None, Some(c)) => (None, Some(claim_path(c)?)),
        _ => return Err(": set exactly one of header and claim".into()),
    };
    if w.values.is_empty() && w.not_values.is_empty() {
        return Err(": values or notValues must be set".into());
    }
    Ok(Condition {
        header,
        claim,
        values: patterns("values", &w.values)?,
        not_values: patterns("notValues", &w.not_values)?,
    })
}

/// Checks `*` placement: at most one, at the start or the end.
fn patterns(field: &str, list: &[String]) -> Result<Vec<String>, String> {
    for p in list {
        let inner = p.trim_start_matches('*').trim_end_matches('*');
        let stars = p.matches('*').count();
        if p.is_empty() || inner.contains('*') || (stars > 1 && p != "*") {
            return Err(format!(
                "{field}: {p:?} is not a pattern (exact, prefix*, *suffix or *)"
            ));
        }
    }
    Ok(list.to_vec())
}

/// SPIFFE IDs, with `spiffe://` added where Istio's style leaves it out.
fn principals(field: &str, list: &[String]) -> Result<Vec<String>, String> {
    Ok(patterns(field, list)?
        .into_iter()
        .map(|p| {
            if p.starts_with('*') || p.starts_with("spiffe://") {
                p
            } else {
                format!("spiffe://{p}")
            }
        })
        .collect())
}

fn paths(field: &str, list: &[String]) -> Result<Vec<String>, String> {
    for p in list {
        if !(p.starts_with('/') || p.starts_with('*')) {
            return Err(format!("{field}: {p:?} must start with / or *"));
        }
        if p.contains('?') {
            return Err(format!(
                "{field}: {p:?}: paths are matched without the query"
            ));
        }
    }
    patterns(field, list)
}

fn methods(field: &str, list: &[String]) -> Result<Vec<String>, String> {
    for m in list {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
            return Err(format!("{field}: {m:?} is not an upper-case HTTP method"));
        }
    }
    Ok(list.to_vec())
}

fn ports(field: &str, list: &[u16]) -> Result<Vec<u16>, String> {
    if list.contains(&0) {
        return Err(format!("{field}: 0 is not a port"));
    }
    Ok(list.to_vec())
}

fn blocks(field: &str, list: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    list.iter()
        .map(|b| {
            b.parse::<ipnet::IpNet>()
                .or_else(|_| b.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("{field}: {b:?} is not an IP address or CIDR block"))
        })
        .collect()
}
