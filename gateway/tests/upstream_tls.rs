//! TLS from the gateway to backends (BackendTLSPolicy), against real HTTPS origins with
//! certificates from throwaway CAs: the CA from a ConfigMap, a wrong CA refused (502, and
//! counted), subjectAltNames checked instead of the hostname (a SPIFFE URI), and the
//! Gateway's `tls.backend.clientCertificateRef` presented to an origin that requires one.

mod support;

use support::origin::Origin;
use support::*;

const HOST: &str = "api.example.test";

/// A Service `api` (port 443, named https) whose one endpoint is the origin.
fn tls_service(origin: &Origin) -> String {
    tls_service_with(origin, "")
}

/// Like [`tls_service`], with extra Service port fields (e.g. an `appProtocol`).
fn tls_service_with(origin: &Origin, port_extra: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: api}}\nspec:\n  ports: [{{name: https, port: 443{port_extra}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: api-0, labels: {{kubernetes.io/service-name: api}}}}\naddressType: IPv4\nports: [{{name: https, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        origin.addr.port()
    )
}

/// A BackendTLSPolicy on Service `api`; `validation` is YAML indented under `validation:`.
fn policy(validation: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: api-tls}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: api}}]\n  validation:\n{validation}"
    )
}

fn ca_policy() -> String {
    policy(&format!(
        "    hostname: {HOST}\n    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: api-ca}}]\n"
    ))
}

/// A Gateway with one HTTP listener routing everything to `api:443`, plus `extra`.
fn manifests(port: u16, gateway_extra: &str, extra: &str) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += gateway_extra;
    m += &route("r", "  rules:\n  - backendRefs: [{name: api, port: 443}]\n");
    m += extra;
    m
}

/// The value of a metric sample with all the given labels, 0 when absent.
fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = gw.admin_get("/metrics").expect("/metrics answers");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Gateway field that presents the Secret `client` to backends.
const WITH_CLIENT: &str = "  tls:\n    backend:\n      clientCertificateRef: {name: client}\n";

