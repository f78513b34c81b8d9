//! Route attachment: which listeners each parentRef reaches, with which hostnames, and the
//! per-parent status that results.

use super::hostname;
use super::index::{GATEWAY_GROUP, Index};
use super::state::{Attachment, ParentOutcomes, ParentRef, RouteView};
use super::state::{GatewayState, age_order};
use super::status::{Outcome, StatusReport, condition, condition_from, reason};
use crate::CONTROLLER_NAME;
use gateway_api::experimental::grpcroutes::{
    GrpcRouteStatus, GrpcRouteStatusParents, GrpcRouteStatusParentsParentRef,
};
use gateway_api::experimental::httproutes::{
    HttpRouteStatus, HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::collections::{BTreeMap, BTreeSet};
use weir_model::RouteKind;

pub(crate) fn attach(
    idx: &Index<'_>,
    gateways: &mut [GatewayState<'_>],
    routes: &[RouteView<'_>],
) -> (Vec<Attachment>, ParentOutcomes) {
    let by_name: BTreeMap<_, usize> = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| (g.id.clone(), i))
        .collect();
    let mut attachments = Vec::new();
    let mut outcomes = ParentOutcomes::new();
    for (ri, route) in routes.iter().enumerate() {
        for (pi, p) in route.parent_refs.iter().enumerate() {
            let group = p.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let kind = p.kind.as_deref().unwrap_or("Gateway");
            if group != GATEWAY_GROUP || kind != "Gateway" {
                continue;
            }
            let ns = p.namespace.as_deref().unwrap_or(&route.id.namespace);
            let Some(&gi) = by_name.get(&weir_model::ObjectName::new(ns, p.name.clone())) else {
                continue;
            };
            let outcome = attach_parent(idx, &gateways[gi], route, p).map(|found| {
                for (li, hostnames) in found {
                    attachments.push(Attachment {
                        route: ri,
                        parent: pi,
                        gateway: gi,
                        listener: li,
                        hostnames,
                    });
                }
                Outcome::new(reason::ACCEPTED, "route is accepted")
            });
            outcomes.insert((ri, pi), outcome);
        }
    }
    let attachments = resolve_kind_conflicts(routes, attachments, &mut outcomes);
    for (gi, gw) in gateways.iter_mut().enumerate() {
        for (li, l) in gw.listeners.iter_mut().enumerate() {
            let attached: BTreeSet<usize> = attachments
                .iter()
                .filter(|a| a.gateway == gi && a.listener == li)
                .map(|a| a.route)
                .collect();
            l.attached_routes = attached.len() as i32;
        }
    }
    (attachments, outcomes)
}

/// The listeners a parentRef attaches to, with hostnames, or why it attaches to none.
fn attach_parent(
    idx: &Index<'_>,
    gw: &GatewayState<'_>,
    route: &RouteView<'_>,
    p: &ParentRef,
) -> Result<Vec<(usize, Vec<String>)>, Outcome> {
    if let Some(why) = route.invalid() {
        return Err(Outcome::new(reason::UNSUPPORTED_VALUE, why));
    }
    if gw.mesh {
        return Err(Outcome::new(
            reason::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "Gateway {} is a mesh Gateway ({}): attach the route to the Services it serves (parentRef kind Service) instead",
                gw.id,
                super::mesh::ANNOTATION
            ),
        ));
    }
    if let Some(r) = &gw.rejected {
        return Err(Outcome::new(
            reason::NOT_ALLOWED_BY_LISTENERS,
            format!("Gateway {} is not accepted: {}", gw.id, r.message),
        ));
    }
    let candidates: Vec<usize> = gw
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| p.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|(_, l)| p.port.is_none_or(|port| port == i32::from(l.port)))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        let mut what = Vec::new();
        if let Some(s) = &p.section_name {
            what.push(format!("named {s:?}"));
        }
        if let Some(port) = p.port {
            what.push(format!("on port {port}"));
        }
        return Err(Outcome::new(
            reason::NO_MATCHING_PARENT,
            format!("Gateway {} has no listener {}", gw.id, what.join(" ")),
        ));
    }
    let mut refusals = Vec::new();
    let mut allowed = Vec::new();
    for &li in &candidates {
        let l = &gw.listeners[li];
        if !l.usable() {
            refusals.push(format!("listener {} is not programmed", l.name));
        } else if !l.kinds.contains(&route.kind) {
            refusals.push(format!(
                "listener {} does not allow {}s",
                l.name, route.kind
            ));
        } else if !l.allows_namespace(idx, &gw.id.namespace, &route.id.namespace) {
            refusals.push(format!(
                "listener {} does not allow routes from namespace {}",
                l.name, route.id.namespace
            ));
        } else {
            allowed.push(li);
        }
    }
    if allowed.is_empty() {
        return Err(Outcome::new(
            reason::NOT_ALLOWED_BY_LISTENERS,
            refusals.join("; "),
        ));
    }
    let route_hosts = route.hostnames.as_deref().unwrap_or_default();
    let found: Vec<(usize, Vec<String>)> = allowed
        .into_iter()
        .filter_map(|li| {
            let lh = gw.listeners[li].hostname.as_deref();
            let hosts: Vec<String> = if route_hosts.is_empty() {
                vec![lh.unwrap_or("*").to_string()]
            } else {
                let set: BTreeSet<String> = route_hosts
                    .iter()
                    .filter_map(|h| hostname::intersect(lh, h))
                    .collect();
                set.into_iter().collect()
            };
            (!hosts.is_empty()).then_some((li, hosts))
        })
        .collect();
    if found.is_empty() {
        return Err(Outcome::new(
            reason::NO_MATCHING_LISTENER_HOSTNAME,
            format!(
                "no hostname of the route ({}) matches a listener of Gateway {} it may attach to",
                route_hosts.join(", "),
                gw.id
            ),
        ));
    }
    Ok(found)
}

