//! The status writer: while this controller holds the lease, every new snapshot is
//! translated and the status it calls for is written.

use super::plan::{gateway_addresses, plan};
use super::sidecars;
use super::write::{Written, apply};
use crate::source::SourceState;
use crate::translate;
use kube::Client;
use std::time::Duration;
use tokio::sync::watch;
use tracing::info;

/// How the writer runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The gateway fleet's edge Service (namespace, name): its address is every Gateway's.
    pub gateway_service: Option<(String, String)>,
    /// Re-plans this often without a change: retries failed writes, and dates move on
    /// (a policy's review date can pass with no event at all).
    pub resync: Duration,
    /// The gateways' ServiceAccount (namespace, name): when set, the writer keeps its
    /// Secret RoleBindings ([`super::secret_access`]).
    pub gateway_account: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateway_service: None,
            resync: Duration::from_secs(60),
            gateway_account: None,
        }
    }
}

/// What one round did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub planned: usize,
    pub written: usize,
    /// Namespaces whose sidecar policy ConfigMap was written.
    pub sidecar_policies: usize,
    /// Secret RoleBindings created or deleted.
    pub secret_access: usize,
}

/// One round: translate the current snapshot, write what differs from the cluster.
pub async fn round(
    client: &Client,
    state: &SourceState,
    opts: &Options,
    written: &mut Written,
) -> Round {
    let snapshot = &state.snapshot;
    let (config, mut report) = translate(snapshot);
    report.stamp(jiff::Timestamp::now());
    let service = opts.gateway_service.as_ref().and_then(|(ns, name)| {
        snapshot.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(ns.as_str())
                && s.metadata.name.as_deref() == Some(name.as_str())
        })
    });
    let patches = written.filter(plan(snapshot, &report, &gateway_addresses(service)));
    let done = apply(client, &patches, written).await;
    let policies = sidecars::plan(snapshot, &config);
    let sidecar_policies = sidecars::apply(client, &policies, &mut written.sidecars).await;
    let secret_access = match &opts.gateway_account {
        Some(account) => {
            super::secret_access::apply(client, snapshot, account, &mut written.secret_access).await
        }
        None => 0,
    };
    Round {
        planned: patches.len(),
        written: done,
        sidecar_policies,
        secret_access,
    }
}

/// Runs until `source` closes. Writes only while `leader` is true; on gaining the lease it
/// writes at once whatever differs (usually nothing: the last leader wrote the same).
pub async fn run(
    client: Client,
    mut source: watch::Receiver<SourceState>,
    mut leader: watch::Receiver<bool>,
    opts: Options,
) {
    let mut written = Written::default();
    loop {
        let leading = *leader.borrow_and_update();
        let state = source.borrow_and_update().clone();
        if leading && state.generation > 0 {
            let r = round(&client, &state, &opts, &mut written).await;
            if r.planned > 0 || r.sidecar_policies > 0 || r.secret_access > 0 {
                info!(
                    generation = state.generation,
                    planned = r.planned,
                    written = r.written,
                    sidecar_policies = r.sidecar_policies,
                    secret_access = r.secret_access,
                    "status round"
                );
            }
        }
        tokio::select! {
            changed = source.changed() => if changed.is_err() { return },
            changed = leader.changed() => {
                if changed.is_err() { return }
                let now = *leader.borrow();
                info!(leader = now, "leadership changed");
                if !now {
                    // A new leader starts from what the cluster shows, not from our memory.
                    written = Written::default();
                }
            },
            _ = tokio::time::sleep(opts.resync) => {},
        }
    }
}
