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
//! existing ones, so a restart forgets none; they are listed again every five minutes, so
//! a grant deleted or changed by hand is restored at the next resync round after that).
//!
//! A JWKS an AuthorizationPolicy keeps in a Secret ([`crate::translate::jwks_secrets`]) is
//! granted one by one: in its namespace a Role `weir-gateway-jwks` names those Secrets
//! (`resourceNames`; the gateways list and watch them with a `metadata.name` selector) and
//! a RoleBinding of the same name binds it. A policy owner thus opens that one Secret to
//! the gateways, not the rest of the namespace.

use super::write::FIELD_MANAGER;
use crate::source::Snapshot;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tracing::{info, warn};

/// The RoleBinding's name in each namespace, and the ClusterRole it binds.
pub const NAME: &str = "weir-gateway-secrets";
const LABEL: (&str, &str) = ("weir.dev/grants", "gateway-secrets");
/// The Role (and its RoleBinding) that names a namespace's JWKS Secrets.
pub const JWKS: &str = "weir-gateway-jwks";
const JWKS_LABEL: (&str, &str) = ("weir.dev/grants", "gateway-jwks");

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

/// The server-side apply body of the Role naming one namespace's JWKS Secrets.
pub fn jwks_role(namespace: &str, names: &BTreeSet<String>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {
            "name": JWKS,
            "namespace": namespace,
            "labels": {JWKS_LABEL.0: JWKS_LABEL.1, "app.kubernetes.io/managed-by": "weir-controller"},
        },
        "rules": [{
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": names,
            "verbs": ["get", "list", "watch"],
        }],
    })
}

/// The server-side apply body of the RoleBinding that gives the gateways [`jwks_role`].
pub fn jwks_binding(namespace: &str, account: &(String, String)) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": JWKS,
            "namespace": namespace,
            "labels": {JWKS_LABEL.0: JWKS_LABEL.1, "app.kubernetes.io/managed-by": "weir-controller"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": JWKS},
        "subjects": [{"kind": "ServiceAccount", "namespace": account.0, "name": account.1}],
    })
}

/// How long a listing of the grants is trusted.
const RELIST: std::time::Duration = std::time::Duration::from_secs(300);

/// What the cluster holds, as far as this leader knows.
#[derive(Debug, Default)]
pub struct Bindings {
    /// When the grants were last listed (tokio's clock, which tests can move).
    listed: Option<tokio::time::Instant>,
    /// `None` until listed after gaining the lease.
    known: Option<BTreeSet<String>>,
    /// Each namespace's JWKS Role, by the Secrets it names; `None` until listed.
    jwks: Option<BTreeMap<String, BTreeSet<String>>>,
}

/// Brings the RoleBindings to the namespaces `snapshot`'s Gateways need, and the JWKS Roles
/// to the Secrets its policies name. Returns how many objects were created, changed or
/// deleted; failures are retried on the next round.
pub async fn apply(
    client: &Client,
    snapshot: &Snapshot,
    account: &(String, String),
    bindings: &mut Bindings,
) -> usize {
    if bindings.listed.is_none_or(|at| at.elapsed() >= RELIST) {
        bindings.known = None;
        bindings.jwks = None;
        bindings.listed = Some(tokio::time::Instant::now());
    }
    certificates(client, snapshot, account, bindings).await
        + jwks(client, snapshot, account, bindings).await
}

async fn certificates(
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

async fn jwks(
    client: &Client,
    snapshot: &Snapshot,
    account: &(String, String),
    bindings: &mut Bindings,
) -> usize {
    if bindings.jwks.is_none() {
        let all: Api<Role> = Api::all(client.clone());
        let params = ListParams::default().labels(&format!("{}={}", JWKS_LABEL.0, JWKS_LABEL.1));
        match all.list(&params).await {
            Ok(list) => {
                let known = list
                    .items
                    .iter()
                    .filter_map(|role| {
                        let names = role
                            .rules
                            .iter()
                            .flatten()
                            .flat_map(|r| r.resource_names.iter().flatten().cloned())
                            .collect();
                        Some((role.metadata.namespace.clone()?, names))
                    })
                    .collect();
                bindings.jwks = Some(known);
            }
            Err(e) => {
                warn!(error = %e, "listing the gateways' JWKS Roles failed; retrying on the next round");
                return 0;
            }
        }
    }
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (ns, name) in crate::translate::jwks_secrets(snapshot) {
        wanted.entry(ns).or_default().insert(name);
    }
    let known = bindings.jwks.get_or_insert_with(BTreeMap::new);
    let mut done = 0;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (ns, names) in &wanted {
        if known.get(ns) == Some(names) {
            continue;
        }
        let roles: Api<Role> = Api::namespaced(client.clone(), ns);
        let role_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
        // The Role first: a RoleBinding to a missing Role grants nothing, but says it does.
        let written = match roles
            .patch(JWKS, &params, &Patch::Apply(jwks_role(ns, names)))
            .await
        {
            Ok(_) => role_bindings
                .patch(JWKS, &params, &Patch::Apply(jwks_binding(ns, account)))
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                info!(namespace = ns, secrets = ?names, "the gateways may read these JWKS Secrets");
                known.insert(ns.clone(), names.clone());
                done += 1;
            }
            Err(e) => {
                warn!(namespace = ns, error = %e, "granting the gateways this namespace's JWKS Secrets failed; retrying on the next round")
            }
        }
    }
    let stale: Vec<String> = known
        .keys()
        .filter(|ns| !wanted.contains_key(*ns))
        .cloned()
        .collect();
    for ns in stale {
        let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
        let role_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        let deleted = match gone(role_bindings.delete(JWKS, &DeleteParams::default()).await) {
            Ok(()) => gone(roles.delete(JWKS, &DeleteParams::default()).await),
            Err(e) => Err(e),
        };
        match deleted {
            Ok(()) => {
                info!(
                    namespace = ns,
                    "the gateways no longer read JWKS Secrets in this namespace"
                );
                known.remove(&ns);
                done += 1;
            }
            Err(e) => {
                warn!(namespace = ns, error = %e, "revoking the gateways' JWKS Secrets failed; retrying on the next round")
            }
        }
    }
    done
}

/// A delete that found nothing to delete did what it was asked.
fn gone<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
