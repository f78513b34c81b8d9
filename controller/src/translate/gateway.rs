//! GatewayClasses, Gateways and their listeners: which are Weir's, which listeners are
//! valid, and which conflict.

use super::hostname;
use super::index::{GATEWAY_GROUP, Index};
use super::state::{AllowedNamespaces, GatewayState, ListenerState, age_order};
use super::status::{Outcome, StatusReport, condition, condition_from, reason};
use super::tls::resolve_certificates;
use crate::CONTROLLER_NAME;
use crate::source::Snapshot;
use gateway_api::experimental::gatewayclasses::GatewayClassStatus;
use gateway_api::experimental::gateways::{
    GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From, GatewayListenersTlsMode,
    GatewayStatus, GatewayStatusListeners, GatewayStatusListenersSupportedKinds,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;
use std::collections::{BTreeMap, BTreeSet};
use weir_model::{ClientValidation, ObjectName, Protocol, RouteKind};

/// The names of GatewayClasses Weir accepted; their statuses go into `report`.
pub(crate) fn classes(snapshot: &Snapshot, report: &mut StatusReport) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    for class in &snapshot.gateway_classes {
        if class.spec.controller_name != CONTROLLER_NAME {
            continue;
        }
        let Some(name) = class.metadata.name.clone() else {
            continue;
        };
        // Weir takes no parameters, so any parametersRef points at something it cannot use.
        let result = match &class.spec.parameters_ref {
            None => {
                accepted.insert(name.clone());
                Ok(Outcome::new(
                    reason::ACCEPTED,
                    "Weir serves Gateways of this class",
                ))
            }
            Some(p) => Err(Outcome::new(
                reason::INVALID_PARAMETERS,
                format!(
                    "parametersRef {}/{} {}: Weir's GatewayClass takes no parameters",
                    p.group, p.kind, p.name
                ),
            )),
        };
        report.gateway_classes.insert(
            name,
            GatewayClassStatus {
                conditions: Some(vec![condition_from(
                    reason::ACCEPTED,
                    &result,
                    class.metadata.generation,
                )]),
                supported_features: None,
            },
        );
    }
    accepted
}

/// Gateways of accepted classes, oldest first (the order that settles cross-Gateway
/// conflicts), with their listeners validated.
pub(crate) fn gateways<'a>(
    snapshot: &'a Snapshot,
    idx: &Index<'a>,
    classes: &BTreeSet<String>,
) -> Vec<GatewayState<'a>> {
    let mut out: Vec<GatewayState<'a>> = snapshot
        .gateways
        .iter()
        .filter(|g| classes.contains(&g.spec.gateway_class_name))
        .map(|g| {
            let ns = g.metadata.namespace.as_deref().unwrap_or("default");
            let (mesh, mesh_problem) = match super::mesh::annotation(&g.metadata) {
                Ok(m) => (m, None),
                Err(e) => (false, Some(Outcome::new(reason::INVALID_PARAMETERS, e))),
            };
            let rejected = g
                .spec
                .infrastructure
                .as_ref()
                .and_then(|i| i.parameters_ref.as_ref())
                .map(|p| {
                    Outcome::new(
                        reason::INVALID_PARAMETERS,
                        format!(
                            "infrastructure.parametersRef {}/{} {}: Weir takes no parameters",
                            p.group, p.kind, p.name
                        ),
                    )
                })
                .or(mesh_problem);
            let mut seen_names = BTreeSet::new();
            let mut listeners: Vec<ListenerState> = g
                .spec
                .listeners
                .iter()
                .map(|l| {
                    let mut state = listener(idx, ns, l);
                    if !seen_names.insert(l.name.as_str()) {
                        state.accepted = Err(Outcome::new(
                            reason::UNSUPPORTED_VALUE,
                            format!("listener name {:?} is used twice", l.name),
                        ));
                    }
                    state
                })
                .collect();
            super::frontend::apply(snapshot, idx, g, &mut listeners);
            GatewayState {
                obj: g,
                id: ObjectName::new(ns, g.metadata.name.clone().unwrap_or_default()),
                created: g.metadata.creation_timestamp.as_ref(),
                rejected,
                mesh,
                listeners,
            }
        })
        .collect();
    out.sort_by(|a, b| age_order(a.created, &a.id, b.created, &b.id));
    mark_conflicts(&mut out);
    out
}

