//! AuthorizationPolicy at the fleet, with real mTLS callers: each caller's identity is the
//! SVID it presented in the handshake, and the policies of the Service it calls decide.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::mesh::{client, mesh};
use support::*;

const CHECKOUT: &str = "spiffe://cluster.local/ns/shop/sa/checkout";

/// The issue's example, on the Service `echo`: checkout, or anyone in `refunds`, may GET or
/// POST under /api/v1/ for tenant acme.
const CALLERS: &str = r#"---
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: echo-callers}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  action: ALLOW
  rules:
  - from: [{principals: ["spiffe://cluster.local/ns/shop/sa/checkout"]}, {namespaces: ["refunds"]}]
    to: [{methods: ["GET", "POST"], paths: ["/api/v1/*"]}]
    when: [{header: x-tenant, values: ["acme"]}]
"#;

/// Denies checkout the refund endpoints, on every Service of the namespace.
const NO_REFUNDS_FOR_CHECKOUT: &str = r#"---
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-refunds-for-checkout}
spec:
  targetRefs: [{kind: Namespace, name: default}]
  action: DENY
  rules:
  - from: [{principals: ["cluster.local/ns/shop/sa/checkout"]}]
    to: [{paths: ["/api/v1/refunds*"]}]
"#;

/// On `canary`, in Shadow mode: only `refunds` would be allowed.
const CANARY_TRIAL: &str = r#"---
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: canary-trial}
spec:
  targetRefs: [{kind: Service, name: canary}]
  mode: Shadow
  rules: [{from: [{namespaces: [refunds]}]}]
"#;

async fn call(
    c: &reqwest::Client,
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let url = format!("https://127.0.0.1:{port}{path}");
    support::send_url(c, method.parse().unwrap(), &url, host, headers).await
}

const ACME: &[(&str, &str)] = &[("x-tenant", "acme")];

