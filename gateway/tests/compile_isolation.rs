//! An object that translates but does not compile in the gateway stays a local problem: the
//! rest of the same change goes live, the object is named in `/config` (`compileErrors`) and
//! the log, and what was serving keeps serving, over real TLS handshakes too.
//!
//! The object: a BackendTLSPolicy that trusts the platform's CA certificates
//! (`wellKnownCACertificates: System`) and checks `subjectAltNames`, on a gateway whose
//! platform has no CA bundle (a distroless image, say; here `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` point at nothing). The translation cannot know the gateway's platform;
//! the gateway cannot build a verifier without roots. Translation now refuses every
//! certificate the gateway would (the fuzzers found the last gaps), so this is the case
//! left that only the gateway can see.

mod support;

use std::time::{Duration, Instant};
use support::*;

/// Gateway `gw` with an HTTPS and an HTTP listener.
fn gateway_with(https: u16, http: u16) -> String {
    format!(
        "{CLASS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  gatewayClassName: weir\n  listeners:\n  - {{name: https, port: {https}, protocol: HTTPS, hostname: app.example.com, tls: {{certificateRefs: [{{name: app-cert}}]}}}}\n  - {{name: http, port: {http}, protocol: HTTP}}\n"
    )
}

/// A policy on Service `secure` trusting the platform roots, with a SAN check.
const SYSTEM_TRUST_POLICY: &str = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: secure-tls}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: secure}]\n  validation:\n    hostname: secure.example.com\n    wellKnownCACertificates: System\n    subjectAltNames: [{type: Hostname, hostname: secure.example.com}]\n";

async fn wait_for(what: &str, gw: &Gateway, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "{what} never happened; /config: {}\nlog:\n{}",
            gw.config(),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_that_does_not_compile_does_not_freeze_later_changes() {
    let pki = Pki::new();
    let (app, other, secure) = (
        Echo::start("app"),
        Echo::start("other"),
        Echo::start("secure"),
    );
    let (https, http) = (free_port(), free_port());
    let mut base = pki.secret("app-cert", &["app.example.com"]);
    base += &service("app", &[&app]);
    base += &service("other", &[&other]);
    base += &service("secure", &[&secure]);
    base += &route(
        "main",
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /secure}}]\n    backendRefs: [{name: secure, port: 80}]\n  - backendRefs: [{name: app, port: 80}]\n",
    );
    // A platform with no CA certificates at all.
    let empty = tempfile::tempdir().unwrap();
    let no_bundle = empty.path().join("ca-certificates.crt");
    std::fs::write(&no_bundle, "").unwrap();
    let gw = Gateway::start_with_env(
        &(gateway_with(https, http) + &base),
        &[],
        &[
            ("SSL_CERT_FILE", no_bundle.to_str().unwrap()),
            ("SSL_CERT_DIR", empty.path().to_str().unwrap()),
        ],
    );
    let tls_client = pki.client(&["app.example.com"], https, false);
    let over_tls = || async {
        let resp = tls_client
            .get(format!("https://app.example.com:{https}/"))
            .send()
            .await
            .expect("the TLS handshake and the request succeed");
        let service = resp
            .headers()
            .get("x-echo-service")
            .map(|v| v.to_str().unwrap().to_owned());
        (resp.status().as_u16(), service)
    };
    assert_eq!(over_tls().await, (200, Some("app".into())));
    assert_eq!(get(http, "h", "/secure", &[]).await.service(), "secure");
    let before = gw.generation();

    // One change: a policy the gateway cannot compile, and an unrelated new route.
    let new_route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: extra}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [new.example.com]\n  rules:\n  - backendRefs: [{name: other, port: 80}]\n";
    gw.write(&(gateway_with(https, http) + &base + SYSTEM_TRUST_POLICY + new_route));
    wait_for("the change going live", &gw, async || {
        gw.generation() > before
    })
    .await;
    let reply = get(http, "new.example.com", "/", &[]).await;
    assert_eq!(
        (reply.status, reply.service()),
        (200, "other"),
        "the unrelated route serves"
    );

    let cfg = gw.config();
    assert!(cfg["error"].is_null(), "{cfg}");
    let errors = cfg["compileErrors"].as_array().expect("compileErrors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let problem = errors[0].as_str().unwrap();
    assert!(problem.contains("default/secure-tls"), "{problem:?}");
    assert_eq!(gw.metric("weir_config_compile_problems"), 1.0);
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("default/secure-tls")),
        "{log}"
    );
    // The backend under the unusable policy fails closed: never cleartext, never unverified.
    let secured = get(http, "h", "/secure", &[]).await;
    assert_eq!(secured.status, 502, "{}", secured.body);
    assert_eq!(
        secure.count("requests"),
        1,
        "only the request before the policy"
    );

    // Everything else keeps serving, over a real TLS handshake too.
    assert_eq!(over_tls().await, (200, Some("app".into())));
    assert_eq!(get(http, "h", "/", &[]).await.service(), "app");

    // Removing the policy clears the report.
    let fixed = gw.write_and_wait(&(gateway_with(https, http) + &base + new_route));
    assert!(fixed > before + 1);
    let cfg = gw.config();
    assert_eq!(
        cfg["compileErrors"].as_array().map(Vec::len),
        Some(0),
        "{cfg}"
    );
    assert_eq!(gw.metric("weir_config_compile_problems"), 0.0);
    assert_eq!(get(http, "h", "/secure", &[]).await.service(), "secure");
}