fn listener(idx: &Index<'_>, gateway_ns: &str, l: &GatewayListeners) -> ListenerState {
    let mut accepted: Result<Outcome, Outcome> =
        Ok(Outcome::new(reason::ACCEPTED, "listener is valid"));
    let mut reject = |o: Outcome| {
        if accepted.is_ok() {
            accepted = Err(o);
        }
    };
    let protocol = match l.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        other => {
            reject(Outcome::new(
                reason::UNSUPPORTED_PROTOCOL,
                format!("protocol {other:?} is not supported; Weir supports HTTP and HTTPS"),
            ));
            None
        }
    };
    let port = match u16::try_from(l.port) {
        Ok(p) if p > 0 => p,
        _ => {
            reject(Outcome::new(
                reason::UNSUPPORTED_VALUE,
                format!("port {} is out of range 1-65535", l.port),
            ));
            0
        }
    };
    let hostname = match l.hostname.as_deref().map(|h| hostname::normalize(h, true)) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            reject(Outcome::new(reason::UNSUPPORTED_VALUE, e));
            None
        }
    };

    let allowed = l.allowed_routes.as_ref();
    let namespaces = match allowed.and_then(|a| a.namespaces.as_ref()) {
        None => AllowedNamespaces::Same,
        Some(n) => match n.from.as_ref().unwrap_or(&From::Same) {
            From::Same => AllowedNamespaces::Same,
            From::All => AllowedNamespaces::All,
            From::Selector => match selector(n.selector.as_ref()) {
                Ok(s) => AllowedNamespaces::Selector(s),
                Err(e) => {
                    reject(Outcome::new(
                        reason::UNSUPPORTED_VALUE,
                        format!("allowedRoutes.namespaces.selector: {e}"),
                    ));
                    AllowedNamespaces::Same
                }
            },
        },
    };

    let mut ref_problems = Vec::new();
    // Route kinds: those asked for that Weir supports; by default, all the protocol allows.
    let kinds = match (protocol, allowed.and_then(|a| a.kinds.as_ref())) {
        (None, _) => Vec::new(),
        (Some(_), None) => vec![RouteKind::Http, RouteKind::Grpc],
        (Some(_), Some(asked)) => {
            let mut kinds = Vec::new();
            for k in asked {
                let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                let kind = match (group, k.kind.as_str()) {
                    (GATEWAY_GROUP, "HTTPRoute") => Some(RouteKind::Http),
                    (GATEWAY_GROUP, "GRPCRoute") => Some(RouteKind::Grpc),
                    _ => None,
                };
                match kind {
                    Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
                    Some(_) => {}
                    None => ref_problems.push(Outcome::new(
                        reason::INVALID_ROUTE_KINDS,
                        format!(
                            "route kind {group}/{} is not supported on {} listeners",
                            k.kind, l.protocol
                        ),
                    )),
                }
            }
            kinds
        }
    };

    let mut certificates = Vec::new();
    match (protocol, &l.tls) {
        (Some(Protocol::Https), None) => ref_problems.insert(
            0,
            Outcome::new(
                reason::INVALID_CERTIFICATE_REF,
                "HTTPS listener has no tls.certificateRefs",
            ),
        ),
        (Some(Protocol::Https), Some(tls)) => {
            if tls.mode == Some(GatewayListenersTlsMode::Passthrough) {
                reject(Outcome::new(
                    reason::UNSUPPORTED_VALUE,
                    "tls.mode Passthrough is not valid for HTTPS listeners (it needs a TLS listener, which Weir does not support)",
                ));
            }
            let refs = tls.certificate_refs.as_deref().unwrap_or_default();
            if refs.is_empty() {
                ref_problems.insert(
                    0,
                    Outcome::new(
                        reason::INVALID_CERTIFICATE_REF,
                        "HTTPS listener has no tls.certificateRefs",
                    ),
                );
            }
            let (certs, problems) = resolve_certificates(idx, gateway_ns, refs);
            certificates = certs;
            // Certificate problems come first: they are the likelier cause of an outage.
            for (i, p) in problems.into_iter().enumerate() {
                ref_problems.insert(i, p);
            }
        }
        (Some(Protocol::Http), Some(_)) => reject(Outcome::new(
            reason::UNSUPPORTED_VALUE,
            "tls must not be set on an HTTP listener",
        )),
        (Some(Protocol::Http), None) | (None, _) => {}
    }
    let resolved_refs = match ref_problems.first() {
        None => Ok(Outcome::new(
            reason::RESOLVED_REFS,
            "all references resolved",
        )),
        Some(first) => Err(Outcome::new(
            first.reason,
            ref_problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    };

    ListenerState {
        name: l.name.clone(),
        port,
        protocol,
        hostname,
        namespaces,
        kinds,
        certificates,
        client_validation: None,
        accepted,
        resolved_refs,
        conflict: None,
        attached_routes: 0,
    }
}

/// The selector types are generated per field; all share the LabelSelector wire shape, so
/// they are read as one and evaluated by kube's own selector code.
fn selector<T: serde::Serialize>(s: Option<&T>) -> Result<Selector, String> {
    let s = s.ok_or("from: Selector needs a selector")?;
    let ls: LabelSelector = serde_json::to_value(s)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())?;
    Selector::try_from(ls).map_err(|e| e.to_string())
}

