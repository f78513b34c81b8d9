//! The types the translation stages hand each other: Gateways and their listeners as
//! validated ([`GatewayState`]), routes in one route-type-neutral form ([`RouteView`]),
//! where routes attached ([`Attachment`], [`MeshAttachment`]) and which namespaces the mesh
//! serves ([`Scope`]). They live apart from the stages so that each stage imports them and
//! no stage imports another stage's internals to get them.

use super::index::Index;
use super::rules::CompiledRule;
use super::status::Outcome;
use crate::source::Snapshot;
use gateway_api::experimental::gateways::Gateway;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::{Selector, SelectorExt};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use weir_model::{Certificate, ClientValidation, MeshNamespaces, ObjectName, Protocol, RouteKind};

pub(crate) struct GatewayState<'a> {
    pub obj: &'a Gateway,
    pub id: ObjectName,
    pub created: Option<&'a Time>,
    /// Why the whole Gateway is refused, if it is.
    pub rejected: Option<Outcome>,
    /// Annotated `weir.dev/mesh: "true"`: its listeners serve Service frontends (GAMMA).
    pub mesh: bool,
    pub listeners: Vec<ListenerState>,
}

#[derive(Debug)]
pub(crate) enum AllowedNamespaces {
    Same,
    All,
    Selector(Selector),
}

pub(crate) struct ListenerState {
    pub name: String,
    pub port: u16,
    pub protocol: Option<Protocol>,
    pub hostname: Option<String>,
    pub namespaces: AllowedNamespaces,
    pub kinds: Vec<RouteKind>,
    pub certificates: Vec<Certificate>,
    /// From the Gateway's `spec.tls.frontend` for this listener's port.
    pub client_validation: Option<ClientValidation>,
    pub accepted: Result<Outcome, Outcome>,
    pub resolved_refs: Result<Outcome, Outcome>,
    pub conflict: Option<Outcome>,
    pub attached_routes: i32,
}

impl ListenerState {
    /// Whether the listener is programmed: it takes routes and serves traffic.
    pub(crate) fn usable(&self) -> bool {
        self.accepted.is_ok()
            && self.conflict.is_none()
            && !self.kinds.is_empty()
            && (self.protocol == Some(Protocol::Http) || !self.certificates.is_empty())
    }

    /// Whether routes from `namespace` may attach, `gateway_ns` being the Gateway's.
    pub(crate) fn allows_namespace(
        &self,
        idx: &Index<'_>,
        gateway_ns: &str,
        namespace: &str,
    ) -> bool {
        match &self.namespaces {
            AllowedNamespaces::Same => namespace == gateway_ns,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(s) => s.matches(&idx.namespace_labels(namespace)),
        }
    }

    pub(crate) fn not_programmed_because(&self) -> String {
        if let Err(o) = &self.accepted {
            return format!("listener is not accepted: {}", o.message);
        }
        if let Some(o) = &self.conflict {
            return format!("listener conflicts: {}", o.message);
        }
        if self.kinds.is_empty() {
            return "listener supports none of the route kinds it allows".into();
        }
        match &self.resolved_refs {
            Err(o) => format!("listener has no usable certificate: {}", o.message),
            Ok(_) => "listener has no usable certificate".into(),
        }
    }
}

/// Oldest first; objects without a creation time (from files) count as newest; then by name.
pub(crate) fn age_order(
    a_time: Option<&Time>,
    a: &ObjectName,
    b_time: Option<&Time>,
    b: &ObjectName,
) -> std::cmp::Ordering {
    let key = |t: Option<&Time>| (t.is_none(), t.map(|t| t.0));
    key(a_time).cmp(&key(b_time)).then_with(|| a.cmp(b))
}

/// A parentRef, in the shape both route types share.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ParentRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub section_name: Option<String>,
    #[serde(default)]
    pub port: Option<i32>,
}

impl ParentRef {
    /// A GAMMA parentRef: the Service frontend, not a Gateway.
    pub(crate) fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), Some("" | "core"))
            && self.kind.as_deref() == Some("Service")
    }
}

pub(crate) struct RouteView<'a> {
    pub kind: RouteKind,
    pub id: ObjectName,
    pub generation: Option<i64>,
    pub created: Option<&'a Time>,
    /// Normalised hostnames; `Err` rejects the route on every parent.
    pub hostnames: Result<Vec<String>, String>,
    /// Deduplicated, in spec order.
    pub parent_refs: Vec<ParentRef>,
    /// One entry per spec rule; `Err` rules are dropped with their reason.
    pub rules: Vec<Result<CompiledRule, String>>,
    pub ref_problems: Vec<Outcome>,
    /// Ignored `weir.dev/*` annotations of the route and of the Services its rules use.
    pub annotation_problems: Vec<String>,
}

