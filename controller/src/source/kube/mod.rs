//! The Kubernetes source: one kube-runtime watcher per kind feeds the reflector [`Stores`],
//! and bursts of events are debounced into [`Snapshot`]s.
//!
//! Watch errors never end the source: each watcher retries with kube's default backoff, the
//! stores keep what they last saw, and the last good snapshot keeps serving. The error is
//! published with the state (and shown in the gateway's `/config`) until that kind's watch
//! delivers again.

mod secrets;
mod store;

pub use secrets::{KubeSecrets, SecretWatchers};
pub use store::{Change, Recorded, Scope, SecretWatch, Stores};

use crate::crd::{AuthorizationPolicy, RateLimitPolicy};
use crate::source::{Snapshot, SourceState};
use futures::{Stream, StreamExt, stream::BoxStream};
use gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute,
    referencegrants::ReferenceGrant,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch as channel;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

/// How events become snapshots.
#[derive(Debug, Clone)]
pub struct Options {
    pub scope: Scope,
    /// Quiet time after an event before a snapshot is taken, so that a `kubectl apply` of
    /// many objects becomes one swap.
    pub debounce: Duration,
    /// A steady trickle of events still yields a snapshot this often.
    pub max_delay: Duration,
    /// Keep objects' status (only the status writer needs it).
    pub keep_status: bool,
    /// Which Secrets are read: all the cluster's (the controller, which reports on every
    /// reference), or only those of the namespaces the Gateways may take certificates from
    /// (the gateways, whose RBAC grants no more).
    pub secrets: SecretScope,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SecretScope {
    #[default]
    All,
    Referenced,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scope: Scope::default(),
            debounce: Duration::from_millis(10),
            max_delay: Duration::from_millis(250),
            keep_status: false,
            secrets: SecretScope::All,
        }
    }
}

/// A running watch. Dropping it stops every watcher.
#[derive(Debug)]
pub struct KubeWatch {
    rx: channel::Receiver<SourceState>,
    task: JoinHandle<()>,
}

impl KubeWatch {
    /// Generation 0 (an empty snapshot) until every kind has been listed once.
    pub fn subscribe(&self) -> channel::Receiver<SourceState> {
        self.rx.clone()
    }
}

impl Drop for KubeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A watch error, with the kind whose watch failed.
#[derive(Debug)]
pub struct WatchError {
    pub kind: &'static str,
    pub error: Box<watcher::Error>,
}

/// Starts watching every kind through `client`.
pub fn watch(client: Client, opts: Options) -> KubeWatch {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let kinds = watch_all(client.clone(), opts.secrets == SecretScope::All);
    let secrets = KubeSecrets::new(client, tx);
    follow_scoped(futures::stream::select(kinds, rx), opts, Box::new(secrets))
}

/// Debounces any stream of changes into snapshots: the live watchers, or a test's.
pub fn follow<S>(events: S, opts: Options) -> KubeWatch
where
    S: Stream<Item = Result<Change, WatchError>> + Send + 'static,
{
    start(events, opts, None)
}

/// As [`follow`], with narrow Secret watches started and stopped through `secrets` (whose
/// events come back in `events`): each JWKS Secret, and with [`SecretScope::Referenced`]
/// the certificates of only the namespaces the Gateways need.
pub fn follow_scoped<S>(events: S, opts: Options, secrets: Box<dyn SecretWatchers>) -> KubeWatch
where
    S: Stream<Item = Result<Change, WatchError>> + Send + 'static,
{
    start(events, opts, Some(secrets))
}

fn start<S>(events: S, opts: Options, secrets: Option<Box<dyn SecretWatchers>>) -> KubeWatch
where
    S: Stream<Item = Result<Change, WatchError>> + Send + 'static,
{
    let (tx, rx) = channel::channel(SourceState {
        snapshot: Arc::new(Snapshot::default()),
        error: None,
        generation: 0,
    });
    let task = tokio::spawn(run(events, opts, tx, secrets));
    KubeWatch { rx, task }
}

