//! Watch events → [`Snapshot`]s, with no API access: kube-runtime's reflector stores hold
//! each kind, and a snapshot is read out of them once every kind has been listed. The live
//! watchers and the tests' recorded event sequences drive this same code.

use crate::crd::{AuthorizationPolicy, RateLimitPolicy};
use crate::source::Snapshot;
use gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute,
    referencegrants::ReferenceGrant,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::watcher::Event;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// One watch event of any kind Weir reads.
#[derive(Debug, Clone)]
pub enum Change {
    GatewayClass(Event<GatewayClass>),
    Gateway(Event<Gateway>),
    HttpRoute(Event<HttpRoute>),
    GrpcRoute(Event<GrpcRoute>),
    ReferenceGrant(Event<ReferenceGrant>),
    Namespace(Event<Namespace>),
    Service(Event<Service>),
    EndpointSlice(Event<EndpointSlice>),
    Secret(Event<Secret>),
    RateLimitPolicy(Event<RateLimitPolicy>),
    AuthorizationPolicy(Event<AuthorizationPolicy>),
    BackendTlsPolicy(Event<BackendTlsPolicy>),
    ConfigMap(Event<ConfigMap>),
    /// A Secret event from one of the narrow Secret watches ([`SecretWatch`]).
    ScopedSecret(SecretWatch, Event<Secret>),
    /// That watch failed; `forbidden` when RBAC refused the list (no RoleBinding there yet).
    ScopedSecretFailed {
        watch: SecretWatch,
        forbidden: bool,
        error: String,
    },
}

/// A narrow Secret watch: the gateways' RBAC grants Secret reads no wider than these.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretWatch {
    /// A namespace's certificates (type `kubernetes.io/tls`): one a Gateway may take
    /// certificates from.
    Certificates(String),
    /// One Secret by namespace and name, whatever its type: a JWKS an AuthorizationPolicy
    /// names.
    Named(String, String),
}

impl std::fmt::Display for SecretWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretWatch::Certificates(ns) => write!(f, "Secrets in {ns}"),
            SecretWatch::Named(ns, name) => write!(f, "Secret {ns}/{name}"),
        }
    }
}

/// Which Gateways this replica serves: all of Weir's, or the one named by `--gateway`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub gateway: Option<(String, String)>,
}

impl Scope {
    fn keeps(&self, g: &Gateway) -> bool {
        self.gateway.as_ref().is_none_or(|(ns, name)| {
            g.namespace().as_deref() == Some(ns.as_str()) && g.name_any() == *name
        })
    }
}

/// One kind's reflector store, and whether its first list has completed.
struct Kind<K: Trim> {
    writer: Writer<K>,
    reader: Store<K>,
    listed: bool,
    /// Set when the kind cannot be listed at all (its CRD is not installed): it then counts
    /// as listed and empty, so one missing optional CRD cannot hold back every route.
    absent: bool,
}

impl<K: Trim> Default for Kind<K> {
    fn default() -> Self {
        let writer = Writer::default();
        let reader = writer.as_reader();
        Self {
            writer,
            reader,
            listed: false,
            absent: false,
        }
    }
}

impl<K: Trim> Kind<K> {
    /// Applies one event; true when the visible objects may have changed. `Init` and
    /// `InitApply` only fill the reflector's buffer: the store swaps at `InitDone`, so a
    /// relist never shows a half-listed kind.
    fn apply(&mut self, event: Event<K>, keep_status: bool) -> bool {
        let event = event.modify(|o| o.trim(keep_status));
        self.writer.apply_watcher_event(&event);
        match event {
            Event::InitDone => {
                self.listed = true;
                self.absent = false;
                true
            }
            Event::Apply(_) | Event::Delete(_) => true,
            Event::Init | Event::InitApply(_) => false,
        }
    }

    fn ready(&self) -> bool {
        self.listed || self.absent
    }

    /// True when this made the kind ready.
    fn mark_absent(&mut self) -> bool {
        let was = self.ready();
        self.absent = true;
        !was
    }

    /// The objects, ordered by namespace and name so that equal contents compare equal.
    fn objects(&self) -> Vec<K> {
        let mut all: Vec<K> = self.reader.state().iter().map(|o| (**o).clone()).collect();
        all.sort_by(|a, b| {
            (a.meta().namespace.as_ref(), a.meta().name.as_ref())
                .cmp(&(b.meta().namespace.as_ref(), b.meta().name.as_ref()))
        });
        all
    }
}

