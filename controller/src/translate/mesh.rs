//! GAMMA: routes whose parentRef is a Service, served by the listeners of mesh Gateways.
//!
//! A Gateway annotated `weir.dev/mesh: "true"` is the fleet's mesh entry. Its listeners take
//! the requests sidecars send for their apps, addressed by Service name, and route them with
//! the HTTPRoutes and GRPCRoutes attached to that Service (GEP-1294); a Service no route
//! attaches to is balanced over its own endpoints. Which namespaces are in the mesh is the
//! listener's own `allowedRoutes.namespaces`, so no new field is needed to scope it.

use super::backends::{self, RefSpec};
use super::build;
use super::index::Index;
use super::state::{MeshAttachment, ParentOutcomes, Scope};
use super::state::{ParentRef, RouteView};
use super::status::{Outcome, reason};
use crate::source::Snapshot;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::{BTreeMap, BTreeSet};
use weir_model::{
    Backend, BackendKey, BackendRef, Mesh, MeshService, ObjectName, RouteEntry, RouteKind,
    RouteMatch, Rule, RuleId, WeightedBackend,
};

pub(crate) const ANNOTATION: &str = "weir.dev/mesh";

/// Whether a Gateway's annotations make it a mesh Gateway; a value that is neither `true`
/// nor `false` is an error rather than a silent "no".
pub(crate) fn annotation(meta: &ObjectMeta) -> Result<bool, String> {
    match meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION))
        .map(String::as_str)
    {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!(
            "annotation {ANNOTATION}: {other:?} is neither \"true\" nor \"false\""
        )),
    }
}

/// Attaches every Service parentRef, recording each one's outcome.
pub(crate) fn attach(
    idx: &Index<'_>,
    scope: Option<&Scope>,
    routes: &[RouteView<'_>],
    outcomes: &mut ParentOutcomes,
) -> Vec<MeshAttachment> {
    let Some(scope) = scope else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (ri, route) in routes.iter().enumerate() {
        for (pi, p) in route.parent_refs.iter().enumerate() {
            if !p.is_service() {
                continue;
            }
            let outcome = attach_parent(idx, scope, route, p).map(|(service, ports)| {
                let consumer =
                    (service.namespace != route.id.namespace).then(|| route.id.namespace.clone());
                found.push(MeshAttachment {
                    route: ri,
                    parent: pi,
                    service,
                    ports,
                    consumer,
                });
                Outcome::new(reason::ACCEPTED, "route is accepted")
            });
            outcomes.insert((ri, pi), outcome);
        }
    }
    resolve_kind_conflicts(routes, found, outcomes)
}

fn attach_parent(
    idx: &Index<'_>,
    scope: &Scope,
    route: &RouteView<'_>,
    p: &ParentRef,
) -> Result<(ObjectName, Vec<u16>), Outcome> {
    if let Some(why) = route.invalid() {
        return Err(Outcome::new(reason::UNSUPPORTED_VALUE, why));
    }
    let ns = p.namespace.as_deref().unwrap_or(&route.id.namespace);
    let id = ObjectName::new(ns, p.name.clone());
    let svc = idx.service(ns, &p.name).ok_or_else(|| {
        Outcome::new(
            reason::NO_MATCHING_PARENT,
            format!("Service {id} not found"),
        )
    })?;
    if let Some(why) = not_a_frontend(svc) {
        return Err(Outcome::new(
            reason::UNSUPPORTED_VALUE,
            format!("Service {id} {why}"),
        ));
    }
    let ports: Vec<u16> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|sp| p.port.is_none_or(|port| port == sp.port))
        .filter(|sp| {
            p.section_name
                .as_ref()
                .is_none_or(|s| sp.name.as_ref() == Some(s))
        })
        .filter_map(|sp| u16::try_from(sp.port).ok())
        .collect();
    if ports.is_empty() {
        let mut what = Vec::new();
        if let Some(port) = p.port {
            what.push(format!("{port}"));
        }
        if let Some(s) = &p.section_name {
            what.push(format!("named {s:?}"));
        }
        return Err(Outcome::new(
            reason::NO_MATCHING_PARENT,
            format!("Service {id} has no port {}", what.join(" ")),
        ));
    }
    if !scope.serves(ns) {
        return Err(Outcome::new(
            reason::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "namespace {ns} is not in the mesh: no mesh listener's allowedRoutes.namespaces admits it"
            ),
        ));
    }
    if !scope.serves(&route.id.namespace) {
        return Err(Outcome::new(
            reason::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "namespace {} is not in the mesh, so its consumer routes would never apply",
                route.id.namespace
            ),
        ));
    }
    Ok((id, ports))
}

/// Why a Service cannot be a parent: GEP-1294 leaves out Services without a frontend.
fn not_a_frontend(svc: &Service) -> Option<&'static str> {
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Some(
            "is an ExternalName Service: it has no frontend to route; use it as a backendRef",
        );
    }
    if spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        return Some("is headless: it has no frontend to route");
    }
    None
}

