//! The status writer against kube's `tower-test` mock API: the exact server-side apply
//! patches, no write when the cluster already shows the status, and a leader hand-over
//! in which only the leader writes.

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use weir_controller::source::{Snapshot, SourceState};
use weir_controller::status::Written;
use weir_controller::status::run::{Options, round, run};

/// The requests the mock API received (method, path and query, JSON body), and a
/// notification for each one.
#[derive(Default)]
struct Requests {
    log: Mutex<Vec<(String, String, Value)>>,
    arrived: Notify,
}

type Seen = Arc<Requests>;

/// A client whose API server records every request and answers with the applied object.
fn mock_client() -> (kube::Client, Seen) {
    mock_answering(|_, _, body| body.clone())
}

/// A client whose API server records every request and answers it with
/// `answer(method, path, body)`.
fn mock_answering(answer: fn(&str, &str, &Value) -> Value) -> (kube::Client, Seen) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((req, reply)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path_and_query().unwrap().to_string();
            let answer = answer(parts.method.as_str(), &path, &body);
            log.log
                .lock()
                .unwrap()
                .push((parts.method.to_string(), path, body));
            log.arrived.notify_waiters();
            reply.send_response(Response::new(Body::from(
                serde_json::to_vec(&answer).unwrap(),
            )));
        }
    });
    (kube::Client::new(svc, "default"), seen)
}

fn cluster() -> Snapshot {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/events/cluster.yaml");
    let docs: Vec<Value> = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut snap = Snapshot::default();
    for d in docs {
        let d2 = d.clone();
        match d["kind"].as_str().unwrap() {
            "GatewayClass" => snap
                .gateway_classes
                .push(serde_json::from_value(d2).unwrap()),
            "Gateway" => snap.gateways.push(serde_json::from_value(d2).unwrap()),
            "HTTPRoute" => snap.http_routes.push(serde_json::from_value(d2).unwrap()),
            "Namespace" => snap.namespaces.push(serde_json::from_value(d2).unwrap()),
            "Service" => snap.services.push(serde_json::from_value(d2).unwrap()),
            k => panic!("{k}"),
        }
    }
    // The fleet's edge Service, with the address its load balancer was given.
    snap.services.push(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "weir-gateway", "namespace": "weir-system"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}
        }))
        .unwrap(),
    );
    snap
}

fn opts() -> Options {
    Options {
        gateway_service: Some(("weir-system".into(), "weir-gateway".into())),
        resync: Duration::from_secs(3600),
        gateway_account: None,
    }
}

fn state(snapshot: Snapshot, generation: u64) -> SourceState {
    SourceState {
        snapshot: Arc::new(snapshot),
        error: None,
        generation,
    }
}

/// What the watch shows once the API server has applied `writes`: each object's status.
fn observe(snap: &mut Snapshot, writes: &[(String, String, Value)]) {
    for (_, path, body) in writes {
        let name = body["metadata"]["name"].as_str().unwrap();
        let status = body["status"].clone();
        let set = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            meta.name.as_deref() == Some(name)
        };
        if path.contains("/gatewayclasses/") {
            for o in snap.gateway_classes.iter_mut().filter(|o| set(&o.metadata)) {
                o.status = Some(serde_json::from_value(status.clone()).unwrap());
            }
        } else if path.contains("/gateways/") {
            for o in snap.gateways.iter_mut().filter(|o| set(&o.metadata)) {
                o.status = Some(serde_json::from_value(status.clone()).unwrap());
            }
        } else if path.contains("/httproutes/") {
            for o in snap.http_routes.iter_mut().filter(|o| set(&o.metadata)) {
                o.status = Some(serde_json::from_value(status.clone()).unwrap());
            }
        }
    }
}

fn taken(seen: &Seen) -> Vec<(String, String, Value)> {
    std::mem::take(&mut *seen.log.lock().unwrap())
}

