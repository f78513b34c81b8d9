//! RateLimitPolicy: validation, target resolution (Gateway API policy attachment), and where
//! each policy applies in the config. The most specific policy wins, as GEP-713 asks: one
//! naming a route rule, then one naming the route, then one naming a Service the rule routes
//! to, then one naming the Gateway (recorded on its listeners).

use super::index::{GATEWAY_GROUP, Index};
use super::rules;
use super::state::RouteView;
use super::state::{GatewayState, age_order};
use super::status::{Outcome, PolicyReport, Review, StatusReport, condition, condition_from};
use crate::crd::{self, RateLimitPolicySpec};
use crate::source::Snapshot;
use std::collections::BTreeMap;
use std::str::FromStr;
use weir_model::{
    BackendRef, Config, FailureMode, KeyPart, ObjectName, RateLimit, RateLimitMode,
    RateLimitPolicy, RouteKind, RuleId,
};

pub(crate) mod reason {
    pub(crate) const ACCEPTED: &str = "Accepted";
    pub(crate) const INVALID: &str = "Invalid";
    pub(crate) const TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub(crate) const CONFLICTED: &str = "Conflicted";
    pub(crate) const ENFORCED: &str = "Enforced";
    pub(crate) const SHADOW: &str = "Shadow";
}

/// A resolved target, in the order of precedence (lower wins).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Target {
    Rule(RuleId),
    Route(RouteKind, ObjectName),
    Service(ObjectName),
    Gateway(ObjectName),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Rule(r) => write!(f, "rule {r}"),
            Target::Route(kind, id) => write!(f, "{kind} {id}"),
            Target::Service(id) => write!(f, "Service {id}"),
            Target::Gateway(id) => write!(f, "Gateway {id}"),
        }
    }
}

/// The Service frontends each route is attached to (GAMMA), by route kind and name.
pub(crate) type MeshParents = BTreeMap<(RouteKind, ObjectName), Vec<ObjectName>>;

