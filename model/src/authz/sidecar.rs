//! Every accepted policy, and which apply to which workloads: the fleet's config holds it
//! whole, and the sidecars of a namespace get [`Policies::for_namespace`] as a file (the
//! ConfigMap `weir-authz`, or `weir-controller authz`). A sidecar knows its own namespace (from its SVID) and its pod's labels, and
//! picks the Services whose selector matches them, as the Service itself picks endpoints.

use super::AuthzPolicy;
use crate::ObjectName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policies {
    /// Accepted policies by `namespace/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policies: BTreeMap<String, AuthzPolicy>,
    /// Policies that apply to every workload of a namespace (`targetRefs` kind Namespace).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, Vec<String>>,
    /// Services with policies of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServicePolicies>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePolicies {
    pub service: ObjectName,
    /// The Service's `spec.selector`; a Service without one selects no pod.
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    pub policies: Vec<String>,
}

/// A Service port and the pod ports it leads to: numeric target ports, and named ones as
/// the EndpointSlices resolved them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    pub target_ports: Vec<u16>,
}

impl Policies {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Only what the workloads of `namespace` need.
    pub fn for_namespace(&self, namespace: &str) -> Policies {
        let services: Vec<ServicePolicies> = self
            .services
            .iter()
            .filter(|s| s.service.namespace == namespace)
            .cloned()
            .collect();
        let namespaces: BTreeMap<String, Vec<String>> = self
            .namespaces
            .iter()
            .filter(|(ns, _)| *ns == namespace)
            .map(|(ns, ids)| (ns.clone(), ids.clone()))
            .collect();
        let used = |id: &String| {
            namespaces.values().flatten().any(|x| x == id)
                || services.iter().flat_map(|s| &s.policies).any(|x| x == id)
        };
        Policies {
            policies: self
                .policies
                .iter()
                .filter(|(id, _)| used(id))
                .map(|(id, p)| (id.clone(), p.clone()))
                .collect(),
            namespaces,
            services,
        }
    }

    /// The Services of `namespace` that select a pod with `labels`. `None`: the
    /// namespace is not known yet, and the file is trusted to hold only the pod's own.
    pub fn services_of<'a>(
        &'a self,
        namespace: Option<&'a str>,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a ServicePolicies> + 'a {
        self.services.iter().filter(move |s| {
            namespace.is_none_or(|ns| s.service.namespace == ns)
                && !s.selector.is_empty()
                && s.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
    }

    /// The policies that apply to a workload, each once, in id order.
    pub fn workload_policies(
        &self,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&AuthzPolicy> {
        let namespace_wide = self
            .namespaces
            .iter()
            .filter(|(ns, _)| namespace.is_none_or(|n| n == ns.as_str()))
            .flat_map(|(_, ids)| ids);
        let mut ids: Vec<&String> = self
            .services_of(namespace, labels)
            .flat_map(|s| &s.policies)
            .chain(namespace_wide)
            .collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| self.policies.get(id))
            .collect()
    }

    /// The ports a caller may be said to have addressed on an inbound `port`: the port
    /// itself, and the ports of the workload's Services that lead to it.
    pub fn addressed_ports(
        &self,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
        port: u16,
    ) -> Vec<u16> {
        let mut ports = vec![port];
        for s in self.services_of(namespace, labels) {
            for p in &s.ports {
                if p.target_ports.contains(&port) && !ports.contains(&p.port) {
                    ports.push(p.port);
                }
            }
        }
        ports
    }
}
