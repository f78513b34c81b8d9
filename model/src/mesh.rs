//! The mesh (GAMMA) part of the IR: what the fleet's mesh listeners do with a request
//! addressed to a Service by name.
//!
//! Routes whose parentRef is a Service apply to the Service's frontend: its name and port.
//! A Service without routes still gets a default rule that balances over its own endpoints,
//! so that every call an app makes through its sidecar lands somewhere sensible.

use super::{ObjectName, RouteEntry};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Every Service frontend the mesh listeners serve, by Service and port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mesh {
    /// Ordered by Service, then port.
    pub services: Vec<MeshService>,
}

impl Mesh {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// The routing of one Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshService {
    pub service: ObjectName,
    pub port: u16,
    /// The producer routes (in the Service's own namespace) in precedence order, or the
    /// Service's default rule when it has none. Every caller without consumer routes of its
    /// own gets these.
    pub routes: Vec<RouteEntry>,
    /// Consumer routes (in another namespace than the Service's) by the caller namespace
    /// they apply to. They replace `routes` for callers from that namespace only, which
    /// the fleet learns from the caller's verified SPIFFE ID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumers: BTreeMap<String, Vec<RouteEntry>>,
}

/// The namespaces whose Services a mesh listener serves: its `allowedRoutes.namespaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MeshNamespaces {
    All,
    Only(BTreeSet<String>),
}

impl MeshNamespaces {
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            MeshNamespaces::All => true,
            MeshNamespaces::Only(set) => set.contains(namespace),
        }
    }
}