pub(crate) fn apply(
    snapshot: &Snapshot,
    idx: &Index<'_>,
    gateways: &[GatewayState<'_>],
    routes: &[RouteView<'_>],
    mesh_parents: &MeshParents,
    config: &mut Config,
    report: &mut StatusReport,
) {
    let mut policies: Vec<&crd::RateLimitPolicy> = snapshot.rate_limit_policies.iter().collect();
    // Oldest first: on a conflict the older policy keeps the target.
    policies.sort_by(|a, b| {
        let id = |p: &crd::RateLimitPolicy| {
            ObjectName::new(
                p.metadata.namespace.as_deref().unwrap_or("default"),
                p.metadata.name.as_deref().unwrap_or_default(),
            )
        };
        age_order(
            a.metadata.creation_timestamp.as_ref(),
            &id(a),
            b.metadata.creation_timestamp.as_ref(),
            &id(b),
        )
    });
    let mut claimed: BTreeMap<Target, ObjectName> = BTreeMap::new();
    for p in policies {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let id = ObjectName::new(ns, p.metadata.name.as_deref().unwrap_or_default());
        let generation = p.metadata.generation;
        let compiled = compile(&id, &p.spec);
        let review = review(p.spec.owner.as_ref());
        let accepted = match compiled {
            Err(e) => Err(Outcome::new(reason::INVALID, e)),
            Ok(policy) => {
                let mut missing = Vec::new();
                let mut conflicts = Vec::new();
                let mut won = Vec::new();
                for t in &p.spec.target_refs {
                    match resolve(idx, gateways, routes, ns, t) {
                        Err(m) => missing.push(m),
                        Ok(targets) => {
                            for target in targets {
                                match claimed.get(&target) {
                                    Some(owner) => conflicts.push(format!(
                                        "{target} is already limited by the older policy {owner}"
                                    )),
                                    None => {
                                        claimed.insert(target.clone(), id.clone());
                                        won.push(target);
                                    }
                                }
                            }
                        }
                    }
                }
                if won.is_empty() {
                    if missing.is_empty() {
                        Err(Outcome::new(reason::CONFLICTED, conflicts.join("; ")))
                    } else {
                        Err(Outcome::new(
                            reason::TARGET_NOT_FOUND,
                            [missing, conflicts].concat().join("; "),
                        ))
                    }
                } else {
                    config.rate_limits.insert(policy.id.clone(), policy);
                    Ok(attached(&[missing, conflicts].concat()))
                }
            }
        };
        let mut conditions = vec![condition_from(reason::ACCEPTED, &accepted, generation)];
        if accepted.is_ok() {
            conditions.push(match p.spec.mode {
                crd::Mode::Enforce => condition(
                    reason::ENFORCED,
                    true,
                    &Outcome::new(
                        reason::ENFORCED,
                        "requests over a limit are rejected with 429",
                    ),
                    generation,
                ),
                crd::Mode::Shadow => condition(
                    reason::ENFORCED,
                    false,
                    &Outcome::new(
                        reason::SHADOW,
                        "shadow mode: requests over a limit are counted and logged, never rejected",
                    ),
                    generation,
                ),
            });
        }
        report.rate_limit_policies.insert(
            id.clone(),
            PolicyReport {
                status: crd::PolicyStatus { conditions },
                generation,
                review,
            },
        );
    }
    attach(config, mesh_parents, &claimed);
}

/// An owner's review date, when it is a date.
pub(super) fn review_date(date: &str) -> Option<jiff::civil::Date> {
    jiff::civil::Date::from_str(date).ok()
}

/// The owner's review date of a policy, for the `ReviewDue` condition.
pub(super) fn review(owner: Option<&crd::Owner>) -> Option<Review> {
    let o = owner?;
    Some(Review {
        date: review_date(o.review_by.as_deref()?)?,
        owner: match &o.contact {
            Some(c) => format!("{} ({c})", o.team),
            None => o.team.clone(),
        },
    })
}

/// Records on each rule and listener the policy that applies to it.
fn attach(config: &mut Config, mesh_parents: &MeshParents, claimed: &BTreeMap<Target, ObjectName>) {
    for (id, rule) in &mut config.rules {
        // A policy naming a Service also covers the mesh routes attached to that Service's
        // frontend, not only the rules sending traffic to its endpoints.
        let parents = mesh_parents
            .get(&(rule.kind, rule.route.clone()))
            .map_or(&[][..], Vec::as_slice);
        let mut best: Option<(&Target, &ObjectName)> = None;
        for (target, policy) in claimed {
            let applies = match target {
                Target::Rule(r) => r == id,
                Target::Route(kind, route) => rule.kind == *kind && rule.route == *route,
                Target::Service(svc) => {
                    parents.contains(svc)
                        || rule.backends.iter().any(|b| {
                            matches!(&b.backend, BackendRef::Service(k) if k.0.starts_with(&format!("{svc}:")))
                        })
                }
                Target::Gateway(_) => false,
            };
            if applies && best.is_none_or(|(t, _)| target < t) {
                best = Some((target, policy));
            }
        }
        rule.rate_limit = best.map(|(_, p)| p.to_string());
    }
    for l in &mut config.listeners {
        l.rate_limit = claimed
            .get(&Target::Gateway(l.gateway.clone()))
            .map(ToString::to_string);
    }
}

pub(super) fn resolve(
    idx: &Index<'_>,
    gateways: &[GatewayState<'_>],
    routes: &[RouteView<'_>],
    ns: &str,
    t: &crd::PolicyTargetRef,
) -> Result<Vec<Target>, String> {
    let what = format!("{} {ns}/{}", t.kind, t.name);
    match (t.group.as_str(), t.kind.as_str()) {
        (GATEWAY_GROUP, "Gateway") => {
            let id = ObjectName::new(ns, t.name.clone());
            if gateways.iter().any(|g| g.id == id && g.rejected.is_none()) {
                Ok(vec![Target::Gateway(id)])
            } else {
                Err(format!("{what} is not a Gateway Weir serves"))
            }
        }
        (GATEWAY_GROUP, kind @ ("HTTPRoute" | "GRPCRoute")) => {
            let kind = if kind == "HTTPRoute" {
                RouteKind::Http
            } else {
                RouteKind::Grpc
            };
            let id = ObjectName::new(ns, t.name.clone());
            let route = routes
                .iter()
                .find(|r| r.kind == kind && r.id == id)
                .ok_or_else(|| format!("{what} not found"))?;
            match &t.section_name {
                None => Ok(vec![Target::Route(kind, id)]),
                Some(section) => {
                    let rule = route
                        .rules
                        .iter()
                        .flatten()
                        .find(|r| r.rule.name.as_deref() == Some(section.as_str()))
                        .ok_or_else(|| format!("{what} has no rule named {section:?}"))?;
                    Ok(vec![Target::Rule(RuleId::new(kind, &id, rule.rule.index))])
                }
            }
        }
        ("" | "core", "Service") => match idx.service(ns, &t.name) {
            Some(_) => Ok(vec![Target::Service(ObjectName::new(ns, t.name.clone()))]),
            None => Err(format!("{what} not found")),
        },
        (group, kind) => Err(format!(
            "targets of kind {kind:?} in group {group:?} are not supported"
        )),
    }
}

/// Validates a policy's limits into the IR.
fn compile(id: &ObjectName, spec: &RateLimitPolicySpec) -> Result<RateLimitPolicy, String> {
    if spec.limits.is_empty() {
        return Err("limits must not be empty".into());
    }
    if spec.target_refs.is_empty() {
        return Err("targetRefs must not be empty".into());
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        let supported = matches!(
            (t.group.as_str(), t.kind.as_str()),
            (GATEWAY_GROUP, "Gateway" | "HTTPRoute" | "GRPCRoute") | ("" | "core", "Service")
        );
        if !supported {
            return Err(format!(
                "targetRefs[{i}]: kind {:?} in group {:?} cannot be targeted; use a Gateway, HTTPRoute, GRPCRoute or Service",
                t.kind, t.group
            ));
        }
    }
    if let Some(owner) = &spec.owner
        && let Some(date) = &owner.review_by
        && review_date(date).is_none()
    {
        return Err(format!(
            "owner.reviewBy {date:?} is not a date (YYYY-MM-DD)"
        ));
    }
    let mut limits = Vec::with_capacity(spec.limits.len());
    for (i, l) in spec.limits.iter().enumerate() {
        let at = |m: String| format!("limits[{i}] ({}): {m}", l.name);
        if l.name.is_empty() || limits.iter().any(|x: &RateLimit| x.name == l.name) {
            return Err(at("names must be non-empty and unique".into()));
        }
        if l.requests == 0 {
            return Err(at("requests must be at least 1".into()));
        }
        let window =
            weir_model::duration::parse(&l.window).map_err(|e| at(format!("window: {e}")))?;
        let window_ms = window.as_millis() as u64;
        if !(1..=86_400_000).contains(&window_ms) {
            return Err(at(format!(
                "window {:?} must be between 1ms and 24h",
                l.window
            )));
        }
        let mut key = Vec::with_capacity(l.key.len());
        for (j, part) in l.key.iter().enumerate() {
            let set = [
                part.client_ip.is_some(),
                part.header.is_some(),
                part.peer_identity.is_some(),
                part.route.is_some(),
            ];
            if set.iter().filter(|s| **s).count() != 1 {
                return Err(at(format!(
                    "key[{j}] must set exactly one of clientIP, header, peerIdentity, route"
                )));
            }
            key.push(match part {
                p if p.client_ip.is_some() => KeyPart::ClientIp,
                p if p.peer_identity.is_some() => KeyPart::PeerIdentity,
                p if p.route.is_some() => KeyPart::Route,
                p => {
                    let name = &p
                        .header
                        .as_ref()
                        .map(|h| h.name.clone())
                        .unwrap_or_default();
                    let lower = name.to_ascii_lowercase();
                    if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                    {
                        return Err(at(format!(
                            "key[{j}].header.name {name:?} is not a header name"
                        )));
                    }
                    KeyPart::Header(lower)
                }
            });
        }
        let when = l
            .when
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let headers: Vec<(&str, Option<&str>, &str)> = m
                    .headers
                    .iter()
                    .map(|h| (h.name.as_str(), h.type_.as_deref(), h.value.as_str()))
                    .collect();
                rules::limit_match(
                    m.path
                        .as_ref()
                        .map(|p| (p.type_.as_deref(), p.value.as_str())),
                    m.method.as_deref(),
                    &headers,
                )
                .map_err(|e| at(format!("when[{j}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        limits.push(RateLimit {
            name: l.name.clone(),
            requests: l.requests,
            burst: l.burst.unwrap_or(0),
            window_ms,
            key,
            when,
        });
    }
    Ok(RateLimitPolicy {
        id: id.to_string(),
        mode: match spec.mode {
            crd::Mode::Enforce => RateLimitMode::Enforce,
            crd::Mode::Shadow => RateLimitMode::Shadow,
        },
        failure_mode: match spec.failure_mode {
            crd::FailureMode::Local => FailureMode::Local,
            crd::FailureMode::Open => FailureMode::Open,
            crd::FailureMode::Closed => FailureMode::Closed,
        },
        response_headers: spec.response_headers,
        limits,
    })
}

/// A policy's Accepted outcome, naming the targets it could not attach to.
pub(super) fn attached(left_out: &[String]) -> Outcome {
    Outcome::new(
        reason::ACCEPTED,
        if left_out.is_empty() {
            "policy is attached to all its targets".to_string()
        } else {
            format!("attached, except: {}", left_out.join("; "))
        },
    )
}