/// Drops what translation never reads and the API server repeats on every object: managed
/// fields and kubectl's copy of the last applied manifest are often larger than the object.
/// Status goes too, except for the status writer: otherwise every status write would make
/// every gateway recompile an unchanged config.
trait Trim: kube::Resource<DynamicType = ()> + Clone + 'static {
    fn trim(&mut self, keep_status: bool) {
        let meta = self.meta_mut();
        meta.managed_fields = None;
        if let Some(a) = meta.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        if !keep_status {
            self.drop_status();
        }
        self.drop_unread();
    }

    fn drop_status(&mut self);

    /// Drops parts of the object translation never reads.
    fn drop_unread(&mut self) {}
}

macro_rules! trim_status {
    ($($t:ty),*) => {$(
        impl Trim for $t {
            fn drop_status(&mut self) {
                self.status = None;
            }
        }
    )*};
}

trim_status!(
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    RateLimitPolicy,
    AuthorizationPolicy,
    BackendTlsPolicy,
    Namespace,
    Service
);

macro_rules! no_status {
    ($($t:ty),*) => {$(
        impl Trim for $t {
            fn drop_status(&mut self) {}
        }
    )*};
}

no_status!(ReferenceGrant, EndpointSlice, Secret);

impl Trim for ConfigMap {
    fn drop_status(&mut self) {}

    /// Every ConfigMap of the cluster is watched, but only CA bundles and JWKS are read: keeping the
    /// rest (often large) would cost every replica memory for nothing.
    fn drop_unread(&mut self) {
        if let Some(data) = self.data.as_mut() {
            data.retain(|k, _| {
                k == crate::translate::CA_BUNDLE_KEY || k == crate::translate::JWKS_KEY
            });
        }
        self.binary_data = None;
    }
}

/// Every kind's store.
#[derive(Default)]
pub struct Stores {
    /// Whether objects keep their status (the status writer compares against it).
    keep_status: bool,
    gateway_classes: Kind<GatewayClass>,
    gateways: Kind<Gateway>,
    http_routes: Kind<HttpRoute>,
    grpc_routes: Kind<GrpcRoute>,
    reference_grants: Kind<ReferenceGrant>,
    namespaces: Kind<Namespace>,
    services: Kind<Service>,
    endpoint_slices: Kind<EndpointSlice>,
    secrets: Kind<Secret>,
    rate_limit_policies: Kind<RateLimitPolicy>,
    authorization_policies: Kind<AuthorizationPolicy>,
    backend_tls_policies: Kind<BackendTlsPolicy>,
    config_maps: Kind<ConfigMap>,
    /// One store per narrow Secret watch: the namespaces' certificates with scoped Secret
    /// access (instead of `secrets`), and the Secrets that hold JWKS.
    scoped_secrets: BTreeMap<SecretWatch, Kind<Secret>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("ready", &self.ready())
            .field("waiting_for", &self.waiting_for())
            .finish_non_exhaustive()
    }
}

/// Calls `$body` with `$k` bound to each kind's store, named as in the watch's kind list.
macro_rules! each_kind {
    ($self:expr, |$name:ident, $k:ident| $body:expr) => {{
        let $name = "GatewayClass";
        let $k = &$self.gateway_classes;
        $body;
        let $name = "Gateway";
        let $k = &$self.gateways;
        $body;
        let $name = "HTTPRoute";
        let $k = &$self.http_routes;
        $body;
        let $name = "GRPCRoute";
        let $k = &$self.grpc_routes;
        $body;
        let $name = "ReferenceGrant";
        let $k = &$self.reference_grants;
        $body;
        let $name = "Namespace";
        let $k = &$self.namespaces;
        $body;
        let $name = "Service";
        let $k = &$self.services;
        $body;
        let $name = "EndpointSlice";
        let $k = &$self.endpoint_slices;
        $body;
        let $name = "Secret";
        let $k = &$self.secrets;
        $body;
        let $name = "RateLimitPolicy";
        let $k = &$self.rate_limit_policies;
        $body;
        let $name = "AuthorizationPolicy";
        let $k = &$self.authorization_policies;
        $body;
        let $name = "BackendTLSPolicy";
        let $k = &$self.backend_tls_policies;
        $body;
        let $name = "ConfigMap";
        let $k = &$self.config_maps;
        $body;
    }};
}

