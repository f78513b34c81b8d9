//! The Kubernetes source, driven by recorded watch event sequences (`tests/events/`): what
//! the watchers deliver must become exactly the snapshots a gateway would serve, debounced,
//! never half-listed, and never lost to a watch error.

use futures::channel::mpsc;
use kube::runtime::watcher;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::timeout;
use weir_controller::source::SourceState;
use weir_controller::source::kube::{
    Change, KubeWatch, Options, Recorded, Scope, SecretScope, SecretWatch, WatchError,
};

const ALL_KINDS: [&str; 13] = [
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "ReferenceGrant",
    "Namespace",
    "Service",
    "EndpointSlice",
    "Secret",
    "RateLimitPolicy",
    "AuthorizationPolicy",
    "BackendTLSPolicy",
    "ConfigMap",
];

type Tx = mpsc::UnboundedSender<Result<Change, WatchError>>;

fn start(scope: Scope) -> (Tx, KubeWatch, watch::Receiver<SourceState>) {
    let (tx, rx) = mpsc::unbounded();
    let w = weir_controller::source::kube::follow(
        rx,
        Options {
            scope,
            debounce: Duration::from_millis(30),
            max_delay: Duration::from_millis(500),
            keep_status: false,
            ..Options::default()
        },
    );
    let sub = w.subscribe();
    (tx, w, sub)
}

fn ev(kind: &str, type_: &str, object: Option<serde_json::Value>) -> Change {
    Change::try_from(Recorded {
        kind: kind.into(),
        type_: type_.into(),
        object,
    })
    .unwrap()
}

fn send(tx: &Tx, c: Change) {
    tx.unbounded_send(Ok(c)).unwrap();
}

