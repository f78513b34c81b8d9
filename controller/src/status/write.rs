//! Applying planned status writes, and remembering them so that a write is not repeated
//! while the watch has yet to show it.

use super::plan::{StatusPatch, Target};
use crate::crd::{AuthorizationPolicy, RateLimitPolicy};
use gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute,
};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::Value;
use std::collections::HashMap;
use tracing::{debug, warn};

/// Weir's field manager: server-side apply records Weir as the owner of what it writes.
pub const FIELD_MANAGER: &str = "weir-controller";

type Key = (Target, Option<String>, String);

/// What was last written to each object, and at which observed resourceVersion.
#[derive(Debug, Default)]
pub struct Written {
    last: HashMap<Key, (Option<String>, Value)>,
    /// The sidecars' policy ConfigMaps, likewise.
    pub(super) sidecars: super::sidecars::Written,
    /// The gateways' Secret RoleBindings.
    pub(super) secret_access: super::secret_access::Bindings,
}

impl Written {
    /// Drops writes the watch has already shown: once an object's resourceVersion moves on,
    /// the observed status is authoritative again (someone may have changed it).
    pub fn filter(&self, patches: Vec<StatusPatch>) -> Vec<StatusPatch> {
        patches
            .into_iter()
            .filter(|p| match self.last.get(&key(p)) {
                Some((version, status)) => !(*version == p.observed_version && *status == p.status),
                None => true,
            })
            .collect()
    }

    fn record(&mut self, p: &StatusPatch) {
        self.last
            .insert(key(p), (p.observed_version.clone(), p.status.clone()));
    }
}

fn key(p: &StatusPatch) -> Key {
    (p.target, p.namespace.clone(), p.name.clone())
}

fn resource(target: Target) -> ApiResource {
    match target {
        Target::GatewayClass => ApiResource::erase::<GatewayClass>(&()),
        Target::Gateway => ApiResource::erase::<Gateway>(&()),
        Target::HttpRoute => ApiResource::erase::<HttpRoute>(&()),
        Target::GrpcRoute => ApiResource::erase::<GrpcRoute>(&()),
        Target::RateLimitPolicy => ApiResource::erase::<RateLimitPolicy>(&()),
        Target::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        Target::BackendTlsPolicy => ApiResource::erase::<BackendTlsPolicy>(&()),
    }
}

/// Applies each patch to its status subresource. Failures are logged and not recorded, so
/// the next round retries them; one failing object does not hold back the others.
pub async fn apply(client: &Client, patches: &[StatusPatch], written: &mut Written) -> usize {
    // Force: status fields another manager once set (an older Weir, or `kubectl`) are
    // Weir's to own; the controller is the only writer of Weir's status.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut ok = 0;
    for p in patches {
        let ar = resource(p.target);
        let api: Api<DynamicObject> = match &p.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        match api
            .patch_status(&p.name, &params, &Patch::Apply(p.body()))
            .await
        {
            Ok(_) => {
                debug!(kind = ar.kind, namespace = ?p.namespace, name = p.name, "status written");
                written.record(p);
                ok += 1;
            }
            Err(e) => {
                warn!(kind = ar.kind, namespace = ?p.namespace, name = p.name, error = %e, "status write failed; retrying on the next change")
            }
        }
    }
    ok
}
