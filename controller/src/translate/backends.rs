//! backendRefs → Services and their endpoints.

use super::annotations;
use super::index::{GATEWAY_GROUP, Index, RefEnd};
use super::status::{Outcome, reason};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use serde::Deserialize;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::net::IpAddr;
use weir_model::{Backend, BackendKey, Endpoint, ObjectName, RouteKind};

/// The reference fields every backendRef and mirror target share, whatever route type
/// they come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RefSpec {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<i32>,
}

/// Resolves a reference from a route in `route_ns`, adding the backend to `backends`.
/// Mesh routes need a ReferenceGrant across namespaces too: GEP-1294 waives it only where
/// the mesh reaches nothing a caller could not reach anyway, and the fleet is trusted by
/// every callee's sidecar, so a route could otherwise lend any caller that trust.
pub(crate) fn resolve(
    idx: &Index<'_>,
    backends: &mut BTreeMap<BackendKey, Backend>,
    route_kind: RouteKind,
    route_ns: &str,
    r: &RefSpec,
) -> Result<BackendKey, Outcome> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    let ns = r.namespace.as_deref().unwrap_or(route_ns);
    let what = format!("backendRef {ns}/{}", r.name);
    if !(group.is_empty() || group == "core") || kind != "Service" {
        return Err(Outcome::new(
            reason::INVALID_KIND,
            format!(
                "{what}: kind {kind:?} in group {group:?} is not supported; use a core Service"
            ),
        ));
    }
    let from = RefEnd {
        group: GATEWAY_GROUP,
        kind: route_kind.as_str(),
        namespace: route_ns,
    };
    let to = RefEnd {
        group: "",
        kind: "Service",
        namespace: ns,
    };
    if !idx.ref_permitted(from, to, &r.name) {
        return Err(Outcome::new(
            reason::REF_NOT_PERMITTED,
            format!(
                "{what}: no ReferenceGrant in namespace {ns} allows {route_kind}s from {route_ns} to use it"
            ),
        ));
    }
    let not_found = |m: String| Outcome::new(reason::BACKEND_NOT_FOUND, format!("{what}: {m}"));
    let svc = idx
        .service(ns, &r.name)
        .ok_or_else(|| not_found("Service not found".into()))?;
    let port = r
        .port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| not_found("a Service backend needs a port".into()))?;
    let id = ObjectName::new(ns, r.name.clone());
    let key = BackendKey::new(&id, port);
    if !backends.contains_key(&key) {
        let backend = build(idx, svc, id, port).map_err(not_found)?;
        backends.insert(key.clone(), backend);
    }
    Ok(key)
}

fn build(idx: &Index<'_>, svc: &Service, id: ObjectName, port: u16) -> Result<Backend, String> {
    let spec = svc.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    // Parsed the same way for ExternalName Services; annotation problems are reported on
    // the routes (see `route::view`), not here.
    let settings = annotations::service(svc);
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        let name = spec
            .and_then(|s| s.external_name.clone())
            .ok_or("ExternalName Service has no spec.externalName")?;
        egress_name(&name)?;
        return Ok(Backend {
            service: id,
            port,
            app_protocol: ports
                .iter()
                .find(|p| p.port == i32::from(port))
                .and_then(|p| p.app_protocol.clone()),
            external_name: Some(name),
            zone_affinity: settings.zone_affinity,
            load_balancer: settings.load_balancer,
            health_check: settings.health_check,
            tls: None,
            endpoints: Vec::new(),
        });
    }
    let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    let svc_port: Option<&ServicePort> = ports.iter().find(|p| p.port == i32::from(port));
    // A headless Service may declare no ports at all; its endpoints then listen on the
    // port the route names.
    if svc_port.is_none() && !(headless && ports.is_empty()) {
        return Err(format!("Service has no port {port}"));
    }
    let port_name = svc_port.and_then(|p| p.name.as_deref()).unwrap_or("");
    let mut app_protocol = svc_port.and_then(|p| p.app_protocol.clone());
    let mut endpoints = Vec::new();
    for slice in idx.endpoint_slices(&id.namespace, &id.name) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let slice_ports = slice.ports.as_deref().unwrap_or_default();
        // The Service port maps to the slice port by name, as kube-proxy does.
        let target = match slice_ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
        {
            Some(p) => {
                if app_protocol.is_none() {
                    app_protocol = p.app_protocol.clone();
                }
                p.port.and_then(|p| u16::try_from(p).ok())
            }
            None if slice_ports.is_empty() && svc_port.is_none() => Some(port),
            None => None,
        };
        let Some(target) = target else { continue };
        for ep in slice.endpoints.iter().flatten() {
            let cond = ep.conditions.as_ref();
            // Unset conditions mean ready, and serving follows ready (EndpointSlice API).
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            for addr in &ep.addresses {
                if let Ok(address) = addr.parse::<IpAddr>() {
                    endpoints.push(Endpoint {
                        address,
                        port: target,
                        zone: ep.zone.clone(),
                        ready,
                        serving,
                        terminating,
                    });
                }
            }
        }
    }
    // Slices may overlap while the EndpointSlice controller moves endpoints between them;
    // keep one entry per address, the readiest.
    endpoints.sort_by_key(|e| {
        (
            e.address,
            e.port,
            Reverse(e.ready),
            Reverse(e.serving),
            e.terminating,
        )
    });
    endpoints.dedup_by_key(|e| (e.address, e.port));
    Ok(Backend {
        service: id,
        port,
        app_protocol,
        external_name: None,
        zone_affinity: settings.zone_affinity,
        load_balancer: settings.load_balancer,
        health_check: settings.health_check,
        tls: None,
        endpoints,
    })
}

/// An ExternalName leads out of the cluster, or nowhere: one naming an in-cluster Service
/// (`*.svc`, `*.svc.<domain>`) or an address would reach another namespace without the
/// ReferenceGrant a backendRef to it needs (the old ExternalName hole, CVE-2021-25740).
fn egress_name(name: &str) -> Result<(), String> {
    let host = name.trim_end_matches('.').to_ascii_lowercase();
    let in_cluster = host.ends_with(".svc") || host.contains(".svc.");
    if in_cluster || host.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "ExternalName {name:?} points inside the cluster or at an address; refer to the Service itself (with a ReferenceGrant across namespaces)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::egress_name;

    #[test]
    fn external_names_must_lead_out_of_the_cluster() {
        assert!(egress_name("api.stripe.com").is_ok());
        assert!(egress_name("api.github.com.").is_ok());
        for inside in [
            "vault.secrets.svc.cluster.local",
            "vault.secrets.svc",
            "VAULT.secrets.SVC.corp.example.",
            "10.0.0.7",
            "::1",
        ] {
            assert!(egress_name(inside).is_err(), "{inside}");
        }
    }
}