impl Change {
    /// The kind's name, as the API and the logs spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::GatewayClass(_) => "GatewayClass",
            Change::Gateway(_) => "Gateway",
            Change::HttpRoute(_) => "HTTPRoute",
            Change::GrpcRoute(_) => "GRPCRoute",
            Change::ReferenceGrant(_) => "ReferenceGrant",
            Change::Namespace(_) => "Namespace",
            Change::Service(_) => "Service",
            Change::EndpointSlice(_) => "EndpointSlice",
            Change::Secret(_) => "Secret",
            Change::RateLimitPolicy(_) => "RateLimitPolicy",
            Change::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Change::BackendTlsPolicy(_) => "BackendTLSPolicy",
            Change::ConfigMap(_) => "ConfigMap",
            Change::ScopedSecret(..) | Change::ScopedSecretFailed { .. } => "Secret",
        }
    }
}

impl Stores {
    pub fn new(keep_status: bool) -> Self {
        Self {
            keep_status,
            ..Self::default()
        }
    }

    /// Stores for a source that reads Secrets namespace by namespace
    /// ([`Stores::watch_secrets`]), never cluster-wide: the gateways' RBAC is that narrow.
    pub fn new_scoped(keep_status: bool) -> Self {
        let mut stores = Self::new(keep_status);
        stores.secrets.mark_absent();
        stores
    }

    /// Starts keeping what `watch` sees; the kinds are not ready until it is listed.
    pub fn watch_secrets(&mut self, watch: &SecretWatch) {
        self.scoped_secrets.entry(watch.clone()).or_default();
    }

    /// Forgets what `watch` saw. True when it held some Secret.
    pub fn unwatch_secrets(&mut self, watch: &SecretWatch) -> bool {
        self.scoped_secrets
            .remove(watch)
            .is_some_and(|k| !k.reader.state().is_empty())
    }

    /// The narrow Secret watches kept.
    pub fn secret_watches(&self) -> impl Iterator<Item = &SecretWatch> {
        self.scoped_secrets.keys()
    }

    /// GatewayClasses, Gateways, ReferenceGrants and AuthorizationPolicies, once all are
    /// listed: what decides which Secrets are needed.
    pub fn references(&self, scope: &Scope) -> Option<Snapshot> {
        if !(self.gateway_classes.ready()
            && self.gateways.ready()
            && self.reference_grants.ready()
            && self.authorization_policies.ready())
        {
            return None;
        }
        let mut gateways = self.gateways.objects();
        gateways.retain(|g| scope.keeps(g));
        Some(Snapshot {
            gateway_classes: self.gateway_classes.objects(),
            gateways,
            reference_grants: self.reference_grants.objects(),
            authorization_policies: self.authorization_policies.objects(),
            ..Snapshot::default()
        })
    }

    /// Applies one event; true when the next snapshot may differ.
    pub fn apply(&mut self, change: Change) -> bool {
        let keep = self.keep_status;
        match change {
            Change::GatewayClass(e) => self.gateway_classes.apply(e, keep),
            Change::Gateway(e) => self.gateways.apply(e, keep),
            Change::HttpRoute(e) => self.http_routes.apply(e, keep),
            Change::GrpcRoute(e) => self.grpc_routes.apply(e, keep),
            Change::ReferenceGrant(e) => self.reference_grants.apply(e, keep),
            Change::Namespace(e) => self.namespaces.apply(e, keep),
            Change::Service(e) => self.services.apply(e, keep),
            Change::EndpointSlice(e) => self.endpoint_slices.apply(e, keep),
            Change::Secret(e) => self.secrets.apply(e, keep),
            Change::RateLimitPolicy(e) => self.rate_limit_policies.apply(e, keep),
            Change::AuthorizationPolicy(e) => self.authorization_policies.apply(e, keep),
            Change::BackendTlsPolicy(e) => self.backend_tls_policies.apply(e, keep),
            Change::ConfigMap(e) => self.config_maps.apply(e, keep),
            // Events of a watch that was stopped are late: dropped.
            Change::ScopedSecret(watch, e) => self
                .scoped_secrets
                .get_mut(&watch)
                .is_some_and(|k| k.apply(e, keep)),
            // RBAC refuses the list: that watch counts as listed and empty, so that one
            // missing RoleBinding cannot hold back every other Gateway. The watch retries.
            Change::ScopedSecretFailed {
                watch,
                forbidden: true,
                ..
            } => self
                .scoped_secrets
                .get_mut(&watch)
                .is_some_and(Kind::mark_absent),
            Change::ScopedSecretFailed { .. } => false,
        }
    }

