//! Which status writes a translation calls for, given what the cluster already shows. Pure:
//! the writer applies the result, and tests compare it exactly.
//!
//! A condition keeps its observed `lastTransitionTime` while its status stays the same
//! (Kubernetes' convention), so an unchanged outcome produces an identical status, and an
//! identical status is not written.

use super::features::supported_features;
use crate::CONTROLLER_NAME;
use crate::crd::{AuthorizationPolicy, PolicyStatus, RateLimitPolicy};
use crate::source::Snapshot;
use crate::translate::StatusReport;
use gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::gateways::{GatewayStatus, GatewayStatusAddresses};
use gateway_api::experimental::grpcroutes::{GrpcRouteStatus, GrpcRouteStatusParents};
use gateway_api::experimental::httproutes::{HttpRouteStatus, HttpRouteStatusParents};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use weir_model::ObjectName;

/// The kinds whose status Weir writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    RateLimitPolicy,
    AuthorizationPolicy,
    BackendTlsPolicy,
}

/// One status write: a server-side apply of `status` to an object's status subresource.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPatch {
    pub target: Target,
    /// `None` for cluster-scoped GatewayClasses.
    pub namespace: Option<String>,
    pub name: String,
    /// The object's resourceVersion when this was planned.
    pub observed_version: Option<String>,
    pub status: Value,
}

impl StatusPatch {
    /// The apply configuration: just enough to name the object, and the status.
    pub fn body(&self) -> Value {
        let (api_version, kind) = match self.target {
            Target::GatewayClass => {
                api::<gateway_api::experimental::gatewayclasses::GatewayClass>()
            }
            Target::Gateway => api::<gateway_api::experimental::gateways::Gateway>(),
            Target::HttpRoute => api::<gateway_api::experimental::httproutes::HttpRoute>(),
            Target::GrpcRoute => api::<gateway_api::experimental::grpcroutes::GrpcRoute>(),
            Target::RateLimitPolicy => api::<RateLimitPolicy>(),
            Target::AuthorizationPolicy => api::<AuthorizationPolicy>(),
            Target::BackendTlsPolicy => api::<BackendTlsPolicy>(),
        };
        let mut metadata = json!({"name": self.name});
        if let Some(ns) = &self.namespace {
            metadata["namespace"] = json!(ns);
        }
        json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "status": self.status})
    }
}

fn api<K: Resource<DynamicType = ()>>() -> (String, String) {
    (K::api_version(&()).into_owned(), K::kind(&()).into_owned())
}

/// The writes that bring the cluster to `report`. `report` must be stamped with `now` (so
/// that date-dependent conditions are present); conditions whose status did not change get
/// their observed transition time back.
pub fn plan(
    snapshot: &Snapshot,
    report: &StatusReport,
    addresses: &[GatewayStatusAddresses],
) -> Vec<StatusPatch> {
    let mut out = Vec::new();
    for class in &snapshot.gateway_classes {
        let Some(want) = report.gateway_classes.get(&class.name_any()) else {
            continue;
        };
        let mut want = want.clone();
        want.supported_features = Some(supported_features());
        let seen = class.status.clone().unwrap_or_default();
        carry(
            want.conditions.iter_mut().flatten(),
            seen.conditions.iter().flatten(),
        );
        push(&mut out, Target::GatewayClass, class, &want, &class.status);
    }
    for gw in &snapshot.gateways {
        let Some(want) = report.gateways.get(&key(gw)) else {
            continue;
        };
        let mut want: GatewayStatus = want.clone();
        want.addresses = (!addresses.is_empty()).then(|| addresses.to_vec());
        let seen = gw.status.clone().unwrap_or_default();
        carry(
            want.conditions.iter_mut().flatten(),
            seen.conditions.iter().flatten(),
        );
        for l in want.listeners.iter_mut().flatten() {
            let old = seen.listeners.iter().flatten().find(|o| o.name == l.name);
            carry(
                l.conditions.iter_mut(),
                old.into_iter().flat_map(|o| o.conditions.iter()),
            );
        }
        push(&mut out, Target::Gateway, gw, &want, &gw.status);
    }
    let http = snapshot.http_routes.iter().map(|r| (r, &r.status));
    plan_routes(&mut out, Target::HttpRoute, http, &report.http_routes);
    let grpc = snapshot.grpc_routes.iter().map(|r| (r, &r.status));
    plan_routes(&mut out, Target::GrpcRoute, grpc, &report.grpc_routes);
    for policy in &snapshot.rate_limit_policies {
        let report = &report.rate_limit_policies;
        plan_policy(
            &mut out,
            Target::RateLimitPolicy,
            policy,
            &policy.status,
            report,
        );
    }
    for policy in &snapshot.authorization_policies {
        let report = &report.authorization_policies;
        plan_policy(
            &mut out,
            Target::AuthorizationPolicy,
            policy,
            &policy.status,
            report,
        );
    }
    super::ancestors::plan(&mut out, snapshot, report);
    out
}

/// A weir.dev policy's status write, when it changed.
fn plan_policy<K: Resource<DynamicType = ()>>(
    out: &mut Vec<StatusPatch>,
    target: Target,
    policy: &K,
    status: &Option<PolicyStatus>,
    report: &BTreeMap<ObjectName, crate::translate::PolicyReport>,
) {
    let Some(p) = report.get(&key(policy)) else {
        return;
    };
    let mut want: PolicyStatus = p.status.clone();
    let seen = status.clone().unwrap_or_default();
    carry(want.conditions.iter_mut(), seen.conditions.iter());
    push(out, target, policy, &want, status);
}

