//! The namespaces whose Secrets the gateways need: each namespace of a Gateway of Weir's
//! classes, and each namespace a ReferenceGrant lets such a Gateway take a certificate
//! from (listener `certificateRefs`, `tls.backend.clientCertificateRef`). Computed from the
//! specs alone, so that a gateway may watch a namespace before its Secret exists, and so
//! that RBAC can grant Secret reads there and nowhere else. And the Secrets that hold
//! AuthorizationPolicies' JWKS, which RBAC grants one by one.

use super::CONTROLLER_NAME;
use super::index::{GATEWAY_GROUP, Index, RefEnd};
use crate::source::Snapshot;
use std::collections::BTreeSet;

/// See the module header. A reference without a permitting ReferenceGrant adds nothing:
/// the Gateway may not use that Secret, so its gateways need not read it.
pub fn secret_namespaces(snapshot: &Snapshot) -> BTreeSet<String> {
    let idx = Index::new(snapshot);
    let classes: BTreeSet<&str> = snapshot
        .gateway_classes
        .iter()
        .filter(|c| c.spec.controller_name == CONTROLLER_NAME)
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    let mut out = BTreeSet::new();
    for gw in &snapshot.gateways {
        if !classes.contains(gw.spec.gateway_class_name.as_str()) {
            continue;
        }
        let gw_ns = gw.metadata.namespace.as_deref().unwrap_or("default");
        out.insert(gw_ns.to_string());
        let listener_refs = gw
            .spec
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| t.certificate_refs.iter().flatten())
            .map(|r| {
                (
                    r.group.as_deref(),
                    r.kind.as_deref(),
                    &r.name,
                    r.namespace.as_deref(),
                )
            });
        let client_ref = gw
            .spec
            .tls
            .as_ref()
            .and_then(|t| t.backend.as_ref())
            .and_then(|b| b.client_certificate_ref.as_ref())
            .map(|r| {
                (
                    r.group.as_deref(),
                    r.kind.as_deref(),
                    &r.name,
                    r.namespace.as_deref(),
                )
            });
        for (group, kind, name, ns) in listener_refs.chain(client_ref) {
            let (group, kind) = (group.unwrap_or(""), kind.unwrap_or("Secret"));
            if !matches!(group, "" | "core") || kind != "Secret" {
                continue;
            }
            let ns = ns.unwrap_or(gw_ns);
            let from = RefEnd {
                group: GATEWAY_GROUP,
                kind: "Gateway",
                namespace: gw_ns,
            };
            let to = RefEnd {
                group,
                kind,
                namespace: ns,
            };
            if idx.ref_permitted(from, to, name) {
                out.insert(ns.to_string());
            }
        }
    }
    out
}

/// The Secrets (namespace, name) that AuthorizationPolicies take a JWKS from. Every
/// policy's, attached or not: which ones apply is decided by translation, and a Secret
/// watched for nothing costs one small object.
pub fn jwks_secrets(snapshot: &Snapshot) -> BTreeSet<(String, String)> {
    snapshot
        .authorization_policies
        .iter()
        .flat_map(|p| {
            let ns = p.metadata.namespace.as_deref().unwrap_or("default");
            p.spec
                .jwt
                .iter()
                .filter(|j| j.jwks_ref.kind.as_deref() == Some("Secret"))
                .map(move |j| (ns.to_string(), j.jwks_ref.name.clone()))
        })
        .collect()
}