    /// Marks a kind that cannot be listed because the API server does not serve it (a CRD
    /// that is not installed). Returns whether that changed readiness.
    pub fn mark_absent(&mut self, kind: &str) -> bool {
        match kind {
            "GRPCRoute" => self.grpc_routes.mark_absent(),
            "ReferenceGrant" => self.reference_grants.mark_absent(),
            "RateLimitPolicy" => self.rate_limit_policies.mark_absent(),
            "AuthorizationPolicy" => self.authorization_policies.mark_absent(),
            "BackendTLSPolicy" => self.backend_tls_policies.mark_absent(),
            // Weir cannot serve without its core kinds: keep waiting for them.
            _ => false,
        }
    }

    /// Whether every kind has been listed once (or is known to be absent), and every
    /// watched namespace's Secrets.
    pub fn ready(&self) -> bool {
        self.waiting_for().is_empty()
    }

    /// The kinds whose first list is still missing, for logs while starting.
    pub fn waiting_for(&self) -> Vec<&'static str> {
        let mut waiting = Vec::new();
        each_kind!(self, |name, k| if !k.ready() {
            waiting.push(name)
        });
        if self.scoped_secrets.values().any(|k| !k.ready()) {
            waiting.push("Secret");
        }
        waiting
    }

    /// The current objects as a snapshot.
    pub fn snapshot(&self, scope: &Scope) -> Snapshot {
        let mut gateways = self.gateways.objects();
        gateways.retain(|g| scope.keeps(g));
        Snapshot {
            gateway_classes: self.gateway_classes.objects(),
            gateways,
            http_routes: self.http_routes.objects(),
            grpc_routes: self.grpc_routes.objects(),
            reference_grants: self.reference_grants.objects(),
            namespaces: self.namespaces.objects(),
            services: self.services.objects(),
            endpoint_slices: self.endpoint_slices.objects(),
            secrets: {
                let mut all = self.secrets.objects();
                for k in self.scoped_secrets.values() {
                    all.extend(k.objects());
                }
                all.sort_by(|a, b| {
                    (a.metadata.namespace.as_ref(), a.metadata.name.as_ref())
                        .cmp(&(b.metadata.namespace.as_ref(), b.metadata.name.as_ref()))
                });
                // A certificate that is also a JWKS comes from two watches.
                all.dedup_by(|a, b| {
                    a.metadata.namespace == b.metadata.namespace
                        && a.metadata.name == b.metadata.name
                });
                all
            },
            rate_limit_policies: self.rate_limit_policies.objects(),
            authorization_policies: self.authorization_policies.objects(),
            backend_tls_policies: self.backend_tls_policies.objects(),
            config_maps: self.config_maps.objects(),
        }
    }
}

/// A recorded event: `{type: Apply|Delete|InitApply, object: ...}`, or `{type: Init|InitDone}`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Recorded {
    /// The kind, as in `Change::kind`.
    pub kind: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub object: Option<serde_json::Value>,
}

fn event<K: DeserializeOwned>(r: Recorded) -> Result<Event<K>, String> {
    let object = || -> Result<K, String> {
        let o = r
            .object
            .clone()
            .ok_or(format!("a {} event needs an object", r.type_))?;
        serde_json::from_value(o).map_err(|e| format!("{} object: {e}", r.kind))
    };
    Ok(match r.type_.as_str() {
        "Apply" => Event::Apply(object()?),
        "Delete" => Event::Delete(object()?),
        "InitApply" => Event::InitApply(object()?),
        "Init" => Event::Init,
        "InitDone" => Event::InitDone,
        other => return Err(format!("unknown event type {other}")),
    })
}

impl TryFrom<Recorded> for Change {
    type Error = String;

    /// Recorded sequences (tests, the propagation benchmark) replay through this.
    fn try_from(r: Recorded) -> Result<Self, String> {
        Ok(match r.kind.as_str() {
            "GatewayClass" => Change::GatewayClass(event(r)?),
            "Gateway" => Change::Gateway(event(r)?),
            "HTTPRoute" => Change::HttpRoute(event(r)?),
            "GRPCRoute" => Change::GrpcRoute(event(r)?),
            "ReferenceGrant" => Change::ReferenceGrant(event(r)?),
            "Namespace" => Change::Namespace(event(r)?),
            "Service" => Change::Service(event(r)?),
            "EndpointSlice" => Change::EndpointSlice(event(r)?),
            "Secret" => Change::Secret(event(r)?),
            "RateLimitPolicy" => Change::RateLimitPolicy(event(r)?),
            "AuthorizationPolicy" => Change::AuthorizationPolicy(event(r)?),
            "BackendTLSPolicy" => Change::BackendTlsPolicy(event(r)?),
            "ConfigMap" => Change::ConfigMap(event(r)?),
            other => return Err(format!("unknown kind {other}")),
        })
    }
}