fn recorded(file: &str) -> Vec<Recorded> {
    let path = format!("{}/tests/events/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The initial list of every kind, with `cluster.yaml`'s objects under their kinds.
fn initial_list(tx: &Tx, skip: &[&str]) {
    let objects: Vec<serde_json::Value> = recorded_objects("cluster.yaml");
    for kind in ALL_KINDS.iter().filter(|k| !skip.contains(k)) {
        send(tx, ev(kind, "Init", None));
        for o in objects.iter().filter(|o| o["kind"] == *kind) {
            send(tx, ev(kind, "InitApply", Some(o.clone())));
        }
        send(tx, ev(kind, "InitDone", None));
    }
}

fn recorded_objects(file: &str) -> Vec<serde_json::Value> {
    let path = format!("{}/tests/events/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn route(name: &str, host: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [host],
                 "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}
    })
}

async fn next(rx: &mut watch::Receiver<SourceState>) -> SourceState {
    timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a new state within 5s")
        .unwrap();
    rx.borrow_and_update().clone()
}

/// No further state arrives within a generous multiple of the debounce.
async fn quiet(rx: &mut watch::Receiver<SourceState>) {
    if let Ok(r) = timeout(Duration::from_millis(300), rx.changed()).await {
        r.unwrap();
        panic!("unexpected state: gen {}", rx.borrow().generation);
    }
}

fn route_names(s: &SourceState) -> Vec<String> {
    let names = s.snapshot.http_routes.iter();
    names.map(|r| r.metadata.name.clone().unwrap()).collect()
}

#[tokio::test]
async fn the_initial_list_is_the_first_snapshot_and_serves_its_routes() {
    let (tx, _w, mut rx) = start(Scope::default());
    // Every other kind listed: still nothing, because a half-listed cluster would serve routes
    // without their Services or certificates.
    initial_list(&tx, &["Secret"]);
    quiet(&mut rx).await;
    assert_eq!(rx.borrow().generation, 0);

    send(&tx, ev("Secret", "Init", None));
    send(&tx, ev("Secret", "InitDone", None));
    let s = next(&mut rx).await;
    assert_eq!(s.generation, 1);
    assert_eq!(route_names(&s), ["a", "b"]);
    let (config, report) = weir_controller::translate(&s.snapshot);
    assert_eq!(report.http_routes.len(), 2, "both routes attach");
    assert!(config.summary().contains("a.example.com"));

    // Memory: managed fields and kubectl's last-applied copy are dropped, the rest kept.
    let a = &s.snapshot.http_routes[0].metadata;
    assert!(a.managed_fields.is_none());
    let annotations = a.annotations.as_ref().unwrap();
    assert_eq!(annotations.len(), 1);
    assert_eq!(annotations["keep"], "me");
}

#[tokio::test]
async fn a_burst_of_events_becomes_one_snapshot_and_deletes_apply() {
    let (tx, _w, mut rx) = start(Scope::default());
    initial_list(&tx, &[]);
    assert_eq!(next(&mut rx).await.generation, 1);

    for i in 0..50 {
        let name = format!("r{i}");
        let host = format!("r{i}.example.com");
        send(&tx, ev("HTTPRoute", "Apply", Some(route(&name, &host))));
    }
    let s = next(&mut rx).await;
    assert_eq!(s.generation, 2, "fifty events, one swap");
    assert_eq!(s.snapshot.http_routes.len(), 52);
    quiet(&mut rx).await;

    send(
        &tx,
        ev("HTTPRoute", "Delete", Some(route("a", "a.example.com"))),
    );
    let s = next(&mut rx).await;
    assert_eq!(s.generation, 3);
    assert!(!route_names(&s).contains(&"a".to_string()));

    // An event that changes nothing (a resync of an identical object) publishes nothing.
    send(
        &tx,
        ev("HTTPRoute", "Apply", Some(route("r1", "r1.example.com"))),
    );
    quiet(&mut rx).await;
}

#[tokio::test]
async fn a_relist_replaces_a_kind_atomically() {
    let (tx, _w, mut rx) = start(Scope::default());
    initial_list(&tx, &[]);
    next(&mut rx).await;

    let events = recorded("relist.yaml");
    let (before, rest) = events.split_at(2);
    for r in before {
        send(&tx, Change::try_from(r.clone()).unwrap());
    }
    let s = next(&mut rx).await;
    assert_eq!(route_names(&s), ["a", "b", "c"], "c applied; relist begun");
    // Half the relist: `b` is not listed again yet, but the store must not show that.
    send(&tx, Change::try_from(rest[0].clone()).unwrap());
    quiet(&mut rx).await;
    for r in &rest[1..] {
        send(&tx, Change::try_from(r.clone()).unwrap());
    }
    let s = next(&mut rx).await;
    assert_eq!(
        route_names(&s),
        ["a", "c"],
        "b was deleted while the watch was down"
    );
}

#[tokio::test]
async fn watch_errors_keep_the_last_good_snapshot_and_are_reported_until_recovery() {
    let (tx, _w, mut rx) = start(Scope::default());
    initial_list(&tx, &[]);
    let good = next(&mut rx).await;

    let down = watcher::Error::WatchFailed(kube::Error::Service("connection refused".into()));
    tx.unbounded_send(Err(WatchError {
        kind: "HTTPRoute",
        error: Box::new(down),
    }))
    .unwrap();
    let s = next(&mut rx).await;
    assert_eq!(
        s.generation, good.generation,
        "the last good config keeps serving"
    );
    assert_eq!(s.snapshot, good.snapshot);
    let error = s.error.expect("the outage is reported");
    assert!(
        error.contains("watching HTTPRoute") && error.contains("connection refused"),
        "{error}"
    );

    // The watcher's backoff reconnects and relists: the error clears, the change arrives.
    send(&tx, ev("HTTPRoute", "Init", None));
    let s = next(&mut rx).await;
    assert!(s.error.is_none());
    send(
        &tx,
        ev("HTTPRoute", "InitApply", Some(route("z", "z.example.com"))),
    );
    send(&tx, ev("HTTPRoute", "InitDone", None));
    let s = next(&mut rx).await;
    assert_eq!(route_names(&s), ["z"]);
}

#[tokio::test]
async fn a_crd_that_is_not_installed_counts_as_empty() {
    let (tx, _w, mut rx) = start(Scope::default());
    let optional = [
        "RateLimitPolicy",
        "AuthorizationPolicy",
        "GRPCRoute",
        "BackendTLSPolicy",
    ];
    initial_list(&tx, &optional);
    for kind in optional {
        let status = kube::core::Status::failure(
            "the server could not find the requested resource",
            "NotFound",
        )
        .with_code(404);
        let e = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)));
        tx.unbounded_send(Err(WatchError {
            kind,
            error: Box::new(e),
        }))
        .unwrap();
    }
    let s = next(&mut rx).await;
    assert_eq!(s.generation, 1);
    assert!(s.error.is_none(), "a missing optional CRD is not an outage");
    assert_eq!(route_names(&s), ["a", "b"]);

    // A missing core kind is different: without Gateways there is nothing to serve yet.
    let (tx, _w, mut rx) = start(Scope::default());
    initial_list(&tx, &["Gateway"]);
    let status = kube::core::Status::failure("not found", "NotFound").with_code(404);
    let e = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)));
    tx.unbounded_send(Err(WatchError {
        kind: "Gateway",
        error: Box::new(e),
    }))
    .unwrap();
    quiet(&mut rx).await;
    assert_eq!(rx.borrow().generation, 0);
}

