//! The sidecars' AuthorizationPolicies: one ConfigMap `weir-authz` per namespace, key
//! `policies.json`, holding what the namespace's sidecars enforce
//! ([`weir_model::authz::Policies::for_namespace`]). Pods mount it (optional, so a
//! namespace without policies needs none) and `weir-sidecar --authz-file` polls it.
//!
//! A namespace whose policies all went away gets an empty one rather than a deletion: a
//! deleted ConfigMap leaves the last contents in the pods' volumes, still enforced.

use super::write::FIELD_MANAGER;
use crate::source::Snapshot;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use tracing::{debug, warn};
use weir_model::Config;

/// The ConfigMap's name, in every namespace.
pub const CONFIG_MAP: &str = "weir-authz";
/// Its key, the file the sidecar reads.
pub const KEY: &str = "policies.json";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "weir-controller");

/// Each namespace's `policies.json`: those with policies for their sidecars, and those
/// where Weir's ConfigMap exists and must be emptied.
pub fn plan(snapshot: &Snapshot, config: &Config) -> BTreeMap<String, String> {
    let authz = &config.authz;
    let mut namespaces: Vec<&str> = authz
        .services
        .iter()
        .map(|s| s.service.namespace.as_str())
        .chain(authz.namespaces.keys().map(String::as_str))
        .collect();
    namespaces.extend(snapshot.config_maps.iter().filter_map(|c| {
        let ours = c.metadata.name.as_deref() == Some(CONFIG_MAP)
            && c.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0))
                == Some(&MANAGED_BY.1.to_string());
        ours.then_some(c.metadata.namespace.as_deref()?)
    }));
    namespaces
        .into_iter()
        .map(|ns| {
            let policies = authz.for_namespace(ns);
            let text = serde_json::to_string_pretty(&policies).expect("policies serialise");
            (ns.to_string(), text)
        })
        .collect()
}

/// The server-side apply body of one namespace's ConfigMap.
pub fn body(namespace: &str, policies_json: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIG_MAP,
            "namespace": namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
        },
        "data": {KEY: policies_json},
    })
}

/// What was last written per namespace; a namespace is written again only when its
/// policies change (or after a change of leader).
#[derive(Debug, Default)]
pub struct Written {
    last: HashMap<String, String>,
}

/// Applies the namespaces whose policies changed. Returns how many were written; failures
/// are retried on the next round.
pub async fn apply(
    client: &Client,
    planned: &BTreeMap<String, String>,
    written: &mut Written,
) -> usize {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut ok = 0;
    for (ns, text) in planned {
        if written.last.get(ns) == Some(text) {
            continue;
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        match api
            .patch(CONFIG_MAP, &params, &Patch::Apply(body(ns, text)))
            .await
        {
            Ok(_) => {
                debug!(namespace = ns, "sidecar authorization policies written");
                written.last.insert(ns.clone(), text.clone());
                ok += 1;
            }
            Err(e) => {
                warn!(namespace = ns, error = %e, "writing the sidecars' authorization policies failed; retrying on the next change")
            }
        }
    }
    ok
}