async fn run<S>(
    events: S,
    opts: Options,
    tx: channel::Sender<SourceState>,
    mut secrets: Option<Box<dyn SecretWatchers>>,
) where
    S: Stream<Item = Result<Change, WatchError>> + Send + 'static,
{
    let mut events = std::pin::pin!(events);
    let certificates = secrets.is_some() && opts.secrets == SecretScope::Referenced;
    let mut stores = match certificates {
        true => Stores::new_scoped(opts.keep_status),
        false => Stores::new(opts.keep_status),
    };
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    // When the pending changes began, and when the last one arrived.
    let mut pending: Option<(Instant, Instant)> = None;
    let mut waiting_log = Instant::now() + Duration::from_secs(5);
    loop {
        let deadline =
            pending.map(|(first, last)| (last + opts.debounce).min(first + opts.max_delay));
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at, events.next()).await {
                Ok(next) => next,
                Err(_) => {
                    pending = None;
                    if let Some(w) = secrets.as_mut()
                        && secrets::reconcile(&mut stores, &opts.scope, w.as_mut(), certificates)
                    {
                        // Watches were dropped: their Secrets go with the next snapshot.
                        let now = Instant::now();
                        pending = Some((now, now));
                    }
                    publish(&stores, &opts.scope, &tx);
                    continue;
                }
            },
            None => events.next().await,
        };
        let Some(next) = next else { return };
        let changed = match next {
            Ok(Change::ScopedSecretFailed {
                watch,
                forbidden,
                error,
            }) => {
                let key = watch.to_string();
                let why = match (&watch, forbidden) {
                    (SecretWatch::Certificates(ns), true) => format!(
                        "reading Secrets in {ns} is not allowed (the controller binds weir-gateway-secrets there); its certificates stay unknown: {error}"
                    ),
                    (SecretWatch::Named(ns, name), true) => format!(
                        "reading Secret {ns}/{name} is not allowed (the controller grants it with the Role weir-gateway-jwks there); its JWKS stays unknown: {error}"
                    ),
                    (_, false) => format!("watching {watch}: {error}"),
                };
                warn!(%watch, error = %why, "Secret watch failed; retrying with backoff");
                errors.insert(key, why);
                publish_errors(&errors, &tx);
                stores.apply(Change::ScopedSecretFailed {
                    watch,
                    forbidden,
                    error,
                })
            }
            Ok(change) => {
                let key = match &change {
                    Change::ScopedSecret(watch, _) => watch.to_string(),
                    other => other.kind().to_string(),
                };
                let recovered = errors.remove(&key).is_some();
                if recovered {
                    info!(kind = key, "watch recovered");
                    publish_errors(&errors, &tx);
                }
                stores.apply(change)
            }
            Err(WatchError { kind, error: e }) => {
                if is_not_served(&e) {
                    let first = stores.mark_absent(kind);
                    if first {
                        warn!(
                            kind,
                            "the API server does not serve this kind (CRD not installed?); treating it as empty"
                        );
                    }
                    first
                } else {
                    warn!(kind, error = %e, "watch failed; retrying with backoff, the last good config keeps serving");
                    errors.insert(kind.to_string(), format!("watching {kind}: {e}"));
                    publish_errors(&errors, &tx);
                    false
                }
            }
        };
        if changed {
            let now = Instant::now();
            pending = Some((pending.map_or(now, |p| p.0), now));
        }
        if !stores.ready() && Instant::now() >= waiting_log {
            info!(kinds = ?stores.waiting_for(), "waiting for the first list of");
            waiting_log = Instant::now() + Duration::from_secs(5);
        }
    }
}

/// Publishes the stores' snapshot once every kind is listed, and only when it differs.
fn publish(stores: &Stores, scope: &Scope, tx: &channel::Sender<SourceState>) {
    if !stores.ready() {
        return;
    }
    let snapshot = stores.snapshot(scope);
    tx.send_if_modified(|state| {
        if state.generation > 0 && *state.snapshot == snapshot {
            return false;
        }
        state.snapshot = Arc::new(snapshot);
        state.generation += 1;
        if state.generation == 1 {
            info!(objects = state.snapshot.len(), "cluster listed");
        }
        true
    });
}

fn publish_errors(errors: &BTreeMap<String, String>, tx: &channel::Sender<SourceState>) {
    let error = (!errors.is_empty()).then(|| {
        errors
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
            .into()
    });
    tx.send_if_modified(|state| {
        let changed = state.error != error;
        state.error = error;
        changed
    });
}