pub(super) fn key<K: Resource>(o: &K) -> ObjectName {
    ObjectName::new(
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

/// Route writes: each route's parent entries merged with what it shows.
fn plan_routes<'a, R: Resource + 'a, S: RouteStatus + 'a>(
    out: &mut Vec<StatusPatch>,
    target: Target,
    routes: impl Iterator<Item = (&'a R, &'a Option<S>)>,
    report: &BTreeMap<ObjectName, S>,
) {
    for (route, status) in routes {
        let seen = status.clone().unwrap_or_default();
        let mine = report.get(&key(route)).map(|s| s.parents().to_vec());
        if let Some(parents) = merge_parents(seen.parents(), mine) {
            push(out, target, route, &S::with_parents(parents), status);
        }
    }
}

/// Adds a write when `want` differs from what the object shows.
pub(super) fn push<K: Resource, S: Serialize + PartialEq>(
    out: &mut Vec<StatusPatch>,
    target: Target,
    object: &K,
    want: &S,
    seen: &Option<S>,
) {
    if seen.as_ref() == Some(want) {
        return;
    }
    out.push(StatusPatch {
        target,
        namespace: object.meta().namespace.clone(),
        name: object.meta().name.clone().unwrap_or_default(),
        observed_version: object.meta().resource_version.clone(),
        status: serde_json::to_value(want).unwrap_or(Value::Null),
    });
}

/// Keeps the observed transition time of each condition whose status did not change.
pub(super) fn carry<'a>(
    want: impl Iterator<Item = &'a mut Condition>,
    seen: impl Iterator<Item = &'a Condition> + Clone,
) {
    for c in want {
        if let Some(old) = seen
            .clone()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// A route's parent statuses: other controllers' entries as observed, then Weir's. `None`
/// when there is nothing to write: the route names no Gateway of Weir's now and showed
/// none of Weir's entries before.
fn merge_parents<P: RouteParent>(seen: &[P], mine: Option<Vec<P>>) -> Option<Vec<P>> {
    let had_mine = seen.iter().any(|p| p.controller() == CONTROLLER_NAME);
    let mut mine = mine.unwrap_or_default();
    if mine.is_empty() && !had_mine {
        return None;
    }
    for p in &mut mine {
        let old = seen
            .iter()
            .find(|o| o.controller() == CONTROLLER_NAME && o.same_parent(p));
        if let Some(old) = old {
            let old_conditions = old.conditions().to_vec();
            carry(p.conditions_mut().iter_mut(), old_conditions.iter());
        }
    }
    let others = seen
        .iter()
        .filter(|p| p.controller() != CONTROLLER_NAME)
        .cloned();
    Some(others.chain(mine).collect())
}

/// The two route kinds' statuses, which the Gateway API types keep apart.
trait RouteStatus: Serialize + PartialEq + Clone + Default {
    type Parent: RouteParent;
    fn parents(&self) -> &[Self::Parent];
    fn with_parents(parents: Vec<Self::Parent>) -> Self;
}

/// The two route kinds' parent status entries.
trait RouteParent: Clone {
    fn controller(&self) -> &str;
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn same_parent(&self, other: &Self) -> bool;
}

/// The Gateway API generates the two route kinds' status types apart, field for field alike.
macro_rules! route_status {
    ($status:ty, $parent:ty) => {
        impl RouteStatus for $status {
            type Parent = $parent;
            fn parents(&self) -> &[Self::Parent] {
                &self.parents
            }
            fn with_parents(parents: Vec<Self::Parent>) -> Self {
                Self { parents }
            }
        }

        impl RouteParent for $parent {
            fn controller(&self) -> &str {
                &self.controller_name
            }
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
            fn same_parent(&self, other: &Self) -> bool {
                self.parent_ref == other.parent_ref
            }
        }
    };
}

route_status!(HttpRouteStatus, HttpRouteStatusParents);
route_status!(GrpcRouteStatus, GrpcRouteStatusParents);

/// The addresses a Gateway reports: the gateway Service's load balancer ingress once it has
/// one, else (for a Service that is not a LoadBalancer) its cluster IPs.
pub fn gateway_addresses(service: Option<&Service>) -> Vec<GatewayStatusAddresses> {
    let Some(svc) = service else {
        return Vec::new();
    };
    let address = |type_: &str, value: &str| GatewayStatusAddresses {
        r#type: Some(type_.into()),
        value: value.into(),
    };
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    let mut out: Vec<GatewayStatusAddresses> = ingress
        .into_iter()
        .flatten()
        .flat_map(|i| {
            let ip = i.ip.as_deref().map(|v| address("IPAddress", v));
            let host = i.hostname.as_deref().map(|v| address("Hostname", v));
            ip.into_iter().chain(host)
        })
        .collect();
    let spec = svc.spec.clone().unwrap_or_default();
    if out.is_empty() && spec.type_.as_deref() != Some("LoadBalancer") {
        let ips = spec.cluster_ips.unwrap_or_default();
        out = ips
            .iter()
            .filter(|ip| *ip != "None")
            .map(|ip| address("IPAddress", ip))
            .collect();
    }
    out
}