/// Listeners on one port must agree on the protocol and differ in hostname. Within a
/// Gateway no listener wins a conflict (the spec forbids picking one); across Gateways, which
/// Weir serves from the same ports, the older Gateway keeps the port. Gateways sharing an
/// HTTPS port must also agree on its client certificate validation (`spec.tls.frontend`):
/// one TLS handshake serves every hostname on the port, so the port has one policy, and a
/// newer Gateway can neither impose its own on the older one's clients nor serve without
/// the check it asked for.
fn mark_conflicts(gateways: &mut [GatewayState<'_>]) {
    // Port → (protocol, owning Gateway, hostnames taken, client validation), filled oldest
    // Gateway first.
    type Owner = (
        Protocol,
        ObjectName,
        BTreeSet<Option<String>>,
        Option<ClientValidation>,
    );
    let mut owners: BTreeMap<u16, Owner> = BTreeMap::new();
    for gw in gateways.iter_mut() {
        let candidates = |l: &ListenerState| l.accepted.is_ok() && l.protocol.is_some();
        let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, l) in gw.listeners.iter().enumerate() {
            if candidates(l) {
                by_port.entry(l.port).or_default().push(i);
            }
        }
        for (port, members) in by_port {
            let protocols: BTreeSet<Protocol> = members
                .iter()
                .filter_map(|&i| gw.listeners[i].protocol)
                .collect();
            if protocols.len() > 1 {
                for &i in &members {
                    gw.listeners[i].conflict = Some(Outcome::new(
                        reason::PROTOCOL_CONFLICT,
                        format!("listeners of this Gateway use different protocols on port {port}"),
                    ));
                }
                continue;
            }
            let mut count: BTreeMap<&Option<String>, usize> = BTreeMap::new();
            for &i in &members {
                *count.entry(&gw.listeners[i].hostname).or_default() += 1;
            }
            let dup: BTreeSet<Option<String>> = count
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|(h, _)| h.clone())
                .collect();
            for &i in &members {
                let l = &mut gw.listeners[i];
                if dup.contains(&l.hostname) {
                    l.conflict = Some(Outcome::new(
                        reason::HOSTNAME_CONFLICT,
                        format!(
                            "another listener of this Gateway uses port {port} with hostname {}",
                            l.hostname.as_deref().unwrap_or("(none)")
                        ),
                    ));
                }
            }
        }
        // Against older Gateways.
        for l in gw
            .listeners
            .iter_mut()
            .filter(|l| l.conflict.is_none() && candidates(l))
        {
            let Some((proto, owner, hosts, validation)) = owners.get(&l.port) else {
                continue;
            };
            if owner == &gw.id {
                continue;
            }
            if Some(*proto) != l.protocol {
                l.conflict = Some(Outcome::new(
                    reason::PROTOCOL_CONFLICT,
                    format!(
                        "port {} serves {proto} for the older Gateway {owner}",
                        l.port
                    ),
                ));
            } else if l.protocol == Some(Protocol::Https) && *validation != l.client_validation {
                l.conflict = Some(Outcome::new(
                    reason::PROTOCOL_CONFLICT,
                    format!(
                        "port {}'s client certificate check is the older Gateway {owner}'s (spec.tls.frontend), and this Gateway's differs: {}",
                        l.port,
                        difference(validation.as_ref(), l.client_validation.as_ref()),
                    ),
                ));
            } else if hosts.contains(&l.hostname) {
                l.conflict = Some(Outcome::new(
                    reason::HOSTNAME_CONFLICT,
                    format!(
                        "the older Gateway {owner} already serves hostname {} on port {}",
                        l.hostname.as_deref().unwrap_or("(none)"),
                        l.port
                    ),
                ));
            }
        }
        if gw.rejected.is_some() {
            continue;
        }
        for l in gw
            .listeners
            .iter()
            .filter(|l| l.conflict.is_none() && candidates(l))
        {
            let entry = owners.entry(l.port).or_insert_with(|| {
                (
                    l.protocol.unwrap_or(Protocol::Http),
                    gw.id.clone(),
                    BTreeSet::new(),
                    l.client_validation.clone(),
                )
            });
            entry.2.insert(l.hostname.clone());
        }
    }
}

