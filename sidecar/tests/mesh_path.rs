//! The whole mesh path over loopback, every hop a real process and every handshake real:
//! app → sidecar A (outbound, `shop/front`) → mTLS, HTTP/2 → `weir-gateway` (mesh listener,
//! GAMMA routing) → mTLS → sidecar B (inbound, STRICT, `pay/payments`) → `weir-echo`.
//!
//! The fleet checks A's SVID against the mesh CA (Gateway `spec.tls.frontend`), presents its
//! own SVID to B (`spec.tls.backend.clientCertificateRef`), and verifies B's SPIFFE ID
//! (BackendTLSPolicy, URI subjectAltName). B lets only the fleet in, and believes the
//! caller identity the fleet passes on.

mod support;

use std::time::{Duration, Instant};
use support::client::{self, Proto};
use support::mesh::{MeshPath, gateway_id};
use support::{Sidecar, eventually, id};
use weir_loadtest::otlp::Receiver;
use weir_loadtest::procs;

const HEADER: &str = "x-weir-caller-identity";

/// One trace across the whole path: the app's span, then sidecar A's (CLIENT), the
/// fleet's (SERVER), sidecar B's (SERVER), and the callee app gets B's as its parent.
#[tokio::test(flavor = "multi_thread")]
async fn one_trace_shows_every_hop_of_the_mesh_path() {
    let otlp = Receiver::start().await;
    let url = otlp.url();
    let path = MeshPath::start_with(&["--otlp-endpoint", &url], &[], |_| String::new());
    let (trace, app_span) = ("5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7");
    let sent = format!("00-{trace}-{app_span}-01");
    let mut app = client::plain(path.out).await.unwrap();
    let reply = app
        .get_uri("http://payments.pay:8080/traced", &[("traceparent", &sent)])
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}\ngateway:\n{}",
        reply.body,
        path.gateway_log()
    );
    let got = reply.seen("traceparent");
    assert_eq!(got.len(), 1, "{got:?}");
    let parts: Vec<&str> = got[0].split('-').collect();
    assert_eq!((parts[1], parts[3]), (trace, "01"), "{got:?}");

    // Each hop's span, found by its parent: the chain must be unbroken.
    let child_of = |parent: String, service: &'static str, kind: i32| {
        let otlp = &otlp;
        async move {
            let s = otlp
                .wait(
                    &format!("{service} under {parent}"),
                    Duration::from_secs(20),
                    |s| s.trace_id == trace && s.parent_span_id == parent,
                )
                .await;
            assert_eq!((s.service.as_str(), s.kind), (service, kind), "{s:#?}");
            s
        }
    };
    let a = child_of(app_span.to_string(), "weir-sidecar", 3).await;
    assert_eq!(a.attributes["weir.direction"], "outbound");
    assert_eq!(a.attributes["server.address"], "payments.pay:8080");
    let fleet = child_of(a.span_id.clone(), "weir-gateway", 2).await;
    assert_eq!(fleet.attributes["weir.caller"], id("shop", "front"));
    assert_eq!(fleet.attributes["http.response.status_code"], "200");
    let b = child_of(fleet.span_id.clone(), "weir-sidecar", 2).await;
    assert_eq!(b.attributes["weir.direction"], "inbound");
    assert_eq!(b.attributes["weir.peer"], gateway_id());
    assert_eq!(parts[2], b.span_id, "the app's parent is B's span");
    // In time order too: each hop starts after its caller. (Ends are not compared: a
    // sidecar's span ends at the response head, the fleet's once the body is sent.)
    for (outer, inner) in [(&a, &fleet), (&fleet, &b)] {
        assert!(
            outer.start_unix_nano <= inner.start_unix_nano,
            "{outer:#?}\n{inner:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_reaches_another_through_both_sidecars_and_the_fleet() {
    let path = MeshPath::start();
    // What an app with HTTP_PROXY sends: absolute-form, plain HTTP, and a forged identity.
    let mut app = client::plain(path.out).await.unwrap();
    for i in 0..20 {
        let forged = [(HEADER, "spiffe://weir.test/ns/x/sa/admin")];
        let reply = app
            .get_uri(&format!("http://payments.pay:8080/call/{i}"), &forged)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "call {i}: {e}\nA:\n{}\ngateway:\n{}",
                    path.a.log(),
                    path.gateway_log()
                )
            });
        assert_eq!(
            reply.status,
            200,
            "{}\nA:\n{}\ngateway:\n{}",
            reply.body,
            path.a.log(),
            path.gateway_log()
        );
        let doc = reply.json();
        assert_eq!(doc["path"], format!("/call/{i}"));
        // The fleet knew A by its SVID and told B, which believes only the fleet.
        assert_eq!(reply.seen(HEADER), [id("shop", "front")]);
    }
    // Each edge of the service graph is a series in the fleet's metrics.
    let (_, metrics) = procs::http_get(path.gateway.admin, "/metrics").unwrap();
    let series = procs::metric_with(
        &metrics,
        "weir_requests_total",
        &[
            ("source", &id("shop", "front")),
            ("destination", "pay/payments:8080"),
            ("code", "200"),
        ],
    );
    assert_eq!(series, Some(20.0), "{metrics}");
    // B is STRICT and lets only the fleet in: plaintext, and A going around the fleet, fail.
    let plaintext = match client::plain(path.b_port).await {
        Ok(mut c) => c.get("/", &[]).await.map(|r| r.status),
        Err(e) => Err(e),
    };
    assert!(plaintext.is_err(), "{plaintext:?}");
    let a_svid = path.pki.dir.path().join("front");
    let around = client::mtls_get(path.b_port, &a_svid, &id("pay", "payments"), &[]).await;
    assert!(around.is_err(), "{:?}", around.map(|r| r.status));
}

