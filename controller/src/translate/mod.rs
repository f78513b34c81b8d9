//! Kubernetes objects → the gateway IR and the status each object would get.
//!
//! Gateway API semantics live here, and only here. [`translate`] is pure and deterministic:
//! no I/O, no clock, and the same result for any order of the input lists, so that the file
//! source, the Kubernetes source, every gateway replica and the status writer all agree.

mod annotations;
mod attach;
mod authz;
mod backends;
mod backendtls;
mod balance;
mod build;
mod client_cert;
mod filters;
mod frontend;
mod gateway;
mod hostname;
mod index;
mod mesh;
mod policy;
mod route;
mod rules;
mod secrets;
mod state;
mod status;
mod tls;

pub use authz::JWKS_KEY;
pub use backendtls::CA_BUNDLE_KEY;
pub use secrets::{jwks_secrets, secret_namespaces};
pub use status::{PolicyReport, Review, StatusReport};
pub(crate) use status::{is_bad, is_negative};

use crate::source::Snapshot;
use std::collections::BTreeMap;
use weir_model::Config;

/// The `controllerName` of GatewayClasses that Weir serves.
pub const CONTROLLER_NAME: &str = "weir.dev/gateway-controller";

/// Translates a snapshot. Invalid parts are left out of the [`Config`] and explained in the
/// [`StatusReport`]; everything valid is still served.
pub fn translate(snapshot: &Snapshot) -> (Config, StatusReport) {
    let idx = index::Index::new(snapshot);
    let mut report = StatusReport::default();
    let classes = gateway::classes(snapshot, &mut report);
    let mut gateways = gateway::gateways(snapshot, &idx, &classes);
    let mut backends = BTreeMap::new();
    let routes = route::collect(snapshot, &idx, &mut backends);
    let (attachments, mut outcomes) = attach::attach(&idx, &mut gateways, &routes);
    let scope = state::Scope::new(snapshot, &idx, &gateways);
    let mesh_attachments = mesh::attach(&idx, scope.as_ref(), &routes, &mut outcomes);
    gateway::write_status(&gateways, &mut report);
    attach::write_status(&routes, &outcomes, &mut report);
    let mesh = mesh::build(
        snapshot,
        &idx,
        scope.as_ref(),
        &routes,
        &mesh_attachments,
        &mut backends,
    );
    let mut config = build::config(
        &gateways,
        &routes,
        &attachments,
        backends,
        scope.as_ref(),
        mesh,
    );
    let mesh_parents = mesh::parents(&routes, &mesh_attachments);
    policy::apply(
        snapshot,
        &idx,
        &gateways,
        &routes,
        &mesh_parents,
        &mut config,
        &mut report,
    );
    authz::apply(
        snapshot,
        &idx,
        &gateways,
        &routes,
        &mesh_parents,
        &mut config,
        &mut report,
    );
    client_cert::apply(&idx, &gateways, &mut config, &mut report);
    backendtls::apply(snapshot, &idx, &mut config, &mut report);
    (config, report)
}