/// A 404 on the list: the API server has no such resource, so retrying will not help
/// until someone installs the CRD (the watcher keeps retrying, and fills the kind then).
fn is_not_served(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.is_not_found())
}

fn kind_stream<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    wrap: fn(watcher::Event<K>) -> Change,
) -> BoxStream<'static, Result<Change, WatchError>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    watcher(api, config)
        .default_backoff()
        .map(move |r| {
            r.map(wrap).map_err(|e| WatchError {
                kind,
                error: Box::new(e),
            })
        })
        .boxed()
}

/// Every kind's watch; Secrets cluster-wide only when `secrets`.
fn watch_all(client: Client, secrets: bool) -> impl Stream<Item = Result<Change, WatchError>> {
    let all = watcher::Config::default;
    let mut streams = vec![
        kind_stream(
            Api::<GatewayClass>::all(client.clone()),
            all(),
            "GatewayClass",
            Change::GatewayClass,
        ),
        kind_stream(
            Api::<Gateway>::all(client.clone()),
            all(),
            "Gateway",
            Change::Gateway,
        ),
        kind_stream(
            Api::<HttpRoute>::all(client.clone()),
            all(),
            "HTTPRoute",
            Change::HttpRoute,
        ),
        kind_stream(
            Api::<GrpcRoute>::all(client.clone()),
            all(),
            "GRPCRoute",
            Change::GrpcRoute,
        ),
        kind_stream(
            Api::<ReferenceGrant>::all(client.clone()),
            all(),
            "ReferenceGrant",
            Change::ReferenceGrant,
        ),
        kind_stream(
            Api::<Namespace>::all(client.clone()),
            all(),
            "Namespace",
            Change::Namespace,
        ),
        kind_stream(
            Api::<Service>::all(client.clone()),
            all(),
            "Service",
            Change::Service,
        ),
        kind_stream(
            Api::<EndpointSlice>::all(client.clone()),
            all(),
            "EndpointSlice",
            Change::EndpointSlice,
        ),
        kind_stream(
            Api::<RateLimitPolicy>::all(client.clone()),
            all(),
            "RateLimitPolicy",
            Change::RateLimitPolicy,
        ),
        kind_stream(
            Api::<AuthorizationPolicy>::all(client.clone()),
            all(),
            "AuthorizationPolicy",
            Change::AuthorizationPolicy,
        ),
        kind_stream(
            Api::<BackendTlsPolicy>::all(client.clone()),
            all(),
            "BackendTLSPolicy",
            Change::BackendTlsPolicy,
        ),
        // CA bundles of BackendTLSPolicies. No selector can pick them out (policies name
        // them), and JWKS of AuthorizationPolicies, so all are watched and trimmed to their
        // `ca.crt` and `jwks` on arrival.
        kind_stream(
            Api::<ConfigMap>::all(client.clone()),
            all(),
            "ConfigMap",
            Change::ConfigMap,
        ),
    ];
    // Only certificates: a cluster's other Secrets are none of a gateway's business, and
    // holding them all would cost memory and widen what a compromise exposes.
    if secrets {
        streams.push(kind_stream(
            Api::<Secret>::all(client),
            all().fields(secrets::TLS_ONLY),
            "Secret",
            Change::Secret,
        ));
    }
    futures::stream::select_all(streams)
}

/// The `(API group, resource)` of every kind [`watch`] lists and watches: the RBAC of both
/// the gateways and the controller must allow `get`, `list` and `watch` on each.
pub const WATCHED_RESOURCES: [(&str, &str); 13] = [
    ("gateway.networking.k8s.io", "gatewayclasses"),
    ("gateway.networking.k8s.io", "gateways"),
    ("gateway.networking.k8s.io", "httproutes"),
    ("gateway.networking.k8s.io", "grpcroutes"),
    ("gateway.networking.k8s.io", "referencegrants"),
    ("gateway.networking.k8s.io", "backendtlspolicies"),
    ("", "namespaces"),
    ("", "services"),
    ("", "secrets"),
    ("", "configmaps"),
    ("discovery.k8s.io", "endpointslices"),
    ("weir.dev", "ratelimitpolicies"),
    ("weir.dev", "authorizationpolicies"),
];