/// Waits for the mock API to have received `n` requests.
async fn requests(seen: &Seen, n: usize) {
    let wait = async {
        loop {
            let arrived = seen.arrived.notified();
            if seen.log.lock().unwrap().len() >= n {
                return;
            }
            arrived.await;
        }
    };
    // Under a paused clock this fails as soon as every task is idle without them.
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("the API never received {n} requests"));
}

fn condition<'a>(conditions: &'a Value, type_: &str) -> &'a Value {
    conditions
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

#[tokio::test]
async fn the_patches_are_exact_server_side_applies() {
    let (client, seen) = mock_client();
    let r = round(
        &client,
        &state(cluster(), 1),
        &opts(),
        &mut Written::default(),
    )
    .await;
    assert_eq!((r.planned, r.written), (5, 5));
    let writes = taken(&seen);
    let paths: Vec<_> = writes
        .iter()
        .map(|w| (w.0.as_str(), w.1.as_str()))
        .collect();
    let q = "?&force=true&fieldManager=weir-controller";
    assert_eq!(
        paths,
        [
            (
                "PATCH",
                format!("/apis/gateway.networking.k8s.io/v1/gatewayclasses/weir/status{q}")
                    .as_str()
            ),
            (
                "PATCH",
                format!(
                    "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/gw/status{q}"
                )
                .as_str()
            ),
            (
                "PATCH",
                format!(
                    "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/other/status{q}"
                )
                .as_str()
            ),
            (
                "PATCH",
                format!(
                    "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/a/status{q}"
                )
                .as_str()
            ),
            (
                "PATCH",
                format!(
                    "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/b/status{q}"
                )
                .as_str()
            ),
        ]
    );

    let class = &writes[0].2;
    assert_eq!(class["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(class["kind"], "GatewayClass");
    assert_eq!(class["metadata"], json!({"name": "weir"}));
    assert_eq!(
        condition(&class["status"]["conditions"], "Accepted")["status"],
        "True"
    );
    let features: Vec<_> = class["status"]["supportedFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        features.contains(&"HTTPRoute") && features.contains(&"GRPCRoute"),
        "{features:?}"
    );

    let gw = &writes[1].2;
    assert_eq!(
        gw["metadata"],
        json!({"name": "gw", "namespace": "default"})
    );
    assert_eq!(
        gw["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "203.0.113.7"}])
    );
    let listener = &gw["status"]["listeners"][0];
    assert_eq!(listener["name"], "http");
    assert_eq!(listener["attachedRoutes"], 2);
    assert_eq!(
        condition(&gw["status"]["conditions"], "Programmed")["status"],
        "True"
    );

    let route = &writes[3].2;
    assert_eq!(route["kind"], "HTTPRoute");
    let parents = route["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 1);
    assert_eq!(parents[0]["controllerName"], "weir.dev/gateway-controller");
    assert_eq!(parents[0]["parentRef"]["name"], "gw");
    assert_eq!(
        condition(&parents[0]["conditions"], "Accepted")["status"],
        "True"
    );
    assert_eq!(
        condition(&parents[0]["conditions"], "ResolvedRefs")["status"],
        "True"
    );
}

#[tokio::test]
async fn status_is_written_only_when_it_changes() {
    let (client, seen) = mock_client();
    let mut written = Written::default();
    let mut snap = cluster();
    round(&client, &state(snap.clone(), 1), &opts(), &mut written).await;
    let first = taken(&seen);
    assert_eq!(first.len(), 5);

    // Another event arrives before the watch shows the writes: nothing is written twice.
    let r = round(&client, &state(snap.clone(), 2), &opts(), &mut written).await;
    assert_eq!(r.planned, 0);

    // The watch shows them: still nothing, even for a new leader with no memory.
    observe(&mut snap, &first);
    let r = round(
        &client,
        &state(snap.clone(), 3),
        &opts(),
        &mut Written::default(),
    )
    .await;
    assert_eq!(r.planned, 0);
    assert!(taken(&seen).is_empty());

    // Route b loses its backend: one write, for b alone. ResolvedRefs flips and gets a new
    // transition time; Accepted keeps the time it had.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = snap
        .http_routes
        .iter_mut()
        .find(|r| r.metadata.name.as_deref() == Some("b"))
        .unwrap();
    b.spec.rules.as_mut().unwrap()[0]
        .backend_refs
        .as_mut()
        .unwrap()[0]
        .name = "missing".into();
    let r = round(&client, &state(snap.clone(), 4), &opts(), &mut written).await;
    assert_eq!(r.planned, 1);
    let w = taken(&seen);
    assert!(w[0].1.contains("/httproutes/b/status"), "{}", w[0].1);
    let before = &first[4].2["status"]["parents"][0]["conditions"];
    let after = &w[0].2["status"]["parents"][0]["conditions"];
    assert_eq!(condition(after, "ResolvedRefs")["status"], "False");
    assert_eq!(
        condition(after, "ResolvedRefs")["reason"],
        "BackendNotFound"
    );
    assert_ne!(
        condition(after, "ResolvedRefs")["lastTransitionTime"],
        condition(before, "ResolvedRefs")["lastTransitionTime"]
    );
    assert_eq!(
        condition(after, "Accepted")["lastTransitionTime"],
        condition(before, "Accepted")["lastTransitionTime"]
    );
}

#[tokio::test]
async fn other_controllers_parent_entries_are_kept() {
    let (client, seen) = mock_client();
    let mut snap = cluster();
    let theirs = json!({"parents": [{
        "controllerName": "example.com/other", "parentRef": {"name": "theirs"},
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}]});
    snap.http_routes[0].status = Some(serde_json::from_value(theirs).unwrap());
    round(&client, &state(snap, 1), &opts(), &mut Written::default()).await;
    let w = taken(&seen);
    let parents = w[3].2["status"]["parents"].as_array().unwrap().clone();
    let owners: Vec<_> = parents
        .iter()
        .map(|p| p["controllerName"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["example.com/other", "weir.dev/gateway-controller"]);
}

/// Returns once every task is idle: both writers have handled every change sent so far and
/// wait for the next one. The test runs on a paused clock, which tokio moves on only when no
/// task can make progress, so this sleep ends exactly then and takes no real time.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_writes_and_a_new_leader_writes_only_what_changed() {
    let (client_a, seen_a) = mock_client();
    let (client_b, seen_b) = mock_client();
    let mut snap = cluster();
    let (source, rx) = watch::channel(state(snap.clone(), 1));
    let (lead_a, rx_a) = watch::channel(true);
    let (lead_b, rx_b) = watch::channel(false);
    let a = tokio::spawn(run(client_a, rx.clone(), rx_a, opts()));
    let b = tokio::spawn(run(client_b, rx, rx_b, opts()));
    requests(&seen_a, 5).await;
    settle().await;
    let by_a = taken(&seen_a);
    assert_eq!(by_a.len(), 5, "the leader writes");
    assert!(taken(&seen_b).is_empty(), "the follower does not");

    // The watch shows A's writes; then the lease moves to B (A lost it: a crash, a drain).
    observe(&mut snap, &by_a);
    source.send_replace(state(snap.clone(), 2));
    lead_a.send_replace(false);
    lead_b.send_replace(true);
    settle().await;
    assert!(taken(&seen_a).is_empty());
    assert!(
        taken(&seen_b).is_empty(),
        "the cluster already shows this status"
    );

    // A new route: only B, the leader now, writes it.
    let mut c = snap.http_routes[0].clone();
    c.metadata.name = Some("c".into());
    c.status = None;
    snap.http_routes.push(c);
    source.send_replace(state(snap, 3));
    requests(&seen_b, 2).await;
    settle().await;
    assert!(taken(&seen_a).is_empty());
    let by_b = taken(&seen_b);
    let paths: Vec<_> = by_b
        .iter()
        .map(|w| w.1.split('?').next().unwrap().to_string())
        .collect();
    // The Gateway's attachedRoutes went from 2 to 3 as well.
    assert_eq!(
        paths,
        [
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/gw/status",
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/c/status",
        ]
    );
    a.abort();
    b.abort();
}

/// The sidecars' policies: each namespace with any gets its `weir-authz` ConfigMap by
/// server-side apply, once per change; a namespace whose policies went away gets an empty
/// one, since a deleted ConfigMap would leave the old policies in its pods.
#[tokio::test]
async fn sidecar_policies_are_written_per_namespace_and_emptied_when_removed() {
    let (client, seen) = mock_client();
    let mut written = Written::default();
    let mut snap = cluster();
    snap.services.push(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "payments", "namespace": "payments"},
            "spec": {"selector": {"app": "payments"}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))
        .unwrap(),
    );
    snap.authorization_policies.push(
        serde_json::from_value(json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "callers", "namespace": "payments", "generation": 1},
            "spec": {
                "targetRefs": [{"kind": "Service", "name": "payments"}],
                "rules": [{"from": [{"principals": ["spiffe://cluster.local/ns/shop/sa/checkout"]}]}]
            }
        }))
        .unwrap(),
    );
    let r = round(&client, &state(snap.clone(), 1), &opts(), &mut written).await;
    assert_eq!(r.sidecar_policies, 1);
    let writes = taken(&seen);
    let (method, path, body) = writes
        .iter()
        .find(|(_, p, _)| p.contains("/configmaps/"))
        .expect("a ConfigMap write");
    assert_eq!(method, "PATCH");
    assert_eq!(
        path,
        "/api/v1/namespaces/payments/configmaps/weir-authz?&force=true&fieldManager=weir-controller"
    );
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "weir-controller"
    );
    let policies: Value =
        serde_json::from_str(body["data"]["policies.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        policies["policies"]["payments/callers"]["rules"][0]["from"][0]["principals"][0],
        "spiffe://cluster.local/ns/shop/sa/checkout"
    );
    assert_eq!(policies["services"][0]["selector"]["app"], "payments");
    assert_eq!(
        policies["services"][0]["ports"][0],
        json!({"port": 80, "targetPorts": [8080]})
    );

    // Unchanged: not written again.
    let r = round(&client, &state(snap.clone(), 2), &opts(), &mut written).await;
    assert_eq!(r.sidecar_policies, 0);

    // The policy is deleted; the cluster shows Weir's ConfigMap: it is emptied.
    snap.authorization_policies.clear();
    snap.config_maps.push(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "weir-authz", "namespace": "payments",
                         "labels": {"app.kubernetes.io/managed-by": "weir-controller"}}
        }))
        .unwrap(),
    );
    taken(&seen);
    let r = round(&client, &state(snap.clone(), 3), &opts(), &mut written).await;
    assert_eq!(r.sidecar_policies, 1);
    let writes = taken(&seen);
    let (_, _, body) = writes
        .iter()
        .find(|(_, p, _)| p.contains("/configmaps/"))
        .unwrap();
    assert_eq!(body["data"]["policies.json"], "{}");
}