/// ConfigMaps are watched cluster-wide for BackendTLSPolicy CA bundles; only `ca.crt` is
/// kept, so a large unrelated ConfigMap costs a replica nothing.
#[tokio::test]
async fn config_maps_keep_only_their_ca_bundle() {
    let (tx, _w, mut rx) = start(Scope::default());
    initial_list(&tx, &["ConfigMap"]);
    send(&tx, ev("ConfigMap", "Init", None));
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ca", "namespace": "default"},
        "data": {"ca.crt": "PEM", "big.json": "x".repeat(10_000)},
        "binaryData": {"blob": "AAAA"}
    });
    send(&tx, ev("ConfigMap", "InitApply", Some(cm)));
    send(&tx, ev("ConfigMap", "InitDone", None));
    let s = next(&mut rx).await;
    let cm = &s.snapshot.config_maps[0];
    let keys: Vec<&String> = cm.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["ca.crt"]);
    assert!(cm.binary_data.is_none());
}

#[tokio::test]
async fn a_gateway_scope_keeps_only_that_gateway() {
    let scope = Scope {
        gateway: Some(("default".into(), "other".into())),
    };
    let (tx, _w, mut rx) = start(scope);
    initial_list(&tx, &[]);
    let s = next(&mut rx).await;
    let names: Vec<_> = s
        .snapshot
        .gateways
        .iter()
        .map(|g| g.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["other"]);
    let (config, _) = weir_controller::translate(&s.snapshot);
    assert!(
        !config.summary().contains("a.example.com"),
        "routes of gw are not served here"
    );
}

/// Records the Secret watches the source starts and stops: `NS` for a namespace's
/// certificates, `NS/NAME` for one named Secret.
#[derive(Clone, Default)]
struct FakeSecrets(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

fn watch_name(w: &SecretWatch) -> String {
    match w {
        SecretWatch::Certificates(ns) => ns.clone(),
        SecretWatch::Named(ns, name) => format!("{ns}/{name}"),
    }
}

impl weir_controller::source::kube::SecretWatchers for FakeSecrets {
    fn start(&mut self, watch: &SecretWatch) {
        self.0
            .lock()
            .unwrap()
            .push(format!("start {}", watch_name(watch)));
    }
    fn stop(&mut self, watch: &SecretWatch) {
        self.0
            .lock()
            .unwrap()
            .push(format!("stop {}", watch_name(watch)));
    }
}

impl FakeSecrets {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn secret(ns: &str, name: &str) -> k8s_openapi::api::core::v1::Secret {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "data": {"tls.crt": "", "tls.key": ""}
    }))
    .unwrap()
}

fn secret_names(s: &SourceState) -> Vec<String> {
    s.snapshot
        .secrets
        .iter()
        .map(|x| {
            format!(
                "{}/{}",
                x.metadata.namespace.as_deref().unwrap(),
                x.metadata.name.as_deref().unwrap()
            )
        })
        .collect()
}

