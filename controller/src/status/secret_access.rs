//! The gateways' Secret access: a RoleBinding `weir-gateway-secrets` in each namespace their
//! Gateways may take certificates from ([`crate::translate::secret_namespaces`]), binding
//! the ClusterRole of the same name (Secrets: get, list, watch) to the gateways'
//! ServiceAccount. Nothing binds that ClusterRole cluster-wide, so a gateway (the part that
//! faces the internet) can read Secrets there and nowhere else.
//!
//! Namespaced RoleBindings rather than a label selector: RBAC cannot grant by label, so a
//! selector would only shrink what a gateway holds, not what it may read. The RoleBindings
//! are kept by the lease holder: created when a Gateway or ReferenceGrant opens a namespace,
//! deleted when none does any more (the first round after gaining the lease lists the
//! existing ones, so a restart forgets none).

use super::write::FIELD_MANAGER;
use crate::source::Snapshot;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use tracing::{info, warn};

/// The RoleBinding's name in each namespace, and the ClusterRole it binds.
pub const NAME: &str = "weir-gateway-secrets";
const LABEL: (&str, &str) = ("weir.dev/grants", "gateway-secrets");

/// The server-side apply body of one namespace's RoleBinding.
pub fn body(namespace: &str, account: &(String, String)) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": NAME,
            "namespace": namespace,
            "labels": {LABEL.0: LABEL.1, "app.kubernetes.io/managed-by": "weir-controller"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
        "subjects": [{"kind": "ServiceAccount", "namespace": account.0, "name": account.1}],
    })
}

/// What the cluster holds, as far as this leader knows.
#[derive(Debug, Default)]
pub struct Bindings {
    /// `None` until listed after gaining the lease.
    known: Option<BTreeSet<String>>,
}

/// Brings the RoleBindings to the namespaces `snapshot`'s Gateways need. Returns how many
/// were created or deleted; failures are retried on the next round.
pub async fn apply(
    client: &Client,
    snapshot: &Snapshot,
    account: &(String, String),
    bindings: &mut Bindings,
) -> usize {
    let all: Api<RoleBinding> = Api::all(client.clone());
    if bindings.known.is_none() {
        let params = ListParams::default().labels(&format!("{}={}", LABEL.0, LABEL.1));
        match all.list(&params).await {
            Ok(list) => {
                bindings.known = Some(
                    list.items
                        .iter()
                        .filter_map(|rb| rb.metadata.namespace.clone())
                        .collect(),
                );
            }
            Err(e) => {
                warn!(error = %e, "listing the gateways' Secret RoleBindings failed; retrying on the next round");
                return 0;
            }
        }
    }
    let wanted = crate::translate::secret_namespaces(snapshot);
    let known = bindings.known.get_or_insert_with(BTreeSet::new);
    let mut done = 0;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let missing: Vec<String> = wanted.difference(known).cloned().collect();
    for ns in &missing {
        let api: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
        match api
            .patch(NAME, &params, &Patch::Apply(body(ns, account)))
            .await
        {
            Ok(_) => {
                info!(
                    namespace = ns,
                    "the gateways may read this namespace's Secrets"
                );
                known.insert(ns.clone());
                done += 1;
            }
            Err(e) => {
                warn!(namespace = ns, error = %e, "granting the gateways this namespace's Secrets failed; retrying on the next round")
            }
        }
    }
    let stale: Vec<String> = known.difference(&wanted).cloned().collect();
    for ns in stale {
        let api: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        match api.delete(NAME, &DeleteParams::default()).await {
            Ok(_) => {
                info!(
                    namespace = ns,
                    "the gateways no longer read this namespace's Secrets"
                );
                known.remove(&ns);
                done += 1;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                known.remove(&ns);
            }
            Err(e) => {
                warn!(namespace = ns, error = %e, "revoking the gateways' access to this namespace's Secrets failed; retrying on the next round")
            }
        }
    }
    done
}