/// A mock API server for the Secret grants: it remembers each call and answers writes
/// with their body. Lists show what an earlier leader left: a certificate grant in `old`
/// and a JWKS grant in `gone`, namespaces nobody uses now.
fn rbac_api() -> (kube::Client, Seen) {
    mock_answering(|method, path, body| match method {
        "GET" if path.contains("/rolebindings") => json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBindingList",
            "metadata": {},
            "items": [{"metadata": {"name": "weir-gateway-secrets", "namespace": "old"},
                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weir-gateway-secrets"}}]
        }),
        "GET" if path.contains("/roles") => json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleList",
            "metadata": {},
            "items": [{"metadata": {"name": "weir-gateway-jwks", "namespace": "gone"},
                       "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["old-jwks"], "verbs": ["get"]}]}]
        }),
        "DELETE" => {
            json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}})
        }
        _ => body.clone(),
    })
}

/// The gateways' Secret access: the leader lists the RoleBindings it made before, grants
/// `weir-gateway-secrets` in each namespace the Gateways take certificates from, and revokes
/// it where none does any more.
#[tokio::test]
async fn the_gateways_may_read_secrets_only_where_their_gateways_need_them() {
    let (client, seen) = rbac_api();
    let mut snap = cluster();
    snap.gateways.push(
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "team", "namespace": "team"},
            "spec": {"gatewayClassName": "weir", "listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                     "tls": {"certificateRefs": [{"name": "c", "namespace": "certs"}, {"name": "x", "namespace": "vault"}]}}]}
        }))
        .unwrap(),
    );
    snap.reference_grants.push(
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "to-team", "namespace": "certs"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "team"}],
                     "to": [{"group": "", "kind": "Secret"}]}
        }))
        .unwrap(),
    );
    let opts = Options {
        gateway_account: Some(("weir-system".into(), "weir-gateway".into())),
        ..opts()
    };
    let mut written = Written::default();
    let r = round(&client, &state(snap.clone(), 1), &opts, &mut written).await;
    assert_eq!(
        r.secret_access, 5,
        "three granted, one revoked; and the JWKS grant nobody needs"
    );
    let calls: Vec<(String, String, Value)> = taken(&seen)
        .into_iter()
        .filter(|(_, p, _)| p.contains("/rolebindings") && !p.contains("weir-gateway-jwks"))
        .collect();
    let lines: Vec<String> = calls
        .iter()
        .map(|(m, p, _)| format!("{m} {}", p.split('?').next().unwrap()))
        .collect();
    let rb = "/apis/rbac.authorization.k8s.io/v1";
    assert_eq!(
        lines,
        [
            format!("GET {rb}/rolebindings"),
            format!("PATCH {rb}/namespaces/certs/rolebindings/weir-gateway-secrets"),
            format!("PATCH {rb}/namespaces/default/rolebindings/weir-gateway-secrets"),
            format!("PATCH {rb}/namespaces/team/rolebindings/weir-gateway-secrets"),
            format!("DELETE {rb}/namespaces/old/rolebindings/weir-gateway-secrets"),
        ],
        "vault grants nothing to team, so it is not opened"
    );
    assert!(
        calls[0]
            .1
            .contains("labelSelector=weir.dev%2Fgrants%3Dgateway-secrets"),
        "{}",
        calls[0].1
    );
    let body = &calls[1].2;
    assert_eq!(body["roleRef"]["kind"], "ClusterRole");
    assert_eq!(body["roleRef"]["name"], "weir-gateway-secrets");
    assert_eq!(
        body["subjects"],
        json!([{"kind": "ServiceAccount", "namespace": "weir-system", "name": "weir-gateway"}])
    );

    // Nothing changed: no call at all.
    let r = round(&client, &state(snap.clone(), 2), &opts, &mut written).await;
    assert_eq!(r.secret_access, 0);
    assert!(
        taken(&seen)
            .iter()
            .all(|(_, p, _)| !p.contains("rolebindings"))
    );

    // Someone deletes the grants by hand (the mock's list shows only `old` again): five
    // minutes on, the leader lists them anew and restores what the Gateways need.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(301)).await;
    let r = round(&client, &state(snap.clone(), 3), &opts, &mut written).await;
    let lines: Vec<String> = taken(&seen)
        .into_iter()
        .filter(|(_, p, _)| p.contains("/rolebindings") && !p.contains("weir-gateway-jwks"))
        .map(|(m, p, _)| format!("{m} {}", p.split('?').next().unwrap()))
        .collect();
    assert_eq!(
        lines.len(),
        5,
        "listed, three restored, one revoked: {lines:?}"
    );
    assert_eq!(lines[0], format!("GET {rb}/rolebindings"));
    assert_eq!(r.secret_access, 5);
    tokio::time::resume();

    // The team Gateway goes: its namespaces are revoked.
    snap.gateways
        .retain(|g| g.metadata.name.as_deref() != Some("team"));
    let r = round(&client, &state(snap, 4), &opts, &mut written).await;
    assert_eq!(r.secret_access, 2);
}

