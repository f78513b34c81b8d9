//! Egress through an ExternalName Service with real DNS over loopback: a tiny authoritative
//! server (`--resolver`) answers `api.example.test` with a 1 s TTL. Traffic moves when the
//! answer changes, and keeps flowing to the last good address when the server goes away.
//! The origins speak HTTPS with their own CA, as a third-party API would.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use support::origin::{Dns, Origin};
use support::*;

const NAME: &str = "api.example.test";

fn manifests(port: u16, origin_port: u16, pki: &Pki) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: api}}\nspec:\n  type: ExternalName\n  externalName: {NAME}\n  ports: [{{name: https, port: {origin_port}}}]\n"
    );
    m += &format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: api-tls}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: api}}]\n  validation:\n    hostname: {NAME}\n    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: api-ca}}]\n"
    );
    m += &pki.ca_config_map("api-ca");
    m += &route(
        "r",
        &format!("  rules:\n  - backendRefs: [{{name: api, port: {origin_port}}}]\n"),
    );
    m
}

fn metric(gw: &Gateway, line_prefix: &str) -> f64 {
    let (_, body) = gw.admin_get("/metrics").expect("/metrics answers");
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn origin_of(port: u16) -> (u16, String) {
    let r = get(port, "shop.example.com", "/", &[]).await;
    let origin = r
        .headers
        .get("x-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (r.status, origin)
}

#[tokio::test(flavor = "multi_thread")]
#[allow(clippy::print_stderr)] // how soon traffic moved is reported for the record
async fn external_names_follow_the_dns_ttl_and_outlive_a_dns_outage() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf(&[NAME]);
    // Two origins on one port, at two loopback addresses: the DNS answer picks one.
    let origin_port = free_port();
    let at = |ip: [u8; 4]| SocketAddr::from((ip, origin_port));
    let _a = Origin::start(at([127, 0, 0, 1]), "a", &cert, &key, None).await;
    let _b = Origin::start(at([127, 0, 0, 2]), "b", &cert, &key, None).await;
    let dns = Dns::start(NAME, 1, Ipv4Addr::new(127, 0, 0, 1)).await;

    let port = free_port();
    let resolver = dns.addr.to_string();
    let gw = Gateway::start_with(
        &manifests(port, origin_port, &pki),
        &["--resolver", &resolver],
    );
    // The first request waits for the first lookup rather than answering 503.
    assert_eq!(origin_of(port).await, (200, "a".into()), "{}", gw.log());
    let addresses = format!("weir_dns_addresses{{name=\"{NAME}\"}}");
    assert_eq!(metric(&gw, &addresses), 1.0);
    // The service graph tells this backend from a Service by its info series.
    let info = format!(
        "weir_egress_backend_info{{backend=\"default/api:{origin_port}\",name=\"{NAME}\"}}"
    );
    assert_eq!(metric(&gw, &info), 1.0);

    dns.set(Ipv4Addr::new(127, 0, 0, 2));
    let changed = Instant::now();
    loop {
        let (status, origin) = origin_of(port).await;
        assert_eq!(status, 200);
        if origin == "b" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "traffic still goes to a; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved_after = changed.elapsed();
    eprintln!("traffic moved {moved_after:?} after the DNS answer changed (TTL 1 s)");

    // The name server goes away: lookups fail, the last good address keeps serving.
    drop(dns);
    let failures = format!("weir_dns_resolution_failures_total{{name=\"{NAME}\"}}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&gw, &failures) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no failed lookup counted; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..5 {
        assert_eq!(origin_of(port).await, (200, "b".into()));
    }
    assert_eq!(metric(&gw, &addresses), 1.0);
    assert!(gw.log().contains("DNS lookup failed"), "{}", gw.log());
}