/// A gRPC app calls another through both sidecars and the fleet: HTTP/2 on every hop, so
/// the callee's status reaches the caller in the trailers.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_crosses_the_mesh_with_its_trailers() {
    let path = MeshPath::start();
    // gRPC clients speak h2c to their sidecar.
    let mut app = client::plain_with(path.out, Proto::H2).await.unwrap();
    for i in 0..5 {
        let reply = app
            .grpc(
                "payments.pay:9090",
                &format!("/pay.Ledger/Post{i}"),
                b"1 EUR",
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "call {i}: {e}\nA:\n{}\ngateway:\n{}\nB:\n{}",
                    path.a.log(),
                    path.gateway_log(),
                    path.b.log()
                )
            });
        let status = reply.trailers.as_ref().and_then(|t| t.get("grpc-status"));
        assert_eq!(
            status.map(|v| v.as_bytes()),
            Some(&b"0"[..]),
            "{reply:?}\ngateway:\n{}",
            path.gateway_log()
        );
        assert!(!reply.body.is_empty(), "{reply:?}\nB:\n{}", path.b.log());
        let doc = reply.json();
        assert_eq!(doc["proto"], "HTTP/2.0", "{doc}");
        assert_eq!(doc["path"], format!("/pay.Ledger/Post{i}"));
        assert_eq!(reply.seen(HEADER), [id("shop", "front")]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_every_svid_on_the_path_under_load_fails_no_request() {
    let path = MeshPath::start();
    let out = path.out;
    let stop = Instant::now() + Duration::from_secs(6);
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let mut app = client::plain(out).await.unwrap();
        while Instant::now() < stop {
            match app.get_uri("http://payments.pay:8080/", &[]).await {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => failed.push(format!("{}: {}", r.status, r.body)),
                Err(e) => {
                    failed.push(e);
                    app = client::plain(out).await.unwrap();
                }
            }
        }
        (ok, failed)
    });
    let serial = |s: &Sidecar| s.metric("weir_sidecar_identity_reloads_total", &[]);
    let (a0, b0) = (serial(&path.a), serial(&path.b));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        path.pki.svid("front", "shop", "front");
        path.pki.svid("payments", "pay", "payments");
    }
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests in 6 s");
    // The fleet checks each new certificate of B's names with a handshake of its own, as
    // itself: B refused no handshake on the way.
    for reason in ["handshake", "identity", "no_identity"] {
        let refused = path
            .b
            .metric("weir_sidecar_inbound_refused_total", &[("reason", reason)]);
        assert_eq!(refused, 0.0, "{reason}\n{}", path.b.log());
    }
    // Both sidecars picked the new SVIDs up while the calls went on.
    assert!(eventually(Duration::from_secs(5), || serial(&path.a) > a0
        && serial(&path.b) > b0));
}
