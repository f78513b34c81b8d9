//! The status translation would write, object by object, in the Gateway API's own types so
//! that it is exactly what lands in each status subresource.
//!
//! Translation has no clock, so every condition leaves with `lastTransitionTime` at the Unix
//! epoch; whoever writes or prints the report stamps it ([`StatusReport::stamp`]).

use crate::crd::PolicyStatus;
use std::fmt::Write;
use weir_model::{ObjectName, RouteKind};

/// The condition a policy gets once its owner's review date has passed.
pub(crate) const REVIEW_DUE: &str = "ReviewDue";
use gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicyStatus;
use gateway_api::experimental::gatewayclasses::GatewayClassStatus;
use gateway_api::experimental::gateways::GatewayStatus;
use gateway_api::experimental::grpcroutes::GrpcRouteStatus;
use gateway_api::experimental::httproutes::HttpRouteStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusReport {
    /// GatewayClasses with Weir's controllerName, by name.
    pub gateway_classes: BTreeMap<String, GatewayClassStatus>,
    /// Gateways of those classes.
    pub gateways: BTreeMap<ObjectName, GatewayStatus>,
    /// HTTPRoutes with at least one parentRef to one of those Gateways; `parents` holds only
    /// Weir's entries.
    pub http_routes: BTreeMap<ObjectName, HttpRouteStatus>,
    pub grpc_routes: BTreeMap<ObjectName, GrpcRouteStatus>,
    /// Routes that name no Gateway of Weir's: nobody writes their status, which is worth
    /// telling a user who expected them to work.
    pub unattached_routes: BTreeMap<(RouteKind, ObjectName), String>,
    /// RateLimitPolicies, with their generation and owner review date (the `ReviewDue`
    /// condition depends on the date, so [`StatusReport::stamp`] adds it).
    pub rate_limit_policies: BTreeMap<ObjectName, PolicyReport>,
    /// AuthorizationPolicies, likewise.
    pub authorization_policies: BTreeMap<ObjectName, PolicyReport>,
    /// BackendTLSPolicies with at least one ancestor (a Gateway routing to a target); the
    /// `ancestors` hold only Weir's entries.
    pub backend_tls_policies: BTreeMap<ObjectName, BackendTlsPolicyStatus>,
}

/// A policy's status and what its date-dependent conditions need.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyReport {
    pub status: PolicyStatus,
    pub generation: Option<i64>,
    pub review: Option<Review>,
}

/// The owner's review date of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub date: jiff::civil::Date,
    /// Team, and contact when given.
    pub owner: String,
}

impl StatusReport {
    /// Sets every condition's `lastTransitionTime`, and adds the conditions that depend on
    /// the date: `ReviewDue` on a policy whose owner's review date has passed.
    pub fn stamp(&mut self, now: jiff::Timestamp) {
        let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
        for p in self
            .rate_limit_policies
            .values_mut()
            .chain(self.authorization_policies.values_mut())
        {
            p.status.conditions.retain(|c| c.type_ != REVIEW_DUE);
            if let Some(r) = &p.review
                && r.date < today
            {
                p.status.conditions.push(condition(
                    REVIEW_DUE,
                    true,
                    &Outcome::new(
                        "ReviewDateExpired",
                        format!("owner {} was to review this policy by {}", r.owner, r.date),
                    ),
                    p.generation,
                ));
            }
        }
        let mut all: Vec<&mut Condition> = Vec::new();
        for p in self
            .rate_limit_policies
            .values_mut()
            .chain(self.authorization_policies.values_mut())
        {
            all.extend(p.status.conditions.iter_mut());
        }
        for s in self.gateway_classes.values_mut() {
            all.extend(s.conditions.iter_mut().flatten());
        }
        for s in self.gateways.values_mut() {
            all.extend(s.conditions.iter_mut().flatten());
            for l in s.listeners.iter_mut().flatten() {
                all.extend(l.conditions.iter_mut());
            }
        }
        for s in self.http_routes.values_mut() {
            for p in &mut s.parents {
                all.extend(p.conditions.iter_mut());
            }
        }
        for s in self.grpc_routes.values_mut() {
            for p in &mut s.parents {
                all.extend(p.conditions.iter_mut());
            }
        }
        for s in self.backend_tls_policies.values_mut() {
            for a in &mut s.ancestors {
                all.extend(a.conditions.iter_mut());
            }
        }
        for c in all {
            c.last_transition_time = Time(now);
        }
    }
}

