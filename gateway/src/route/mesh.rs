//! The mesh listeners' routing table: a Service name and port, as a sidecar addresses them,
//! to the route entries that serve them (GAMMA).
//!
//! Callers address a Service the way Kubernetes DNS lets them: `name`, `name.ns`,
//! `name.ns.svc` or `name.ns.svc.<cluster domain>`, with or without a port. A bare `name`
//! means the caller's own namespace, which the fleet knows only from a verified SPIFFE ID:
//! without one it cannot be resolved, and guessing would route to the wrong Service.

use super::table::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use weir_model::MeshNamespaces;

#[derive(Debug, Default)]
pub struct MeshTable {
    /// By namespace, then name: every DNS form, and a bare name with the caller's
    /// namespace, is then two lookups of borrowed strings.
    services: HashMap<Box<str>, HashMap<Box<str>, MeshSvc>>,
}

#[derive(Debug, Default)]
struct MeshSvc {
    /// Ordered by port.
    ports: Vec<MeshPort>,
}

#[derive(Debug)]
pub struct MeshPort {
    pub port: u16,
    /// `namespace/name:port`: the destination label of metrics.
    pub label: Arc<str>,
    producers: Vec<Entry>,
    consumers: HashMap<Box<str>, Vec<Entry>>,
}

/// Where a mesh request landed.
#[derive(Debug)]
pub struct MeshHit<'t> {
    pub service: &'t MeshPort,
    /// The entries for this caller: its namespace's consumer routes, else the producer
    /// routes (or the Service's default rule).
    pub entries: &'t [Entry],
}

/// Why a mesh request found no Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshMiss {
    /// Not a Service name the mesh serves (or not in this listener's namespaces).
    UnknownService,
    /// A bare name, and the caller presented no identity to say which namespace it means.
    NoCallerNamespace,
    /// The Service has no such port, or no port was given and none is the obvious one.
    NoPort,
}

impl MeshTable {
    pub fn insert(
        &mut self,
        namespace: &str,
        name: &str,
        port: u16,
        producers: Vec<Entry>,
        consumers: HashMap<Box<str>, Vec<Entry>>,
    ) {
        let svc = self
            .services
            .entry(namespace.into())
            .or_default()
            .entry(name.into())
            .or_default();
        let at = svc.ports.partition_point(|p| p.port < port);
        svc.ports.insert(
            at,
            MeshPort {
                port,
                label: format!("{namespace}/{name}:{port}").into(),
                producers,
                consumers,
            },
        );
    }

    /// Resolves `host` (lower-case, without port) and `port` for a caller from
    /// `caller_ns`, within the namespaces a listener serves.
    pub fn lookup(
        &self,
        host: &str,
        port: Option<u16>,
        caller_ns: Option<&str>,
        allowed: &MeshNamespaces,
    ) -> Result<MeshHit<'_>, MeshMiss> {
        let (name, ns) = service_key(host).ok_or(MeshMiss::UnknownService)?;
        let ns = match ns {
            Some(ns) => ns,
            None => caller_ns.ok_or(MeshMiss::NoCallerNamespace)?,
        };
        let svc = Some(ns)
            .filter(|ns| allowed.contains(ns))
            .and_then(|ns| self.services.get(ns)?.get(name))
            .ok_or(MeshMiss::UnknownService)?;
        let service = match port {
            Some(p) => svc.ports.iter().find(|m| m.port == p),
            // No port in the authority: HTTP's default, else the Service's only port.
            None => svc
                .ports
                .iter()
                .find(|m| m.port == 80)
                .or_else(|| (svc.ports.len() == 1).then(|| &svc.ports[0])),
        }
        .ok_or(MeshMiss::NoPort)?;
        let entries = caller_ns
            .and_then(|ns| service.consumers.get(ns))
            .unwrap_or(&service.producers);
        Ok(MeshHit { service, entries })
    }
}

/// The Service name and, unless the name is bare, its namespace, from every DNS form of a
/// Service name; `None` for a host that is no such form.
fn service_key(host: &str) -> Option<(&str, Option<&str>)> {
    let Some((name, rest)) = host.split_once('.') else {
        return Some((host, None));
    };
    match rest.split_once('.') {
        None => Some((name, Some(rest))),
        // `name.ns.svc` or `name.ns.svc.<cluster domain>`; the domain itself is not checked
        // (clusters choose their own), but the `svc` label must be there.
        Some((ns, tail)) if tail.split('.').next() == Some("svc") => Some((name, Some(ns))),
        Some(_) => None,
    }
}