/// HTTPRoutes and GRPCRoutes may not both apply to one Service port for the same callers:
/// the GRPCRoute wins, as GEP-1294 orders them, and the HTTPRoute is refused.
fn resolve_kind_conflicts(
    routes: &[RouteView<'_>],
    found: Vec<MeshAttachment>,
    outcomes: &mut ParentOutcomes,
) -> Vec<MeshAttachment> {
    let grpc: BTreeMap<(&ObjectName, u16, Option<&str>), &ObjectName> = found
        .iter()
        .filter(|a| routes[a.route].kind == RouteKind::Grpc)
        .flat_map(|a| {
            a.ports.iter().map(move |&port| {
                (
                    (&a.service, port, a.consumer.as_deref()),
                    &routes[a.route].id,
                )
            })
        })
        .collect();
    let mut refused = BTreeSet::new();
    for a in found
        .iter()
        .filter(|a| routes[a.route].kind == RouteKind::Http)
    {
        let clash = a
            .ports
            .iter()
            .find_map(|&port| grpc.get(&(&a.service, port, a.consumer.as_deref())));
        if let Some(other) = clash {
            refused.insert((a.route, a.parent));
            outcomes.insert(
                (a.route, a.parent),
                Err(Outcome::new(
                    reason::CONFLICTED,
                    format!(
                        "GRPCRoute {other} already routes Service {}; a GRPCRoute takes precedence over an HTTPRoute on the same Service port",
                        a.service
                    ),
                )),
            );
        }
    }
    found
        .into_iter()
        .filter(|a| !refused.contains(&(a.route, a.parent)))
        .collect()
}

/// The Service each attached route serves, for policies that target a Service.
pub(crate) fn parents(
    routes: &[RouteView<'_>],
    attachments: &[MeshAttachment],
) -> super::policy::MeshParents {
    let mut out = super::policy::MeshParents::new();
    for a in attachments {
        let r = &routes[a.route];
        let list = out.entry((r.kind, r.id.clone())).or_default();
        if !list.contains(&a.service) {
            list.push(a.service.clone());
        }
    }
    out
}

/// The mesh routing table and the rules it uses: routes attached to each Service port,
/// else the Service's default rule.
pub(crate) fn build(
    snapshot: &Snapshot,
    idx: &Index<'_>,
    scope: Option<&Scope>,
    routes: &[RouteView<'_>],
    attachments: &[MeshAttachment],
    backends: &mut BTreeMap<BackendKey, Backend>,
) -> (Mesh, BTreeMap<RuleId, Rule>) {
    let mut rules = BTreeMap::new();
    let Some(scope) = scope else {
        return (Mesh::default(), rules);
    };
    for a in attachments {
        for compiled in routes[a.route].rules.iter().flatten() {
            let r = &compiled.rule;
            rules.insert(RuleId::new(r.kind, &r.route, r.index), r.clone());
        }
    }
    let mut services: Vec<(ObjectName, &Service)> = snapshot
        .services
        .iter()
        .filter_map(|s| {
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            let name = s.metadata.name.clone()?;
            // Headless and ExternalName Services have no frontend to balance (GEP-1294):
            // egress goes through a route to them, from a frontend Service of its own.
            (scope.serves(ns) && not_a_frontend(s).is_none())
                .then(|| (ObjectName::new(ns, name), s))
        })
        .collect();
    services.sort_by(|a, b| a.0.cmp(&b.0));
    let mut mesh = Mesh::default();
    for (id, svc) in services {
        let mut ports: Vec<u16> = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| u16::try_from(p.port).ok())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        for port in ports {
            let here = attachments
                .iter()
                .filter(|a| a.service == id && a.ports.contains(&port));
            let mut producers = BTreeSet::new();
            let mut consumers: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
            for a in here {
                match &a.consumer {
                    None => producers.insert(a.route),
                    Some(ns) => consumers.entry(ns.clone()).or_default().insert(a.route),
                };
            }
            let routes_here = if producers.is_empty() {
                let (rule_id, rule) = default_rule(idx, backends, &id, port);
                let entry = RouteEntry {
                    rule: rule_id.clone(),
                    matcher: RouteMatch::default(),
                };
                rules.insert(rule_id, rule);
                vec![entry]
            } else {
                build::ranked_entries(routes, &producers)
            };
            mesh.services.push(MeshService {
                service: id.clone(),
                port,
                routes: routes_here,
                consumers: consumers
                    .into_iter()
                    .map(|(ns, members)| (ns, build::ranked_entries(routes, &members)))
                    .collect(),
            });
        }
    }
    (mesh, rules)
}

/// Plain load balancing over the Service's own endpoints, for a port no route names.
fn default_rule(
    idx: &Index<'_>,
    backends: &mut BTreeMap<BackendKey, Backend>,
    id: &ObjectName,
    port: u16,
) -> (RuleId, Rule) {
    let spec = RefSpec {
        group: None,
        kind: None,
        name: id.name.clone(),
        namespace: Some(id.namespace.clone()),
        port: Some(i32::from(port)),
    };
    let backend = match backends::resolve(idx, backends, RouteKind::Service, &id.namespace, &spec) {
        Ok(key) => BackendRef::Service(key),
        Err(o) => BackendRef::Error {
            status: 500,
            reason: o.message,
        },
    };
    let index = usize::from(port);
    let rule = Rule {
        kind: RouteKind::Service,
        route: id.clone(),
        index,
        name: None,
        filters: Vec::new(),
        backends: vec![WeightedBackend {
            weight: 1,
            backend,
            filters: Vec::new(),
        }],
        timeouts: Default::default(),
        rate_limit: None,
        authz: Vec::new(),
        session_persistence: None,
        split_key: None,
        retry: None,
    };
    (RuleId::new(RouteKind::Service, id, index), rule)
}
