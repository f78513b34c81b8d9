//! Scoped Secret access for the gateways: one watch per namespace whose Secrets the
//! Gateways may use ([`crate::translate::secret_namespaces`]), started and stopped as
//! Gateways and ReferenceGrants change, so that the gateways' RBAC can grant Secret reads in
//! those namespaces only (the controller keeps a RoleBinding in each).

use super::WatchError;
use super::store::{Change, Scope, Stores};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::BTreeMap;
use tokio::task::JoinHandle;
use tracing::info;

/// The field selector that keeps a Secret watch to certificates.
pub(super) const TLS_ONLY: &str = "type=kubernetes.io/tls";

/// Starts and stops the watch of one namespace's Secrets; their events come back through
/// the source's event stream as [`Change::ScopedSecret`] and [`Change::ScopedSecretFailed`].
pub trait SecretWatchers: Send + 'static {
    fn start(&mut self, namespace: &str);
    fn stop(&mut self, namespace: &str);
}

/// The live watches.
pub struct KubeSecrets {
    client: Client,
    tx: UnboundedSender<Result<Change, WatchError>>,
    running: BTreeMap<String, JoinHandle<()>>,
}

impl std::fmt::Debug for KubeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecrets")
            .field("namespaces", &self.running.keys().collect::<Vec<_>>())
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
    fn start(&mut self, namespace: &str) {
        let api = Api::<Secret>::namespaced(self.client.clone(), namespace);
        let config = watcher::Config::default().fields(TLS_ONLY);
        let (tx, ns) = (self.tx.clone(), namespace.to_string());
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(event) = events.next().await {
                let change = match event {
                    Ok(e) => Change::ScopedSecret(ns.clone(), e),
                    Err(e) => Change::ScopedSecretFailed {
                        namespace: ns.clone(),
                        forbidden: is_forbidden(&e),
                        error: e.to_string(),
                    },
                };
                if tx.unbounded_send(Ok(change)).is_err() {
                    return; // the source is gone
                }
            }
        });
        if let Some(old) = self.running.insert(namespace.to_string(), task) {
            old.abort();
        }
    }

    fn stop(&mut self, namespace: &str) {
        if let Some(task) = self.running.remove(namespace) {
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

/// Brings the watched namespaces to what the Gateways need, once GatewayClasses, Gateways
/// and ReferenceGrants are listed. True when a namespace was dropped with Secrets in it.
pub(super) fn reconcile(
    stores: &mut Stores,
    scope: &Scope,
    watchers: &mut dyn SecretWatchers,
) -> bool {
    let Some(references) = stores.references(scope) else {
        return false;
    };
    let wanted = crate::translate::secret_namespaces(&references);
    let current: Vec<String> = stores.secret_namespaces().cloned().collect();
    let mut dropped = false;
    for ns in current.iter().filter(|ns| !wanted.contains(*ns)) {
        info!(
            namespace = ns,
            "no Gateway uses Secrets from this namespace any more"
        );
        watchers.stop(ns);
        dropped |= stores.unwatch_secrets(ns);
    }
    for ns in wanted.iter().filter(|ns| !current.contains(ns)) {
        info!(namespace = ns, "watching this namespace's certificates");
        stores.watch_secrets(ns);
        watchers.start(ns);
    }
    dropped
}
