//! The HTTPS edge: certificates by SNI across listeners (wildcards included), ALPN, TLS
//! versions, 421 for HTTP/2 connection reuse across listeners, live certificate rotation,
//! and the shipped edge example.

mod support;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use support::*;
use tokio_rustls::TlsConnector;

fn https_listener(name: &str, port: u16, host: &str, secret: &str) -> String {
    format!(
        "{{name: {name}, port: {port}, protocol: HTTPS, hostname: \"{host}\", tls: {{certificateRefs: [{{name: {secret}}}]}}, allowedRoutes: {{namespaces: {{from: All}}}}}}"
    )
}

struct Edge {
    pki: Pki,
    port: u16,
    gw: Gateway,
    app: Echo,
}

impl Edge {
    /// Three HTTPS listeners on one port, each with its own certificate.
    fn manifests(pki: &Pki, port: u16, app: &Echo) -> String {
        let mut m = gateway(&[
            https_listener("wild", port, "*.example.com", "wild-cert"),
            https_listener("shop", port, "shop.example.com", "shop-cert"),
            https_listener("api", port, "api.other.org", "api-cert"),
        ]);
        m += &pki.secret("wild-cert", &["*.example.com"]);
        m += &pki.secret("shop-cert", &["shop.example.com"]);
        m += &pki.secret("api-cert", &["api.other.org"]);
        m += &service("app", &[app]);
        m += &route("r", "  rules:\n  - backendRefs: [{name: app, port: 80}]\n");
        m
    }
}

fn edge() -> Edge {
    let pki = Pki::new();
    let app = Echo::start("app");
    let port = free_port();
    let gw = Gateway::start(&Edge::manifests(&pki, port, &app));
    Edge { pki, port, gw, app }
}

/// The names in the certificate the server presented.
fn peer_names(resp: &reqwest::Response) -> Vec<String> {
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    let der = info.peer_certificate().expect("a certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_chosen_by_sni_across_listeners() {
    let e = edge();
    for (host, want) in [
        ("a.example.com", "DNSName(*.example.com)"),
        ("shop.example.com", "DNSName(shop.example.com)"),
        ("api.other.org", "DNSName(api.other.org)"),
    ] {
        let c = e.pki.client(&[host], e.port, false);
        let resp = c
            .get(format!("https://{host}:{}/", e.port))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
        assert_eq!(peer_names(&resp), [want], "{host}");
    }
    // A name no listener serves gets no certificate at all.
    let c = e.pki.client(&["nobody.net"], e.port, false);
    assert!(
        c.get(format!("https://nobody.net:{}/", e.port))
            .send()
            .await
            .is_err()
    );
    // `*.example.com` does not cover example.com.
    let c = e.pki.client(&["example.com"], e.port, false);
    assert!(
        c.get(format!("https://example.com:{}/", e.port))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_offers_h2_and_http11_over_tls_12_and_13() {
    let e = edge();
    let url = format!("https://a.example.com:{}/", e.port);
    let h2 = e
        .pki
        .client(&["a.example.com"], e.port, true)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let h1 = e
        .pki
        .client(&["a.example.com"], e.port, false)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);

    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cfg = e.pki.client_config(&[b"http/1.1"], &[version]);
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", e.port))
            .await
            .unwrap();
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("a.example.com").unwrap(), tcp)
            .await
            .unwrap_or_else(|err| panic!("{version:?} handshake: {err}"));
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    }
    // Older versions are refused (checked with the openssl CLI when it is installed).
    if let Ok(out) = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_1",
            "-connect",
            &format!("127.0.0.1:{}", e.port),
            "-servername",
            "a.example.com",
        ])
        .stdin(std::process::Stdio::null())
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("no peer certificate available"),
            "TLS 1.1 must not be negotiated: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_requests_for_another_listener_get_421() {
    let e = edge();
    let cfg = e.pki.client_config(&[b"h2"], rustls::ALL_VERSIONS);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", e.port))
        .await
        .unwrap();
    // The connection is for shop.example.com; its certificate would not even cover
    // a.example.com, but a client coalescing connections must still be told to go away.
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("shop.example.com").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut status = |authority: &str| {
        let req = http::Request::get(format!("https://{authority}/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let fut = send.send_request(req);
        async move {
            let resp = fut.await.unwrap();
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        }
    };
    assert_eq!(status("shop.example.com").await, 200);
    assert_eq!(
        status("a.example.com").await,
        421,
        "belongs to the wildcard listener"
    );
    assert_eq!(status("api.other.org").await, 421);
    assert_eq!(
        status("shop.example.com:443").await,
        200,
        "the port does not matter"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_without_a_restart() {
    let e = edge();
    let c = || e.pki.client(&["api.other.org"], e.port, false);
    let url = format!("https://api.other.org:{}/", e.port);
    let first = c().get(&url).send().await.unwrap();
    let serial = |r: &reqwest::Response| {
        let der = r
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .unwrap()
            .peer_certificate()
            .unwrap()
            .to_vec();
        x509_parser::parse_x509_certificate(&der)
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    let old = serial(&first);
    // Every certificate is issued anew, as cert-manager's renewal would.
    e.gw.write_and_wait(&Edge::manifests(&e.pki, e.port, &e.app));
    let second = c().get(&url).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_ne!(
        serial(&second),
        old,
        "new handshakes get the new certificate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_edge_example_redirects_to_https_and_adds_hsts() {
    install_crypto();
    let app = Echo::start("storefront");
    let (http_port, https_port) = (free_port(), free_port());
    // The example's certificate is made at install time (the README's `weir-controller
    // tls-secret`), never committed: here, by a throwaway CA the client trusts.
    let pki = Pki::new();
    let (leaf, key) = pki.leaf(&["example.com", "*.example.com"]);
    let secret = tls_secret("example-com-tls", &leaf, &key).replace(
        "metadata: {name: example-com-tls}",
        "metadata: {name: example-com-tls, namespace: edge}",
    );
    let m = example("edge", &["gateway.yaml", "storefront.yaml"]) + &secret;
    let m = m
        .replace(
            "port: 80\n    protocol: HTTP",
            &format!("port: {http_port}\n    protocol: HTTP"),
        )
        .replace("port: 443", &format!("port: {https_port}"));
    // In a cluster the Deployment's Pods fill the EndpointSlice; here it is written by hand.
    let m = format!(
        "{m}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: storefront-x, namespace: shop, labels: {{kubernetes.io/service-name: storefront}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        app.addr.port()
    );
    let _gw = Gateway::start(&m);

    let r = get(http_port, "www.example.com", "/cart?id=7", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "https://www.example.com/cart?id=7");

    let cert_pem = leaf.clone();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(Pinned::client_config(&cert_pem))
        .resolve(
            "www.example.com",
            std::net::SocketAddr::from(([127, 0, 0, 1], https_port)),
        )
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://www.example.com:{https_port}/cart"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    assert_eq!(resp.headers()["x-echo-service"], "storefront");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-forwarded-proto"][0], "https");
}