/// HTTPRoutes and GRPCRoutes may not share a hostname on a listener: the older route keeps
/// it and the other is refused there, as the GRPCRoute spec requires.
fn resolve_kind_conflicts(
    routes: &[RouteView<'_>],
    mut attachments: Vec<Attachment>,
    outcomes: &mut ParentOutcomes,
) -> Vec<Attachment> {
    attachments.sort_by(|a, b| {
        let (ra, rb) = (&routes[a.route], &routes[b.route]);
        (a.gateway, a.listener)
            .cmp(&(b.gateway, b.listener))
            .then_with(|| age_order(ra.created, &ra.id, rb.created, &rb.id))
            .then_with(|| ra.kind.cmp(&rb.kind))
            .then_with(|| (a.route, a.parent).cmp(&(b.route, b.parent)))
    });
    let mut kept: Vec<Attachment> = Vec::new();
    // Kept attachments by listener and route kind: a clash needs the other kind on the same
    // listener, and scanning every kept attachment made this quadratic in routes.
    let mut groups: BTreeMap<(usize, usize, RouteKind), Vec<usize>> = BTreeMap::new();
    let mut refused: BTreeMap<(usize, usize), String> = BTreeMap::new();
    for a in attachments {
        let route = &routes[a.route];
        let others = groups
            .iter()
            .filter(|((g, l, k), _)| *g == a.gateway && *l == a.listener && *k != route.kind)
            .flat_map(|(_, kept_here)| kept_here.iter().map(|&i| &kept[i]));
        let clash = others.into_iter().find(|k| {
            k.hostnames.iter().any(|h| {
                a.hostnames
                    .iter()
                    .any(|o| hostname::covers(h, o) || hostname::covers(o, h))
            })
        });
        match clash {
            Some(k) => {
                let other = &routes[k.route];
                refused.insert(
                    (a.route, a.parent),
                    format!(
                        "{} {} already serves these hostnames on this listener; HTTPRoutes and GRPCRoutes may not share a hostname",
                        other.kind, other.id
                    ),
                );
            }
            None => {
                groups
                    .entry((a.gateway, a.listener, route.kind))
                    .or_default()
                    .push(kept.len());
                kept.push(a);
            }
        }
    }
    for ((ri, pi), why) in refused {
        if !kept.iter().any(|k| k.route == ri && k.parent == pi) {
            outcomes.insert(
                (ri, pi),
                Err(Outcome::new(reason::NOT_ALLOWED_BY_LISTENERS, why)),
            );
        }
    }
    kept
}

/// Writes every route's status: one entry per parentRef that names a Gateway of Weir's.
pub(crate) fn write_status(
    routes: &[RouteView<'_>],
    outcomes: &ParentOutcomes,
    report: &mut StatusReport,
) {
    for (ri, route) in routes.iter().enumerate() {
        let generation = route.generation;
        let resolved = match route.ref_problems.first() {
            None => Ok(Outcome::new(
                reason::RESOLVED_REFS,
                "all references resolved",
            )),
            Some(first) => Err(Outcome::new(
                first.reason,
                route
                    .ref_problems
                    .iter()
                    .map(|p| p.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        };
        let dropped = route.dropped_rules();
        let mut parents: Vec<(ParentRef, Vec<Condition>)> = Vec::new();
        for (pi, p) in route.parent_refs.iter().enumerate() {
            let Some(outcome) = outcomes.get(&(ri, pi)) else {
                continue;
            };
            let mut conditions = vec![
                condition_from(reason::ACCEPTED, outcome, generation),
                condition_from(reason::RESOLVED_REFS, &resolved, generation),
            ];
            if outcome.is_ok() && !dropped.is_empty() {
                conditions.push(condition(
                    reason::PARTIALLY_INVALID,
                    true,
                    &Outcome::new(
                        reason::UNSUPPORTED_VALUE,
                        format!("Dropped Rule(s): {}", dropped.join("; ")),
                    ),
                    generation,
                ));
            }
            // The route is served either way; this only says which settings fell back to
            // their defaults, so it neither rejects the route nor fails ResolvedRefs.
            if !route.annotation_problems.is_empty() {
                conditions.push(condition(
                    reason::ANNOTATIONS_IGNORED,
                    true,
                    &Outcome::new(
                        reason::INVALID_ANNOTATION,
                        route.annotation_problems.join("; "),
                    ),
                    generation,
                ));
            }
            let (group, kind) = if p.is_service() {
                ("", "Service")
            } else {
                (GATEWAY_GROUP, "Gateway")
            };
            let explicit = ParentRef {
                group: Some(group.into()),
                kind: Some(kind.into()),
                namespace: Some(
                    p.namespace
                        .clone()
                        .unwrap_or_else(|| route.id.namespace.clone()),
                ),
                ..p.clone()
            };
            parents.push((explicit, conditions));
        }
        if parents.is_empty() {
            let why = if route.parent_refs.is_empty() {
                "route has no parentRefs".to_string()
            } else {
                let names: Vec<String> = route
                    .parent_refs
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {}/{}",
                            p.kind.as_deref().unwrap_or("Gateway"),
                            p.namespace.as_deref().unwrap_or(&route.id.namespace),
                            p.name
                        )
                    })
                    .collect();
                format!(
                    "no parentRef names a Gateway served by Weir, or a Service while a Gateway of Weir's serves the mesh: {}",
                    names.join(", ")
                )
            };
            report
                .unattached_routes
                .insert((route.kind, route.id.clone()), why);
            continue;
        }
        match route.kind {
            RouteKind::Http => {
                let parents = parents
                    .into_iter()
                    .map(|(p, conditions)| HttpRouteStatusParents {
                        conditions,
                        controller_name: CONTROLLER_NAME.into(),
                        parent_ref: HttpRouteStatusParentsParentRef {
                            group: p.group,
                            kind: p.kind,
                            name: p.name,
                            namespace: p.namespace,
                            port: p.port,
                            section_name: p.section_name,
                        },
                    })
                    .collect();
                report
                    .http_routes
                    .insert(route.id.clone(), HttpRouteStatus { parents });
            }
            RouteKind::Grpc => {
                let parents = parents
                    .into_iter()
                    .map(|(p, conditions)| GrpcRouteStatusParents {
                        conditions,
                        controller_name: CONTROLLER_NAME.into(),
                        parent_ref: GrpcRouteStatusParentsParentRef {
                            group: p.group,
                            kind: p.kind,
                            name: p.name,
                            namespace: p.namespace,
                            port: p.port,
                            section_name: p.section_name,
                        },
                    })
                    .collect();
                report
                    .grpc_routes
                    .insert(route.id.clone(), GrpcRouteStatus { parents });
            }
            // Only routes are collected, never a Service's default rule.
            RouteKind::Service => {}
        }
    }
}