/// How a newer Gateway's client validation for a port differs from the owner's.
fn difference(owner: Option<&ClientValidation>, mine: Option<&ClientValidation>) -> &'static str {
    match (owner, mine) {
        (None, _) => "the port checks none, and this Gateway asks for a check",
        (Some(_), None) => "the port checks them, and this Gateway sets no check",
        (Some(a), Some(b)) if a.optional != b.optional => {
            "the modes differ (AllowValidOnly and AllowInsecureFallback)"
        }
        _ => "the CA certificates differ",
    }
}

/// Writes the status of every Gateway, once routes have been counted.
pub(crate) fn write_status(gateways: &[GatewayState<'_>], report: &mut StatusReport) {
    for gw in gateways {
        let generation = gw.obj.metadata.generation;
        let usable = gw.listeners.iter().filter(|l| l.usable()).count();
        let all_fine = gw.listeners.iter().all(|l| {
            l.accepted.is_ok() && l.resolved_refs.is_ok() && l.conflict.is_none() && l.usable()
        });
        let invalid_names = || {
            gw.listeners
                .iter()
                .filter(|l| !l.usable() || l.resolved_refs.is_err())
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let accepted = if let Some(r) = &gw.rejected {
            Err(r.clone())
        } else if usable == 0 {
            Err(Outcome::new(
                reason::LISTENERS_NOT_VALID,
                format!("no listener is valid: {}", invalid_names()),
            ))
        } else if !all_fine {
            Ok(Outcome::new(
                reason::LISTENERS_NOT_VALID,
                format!("some listeners are not valid: {}", invalid_names()),
            ))
        } else {
            Ok(Outcome::new(reason::ACCEPTED, "Gateway is accepted"))
        };
        let programmed = if accepted.is_err() {
            Err(Outcome::new(reason::INVALID, "Gateway is not accepted"))
        } else {
            Ok(Outcome::new(
                reason::PROGRAMMED,
                format!("{usable} listener(s) programmed"),
            ))
        };
        let listeners = gw
            .listeners
            .iter()
            .map(|l| listener_status(l, gw.rejected.is_some(), generation))
            .collect();
        report.gateways.insert(
            gw.id.clone(),
            GatewayStatus {
                conditions: Some(vec![
                    condition_from(reason::ACCEPTED, &accepted, generation),
                    condition_from(reason::PROGRAMMED, &programmed, generation),
                ]),
                listeners: Some(listeners),
                ..Default::default()
            },
        );
    }
}

fn listener_status(
    l: &ListenerState,
    gateway_rejected: bool,
    generation: Option<i64>,
) -> GatewayStatusListeners {
    // The conformance suite expects a conflicted listener to read Accepted=False/Invalid.
    let accepted = match (&l.accepted, &l.conflict) {
        (Err(o), _) => Err(o.clone()),
        (Ok(_), Some(c)) => Err(Outcome::new(reason::INVALID, c.message.clone())),
        (Ok(o), None) => Ok(o.clone()),
    };
    let programmed = if gateway_rejected {
        Err(Outcome::new(reason::INVALID, "Gateway is not accepted"))
    } else if l.usable() {
        Ok(Outcome::new(reason::PROGRAMMED, "listener is serving"))
    } else {
        Err(Outcome::new(reason::INVALID, l.not_programmed_because()))
    };
    let conflicted = match &l.conflict {
        Some(c) => condition(reason::CONFLICTED, true, c, generation),
        None => condition(
            reason::CONFLICTED,
            false,
            &Outcome::new(reason::NO_CONFLICTS, "no conflicts"),
            generation,
        ),
    };
    GatewayStatusListeners {
        name: l.name.clone(),
        attached_routes: l.attached_routes,
        conditions: vec![
            condition_from(reason::ACCEPTED, &accepted, generation),
            condition_from(reason::RESOLVED_REFS, &l.resolved_refs, generation),
            condition_from(reason::PROGRAMMED, &programmed, generation),
            conflicted,
        ],
        supported_kinds: Some(
            l.kinds
                .iter()
                .map(|k| GatewayStatusListenersSupportedKinds {
                    group: Some(GATEWAY_GROUP.into()),
                    kind: k.as_str().into(),
                })
                .collect(),
        ),
    }
}