/// The port of an authority (`host:port`), if it names one.
pub fn authority_port(authority: &str) -> Option<u16> {
    // The port `normalize_host` drops, so that both agree on what the host is.
    super::hosts::split_authority(authority).1?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::matcher::CompiledMatch;
    use weir_model::RouteMatch;

    fn entry(rule: usize) -> Entry {
        Entry {
            matcher: CompiledMatch::compile(&RouteMatch::default()).unwrap(),
            rule,
        }
    }

    fn table() -> MeshTable {
        let mut t = MeshTable::default();
        t.insert("payments", "api", 80, vec![entry(1)], HashMap::new());
        t.insert(
            "payments",
            "api",
            9090,
            vec![entry(2)],
            [("checkout".into(), vec![entry(3)])].into(),
        );
        t.insert("tools", "grpc", 50051, vec![entry(4)], HashMap::new());
        t
    }

    fn rule(hit: Result<MeshHit<'_>, MeshMiss>) -> Result<usize, MeshMiss> {
        hit.map(|h| h.entries[0].rule)
    }

    #[test]
    fn every_dns_form_of_a_service_name_reaches_it() {
        let t = table();
        let all = MeshNamespaces::All;
        for host in [
            "api.payments",
            "api.payments.svc",
            "api.payments.svc.cluster.local",
            "api.payments.svc.corp.example",
        ] {
            assert_eq!(rule(t.lookup(host, None, None, &all)), Ok(1), "{host}");
            assert_eq!(
                rule(t.lookup(host, Some(9090), None, &all)),
                Ok(2),
                "{host}"
            );
        }
        assert_eq!(
            rule(t.lookup("api", Some(80), Some("payments"), &all)),
            Ok(1)
        );
        assert_eq!(
            rule(t.lookup("api", None, None, &all)),
            Err(MeshMiss::NoCallerNamespace)
        );
        assert_eq!(
            rule(t.lookup("api.payments.cluster", None, None, &all)),
            Err(MeshMiss::UnknownService)
        );
        assert_eq!(
            rule(t.lookup("api.tools", None, None, &all)),
            Err(MeshMiss::UnknownService)
        );
    }

    #[test]
    fn ports_select_the_routes_and_a_missing_port_picks_80_or_the_only_one() {
        let t = table();
        let all = MeshNamespaces::All;
        assert_eq!(
            rule(t.lookup("api.payments", Some(8080), None, &all)),
            Err(MeshMiss::NoPort)
        );
        assert_eq!(rule(t.lookup("grpc.tools", None, None, &all)), Ok(4));
        let hit = t.lookup("api.payments", Some(9090), None, &all).unwrap();
        assert_eq!(&*hit.service.label, "payments/api:9090");
    }

    #[test]
    fn consumer_routes_apply_to_their_namespace_only() {
        let t = table();
        let all = MeshNamespaces::All;
        let from = |ns| rule(t.lookup("api.payments", Some(9090), Some(ns), &all));
        assert_eq!(from("checkout"), Ok(3));
        assert_eq!(from("payments"), Ok(2));
        assert_eq!(from("other"), Ok(2));
    }

    #[test]
    fn a_listener_serves_only_its_namespaces() {
        let t = table();
        let only = MeshNamespaces::Only(["tools".to_string()].into());
        assert_eq!(rule(t.lookup("grpc.tools", None, None, &only)), Ok(4));
        assert_eq!(
            rule(t.lookup("api.payments", None, None, &only)),
            Err(MeshMiss::UnknownService)
        );
    }

    #[test]
    fn authority_ports() {
        assert_eq!(authority_port("api.payments:8080"), Some(8080));
        assert_eq!(authority_port("api.payments"), None);
        assert_eq!(authority_port("[::1]:80"), Some(80));
        assert_eq!(authority_port("[::1]"), None);
        // `+80` parsed as a port that `normalize_host` kept in the host (seen while
        // writing the `request_path` fuzz target's invariant).
        assert_eq!(authority_port("api.payments:+80"), None);
        assert_eq!(authority_port("api::80"), None);
        assert_eq!(authority_port("api:"), None);
    }
}
