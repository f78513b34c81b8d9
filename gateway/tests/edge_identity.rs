//! A caller can never name itself: `x-weir-caller-identity` from a client (duplicated,
//! case-varied, or named in `Connection:`) never reaches a backend, over HTTP/1.1 and
//! HTTP/2, on edge HTTP, edge HTTPS, the mTLS mesh listener (where only the verified ID is
//! sent), WebSocket upgrades, retries, and egress. The `weir-echo` behind the gateway
//! reports every value it got (`x-echo-caller-identity`) and counts the requests that
//! carried one.

mod support;

use rustls_pki_types::pem::PemObject;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use support::origin::Dns;
use support::raw;
use support::*;
use weir_controller::cli::ca::{Ca, Svid};
use weir_model::spiffe::{Allow, ServerVerifier};

const FORGED: &str = "spiffe://cluster.local/ns/payments/sa/admin";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/weir-system/sa/weir-gateway";

/// The raw HTTP/1.1 variants of a forged identity, each one request.
fn forged_h1(host: &str, path: &str) -> Vec<String> {
    vec![
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nx-weir-caller-identity: {FORGED}\r\nX-Weir-Caller-Identity: {FORGED}2\r\nX-WEIR-CALLER-IDENTITY: {FORGED}3\r\n\r\n"
        ),
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: x-weir-caller-identity\r\nx-weir-caller-identity: {FORGED}\r\n\r\n"
        ),
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive, X-Weir-Caller-Identity\r\nX-weir-caller-IDENTITY: {FORGED}\r\n\r\n"
        ),
    ]
}

/// Sends each request on `io` (keep-alive) and returns each response's head and body.
fn h1_exchanges(io: &mut (impl std::io::Read + Write), requests: &[String]) -> Vec<raw::Got> {
    requests
        .iter()
        .map(|r| {
            io.write_all(r.as_bytes()).unwrap();
            raw::read_until(io, raw::has_response)
        })
        .collect()
}

/// The identity values the echo reported on a raw response, if any.
fn seen(got: &raw::Got) -> Option<String> {
    let text = got.text();
    let head = &text[..text.find("\r\n\r\n")?];
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-echo-caller-identity")
            .then(|| v.trim().to_string())
    })
}

/// An HTTP/2 GET with `fields` on a connection the test already opened; (status, the echo's
/// `x-echo-caller-identity`).
async fn h2_get<T>(io: T, authority: &str, fields: &[(&str, &str)]) -> (u16, Option<String>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut client, conn) = ::h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(format!("https://{authority}/"))
        .body(())
        .unwrap();
    for (k, v) in fields {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    let seen = resp
        .headers()
        .get("x-echo-caller-identity")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), seen)
}

