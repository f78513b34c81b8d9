//! Listeners → ports: each port's listeners by hostname, and each listener's virtual hosts
//! with their route entries.
//!
//! Whether a listener is programmed at all is decided first, by [`crate::tls::compile`]: a
//! listener whose certificates or client validation do not compile, or whose port another
//! protocol holds, is left out here, and its port is not opened for it alone.

use super::hosts::HostTable;
use super::table::{Entry, ListenerRt, Port};
use pingora::utils::tls::CertKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use weir_model::{Listener, ObjectName, Protocol, Scheme};

/// Compiles the listeners `programmed` lets through (same index as `listeners`);
/// `entries` compiles one virtual host's route entries, `policy` looks up a
/// RateLimitPolicy's index.
pub(super) fn compile(
    listeners: &[Listener],
    programmed: &[bool],
    mut entries: impl FnMut(&[weir_model::RouteEntry]) -> Vec<Entry>,
    policy: impl Fn(Option<&str>) -> Option<usize>,
    authz: &dyn Fn(&[String]) -> Box<[usize]>,
    client_certs: &HashMap<ObjectName, Option<Arc<CertKey>>>,
) -> BTreeMap<u16, Port> {
    let mut ports: BTreeMap<u16, Port> = BTreeMap::new();
    for (l, _) in listeners.iter().zip(programmed).filter(|(_, ok)| **ok) {
        let port = ports.entry(l.port).or_insert_with(|| Port {
            port: l.port,
            protocol: l.protocol,
            listeners: Vec::new(),
            by_host: HostTable::default(),
        });
        let mut hosts = HostTable::default();
        let mut vhosts = Vec::with_capacity(l.hosts.len());
        for vh in &l.hosts {
            hosts.insert(&vh.hostname, vhosts.len());
            vhosts.push(entries(&vh.routes));
        }
        port.by_host
            .insert(l.hostname.as_deref().unwrap_or("*"), port.listeners.len());
        port.listeners.push(ListenerRt {
            gateway: l.gateway.to_string().into(),
            name: l.name.as_str().into(),
            scheme: match l.protocol {
                Protocol::Http => Scheme::Http,
                Protocol::Https => Scheme::Https,
            },
            port: l.port,
            rate_limit: policy(l.rate_limit.as_deref()),
            authz: authz(&l.authz),
            mesh: l.mesh.clone(),
            backend_client_cert: client_certs.get(&l.gateway).cloned().flatten(),
            hosts,
            vhosts,
        });
    }
    ports
}
