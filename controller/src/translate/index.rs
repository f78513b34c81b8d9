//! Lookups over a [`Snapshot`]: by name, Service → EndpointSlices, namespace labels, and
//! ReferenceGrant checks. Built once per translation.

use crate::source::Snapshot;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::{BTreeMap, HashMap};

pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label the API server puts on every Namespace; selectors commonly use it.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// namespace → name → value. Nested rather than keyed by a tuple so that lookups can borrow
/// short-lived strings.
type NsMap<'a, V> = HashMap<&'a str, HashMap<&'a str, V>>;

fn get<'m, V>(map: &'m NsMap<'_, V>, namespace: &str, name: &str) -> Option<&'m V> {
    map.get(namespace)?.get(name)
}

pub(crate) struct Index<'a> {
    services: NsMap<'a, &'a Service>,
    secrets: NsMap<'a, &'a Secret>,
    /// Sorted by slice name, so that endpoint order never depends on input order.
    slices: NsMap<'a, Vec<&'a EndpointSlice>>,
    namespace_labels: HashMap<&'a str, &'a BTreeMap<String, String>>,
    grants: HashMap<&'a str, Vec<&'a ReferenceGrant>>,
}

fn by_name<'a, T>(items: &'a [T], meta: impl Fn(&T) -> &ObjectMeta) -> NsMap<'a, &'a T> {
    let mut map: NsMap<'a, &'a T> = HashMap::new();
    for item in items {
        let m = meta(item);
        map.entry(m.namespace.as_deref().unwrap_or("default"))
            .or_default()
            .insert(m.name.as_deref().unwrap_or(""), item);
    }
    map
}

/// One side of a reference, for ReferenceGrant checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefEnd<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

impl<'a> Index<'a> {
    pub(crate) fn new(s: &'a Snapshot) -> Self {
        let mut slices: NsMap<'a, Vec<&'a EndpointSlice>> = HashMap::new();
        for slice in &s.endpoint_slices {
            let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
            if let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                slices
                    .entry(ns)
                    .or_default()
                    .entry(svc.as_str())
                    .or_default()
                    .push(slice);
            }
        }
        for list in slices.values_mut().flat_map(HashMap::values_mut) {
            list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        let mut grants: HashMap<&str, Vec<&ReferenceGrant>> = HashMap::new();
        for g in &s.reference_grants {
            grants
                .entry(g.metadata.namespace.as_deref().unwrap_or("default"))
                .or_default()
                .push(g);
        }
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        Self {
            services: by_name(&s.services, |o| &o.metadata),
            secrets: by_name(&s.secrets, |o| &o.metadata),
            slices,
            namespace_labels: s
                .namespaces
                .iter()
                .filter_map(|n| {
                    Some((
                        n.metadata.name.as_deref()?,
                        n.metadata.labels.as_ref().unwrap_or(&EMPTY),
                    ))
                })
                .collect(),
            grants,
        }
    }

    pub(crate) fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        get(&self.services, namespace, name).copied()
    }

    pub(crate) fn secret(&self, namespace: &str, name: &str) -> Option<&'a Secret> {
        get(&self.secrets, namespace, name).copied()
    }

    pub(crate) fn endpoint_slices(&self, namespace: &str, service: &str) -> &[&'a EndpointSlice] {
        get(&self.slices, namespace, service)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// A namespace's labels, including the `kubernetes.io/metadata.name` label the API server
    /// adds, so that selectors behave the same whether or not the Namespace object is given.
    pub(crate) fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespace_labels
            .get(namespace)
            .map(|l| (*l).clone())
            .unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.into(), namespace.into());
        labels
    }

    /// Whether `from` may refer to the object `to_name` of kind `to` in `to.namespace`:
    /// always within a namespace, across namespaces only with a ReferenceGrant in the target
    /// namespace that lists both sides.
    pub(crate) fn ref_permitted(&self, from: RefEnd<'_>, to: RefEnd<'_>, to_name: &str) -> bool {
        if from.namespace == to.namespace {
            return true;
        }
        let Some(grants) = self.grants.get(to.namespace) else {
            return false;
        };
        grants.iter().any(|g| {
            g.spec.from.iter().any(|f| {
                f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
            }) && g.spec.to.iter().any(|t| {
                t.group == to.group
                    && t.kind == to.kind
                    && t.name.as_deref().is_none_or(|n| n == to_name)
            })
        })
    }
}