impl RouteView<'_> {
    /// Why no rule of this route can be served, if none can.
    pub(crate) fn invalid(&self) -> Option<String> {
        if let Err(e) = &self.hostnames {
            return Some(e.clone());
        }
        if self.rules.iter().all(Result::is_err) {
            let reasons: Vec<&str> = self
                .rules
                .iter()
                .filter_map(|r| r.as_ref().err())
                .map(String::as_str)
                .collect();
            return Some(if reasons.is_empty() {
                "route has no rules".into()
            } else {
                reasons.join("; ")
            });
        }
        None
    }

    /// Messages of the dropped rules, when some (not all) rules were dropped.
    pub(crate) fn dropped_rules(&self) -> Vec<&str> {
        self.rules
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(String::as_str)
            .collect()
    }
}

/// A route attached to one listener through one parentRef.
#[derive(Debug, Clone)]
pub(crate) struct Attachment {
    pub route: usize,
    pub parent: usize,
    pub gateway: usize,
    pub listener: usize,
    /// The hostnames the route serves there (intersected with the listener's).
    pub hostnames: Vec<String>,
}

/// The outcome per (route, parentRef) for the parentRefs that name a Gateway of Weir's.
pub(crate) type ParentOutcomes = BTreeMap<(usize, usize), Result<Outcome, Outcome>>;

/// The programmed mesh listeners and the namespaces they serve.
pub(crate) struct Scope {
    pub listeners: BTreeMap<(usize, usize), MeshNamespaces>,
    served: MeshNamespaces,
}

impl Scope {
    /// `None` when no Gateway of Weir's is a mesh Gateway: then Weir does not claim Service
    /// parentRefs at all, and another mesh may.
    pub(crate) fn new(
        snapshot: &Snapshot,
        idx: &Index<'_>,
        gateways: &[GatewayState<'_>],
    ) -> Option<Self> {
        let known: BTreeSet<&str> = snapshot
            .namespaces
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .chain(
                snapshot
                    .services
                    .iter()
                    .filter_map(|s| s.metadata.namespace.as_deref()),
            )
            .collect();
        let mut listeners = BTreeMap::new();
        for (gi, gw) in gateways.iter().enumerate() {
            if !gw.mesh || gw.rejected.is_some() {
                continue;
            }
            for (li, l) in gw.listeners.iter().enumerate() {
                if !l.usable() {
                    continue;
                }
                let namespaces = match &l.namespaces {
                    AllowedNamespaces::All => MeshNamespaces::All,
                    AllowedNamespaces::Same => {
                        MeshNamespaces::Only([gw.id.namespace.clone()].into())
                    }
                    AllowedNamespaces::Selector(_) => MeshNamespaces::Only(
                        known
                            .iter()
                            .filter(|ns| l.allows_namespace(idx, &gw.id.namespace, ns))
                            .map(|ns| ns.to_string())
                            .collect(),
                    ),
                };
                listeners.insert((gi, li), namespaces);
            }
        }
        if listeners.is_empty() {
            return None;
        }
        let served = if listeners.values().any(|n| *n == MeshNamespaces::All) {
            MeshNamespaces::All
        } else {
            MeshNamespaces::Only(
                listeners
                    .values()
                    .flat_map(|n| match n {
                        MeshNamespaces::Only(s) => s.iter().cloned(),
                        MeshNamespaces::All => unreachable!("handled above"),
                    })
                    .collect(),
            )
        };
        Some(Self { listeners, served })
    }

    /// Whether `namespace` is in the mesh: some mesh listener takes its routes.
    pub(crate) fn serves(&self, namespace: &str) -> bool {
        self.served.contains(namespace)
    }
}

/// A route attached to a Service frontend through one parentRef.
#[derive(Debug, Clone)]
pub(crate) struct MeshAttachment {
    pub route: usize,
    pub parent: usize,
    pub service: ObjectName,
    /// The Service ports it applies to: `parentRef.port` (or `sectionName`, the port's
    /// name) when given, else all of them.
    pub ports: Vec<u16>,
    /// The caller namespace of a consumer route; `None` for a producer route.
    pub consumer: Option<String>,
}
