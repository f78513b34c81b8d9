//! Host and route matching, and the filters routes apply (redirect, rewrite, headers): the
//! routing tables ([`compile`] builds them from the config) and the lookups on them.

mod compile;
pub mod filters;
mod hosts;
mod listeners;
pub mod matcher;
mod mesh;
pub mod rules;
mod table;

pub use compile::compile;
pub use hosts::{HostTable, normalize_host};
pub use mesh::{MeshHit, MeshMiss, MeshPort, MeshTable, authority_port};
pub use table::{Choice, Entry, FilterSet, ListenerRt, MirrorRt, Port, Routes, RuleRt, Target};

use matcher::RequestView;

/// Where a request landed.
#[derive(Debug)]
pub enum Found<'r> {
    /// No listener on this port serves the host.
    NoListener,
    /// The listener serves the host but no route matches: 404.
    NoRoute {
        listener: usize,
        destination: Option<&'r MeshPort>,
    },
    /// A mesh listener found no Service for the name.
    NoService { listener: usize, miss: MeshMiss },
    Route {
        listener: usize,
        entry: &'r Entry,
        /// The Service port a mesh listener resolved.
        destination: Option<&'r MeshPort>,
    },
}

/// What a mesh listener needs beyond the host to find the Service: the authority's port and
/// the namespace of the caller's verified identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeshQuery<'a> {
    pub port: Option<u16>,
    pub caller_namespace: Option<&'a str>,
}

/// Finds the listener for `host` (lower-case, no port) and the first matching entry.
pub fn find<'r>(
    port: &'r Port,
    mesh: &'r MeshTable,
    host: &str,
    query: MeshQuery<'_>,
    req: &RequestView<'_>,
) -> Found<'r> {
    let Some(listener) = port.listener_for(host) else {
        return Found::NoListener;
    };
    let l = &port.listeners[listener];
    let (entries, destination) = match &l.mesh {
        None => (l.entries(host), None),
        Some(allowed) => match mesh.lookup(host, query.port, query.caller_namespace, allowed) {
            Ok(hit) => (hit.entries, Some(hit.service)),
            Err(miss) => return Found::NoService { listener, miss },
        },
    };
    match entries.iter().find(|e| e.matcher.matches(req)) {
        Some(entry) => Found::Route {
            listener,
            entry,
            destination,
        },
        None => Found::NoRoute {
            listener,
            destination,
        },
    }
}