/// The gateways' scoped Secret access: a watch per namespace their Gateways may take
/// certificates from, started and stopped as Gateways and ReferenceGrants change; no first
/// snapshot before those namespaces are listed; a namespace RBAC refuses counts as empty
/// and is reported, rather than holding back every other Gateway.
#[tokio::test]
async fn secrets_are_watched_only_in_the_namespaces_gateways_may_use() {
    use kube::runtime::watcher::Event;
    let (tx, rx) = mpsc::unbounded();
    let fake = FakeSecrets::default();
    let w = weir_controller::source::kube::follow_scoped(
        rx,
        Options {
            debounce: Duration::from_millis(30),
            secrets: SecretScope::Referenced,
            ..Options::default()
        },
        Box::new(fake.clone()),
    );
    let mut sub = w.subscribe();
    // Every kind but Secret: those come namespace by namespace.
    initial_list(&tx, &["Secret"]);
    let scoped = |ns: &str, e: Event<k8s_openapi::api::core::v1::Secret>| {
        Change::ScopedSecret(SecretWatch::Certificates(ns.into()), e)
    };
    // cluster.yaml's Gateways live in `default`: that is watched, and nothing is served
    // until it is listed (a snapshot published before would be the one `next` returns).
    eventually(|| fake.0.lock().unwrap().len() == 1).await;
    assert_eq!(fake.take(), ["start default"]);
    send(&tx, scoped("default", Event::Init));
    send(
        &tx,
        scoped("default", Event::InitApply(secret("default", "site"))),
    );
    send(&tx, scoped("default", Event::InitDone));
    let s = next(&mut sub).await;
    assert_eq!(
        (s.generation, secret_names(&s)),
        (1, vec!["default/site".to_string()])
    );

    // A Gateway in `team` takes a certificate from `certs`, which grants it: both watched.
    let gw = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "team", "namespace": "team", "resourceVersion": "9"},
        "spec": {"gatewayClassName": "weir", "listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"name": "team-cert", "namespace": "certs"}]}}]}
    });
    let grant = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "to-team", "namespace": "certs", "resourceVersion": "10"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "team"}],
                 "to": [{"group": "", "kind": "Secret"}]}
    });
    send(&tx, ev("Gateway", "Apply", Some(gw.clone())));
    send(&tx, ev("ReferenceGrant", "Apply", Some(grant)));
    eventually(|| fake.0.lock().unwrap().len() == 2).await;
    assert_eq!(fake.take(), ["start certs", "start team"]);
    // RBAC has not caught up in `certs` yet: it counts as empty, and the reason is shown.
    send(
        &tx,
        Change::ScopedSecretFailed {
            watch: SecretWatch::Certificates("certs".into()),
            forbidden: true,
            error: "403 Forbidden".into(),
        },
    );
    send(&tx, scoped("team", Event::Init));
    send(&tx, scoped("team", Event::InitDone));
    let s = next(&mut sub).await;
    assert!(
        s.error
            .as_deref()
            .is_some_and(|e| e.contains("reading Secrets in certs is not allowed")),
        "{:?}",
        s.error
    );
    // Then the RoleBinding lands and the watch lists: the error clears, the Secret arrives.
    send(&tx, scoped("certs", Event::Init));
    send(
        &tx,
        scoped("certs", Event::InitApply(secret("certs", "team-cert"))),
    );
    send(&tx, scoped("certs", Event::InitDone));
    let s = loop {
        let s = next(&mut sub).await;
        if s.error.is_none() && secret_names(&s).len() == 2 {
            break s;
        }
    };
    assert_eq!(secret_names(&s), ["certs/team-cert", "default/site"]);

    // The Gateway goes: its namespaces are dropped, and their Secrets with them.
    send(&tx, ev("Gateway", "Delete", Some(gw)));
    eventually(|| fake.0.lock().unwrap().len() == 2).await;
    assert_eq!(fake.take(), ["stop certs", "stop team"]);
    let s = loop {
        let s = next(&mut sub).await;
        if secret_names(&s).len() == 1 {
            break s;
        }
    };
    assert_eq!(secret_names(&s), ["default/site"]);
    drop(w);
}

