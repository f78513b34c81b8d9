//! The mesh listener over mTLS: Gateway `spec.tls.frontend` makes it require client SVIDs
//! from the mesh CA, and the caller's verified SPIFFE ID then names its namespace (bare
//! Service names, consumer routes), keys rate limits (`peerIdentity`) and labels metrics.

mod support;

use support::mesh::{client, mesh};
use support::redis::Redis;
use support::*;
use weir_controller::cli::ca::Ca;

/// GET `/` from the mesh listener with `host` as the Host: what a sidecar sends.
async fn call(client: &reqwest::Client, port: u16, host: &str) -> Result<Reply, reqwest::Error> {
    let resp = client
        .get(format!("https://127.0.0.1:{port}/"))
        .header("host", host)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_need_an_svid_of_the_mesh_and_are_known_by_it() {
    let (echo, canary) = (Echo::start("echo"), Echo::start("canary"));
    let mesh = mesh(&echo, &canary);
    let gw = Gateway::start(&mesh.manifests);
    let web = mesh.ca.issue("web", "frontend", 1).unwrap();
    let from_web = client(&mesh.ca, Some(&web));

    let r = call(&from_web, mesh.port, "echo.default.svc.cluster.local")
        .await
        .unwrap();
    assert_eq!((r.status, r.service()), (200, "echo"));
    // The callee learns who called (its sidecar passes this on only from the fleet).
    assert_eq!(
        r.seen_header("x-weir-caller-identity").as_deref(),
        Some("spiffe://cluster.local/ns/web/sa/frontend")
    );
    // A bare name is the caller's own namespace: `web` has no `echo`.
    let r = call(&from_web, mesh.port, "echo").await.unwrap();
    assert_eq!(r.status, 404);
    let local = mesh.ca.issue("default", "tools", 1).unwrap();
    let r = call(&client(&mesh.ca, Some(&local)), mesh.port, "echo")
        .await
        .unwrap();
    assert_eq!((r.status, r.service()), (200, "echo"));

    // No certificate, or one from another trust domain's CA: refused in the handshake.
    assert!(
        call(&client(&mesh.ca, None), mesh.port, "echo.default")
            .await
            .is_err()
    );
    let stranger_ca = Ca::init("cluster.local", 1).unwrap();
    let stranger = stranger_ca.issue("web", "frontend", 1).unwrap();
    assert!(
        call(
            &client(&mesh.ca, Some(&stranger)),
            mesh.port,
            "echo.default"
        )
        .await
        .is_err()
    );

    // Each edge of the service graph is a series.
    let (_, metrics) = gw.admin_get("/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_requests_total{")
                && l.contains(r#"destination="default/echo:80""#)
                && l.contains(r#"source="spiffe://cluster.local/ns/web/sa/frontend""#)
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_routes_apply_to_callers_from_their_namespace() {
    let (echo, canary) = (Echo::start("echo"), Echo::start("canary"));
    let mut mesh = mesh(&echo, &canary);
    mesh.manifests += "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: try-canary, namespace: checkout}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, namespace: default}]\n  rules: [{backendRefs: [{name: canary, namespace: default, port: 80}]}]\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: checkout}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: checkout}]\n  to: [{group: \"\", kind: Service, name: canary}]\n";
    let _gw = Gateway::start(&mesh.manifests);
    let checkout = client(
        &mesh.ca,
        Some(&mesh.ca.issue("checkout", "cart", 1).unwrap()),
    );
    let web = client(
        &mesh.ca,
        Some(&mesh.ca.issue("web", "frontend", 1).unwrap()),
    );
    for _ in 0..5 {
        let r = call(&checkout, mesh.port, "echo.default").await.unwrap();
        assert_eq!(r.service(), "canary");
        let r = call(&web, mesh.port, "echo.default").await.unwrap();
        assert_eq!(r.service(), "echo");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_can_name_a_caller() {
    let (echo, canary) = (Echo::start("echo"), Echo::start("canary"));
    let mut mesh = mesh(&echo, &canary);
    mesh.manifests += "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: forge}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {set: [{name: x-weir-caller-identity, value: \"spiffe://cluster.local/ns/x/sa/admin\"}]}\n    backendRefs: [{name: echo, port: 80}]\n";
    let _gw = Gateway::start(&mesh.manifests);
    let web = client(
        &mesh.ca,
        Some(&mesh.ca.issue("web", "frontend", 1).unwrap()),
    );
    let r = call(&web, mesh.port, "echo.default").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.seen_header("x-weir-caller-identity").as_deref(),
        Some("spiffe://cluster.local/ns/web/sa/frontend")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_vouch_for_nobody_outside_the_mesh() {
    let (echo, canary) = (Echo::start("echo"), Echo::start("canary"));
    let mut mesh = mesh(&echo, &canary);
    // Another Gateway validates client certificates too, on a port of its own; it is no
    // mesh Gateway, so the fleet passes no identity on from it.
    let edge = free_port();
    mesh.manifests += &format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\nspec:\n  gatewayClassName: weir\n  tls:\n    frontend:\n      default:\n        validation: {{caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: mesh-ca}}]}}\n  listeners:\n  - {{name: https, port: {edge}, protocol: HTTPS, tls: {{certificateRefs: [{{name: gateway-svid}}]}}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: edge}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]\n"
    );
    let _gw = Gateway::start(&mesh.manifests);
    let web = client(
        &mesh.ca,
        Some(&mesh.ca.issue("web", "frontend", 1).unwrap()),
    );
    let r = call(&web, edge, "anything.example").await.unwrap();
    assert_eq!((r.status, r.service()), (200, "echo"));
    assert_eq!(r.seen_header("x-weir-caller-identity"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_identity_rate_limits_count_each_caller_apart() {
    let redis = Redis::start();
    let (echo, canary) = (Echo::start("echo"), Echo::start("canary"));
    let mut mesh = mesh(&echo, &canary);
    // A policy on the Service frontend covers its mesh traffic.
    mesh.manifests += "---\napiVersion: weir.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: per-caller}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: echo}]\n  limits:\n  - {name: per-caller, requests: 3, window: 1m, key: [{peerIdentity: {}}]}\n";
    let _gw = Gateway::start_with(&mesh.manifests, &["--redis", &redis.url()]);
    let a = client(&mesh.ca, Some(&mesh.ca.issue("web", "a", 1).unwrap()));
    let b = client(&mesh.ca, Some(&mesh.ca.issue("web", "b", 1).unwrap()));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(call(&a, mesh.port, "echo.default").await.unwrap().status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // Same address, same namespace, another identity: a counter of its own.
    let r = call(&b, mesh.port, "echo.default").await.unwrap();
    assert_eq!(r.status, 200);
}