fn forged_h2() -> Vec<(&'static str, &'static str)> {
    vec![
        ("x-weir-caller-identity", FORGED),
        ("x-weir-caller-identity", "spiffe://cluster.local/ns/x/sa/y"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_listeners_never_forward_a_client_identity() {
    let pki = Pki::new();
    let app = Echo::start("app");
    let (http, https) = (free_port(), free_port());
    let mut m = gateway(&[
        http_listener("http", http),
        format!(
            "{{name: https, port: {https}, protocol: HTTPS, hostname: \"shop.example.com\", tls: {{certificateRefs: [{{name: cert}}]}}}}"
        ),
    ]);
    m += &pki.secret("cert", &["shop.example.com"]);
    m += &service("app", &[&app]);
    m += &route("r", "  rules:\n  - backendRefs: [{name: app, port: 80}]\n");
    let _gw = Gateway::start(&m);

    // Edge HTTP, HTTP/1.1.
    let mut s = raw::connect(http);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for got in h1_exchanges(&mut s, &forged_h1("shop.example.com", "/")) {
        assert_eq!(got.statuses(), [200], "{}", got.text());
        assert_eq!(seen(&got), None);
    }
    // Edge HTTP, h2c.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .unwrap();
    assert_eq!(
        h2_get(tcp, "shop.example.com", &forged_h2()).await,
        (200, None)
    );

    // Edge HTTPS, HTTP/1.1 and HTTP/2.
    let config = pki.client_config(&[b"http/1.1"], rustls::ALL_VERSIONS);
    let mut tls = raw::tls(https, "shop.example.com", config);
    for got in h1_exchanges(&mut tls, &forged_h1("shop.example.com", "/")) {
        assert_eq!(got.statuses(), [200], "{}", got.text());
        assert_eq!(seen(&got), None);
    }
    let config = pki.client_config(&[b"h2"], rustls::ALL_VERSIONS);
    let tls = tls_connect(https, "shop.example.com", config).await;
    assert_eq!(
        h2_get(tls, "shop.example.com", &forged_h2()).await,
        (200, None)
    );

    assert_eq!(
        app.count("with_caller_identity"),
        0,
        "a backend got a client's identity"
    );
}

async fn tls_connect(
    port: u16,
    name: &str,
    config: rustls::ClientConfig,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrades_and_retries_carry_no_client_identity() {
    // Half the echo's answers are 503s on purpose, so many requests are retried.
    let app = Echo::start_with("app", &["--fail-ratio", "0.5"]);
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("app", &[&app]);
    m += &route(
        "r",
        "  rules:\n  - backendRefs: [{name: app, port: 80}]\n    retry: {codes: [503], attempts: 5}\n",
    );
    let gw = Gateway::start(&m);

    let mut s = raw::connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let requests: Vec<String> = (0..10).flat_map(|_| forged_h1("h", "/")).collect();
    for got in h1_exchanges(&mut s, &requests) {
        assert_eq!(seen(&got), None, "{}", got.text());
    }
    assert!(
        gw.metric("weir_retries_total{") >= 1.0,
        "no request was retried; the test proves nothing"
    );

    // A WebSocket upgrade with a forged identity: the echo's 101 reports none.
    let mut ws = raw::connect(port);
    ws.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Failures on purpose off, so the upgrade is not answered 503.
    let (status, _) = blocking_post(app.addr, "/__echo/fail?ratio=0").unwrap();
    assert_eq!(status, 200);
    ws.write_all(
        format!("GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade, x-weir-caller-identity\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Weir-Caller-Identity: {FORGED}\r\nx-weir-caller-identity: {FORGED}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let got = raw::read_until(&mut ws, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
    assert_eq!(got.statuses(), [101], "{}", got.text());
    assert_eq!(seen(&got), None);
    ws.write_all(b"ping").unwrap();
    let echoed = raw::read_until(&mut ws, |b| b.ends_with(b"ping"));
    assert!(
        echoed.bytes.ends_with(b"ping"),
        "the upgraded stream carries bytes"
    );

    assert_eq!(
        app.count("with_caller_identity"),
        0,
        "a backend got a client's identity"
    );
}

/// A client config presenting `svid` that accepts only the gateway's SPIFFE ID.
fn mesh_client(ca: &Ca, svid: &Svid, alpn: &[u8]) -> rustls::ClientConfig {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = ServerVerifier::new(Arc::new(roots), Allow::new([GATEWAY_ID])).unwrap();
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(svid.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mesh_sends_only_the_verified_identity_and_egress_gets_none() {
    let app = Echo::start("app");
    let partner = Echo::start("partner");
    let dns = Dns::start("partner.example.test", 60, std::net::Ipv4Addr::LOCALHOST).await;
    let ca = Ca::init("cluster.local", 1).unwrap();
    let gw_svid = ca.issue("weir-system", "weir-gateway", 1).unwrap();
    let port = free_port();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let mut m = format!(
        "{CLASS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: mesh, annotations: {{weir.dev/mesh: \"true\"}}}}\nspec:\n  gatewayClassName: weir\n  tls:\n    frontend:\n      default:\n        validation: {{caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: mesh-ca}}]}}\n  listeners:\n  - {{name: mesh, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: gateway-svid}}]}}, allowedRoutes: {{namespaces: {{from: All}}}}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: mesh-ca}}\ndata:\n  ca.crt: |\n{}",
        indent(&ca.cert_pem)
    );
    m += &tls_secret("gateway-svid", &gw_svid.cert_pem, &gw_svid.key_pem);
    m += &service("app", &[&app]);
    // Egress: an ExternalName Service the mesh route sends /partner to, resolved by DNS.
    m += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: partner}}\nspec:\n  type: ExternalName\n  externalName: partner.example.test\n  ports: [{{name: http, port: {}}}]\n",
        partner.addr.port()
    );
    m += &format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app-mesh}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: app}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /partner}}}}]\n    backendRefs: [{{name: partner, port: {}}}]\n  - backendRefs: [{{name: app, port: 80}}]\n",
        partner.addr.port()
    );
    let resolver = dns.addr.to_string();
    let gw = Gateway::start_with(&m, &["--resolver", &resolver]);
    let web = ca.issue("web", "frontend", 1).unwrap();
    let verified = "spiffe://cluster.local/ns/web/sa/frontend";
    let host = "app.default.svc.cluster.local";

    // HTTP/1.1: whatever the client adds, the callee gets exactly the verified ID.
    let mut tls = raw::tls(port, "weir-gateway", mesh_client(&ca, &web, b"http/1.1"));
    for got in h1_exchanges(&mut tls, &forged_h1(host, "/")) {
        assert_eq!(got.statuses(), [200], "{}\n{}", got.text(), gw.log());
        assert_eq!(seen(&got).as_deref(), Some(verified));
    }
    // Egress: an outside API gets no identity at all, the verified one included.
    for got in h1_exchanges(&mut tls, &forged_h1(host, "/partner")) {
        assert_eq!(got.statuses(), [200], "{}", got.text());
        assert!(
            got.text().contains("x-echo-service: partner"),
            "{}",
            got.text()
        );
        assert_eq!(seen(&got), None);
    }
    // HTTP/2.
    let h2 = tls_connect(port, "weir-gateway", mesh_client(&ca, &web, b"h2")).await;
    assert_eq!(
        h2_get(h2, host, &forged_h2()).await,
        (200, Some(verified.to_string()))
    );
    assert_eq!(
        partner.count("with_caller_identity"),
        0,
        "egress got an identity"
    );
}
