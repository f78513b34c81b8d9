//! GAMMA through a real `weir-gateway`: a mesh Gateway's listener routes requests addressed
//! to Services by name, with the routes attached to those Services or, without any, over the
//! Services' own endpoints.

mod support;

use support::*;

/// A mesh Gateway `mesh` with one plaintext listener admitting every namespace.
fn mesh_gateway(port: u16) -> String {
    format!(
        "{CLASS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: mesh, annotations: {{weir.dev/mesh: \"true\"}}}}\nspec:\n  gatewayClassName: weir\n  listeners:\n  - {{name: mesh, port: {port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}\n"
    )
}

/// An HTTPRoute attached to Service `parent` (optionally one port of it).
fn mesh_route(name: &str, parent: &str, port: Option<u16>, rules: &str) -> String {
    let port = port.map(|p| format!(", port: {p}")).unwrap_or_default();
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: {parent}{port}}}]\n{rules}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_without_routes_is_balanced_over_its_endpoints_by_every_name() {
    let plain = Echo::start("plain");
    let port = free_port();
    let mut m = mesh_gateway(port);
    m += &service("plain", &[&plain]);
    let gw = Gateway::start(&m);
    for host in [
        "plain.default",
        "plain.default:80",
        "plain.default.svc",
        "plain.default.svc.cluster.local",
        "plain.default.svc.cluster.local:80",
    ] {
        let r = get(port, host, "/x", &[]).await;
        assert_eq!((r.status, r.service()), (200, "plain"), "{host}");
        // The Host reaches the app as the caller wrote it.
        assert_eq!(r.seen_header("host").as_deref(), Some(host));
    }
    // An anonymous caller cannot claim an identity.
    let forged = [(
        "x-weir-caller-identity",
        "spiffe://cluster.local/ns/x/sa/admin",
    )];
    let r = get(port, "plain.default", "/", &forged).await;
    assert_eq!(r.seen_header("x-weir-caller-identity"), None);
    // A bare name needs the caller's namespace, which only a verified identity gives.
    assert_eq!(get(port, "plain", "/", &[]).await.status, 404);
    assert_eq!(get(port, "plain.default:81", "/", &[]).await.status, 404);
    assert_eq!(get(port, "nope.default", "/", &[]).await.status, 404);
    // Each mesh call is counted under the Service port it was addressed to.
    let (_, metrics) = gw.admin_get("/metrics").unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("weir_requests_total{") && l.contains("code=\"200\""))
        .expect("a 200 is counted");
    assert!(
        line.contains(r#"destination="default/plain:80""#)
            && line.contains(r#"route="default/plain",rule="80""#)
            && line.ends_with(" 6"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_attached_to_a_service_split_match_and_filter_its_calls() {
    let (v1, v2, api) = (Echo::start("v1"), Echo::start("v2"), Echo::start("api"));
    let port = free_port();
    let mut m = mesh_gateway(port);
    m += &service("v1", &[&v1]);
    m += &service("v2", &[&v2]);
    // `api` has two ports; the route names port 80 only, so 9090 keeps default routing.
    m += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: api}}\nspec:\n  ports: [{{name: http, port: 80}}, {{name: admin, port: 9090}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: api-0, labels: {{kubernetes.io/service-name: api}}}}\naddressType: IPv4\nports: [{{name: http, port: {p}}}, {{name: admin, port: {p}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        p = api.addr.port()
    );
    m += &mesh_route(
        "api",
        "api",
        Some(80),
        r#"  rules:
  - matches: [{headers: [{name: x-canary, value: always}]}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-routed, value: canary}]}
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}]
  - backendRefs: [{name: v1, port: 80, weight: 80}, {name: v2, port: 80, weight: 20}]
"#,
    );
    let _gw = Gateway::start(&m);

    let mut v2_share = 0;
    for _ in 0..200 {
        let r = get(port, "api.default.svc.cluster.local", "/", &[]).await;
        assert_eq!(r.status, 200);
        v2_share += usize::from(r.service() == "v2");
    }
    assert!(
        (20..=70).contains(&v2_share),
        "an 80/20 split sent {v2_share} of 200 to v2"
    );
    let r = get(port, "api.default", "/", &[("x-canary", "always")]).await;
    assert_eq!(
        (r.service(), r.headers["x-routed"].to_str().unwrap()),
        ("v2", "canary")
    );
    let r = get(port, "api.default", "/old/page", &[]).await;
    assert_eq!(r.status, 301);
    assert!(
        r.headers["location"]
            .to_str()
            .unwrap()
            .ends_with("/new/page")
    );
    // parentRef.port scoping: the admin port is not routed by the route.
    for _ in 0..5 {
        let r = get(port, "api.default:9090", "/", &[]).await;
        assert_eq!((r.status, r.service()), (200, "api"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn attaching_a_route_takes_over_a_service_without_a_restart() {
    let (v1, v2) = (Echo::start("v1"), Echo::start("v2"));
    let port = free_port();
    let mut m = mesh_gateway(port);
    m += &service("v1", &[&v1]);
    m += &service("v2", &[&v2]);
    let gw = Gateway::start(&m);
    assert_eq!(get(port, "v1.default", "/", &[]).await.service(), "v1");
    m += &mesh_route(
        "move",
        "v1",
        None,
        "  rules: [{backendRefs: [{name: v2, port: 80}]}]\n",
    );
    gw.write_and_wait(&m);
    assert_eq!(get(port, "v1.default", "/", &[]).await.service(), "v2");
    let config = gw.config();
    let services = &config["config"]["mesh"]["services"];
    assert_eq!(services[0]["routes"][0]["rule"], "HTTPRoute/default/move/0");
}