impl StatusReport {
    /// What needs a person's attention, one line per condition: each condition that says
    /// something is wrong (`Accepted=False`, `Conflicted=True`), each that holds for an
    /// unusual reason (`Accepted=True (ListenersNotValid)`), and each route that names no
    /// Gateway of Weir's. The gateway logs these at WARN and lists them in `/config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut flag = |label: &dyn std::fmt::Display, conds: &[Condition]| {
            for c in conds.iter().filter(|c| needs_attention(c)) {
                out.push(format!(
                    "{label}: {}={} ({}: {})",
                    c.type_, c.status, c.reason, c.message
                ));
            }
        };
        for (name, s) in &self.gateway_classes {
            flag(&format_args!("GatewayClass {name}"), conds(&s.conditions));
        }
        for (id, s) in &self.gateways {
            flag(&format_args!("Gateway {id}"), conds(&s.conditions));
            for l in s.listeners.iter().flatten() {
                flag(
                    &format_args!("Gateway {id} listener {}", l.name),
                    &l.conditions,
                );
            }
        }
        for (kind, id, parent, conditions) in self.route_parents() {
            flag(&format_args!("{kind} {id} -> {parent}"), conditions);
        }
        for (id, p) in &self.rate_limit_policies {
            flag(&format_args!("RateLimitPolicy {id}"), &p.status.conditions);
        }
        for (id, p) in &self.authorization_policies {
            flag(
                &format_args!("AuthorizationPolicy {id}"),
                &p.status.conditions,
            );
        }
        for (id, gateway, conditions) in self.backend_tls_ancestors() {
            flag(
                &format_args!("BackendTLSPolicy {id} -> {gateway}"),
                conditions,
            );
        }
        for ((kind, id), why) in &self.unattached_routes {
            out.push(format!("{kind} {id}: not attached: {why}"));
        }
        out
    }
}

impl StatusReport {
    /// Each route parent's conditions, HTTPRoutes first: (kind, route, parent as
    /// [`parent_name`] spells it, conditions).
    pub(crate) fn route_parents(&self) -> Vec<(&'static str, &ObjectName, String, &[Condition])> {
        let http = self.http_routes.iter().flat_map(|(id, s)| {
            s.parents.iter().map(move |p| {
                let r = &p.parent_ref;
                let parent = parent_name(
                    r.kind.as_deref(),
                    &r.namespace,
                    &r.name,
                    &r.section_name,
                    r.port,
                );
                ("HTTPRoute", id, parent, p.conditions.as_slice())
            })
        });
        let grpc = self.grpc_routes.iter().flat_map(|(id, s)| {
            s.parents.iter().map(move |p| {
                let r = &p.parent_ref;
                let parent = parent_name(
                    r.kind.as_deref(),
                    &r.namespace,
                    &r.name,
                    &r.section_name,
                    r.port,
                );
                ("GRPCRoute", id, parent, p.conditions.as_slice())
            })
        });
        http.chain(grpc).collect()
    }

    /// Each BackendTLSPolicy ancestor's conditions: (policy, ancestor as [`parent_name`]
    /// spells it, conditions).
    pub(crate) fn backend_tls_ancestors(&self) -> Vec<(&ObjectName, String, &[Condition])> {
        self.backend_tls_policies
            .iter()
            .flat_map(|(id, s)| {
                s.ancestors.iter().map(move |a| {
                    let r = &a.ancestor_ref;
                    let gateway = parent_name(
                        r.kind.as_deref(),
                        &r.namespace,
                        &r.name,
                        &r.section_name,
                        r.port,
                    );
                    (id, gateway, a.conditions.as_slice())
                })
            })
            .collect()
    }
}