/// A JWKS an AuthorizationPolicy keeps in a Secret (not a certificate, so no certificate
/// watch sees it) is watched by name, by the gateways and the controller alike, for as long
/// as a policy names it; its keys reach the translated policy.
#[tokio::test]
async fn jwks_secrets_are_watched_one_by_one_while_a_policy_names_them() {
    use kube::runtime::watcher::Event;
    for scope in [SecretScope::Referenced, SecretScope::All] {
        let (tx, rx) = mpsc::unbounded();
        let fake = FakeSecrets::default();
        let w = weir_controller::source::kube::follow_scoped(
            rx,
            Options {
                debounce: Duration::from_millis(30),
                secrets: scope,
                ..Options::default()
            },
            Box::new(fake.clone()),
        );
        let mut sub = w.subscribe();
        let referenced = scope == SecretScope::Referenced;
        initial_list(&tx, if referenced { &["Secret"][..] } else { &[] });
        if referenced {
            eventually(|| fake.0.lock().unwrap().len() == 1).await;
            assert_eq!(fake.take(), ["start default"]);
            let default = SecretWatch::Certificates("default".into());
            send(&tx, Change::ScopedSecret(default.clone(), Event::Init));
            send(&tx, Change::ScopedSecret(default, Event::InitDone));
        }
        let first = next(&mut sub).await;
        assert_eq!(first.generation, 1);

        let policy = serde_json::json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "end-users", "namespace": "default", "resourceVersion": "20"},
            "spec": {"targetRefs": [{"kind": "Service", "name": "echo"}],
                     "jwt": [{"issuer": "https://idp.test", "jwksRef": {"kind": "Secret", "name": "idp-jwks"}}],
                     "rules": [{"from": [{"requestPrincipals": ["*"]}]}]}
        });
        send(
            &tx,
            ev("AuthorizationPolicy", "Apply", Some(policy.clone())),
        );
        eventually(|| fake.0.lock().unwrap().len() == 1).await;
        assert_eq!(fake.take(), ["start default/idp-jwks"], "{scope:?}");
        let jwks = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "e1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let mut secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "idp-jwks", "namespace": "default", "resourceVersion": "21"}
            }))
            .unwrap();
        secret.data = Some(
            [(
                "jwks".to_string(),
                k8s_openapi::ByteString(jwks.as_bytes().to_vec()),
            )]
            .into(),
        );
        let named = SecretWatch::Named("default".into(), "idp-jwks".into());
        send(&tx, Change::ScopedSecret(named.clone(), Event::Init));
        send(
            &tx,
            Change::ScopedSecret(named.clone(), Event::InitApply(secret)),
        );
        send(&tx, Change::ScopedSecret(named, Event::InitDone));
        let s = loop {
            let s = next(&mut sub).await;
            if secret_names(&s).contains(&"default/idp-jwks".to_string()) {
                break s;
            }
        };
        let (config, _) = weir_controller::translate(&s.snapshot);
        let p = &config.authz.policies["default/end-users"];
        assert_eq!(p.jwt.len(), 1, "{scope:?}: {p:?}");
        assert_eq!(p.jwt[0].jwks, jwks);

        // The policy goes: so does the watch, and the Secret with it.
        send(&tx, ev("AuthorizationPolicy", "Delete", Some(policy)));
        eventually(|| fake.0.lock().unwrap().len() == 1).await;
        assert_eq!(fake.take(), ["stop default/idp-jwks"]);
        loop {
            let s = next(&mut sub).await;
            if !secret_names(&s).contains(&"default/idp-jwks".to_string()) {
                break;
            }
        }
        drop(w);
    }
}

/// Polls `f` until it holds (the source runs on its own task).
async fn eventually(f: impl Fn() -> bool) {
    timeout(Duration::from_secs(5), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("within 5s");
}