/// A JWKS kept in a Secret: the leader names that Secret alone in a Role in its namespace,
/// binds it to the gateways, follows the policies as they change, and removes the grant
/// where no policy names a Secret any more.
#[tokio::test]
async fn the_gateways_may_read_exactly_the_jwks_secrets_policies_name() {
    let (client, seen) = rbac_api();
    let mut snap = cluster();
    let policy = |name: &str,
                  ns: &str,
                  kind: &str,
                  jwks: &str|
     -> weir_controller::crd::AuthorizationPolicy {
        serde_json::from_value(json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"targetRefs": [{"kind": "Service", "name": "echo"}],
                     "jwt": [{"issuer": "https://idp.test", "jwksRef": {"kind": kind, "name": jwks}}]}
        }))
        .unwrap()
    };
    snap.authorization_policies = vec![
        policy("a", "payments", "Secret", "idp-jwks"),
        policy("b", "payments", "Secret", "partner-jwks"),
        // A ConfigMap needs no grant.
        policy("c", "shop", "ConfigMap", "shop-jwks"),
    ];
    let opts = Options {
        gateway_account: Some(("weir-system".into(), "weir-gateway".into())),
        ..opts()
    };
    let mut written = Written::default();
    let jwks_calls = |seen: &Seen| -> Vec<(String, Value)> {
        taken(seen)
            .into_iter()
            .filter(|(_, p, _)| p.contains("/roles") || p.contains("weir-gateway-jwks"))
            .map(|(m, p, body)| (format!("{m} {}", p.split('?').next().unwrap()), body))
            .collect()
    };
    let rb = "/apis/rbac.authorization.k8s.io/v1";
    round(&client, &state(snap.clone(), 1), &opts, &mut written).await;
    let calls = jwks_calls(&seen);
    let lines: Vec<&str> = calls.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        lines,
        [
            format!("GET {rb}/roles"),
            format!("PATCH {rb}/namespaces/payments/roles/weir-gateway-jwks"),
            format!("PATCH {rb}/namespaces/payments/rolebindings/weir-gateway-jwks"),
            format!("DELETE {rb}/namespaces/gone/rolebindings/weir-gateway-jwks"),
            format!("DELETE {rb}/namespaces/gone/roles/weir-gateway-jwks"),
        ]
    );
    let role = &calls[1].1;
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"],
                "resourceNames": ["idp-jwks", "partner-jwks"], "verbs": ["get", "list", "watch"]}])
    );
    let binding = &calls[2].1;
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "weir-gateway-jwks"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "namespace": "weir-system", "name": "weir-gateway"}])
    );

    // Unchanged: nothing written.
    round(&client, &state(snap.clone(), 2), &opts, &mut written).await;
    assert!(jwks_calls(&seen).is_empty());

    // One policy goes: the Role names the other Secret only.
    snap.authorization_policies.remove(1);
    round(&client, &state(snap.clone(), 3), &opts, &mut written).await;
    let calls = jwks_calls(&seen);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].1["rules"][0]["resourceNames"], json!(["idp-jwks"]));

    // None names a Secret: the grant goes.
    snap.authorization_policies.remove(0);
    round(&client, &state(snap, 4), &opts, &mut written).await;
    let lines: Vec<String> = jwks_calls(&seen).into_iter().map(|(l, _)| l).collect();
    assert_eq!(
        lines,
        [
            format!("DELETE {rb}/namespaces/payments/rolebindings/weir-gateway-jwks"),
            format!("DELETE {rb}/namespaces/payments/roles/weir-gateway-jwks"),
        ]
    );
}
