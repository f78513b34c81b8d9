//! Where Kubernetes objects come from. A source produces [`Snapshot`]s: the plain objects,
//! nothing derived, so that every source (a directory of manifests, or the API server) feeds
//! the same pure [`crate::translate`].

pub mod files;
pub mod kube;

use crate::crd::{AuthorizationPolicy, RateLimitPolicy};
use gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute,
    referencegrants::ReferenceGrant,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::sync::Arc;

/// Every object translation looks at. Order within each list carries no meaning: translation
/// gives the same result for any permutation.
///
/// The Gateway API types are the experimental-channel ones, a superset of the standard channel,
/// so that fields such as `sessionPersistence` survive parsing whichever CRDs are installed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub gateway_classes: Vec<GatewayClass>,
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub reference_grants: Vec<ReferenceGrant>,
    pub namespaces: Vec<Namespace>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub secrets: Vec<Secret>,
    pub rate_limit_policies: Vec<RateLimitPolicy>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// Upstream TLS: the standard channel's type (v1), the only channel that has it.
    pub backend_tls_policies: Vec<BackendTlsPolicy>,
    /// CA bundles (`ca.crt`) for Gateway frontend validation and BackendTLSPolicies; the
    /// Kubernetes source keeps no other key.
    pub config_maps: Vec<ConfigMap>,
}

impl Snapshot {
    /// Number of objects of every kind, for logs.
    pub fn len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.reference_grants.len()
            + self.namespaces.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.rate_limit_policies.len()
            + self.authorization_policies.len()
            + self.backend_tls_policies.len()
            + self.config_maps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a source currently offers; sources publish it on a `tokio::sync::watch` channel.
#[derive(Debug, Clone)]
pub struct SourceState {
    /// The newest good snapshot. It keeps serving while the source is broken: a half-edited
    /// file, or an API server that cannot be reached.
    pub snapshot: Arc<Snapshot>,
    /// Why the newest change is not in `snapshot`; `None` once the source is healthy again.
    pub error: Option<Arc<str>>,
    /// Counts published snapshots, starting at 1 for the initial one.
    pub generation: u64,
}
