//! BackendTLSPolicy: which backends the gateway reaches over TLS, with which SNI, trust
//! anchors and names to verify, and the status each policy gets.
//!
//! A policy targets a Service, or one port of it by name (`sectionName`); a policy naming
//! the port beats one naming the whole Service. Two policies on the same target: the older
//! wins and the other is `Conflicted`. A policy that is invalid, or has no valid CA
//! certificate, still holds its targets and makes their connections fail (5xx): sending in
//! cleartext, or unverified, what someone asked to protect would be worse.
//!
//! Status goes to the policy's ancestors: the Gateways that route to a targeted Service.

mod review;

pub use review::CA_BUNDLE_KEY;

use super::build::used_backends;
use super::index::{GATEWAY_GROUP, Index};
use super::state::age_order;
use super::status::{Outcome, StatusReport, condition_from, reason as common};
use crate::CONTROLLER_NAME;
use crate::source::Snapshot;
use gateway_api::apis::standard::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyStatus, BackendTlsPolicyStatusAncestors,
    BackendTlsPolicyStatusAncestorsAncestorRef,
};
use review::{Reviewed, Target, review};
use std::collections::{BTreeMap, BTreeSet};
use weir_model::{BackendKey, Config, ObjectName};

/// The spec caps a policy's ancestor list.
const MAX_ANCESTORS: usize = 16;
const TARGET_NOT_FOUND: &str = "TargetNotFound";

pub(crate) fn apply(
    snapshot: &Snapshot,
    idx: &Index<'_>,
    config: &mut Config,
    report: &mut StatusReport,
) {
    let config_maps = review::by_name(&snapshot.config_maps);
    let mut policies: Vec<&BackendTlsPolicy> = snapshot.backend_tls_policies.iter().collect();
    // Oldest first: on a conflict the older policy keeps the target.
    policies.sort_by(|a, b| {
        age_order(
            a.metadata.creation_timestamp.as_ref(),
            &id(a),
            b.metadata.creation_timestamp.as_ref(),
            &id(b),
        )
    });
    let reviewed: Vec<Reviewed> = policies
        .iter()
        .map(|p| review(idx, &config_maps, id(p), p))
        .collect();
    let mut claimed: BTreeMap<&Target, usize> = BTreeMap::new();
    let mut conflicts: Vec<Vec<String>> = vec![Vec::new(); reviewed.len()];
    for (i, r) in reviewed.iter().enumerate() {
        for target in r.targets.iter().flatten() {
            match claimed.get(target) {
                Some(&owner) => conflicts[i].push(format!(
                    "{} is already targeted by the older policy {}",
                    describe(target),
                    reviewed[owner].id
                )),
                None => {
                    claimed.insert(target, i);
                }
            }
        }
    }
    let won: BTreeSet<usize> = claimed.values().copied().collect();
    for (key, backend) in config.backends.iter_mut() {
        let port_name = idx
            .service(&backend.service.namespace, &backend.service.name)
            .and_then(|s| s.spec.as_ref()?.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == i32::from(backend.port)))
            .and_then(|p| p.name.clone());
        let section = port_name.map(|n| (backend.service.clone(), Some(n)));
        let whole = (backend.service.clone(), None);
        let owner = section
            .as_ref()
            .and_then(|t| claimed.get(t))
            .or_else(|| claimed.get(&whole));
        if let Some(&i) = owner {
            tracing::trace!(backend = %key, policy = %reviewed[i].id, "backend TLS");
            backend.tls = Some(reviewed[i].tls.clone());
        }
    }

    let users = gateways_by_service(config);
    for (i, r) in reviewed.into_iter().enumerate() {
        let ancestors: BTreeSet<&ObjectName> = r
            .services
            .iter()
            .filter_map(|s| users.get(s))
            .flatten()
            .collect();
        if ancestors.is_empty() {
            continue;
        }
        let missing: Vec<&str> = r
            .targets
            .iter()
            .filter_map(|t| t.as_ref().err())
            .map(String::as_str)
            .collect();
        let notes: Vec<&str> = missing
            .iter()
            .copied()
            .chain(conflicts[i].iter().map(String::as_str))
            .collect();
        let accepted = match r.accepted {
            Err(e) => Err(e),
            Ok(_) if !won.contains(&i) && !conflicts[i].is_empty() => {
                Err(Outcome::new(common::CONFLICTED, conflicts[i].join("; ")))
            }
            Ok(_) if !won.contains(&i) => Err(Outcome::new(TARGET_NOT_FOUND, missing.join("; "))),
            Ok(o) if notes.is_empty() => Ok(o),
            Ok(o) => Ok(Outcome::new(
                o.reason,
                format!("{}, except: {}", o.message, notes.join("; ")),
            )),
        };
        let mut conditions = vec![condition_from(common::ACCEPTED, &accepted, r.generation)];
        if let Some(refs) = &r.resolved_refs {
            conditions.push(condition_from(common::RESOLVED_REFS, refs, r.generation));
        }
        let entries = ancestors
            .into_iter()
            .take(MAX_ANCESTORS)
            .map(|gw| BackendTlsPolicyStatusAncestors {
                ancestor_ref: BackendTlsPolicyStatusAncestorsAncestorRef {
                    group: Some(GATEWAY_GROUP.into()),
                    kind: Some("Gateway".into()),
                    name: gw.name.clone(),
                    namespace: Some(gw.namespace.clone()),
                    port: None,
                    section_name: None,
                },
                conditions: conditions.clone(),
                controller_name: CONTROLLER_NAME.into(),
            })
            .collect();
        report
            .backend_tls_policies
            .insert(r.id, BackendTlsPolicyStatus { ancestors: entries });
    }
}

fn id(p: &BackendTlsPolicy) -> ObjectName {
    ObjectName::new(
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn describe((svc, section): &Target) -> String {
    match section {
        Some(port) => format!("Service {svc} port {port}"),
        None => format!("Service {svc}"),
    }
}

fn gateways_by_service(config: &Config) -> BTreeMap<ObjectName, BTreeSet<ObjectName>> {
    let mut out: BTreeMap<ObjectName, BTreeSet<ObjectName>> = BTreeMap::new();
    // A mesh listener serves the mesh table, not virtual hosts.
    let mesh_entries = config
        .mesh
        .services
        .iter()
        .flat_map(|m| m.routes.iter().chain(m.consumers.values().flatten()));
    for l in &config.listeners {
        let entries: Vec<_> = match l.mesh {
            Some(_) => mesh_entries.clone().collect(),
            None => l.hosts.iter().flat_map(|h| &h.routes).collect(),
        };
        let used: BTreeSet<BackendKey> = used_backends(
            entries
                .into_iter()
                .filter_map(|e| config.rules.get(&e.rule)),
        );
        for key in used {
            if let Some(b) = config.backends.get(&key) {
                out.entry(b.service.clone())
                    .or_default()
                    .insert(l.gateway.clone());
            }
        }
    }
    out
}