fn decisions(gw: &Gateway, policy: &str, action: &str, decision: &str) -> f64 {
    gw.metric(&format!(
        "weir_authz_decisions_total{{action=\"{action}\",decision=\"{decision}\",policy=\"{policy}\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_callers_a_policy_allows_reach_the_service() {
    let (echo, canary) = (Echo::start("echo"), Echo::start("canary"));
    let mesh = mesh(&echo, &canary);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let gw = Gateway::start_with(
        &format!("{}{CALLERS}{CANARY_TRIAL}", mesh.manifests),
        &["--access-log", log.to_str().unwrap()],
    );
    let checkout = client(
        &mesh.ca,
        Some(&mesh.ca.issue("shop", "checkout", 1).unwrap()),
    );
    let refunds = client(
        &mesh.ca,
        Some(&mesh.ca.issue("refunds", "worker", 1).unwrap()),
    );
    let web = client(
        &mesh.ca,
        Some(&mesh.ca.issue("web", "frontend", 1).unwrap()),
    );
    let echo_host = "echo.default.svc.cluster.local";

    // Allowed: the named principal, and anyone in the named namespace.
    let r = call(
        &checkout,
        mesh.port,
        echo_host,
        "GET",
        "/api/v1/charges",
        ACME,
    )
    .await;
    assert_eq!((r.status, r.service()), (200, "echo"));
    let r = call(
        &refunds,
        mesh.port,
        echo_host,
        "POST",
        "/api/v1/refunds",
        ACME,
    )
    .await;
    assert_eq!((r.status, r.service()), (200, "echo"));

    // Not allowed: another caller, method, path, tenant; and a path that climbs out.
    let before = echo.count("requests");
    for (c, method, path, headers) in [
        (&web, "GET", "/api/v1/charges", ACME),
        (&checkout, "DELETE", "/api/v1/charges", ACME),
        (&checkout, "GET", "/admin", ACME),
        (
            &checkout,
            "GET",
            "/api/v1/charges",
            &[("x-tenant", "globex")][..],
        ),
        (&checkout, "GET", "/api/v1/../../admin", ACME),
    ] {
        let r = call(c, mesh.port, echo_host, method, path, headers).await;
        assert_eq!(r.status, 403, "{method} {path}");
        // The answer names no policy: a caller learns nothing about the rules.
        assert_eq!(r.body, "forbidden\n");
    }
    assert_eq!(
        echo.count("requests"),
        before,
        "no denied request reached the backend"
    );

    // A forged identity header changes nothing: the handshake's identity decides, and the
    // backend hears the real one.
    let forged = [("x-tenant", "acme"), ("x-weir-caller-identity", CHECKOUT)];
    let r = call(
        &web,
        mesh.port,
        echo_host,
        "GET",
        "/api/v1/charges",
        &forged,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = call(
        &checkout,
        mesh.port,
        echo_host,
        "GET",
        "/api/v1/x",
        &[
            ("x-tenant", "acme"),
            (
                "x-weir-caller-identity",
                "spiffe://cluster.local/ns/refunds/sa/worker",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.seen_header("x-weir-caller-identity").as_deref(),
        Some(CHECKOUT)
    );

    // gRPC callers get PERMISSION_DENIED.
    let r = call(
        &web,
        mesh.port,
        echo_host,
        "POST",
        "/api.v1.Charges/List",
        &[("content-type", "application/grpc"), ("te", "trailers")],
    )
    .await;
    assert_eq!(
        r.headers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("7")
    );

    // Shadow: canary lets everyone through, and counts who it would have refused.
    let r = call(&web, mesh.port, "canary.default", "GET", "/", &[]).await;
    assert_eq!((r.status, r.service()), (200, "canary"));
    let r = call(&refunds, mesh.port, "canary.default", "GET", "/", &[]).await;
    assert_eq!(r.status, 200);

    // The decisions, counted and logged.
    assert_eq!(
        decisions(&gw, "default/echo-callers", "ALLOW", "allowed"),
        3.0
    );
    assert_eq!(
        decisions(&gw, "default/echo-callers", "ALLOW", "denied"),
        7.0
    );
    assert_eq!(
        decisions(&gw, "default/canary-trial", "ALLOW", "shadow_denied"),
        1.0
    );
    assert_eq!(
        decisions(&gw, "default/canary-trial", "ALLOW", "shadow_allowed"),
        1.0
    );
    wait_for(
        "the denial's access log line",
        Duration::from_secs(10),
        || {
            let lines = std::fs::read_to_string(&log).unwrap_or_default();
            lines.lines().any(|l| {
                l.contains(r#""status":403"#)
                    && l.contains(r#""authz":"denied","authz_policy":"default/echo-callers""#)
                    && l.contains(r#""caller":"spiffe://cluster.local/ns/web/sa/frontend""#)
            })
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_wins_and_policies_change_live_without_failing_allowed_callers() {
    let (echo, canary) = (Echo::start("echo"), Echo::start("canary"));
    let mesh = mesh(&echo, &canary);
    let base = format!("{}{CALLERS}", mesh.manifests);
    let gw = Gateway::start(&base);
    let checkout = client(
        &mesh.ca,
        Some(&mesh.ca.issue("shop", "checkout", 1).unwrap()),
    );
    let host = "echo.default";
    let r = call(&checkout, mesh.port, host, "GET", "/api/v1/refunds/7", ACME).await;
    assert_eq!(r.status, 200);

    // DENY is evaluated first: the ALLOW policy's match does not save the request.
    gw.write_and_wait(&format!("{base}{NO_REFUNDS_FOR_CHECKOUT}"));
    let r = call(&checkout, mesh.port, host, "GET", "/api/v1/refunds/7", ACME).await;
    assert_eq!(r.status, 403);
    let r = call(&checkout, mesh.port, host, "GET", "/api/v1/charges", ACME).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        decisions(&gw, "default/no-refunds-for-checkout", "DENY", "denied"),
        1.0
    );

    // Under steady load from an allowed caller, the policies change again and again: not
    // one of its requests may fail, whichever config it meets.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, stop, ok, failed) = (checkout.clone(), stop.clone(), ok.clone(), failed.clone());
        let port = mesh.port;
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = call(&c, port, "echo.default", "GET", "/api/v1/charges", ACME).await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let variants = [
        base.clone(),
        format!("{base}{NO_REFUNDS_FOR_CHECKOUT}"),
        format!("{base}{NO_REFUNDS_FOR_CHECKOUT}{CANARY_TRIAL}"),
        format!("{base}{CANARY_TRIAL}"),
    ];
    for round in 0..12 {
        let gw = &gw;
        let manifests = variants[round % variants.len()].clone();
        tokio::task::block_in_place(|| gw.write_and_wait(&manifests));
        let served = ok.load(Ordering::Relaxed);
        // Requests went through on this config before the next change.
        tokio::task::block_in_place(|| {
            wait_for(
                "requests on the new config",
                Duration::from_secs(10),
                || ok.load(Ordering::Relaxed) > served + 20,
            )
        });
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "an allowed caller was refused"
    );
    assert!(ok.load(Ordering::Relaxed) > 240);
    // And the policy still denies, after all that.
    let web = client(
        &mesh.ca,
        Some(&mesh.ca.issue("web", "frontend", 1).unwrap()),
    );
    let r = call(&web, mesh.port, host, "GET", "/api/v1/charges", ACME).await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_an_edge_listener_without_client_certificates_no_principal_matches() {
    let app = Echo::start("app");
    let port = free_port();
    let manifests = format!(
        "{}{}{}{}",
        gateway(&[http_listener("http", port)]),
        service("app", &[&app]),
        route("app", "  rules: [{backendRefs: [{name: app, port: 80}]}]\n"),
        r#"---
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: mesh-callers-only}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]
  rules:
  - from: [{principals: ["*"]}]
  - to: [{paths: ["/public/*"]}]
"#
    );
    let gw = Gateway::start(&manifests);
    let r = get(port, "app.example", "/private", &[]).await;
    assert_eq!(r.status, 403);
    // A client claiming an identity in a header is still nobody.
    let r = get(
        port,
        "app.example",
        "/private",
        &[("x-weir-caller-identity", CHECKOUT)],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = get(port, "app.example", "/public/index.html", &[]).await;
    assert_eq!((r.status, r.service()), (200, "app"));
    assert_eq!(
        decisions(&gw, "default/mesh-callers-only", "ALLOW", "denied"),
        2.0
    );

    // An address rule: loopback is denied outright.
    let deny_loopback = "---\napiVersion: weir.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-loopback}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  action: DENY\n  rules: [{from: [{ipBlocks: [127.0.0.0/8]}]}]\n";
    gw.write_and_wait(&format!("{manifests}{deny_loopback}"));
    let r = get(port, "app.example", "/public/index.html", &[]).await;
    assert_eq!(r.status, 403);
}

/// End-user JWTs at the edge: tokens from a trusted issuer (its JWKS in a Secret) give a
/// request principal and claims; a token that does not verify is 401 before any rule; the
/// backend never sees it.
#[tokio::test(flavor = "multi_thread")]
async fn end_user_tokens_are_verified_matched_and_kept_from_the_backend() {
    use jsonwebtoken::Algorithm;
    use serde_json::json;
    use weir_loadtest::jwt::{Issuer, now};

    let issuer = Issuer::new("https://issuer.test").unwrap();
    let app = Echo::start("app");
    let port = free_port();
    let manifests = format!(
        "{}{}{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: issuer-jwks}}\ntype: Opaque\nstringData:\n  jwks: '{}'\n{}",
        gateway(&[http_listener("http", port)]),
        service("app", &[&app]),
        route("app", "  rules: [{backendRefs: [{name: app, port: 80}]}]\n"),
        issuer.jwks(),
        r#"---
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: buyers}
spec:
  targetRefs: [{kind: Service, name: app}]
  jwt: [{issuer: "https://issuer.test", jwksRef: {kind: Secret, name: issuer-jwks}, audiences: [shop]}]
  rules:
  - from: [{requestPrincipals: ["https://issuer.test/*"]}]
    when: [{claim: "[realm][roles]", values: [buyer]}]
"#
    );
    let gw = Gateway::start(&manifests);
    assert_eq!(
        gw.metric("weir_config_compile_problems"),
        0.0,
        "{}",
        gw.log()
    );
    let bearer = |t: &str| format!("Bearer {t}");
    let buyer = json!({"realm": {"roles": ["viewer", "buyer"]}});

    // A verified buyer, whichever algorithm signed; the backend does not get the token.
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let t = issuer.token(alg, "alice", "shop", buyer.clone());
        let r = get(
            port,
            "app.example",
            "/cart",
            &[("authorization", &bearer(&t))],
        )
        .await;
        assert_eq!((r.status, r.service()), (200, "app"), "{alg:?}: {}", r.body);
        assert_eq!(
            r.seen_header("authorization"),
            None,
            "{alg:?}: the token was stripped"
        );
    }
    // No token: no request principal, so the ALLOW rule cannot match.
    assert_eq!(get(port, "app.example", "/cart", &[]).await.status, 403);
    // A good token without the claim the rule asks for.
    let viewer = issuer.token(
        Algorithm::ES256,
        "bob",
        "shop",
        json!({"realm": {"roles": ["viewer"]}}),
    );
    let r = get(
        port,
        "app.example",
        "/cart",
        &[("authorization", &bearer(&viewer))],
    )
    .await;
    assert_eq!(r.status, 403);

    // Tokens that do not verify: 401, with the RFC 6750 challenge.
    let t = now();
    let stranger = Issuer::new("https://issuer.test").unwrap();
    let bad = [
        ("expired", issuer.sign(Algorithm::ES256, &json!({"iss": "https://issuer.test", "sub": "a", "aud": "shop", "exp": t - 3600, "realm": {"roles": ["buyer"]}}))),
        ("not yet valid", issuer.sign(Algorithm::ES256, &json!({"iss": "https://issuer.test", "sub": "a", "aud": "shop", "exp": t + 7200, "nbf": t + 3600}))),
        ("wrong audience", issuer.token(Algorithm::RS256, "a", "billing", buyer.clone())),
        ("unknown issuer", Issuer::new("https://evil.test").unwrap().token(Algorithm::EdDSA, "a", "shop", buyer.clone())),
        ("key not in the JWKS", stranger.token(Algorithm::ES256, "a", "shop", buyer.clone())),
        ("not a JWT", "abc.def".to_string()),
    ];
    for (what, token) in &bad {
        let r = get(
            port,
            "app.example",
            "/cart",
            &[("authorization", &bearer(token))],
        )
        .await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(
            r.headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some(r#"Bearer realm="weir", error="invalid_token""#),
            "{what}"
        );
    }
    // A tampered payload fails the signature.
    let good = issuer.token(Algorithm::RS256, "alice", "shop", buyer.clone());
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = issuer.token(Algorithm::RS256, "mallory", "shop", buyer.clone());
    parts[1] = forged.split('.').nth(1).unwrap();
    let r = get(
        port,
        "app.example",
        "/cart",
        &[("authorization", &bearer(&parts.join(".")))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        gw.metric("weir_authz_invalid_tokens_total"),
        (bad.len() + 1) as f64
    );
}