/// An origin serving `cert` that admits only clients with a certificate from `clients`,
/// and the Secret `client` holding one for the Gateway.
async fn strict_origin(cert: &str, key: &str, clients: &Pki) -> (Origin, String) {
    let addr = "127.0.0.1:0".parse().unwrap();
    let origin = Origin::start(addr, "strict", cert, key, Some(clients.ca_der())).await;
    let (client_cert, client_key) = clients.leaf_with_uris(&["gateway-client"], &[]);
    (origin, tls_secret("client", &client_cert, &client_key))
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_from_a_config_map_reaches_the_origin_and_a_wrong_ca_is_a_502() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf(&[HOST]);
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), "a", &cert, &key, None).await;
    let port = free_port();
    let services = tls_service(&origin) + &ca_policy();
    let gw = Gateway::start(&manifests(
        port,
        "",
        &(services.clone() + &pki.ca_config_map("api-ca")),
    ));

    let r = get(port, "shop.example.com", "/", &[]).await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log());
    assert_eq!(header(&r, "x-origin"), "a");
    assert_eq!(
        header(&r, "x-sni"),
        HOST,
        "the policy's hostname is the SNI"
    );
    assert_eq!(r.body, "origin a");

    // The same origin, trusted through another CA: every try fails verification.
    let other = Pki::new();
    gw.write_and_wait(&manifests(
        port,
        "",
        &(services.clone() + &other.ca_config_map("api-ca")),
    ));
    let r = get(port, "shop.example.com", "/", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    let failures = metric(
        &gw,
        "weir_upstream_tls_failures_total",
        &[("backend", "default/api:443"), ("reason", "handshake")],
    );
    assert!(failures >= 1.0, "counted: {failures}");
    assert!(gw.log().contains("upstream TLS failed"), "{}", gw.log());

    // The CA ConfigMap is gone: the policy has no valid CA, and requests fail rather than
    // go out unverified or in cleartext.
    gw.write_and_wait(&manifests(port, "", &services));
    let r = get(port, "shop.example.com", "/", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    let refused = metric(
        &gw,
        "weir_upstream_tls_failures_total",
        &[("backend", "default/api:443"), ("reason", "policy")],
    );
    assert!(refused >= 1.0, "counted: {refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn subject_alt_names_are_checked_instead_of_the_hostname() {
    let pki = Pki::new();
    let spiffe = "spiffe://td.test/ns/apps/sa/api";
    // The certificate does not name the policy's hostname at all: with subjectAltNames
    // the hostname is only the SNI.
    let (cert, key) = pki.leaf_with_uris(&["unrelated.example.test"], &[spiffe]);
    let good = Origin::start("127.0.0.1:0".parse().unwrap(), "good", &cert, &key, None).await;
    let (cert, key) = pki.leaf_with_uris(
        &["unrelated.example.test"],
        &["spiffe://td.test/ns/apps/sa/intruder"],
    );
    let bad = Origin::start("127.0.0.1:0".parse().unwrap(), "bad", &cert, &key, None).await;
    let spiffe_policy = policy(&format!(
        "    hostname: {HOST}\n    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: api-ca}}]\n    subjectAltNames: [{{type: URI, uri: \"{spiffe}\"}}]\n"
    ));
    let port = free_port();
    let ca = pki.ca_config_map("api-ca");
    let gw = Gateway::start(&manifests(
        port,
        "",
        &(tls_service(&good) + &spiffe_policy + &ca),
    ));
    for _ in 0..3 {
        let r = get(port, "shop.example.com", "/", &[]).await;
        assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log());
        assert_eq!(header(&r, "x-origin"), "good");
    }

    gw.write_and_wait(&manifests(
        port,
        "",
        &(tls_service(&bad) + &spiffe_policy + &ca),
    ));
    let r = get(port, "shop.example.com", "/", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    let failures = metric(
        &gw,
        "weir_upstream_tls_failures_total",
        &[("reason", "subject_alt_names")],
    );
    assert!(failures >= 1.0, "counted: {failures}");
    assert!(
        gw.log().contains("intruder"),
        "the log names what the certificate carries"
    );

    // Without subjectAltNames the hostname is checked, and this certificate lacks it.
    gw.write_and_wait(&manifests(
        port,
        "",
        &(tls_service(&good) + &ca_policy() + &ca),
    ));
    let r = get(port, "shop.example.com", "/", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_presents_its_client_certificate_to_origins_that_require_one() {
    let pki = Pki::new();
    let clients = Pki::new();
    let (cert, key) = pki.leaf(&[HOST]);
    let (origin, client) = strict_origin(&cert, &key, &clients).await;
    let port = free_port();
    let backends = tls_service(&origin) + &ca_policy() + &pki.ca_config_map("api-ca") + &client;
    let gw = Gateway::start(&manifests(port, WITH_CLIENT, &backends));
    let r = get(port, "shop.example.com", "/", &[]).await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log());
    assert_eq!(header(&r, "x-client-cert"), "gateway-client");
    let shown = &gw.config()["config"]["listeners"][0]["backendClientCertificate"];
    assert_eq!(
        shown["keyPem"], "<redacted>",
        "/config hides the key: {shown}"
    );

    // Without it the origin refuses the handshake.
    gw.write_and_wait(&manifests(port, "", &backends));
    let r = get(port, "shop.example.com", "/", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_is_negotiated_when_the_service_asks_for_it() {
    let pki = Pki::new();
    let spiffe = "spiffe://td.test/ns/apps/sa/api";
    let (cert, key) = pki.leaf_with_uris(&[HOST], &[spiffe]);
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), "h2", &cert, &key, None).await;
    let port = free_port();
    let backends = tls_service_with(&origin, ", appProtocol: kubernetes.io/h2c")
        + &policy(&format!(
            "    hostname: {HOST}\n    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: api-ca}}]\n    subjectAltNames: [{{type: URI, uri: \"{spiffe}\"}}]\n"
        ))
        + &pki.ca_config_map("api-ca");
    let gw = Gateway::start(&manifests(port, "", &backends));
    // Several requests share the HTTP/2 connection; each is checked against its verdict.
    for _ in 0..3 {
        let r = get(port, "shop.example.com", "/", &[]).await;
        assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log());
        assert_eq!(header(&r, "x-version"), "HTTP/2.0");
    }
}

/// Waits until the gateway has logged its `n`th health check verdict change to `passing`.
async fn verdict(gw: &Gateway, passing: bool, n: usize) {
    let line = format!("passing={passing}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gw.log().matches(&line).count() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no verdict change #{n} to {line}:\n{}",
            gw.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Health checks of a TLS backend go over TLS, verified and authenticated as its requests
/// are: a probe in plaintext failed at every STRICT sidecar, which left zone affinity in the
/// mesh unable to tell healthy endpoints from dead ones.
#[tokio::test(flavor = "multi_thread")]
async fn health_checks_of_a_tls_backend_verify_it_and_present_the_client_certificate() {
    let pki = Pki::new();
    let clients = Pki::new();
    let spiffe = "spiffe://td.test/ns/apps/sa/api";
    let (cert, key) = pki.leaf_with_uris(&[HOST], &[spiffe]);
    let (origin, client) = strict_origin(&cert, &key, &clients).await;
    let checked = |validation: String| {
        tls_service(&origin).replacen(
            "metadata: {name: api}",
            "metadata: {name: api, annotations: {weir.dev/health-check: /healthz, weir.dev/health-check-interval: 100ms}}",
            1,
        ) + &policy(&validation)
            + &pki.ca_config_map("api-ca")
            + &client
    };
    let ca = "    caCertificateRefs: [{group: \"\", kind: ConfigMap, name: api-ca}]\n";
    let by_hostname = format!("    hostname: {HOST}\n{ca}");
    let by_san = |uri: &str| {
        format!(
            "    hostname: other.example.test\n{ca}    subjectAltNames: [{{type: URI, uri: \"{uri}\"}}]\n"
        )
    };
    let port = free_port();

    // An endpoint counts as passing until a probe says otherwise, so each step waits for a
    // verdict to change: to failing under a policy the origin's certificate does not meet,
    // then back to passing under one it meets, which only a probe that verified the origin
    // and presented the client certificate brings about.

    // A certificate that does not carry the policy's name fails its checks.
    let wrong_san = checked(by_san("spiffe://td.test/ns/apps/sa/other"));
    let gw = Gateway::start(&manifests(port, WITH_CLIENT, &wrong_san));
    verdict(&gw, false, 1).await;

    // Hostname check: the probes pass, so the endpoint serves again.
    gw.write_and_wait(&manifests(port, WITH_CLIENT, &checked(by_hostname)));
    verdict(&gw, true, 1).await;
    let r = get(port, "shop.example.com", "/", &[]).await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log());

    // subjectAltNames: the probe checks the SPIFFE ID as the requests do.
    gw.write_and_wait(&manifests(port, WITH_CLIENT, &wrong_san));
    verdict(&gw, false, 2).await;
    gw.write_and_wait(&manifests(port, WITH_CLIENT, &checked(by_san(spiffe))));
    verdict(&gw, true, 2).await;
}
