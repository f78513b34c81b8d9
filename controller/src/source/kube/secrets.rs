//! Narrow Secret watches, started and stopped as Gateways, ReferenceGrants and
//! AuthorizationPolicies change:
//! - for the gateways, one per namespace whose certificates their Gateways may use
//!   ([`crate::translate::secret_namespaces`]), so that their RBAC can grant Secret reads
//!   there only (the controller keeps a RoleBinding in each);
//! - for both roles, one per Secret that holds a JWKS
//!   ([`crate::translate::jwks_secrets`]): such a Secret is not a certificate, so the
//!   certificate watches skip it, and the gateways' RBAC names it alone.

use super::WatchError;
use super::store::{Change, Scope, SecretWatch, Stores};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use tokio::task::JoinHandle;
use tracing::info;

/// The field selector that keeps a Secret watch to certificates.
pub(super) const TLS_ONLY: &str = "type=kubernetes.io/tls";

/// Starts and stops narrow Secret watches; their events come back through the source's
/// event stream as [`Change::ScopedSecret`] and [`Change::ScopedSecretFailed`].
pub trait SecretWatchers: Send + 'static {
    fn start(&mut self, watch: &SecretWatch);
    fn stop(&mut self, watch: &SecretWatch);
}

/// The live watches.
pub struct KubeSecrets {
    client: Client,
    tx: UnboundedSender<Result<Change, WatchError>>,
    running: BTreeMap<SecretWatch, JoinHandle<()>>,
}

impl std::fmt::Debug for KubeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecrets")
            .field("watches", &self.running.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl KubeSecrets {
    pub fn new(client: Client, tx: UnboundedSender<Result<Change, WatchError>>) -> Self {
        Self {
            client,
            tx,
            running: BTreeMap::new(),
        }
    }
}

impl SecretWatchers for KubeSecrets {
    fn start(&mut self, watch: &SecretWatch) {
        let (api, config) = match watch {
            SecretWatch::Certificates(ns) => (
                Api::<Secret>::namespaced(self.client.clone(), ns),
                watcher::Config::default().fields(TLS_ONLY),
            ),
            // RBAC authorizes a list or watch by resourceNames only with this selector.
            SecretWatch::Named(ns, name) => (
                Api::<Secret>::namespaced(self.client.clone(), ns),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
            ),
        };
        let (tx, key) = (self.tx.clone(), watch.clone());
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(event) = events.next().await {
                let change = match event {
                    Ok(e) => Change::ScopedSecret(key.clone(), e),
                    Err(e) => Change::ScopedSecretFailed {
                        watch: key.clone(),
                        forbidden: is_forbidden(&e),
                        error: e.to_string(),
                    },
                };
                if tx.unbounded_send(Ok(change)).is_err() {
                    return; // the source is gone
                }
            }
        });
        if let Some(old) = self.running.insert(watch.clone(), task) {
            old.abort();
        }
    }

    fn stop(&mut self, watch: &SecretWatch) {
        if let Some(task) = self.running.remove(watch) {
            task.abort();
        }
    }
}

impl Drop for KubeSecrets {
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}

fn is_forbidden(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 403)
}

/// Brings the narrow watches to what the Gateways and policies need, once what decides it
/// is listed: namespaces' certificates when `certificates` (the gateways, which read no
/// Secret cluster-wide), and each JWKS Secret. True when a watch was dropped with Secrets
/// in it.
pub(super) fn reconcile(
    stores: &mut Stores,
    scope: &Scope,
    watchers: &mut dyn SecretWatchers,
    certificates: bool,
) -> bool {
    let Some(references) = stores.references(scope) else {
        return false;
    };
    let mut wanted: BTreeSet<SecretWatch> = crate::translate::jwks_secrets(&references)
        .into_iter()
        .map(|(ns, name)| SecretWatch::Named(ns, name))
        .collect();
    if certificates {
        wanted.extend(
            crate::translate::secret_namespaces(&references)
                .into_iter()
                .map(SecretWatch::Certificates),
        );
    }
    let current: BTreeSet<SecretWatch> = stores.secret_watches().cloned().collect();
    let mut dropped = false;
    for watch in current.difference(&wanted) {
        info!(%watch, "no longer needed: stop watching");
        watchers.stop(watch);
        dropped |= stores.unwatch_secrets(watch);
    }
    for watch in wanted.difference(&current) {
        info!(%watch, "needed: watching");
        stores.watch_secrets(watch);
        watchers.start(watch);
    }
    dropped
}