fn conds(c: &Option<Vec<Condition>>) -> &[Condition] {
    c.as_deref().unwrap_or_default()
}

/// Condition types that read well when False: `Conflicted=False` is the healthy state.
pub(crate) fn is_negative(type_: &str) -> bool {
    matches!(
        type_,
        reason::CONFLICTED | reason::PARTIALLY_INVALID | REVIEW_DUE | reason::ANNOTATIONS_IGNORED
    )
}

/// Whether a condition says something is wrong.
pub(crate) fn is_bad(c: &Condition) -> bool {
    (c.status == "True") == is_negative(&c.type_)
}

/// Wrong, or right for a reason other than the usual one (a Gateway accepted with some of
/// its listeners invalid).
fn needs_attention(c: &Condition) -> bool {
    is_bad(c) || (!is_negative(&c.type_) && c.reason != c.type_)
}

/// How `weir-controller check` and the warnings name a route parent or policy ancestor.
fn parent_name(
    kind: Option<&str>,
    ns: &Option<String>,
    name: &str,
    section: &Option<String>,
    port: Option<i32>,
) -> String {
    let mut s = format!(
        "{} {}/{name}",
        kind.unwrap_or("Gateway"),
        ns.as_deref().unwrap_or("default")
    );
    if let Some(section) = section {
        let _ = write!(s, " section {section}");
    }
    if let Some(port) = port {
        let _ = write!(s, " port {port}");
    }
    s
}

/// A condition outcome: the reason and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub reason: &'static str,
    pub message: String,
}

impl Outcome {
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Builds a condition. `generation` is the object's `metadata.generation`; objects read from
/// files have none, and the API server would give a new object generation 1.
pub(crate) fn condition(
    type_: &str,
    status: bool,
    outcome: &Outcome,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: outcome.reason.into(),
        message: outcome.message.clone(),
        observed_generation: Some(generation.unwrap_or(1)),
        last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
    }
}

/// `True` with `reason` when `result` is Ok, else `False` with the error's reason.
pub(crate) fn condition_from(
    type_: &str,
    result: &Result<Outcome, Outcome>,
    generation: Option<i64>,
) -> Condition {
    match result {
        Ok(o) => condition(type_, true, o, generation),
        Err(o) => condition(type_, false, o, generation),
    }
}

/// Condition types and reasons, spelled as the Gateway API defines them.
pub(crate) mod reason {
    pub(crate) const ACCEPTED: &str = "Accepted";
    pub(crate) const PROGRAMMED: &str = "Programmed";
    pub(crate) const RESOLVED_REFS: &str = "ResolvedRefs";
    pub(crate) const CONFLICTED: &str = "Conflicted";
    pub(crate) const PARTIALLY_INVALID: &str = "PartiallyInvalid";
    /// Weir's own route-parent condition, domain-prefixed as the Gateway API asks of
    /// implementation-specific types: `weir.dev/*` annotations that were ignored.
    pub(crate) const ANNOTATIONS_IGNORED: &str = "weir.dev/AnnotationsIgnored";

    pub(crate) const INVALID: &str = "Invalid";
    pub(crate) const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub(crate) const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub(crate) const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub(crate) const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub(crate) const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub(crate) const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub(crate) const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub(crate) const NO_CONFLICTS: &str = "NoConflicts";
    pub(crate) const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub(crate) const PROTOCOL_CONFLICT: &str = "ProtocolConflict";

    pub(crate) const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub(crate) const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub(crate) const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub(crate) const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub(crate) const INVALID_KIND: &str = "InvalidKind";
    pub(crate) const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
    pub(crate) const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";
    pub(crate) const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
    pub(crate) const INVALID_ANNOTATION: &str = "InvalidAnnotation";
}
