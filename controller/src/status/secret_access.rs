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
/// The Role (and its RoleBinding) that names a namespace's JWKS Secrets.
pub const JWKS: &str = "weir-gateway-jwks";
/// The label each grant carries, so that a new leader can find them: `weir.dev/grants=`
/// one of the values below.
const GRANTS: &str = "weir.dev/grants";
const CERTIFICATES_GRANT: &str = "gateway-secrets";
const JWKS_GRANT: &str = "gateway-jwks";

fn metadata(name: &str, namespace: &str, grant: &str) -> Value {
    json!({
        "name": name,
        "namespace": namespace,
        "labels": {GRANTS: grant, "app.kubernetes.io/managed-by": "weir-controller"},
    })
}

/// The server-side apply body of a RoleBinding `name` of the role `role` (a `ClusterRole`
/// or `Role` of the same name) to the gateways' ServiceAccount.
fn binding(
    namespace: &str,
    role: &str,
    name: &str,
    grant: &str,
    account: &(String, String),
) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(name, namespace, grant),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role, "name": name},
        "subjects": [{"kind": "ServiceAccount", "namespace": account.0, "name": account.1}],
    })
}

/// The server-side apply body of the Role naming one namespace's JWKS Secrets.
fn jwks_role(namespace: &str, names: &BTreeSet<String>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(JWKS, namespace, JWKS_GRANT),
        "rules": [{
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": names,
            "verbs": ["get", "list", "watch"],
        }],
    })
}

/// The grants of one kind an earlier leader (or this one) made, found by their label;
/// `None` after logging when the list fails.
async fn list_grants<K>(client: &Client, grant: &str) -> Option<Vec<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = ListParams::default().labels(&format!("{GRANTS}={grant}"));
    match Api::<K>::all(client.clone()).list(&params).await {
        Ok(list) => Some(list.items),
        Err(e) => {
            warn!(grant, error = %e, "listing the gateways' Secret grants failed; retrying on the next round");
            None
        }
    }
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
    if bindings.known.is_none() {
        let Some(found) = list_grants::<RoleBinding>(client, CERTIFICATES_GRANT).await else {
            return 0;
        };
        bindings.known = Some(
            found
                .into_iter()
                .filter_map(|rb| rb.metadata.namespace)
                .collect(),
        );
    }
    let wanted = crate::translate::secret_namespaces(snapshot);
    let known = bindings.known.get_or_insert_with(BTreeSet::new);
    let mut done = 0;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let missing: Vec<String> = wanted.difference(known).cloned().collect();
    for ns in &missing {
        let api: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
        match api
            .patch(
                NAME,
                &params,
                &Patch::Apply(binding(
                    ns,
                    "ClusterRole",
                    NAME,
                    CERTIFICATES_GRANT,
                    account,
                )),
            )
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
        let Some(found) = list_grants::<Role>(client, JWKS_GRANT).await else {
            return 0;
        };
        let known = found
            .into_iter()
            .filter_map(|role| {
                let names = role
                    .rules
                    .iter()
                    .flatten()
                    .flat_map(|r| r.resource_names.iter().flatten().cloned())
                    .collect();
                Some((role.metadata.namespace?, names))
            })
            .collect();
        bindings.jwks = Some(known);
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
                .patch(
                    JWKS,
                    &params,
                    &Patch::Apply(binding(ns, "Role", JWKS, JWKS_GRANT, account)),
                )
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
