//! Inbound mTLS end to end: a real `weir-sidecar` in front of a real `weir-echo` app, with
//! clients holding SVIDs from a test CA. weir-echo answers with the request it received,
//! so each test reads what the app saw.

mod support;

use std::path::PathBuf;
use std::time::Duration;
use support::client::{self, Proto, Reply};
use support::{Echo, Pki, Sidecar, eventually, free_port, id};

const GATEWAY: (&str, &str) = ("weir-system", "gateway");
const FRONT: (&str, &str) = ("shop", "front");
const HEADER: &str = "x-weir-caller-identity";

/// A meshed pod `shop/web`: the app, its sidecar on `port`, and an SVID directory per
/// client: `front` and `gateway` are allowed (the gateway is also an identity setter),
/// `intruder` has a valid SVID from the same CA but is not allowed.
struct Pod {
    pki: Pki,
    app: Option<Echo>,
    sidecar: Sidecar,
    port: u16,
    me: String,
}

impl Pod {
    fn start(mode: &str) -> Pod {
        let pki = Pki::new();
        let identity = pki.svid("web", "shop", "web");
        let app = Echo::start();
        let port = free_port();
        let sidecar = Sidecar::start(
            &identity,
            &[
                "--inbound",
                &format!("{port}={},{mode}", app.port),
                "--allow",
                "spiffe://weir.test/ns/shop/*",
                "--allow",
                &id(GATEWAY.0, GATEWAY.1),
                "--identity-setter",
                &id(GATEWAY.0, GATEWAY.1),
            ],
        );
        Pod {
            pki,
            app: Some(app),
            sidecar,
            port,
            me: id("shop", "web"),
        }
    }

    fn client(&self, (ns, sa): (&str, &str)) -> PathBuf {
        self.pki.svid(sa, ns, sa)
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let port = self.port.to_string();
        let mut all = vec![("port", port.as_str())];
        all.extend_from_slice(labels);
        self.sidecar.metric(name, &all)
    }
}

#[tokio::test]
async fn strict_admits_allowed_peers_and_names_them_to_the_app() {
    let pod = Pod::start("strict");
    let front = pod.client(FRONT);
    for proto in [Proto::H1, Proto::H2] {
        let mut conn = client::mtls(pod.port, &front, &pod.me, proto)
            .await
            .unwrap();
        for _ in 0..2 {
            let reply = conn.get("/hello?x=1", &[]).await.unwrap();
            assert_eq!(reply.status, 200, "{proto:?}: {}", reply.body);
            let doc = reply.json();
            assert_eq!(doc["path"], "/hello?x=1");
            assert_eq!(
                doc["host"], "app.test",
                "{proto:?}: the app sees the original host"
            );
            assert_eq!(doc["proto"], "HTTP/1.1", "the hop to the app is HTTP/1.1");
            assert_eq!(reply.seen(HEADER), [id(FRONT.0, FRONT.1)]);
        }
    }
    let requests = [("peer", id(FRONT.0, FRONT.1))];
    let requests: Vec<_> = requests.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        pod.metric("weir_sidecar_inbound_requests_total", &requests),
        4.0
    );
}

#[tokio::test]
async fn strict_refuses_every_plaintext_connection() {
    let pod = Pod::start("strict");
    for i in 0..50 {
        let result = match client::plain(pod.port).await {
            Ok(mut conn) => conn.get("/", &[]).await,
            Err(e) => Err(e),
        };
        assert!(
            result.is_err(),
            "plaintext attempt {i} got through: {result:?}"
        );
    }
    let refused = [("reason", "plaintext")];
    // Every attempt failed above. The count may miss one under a loaded CI machine (seen
    // once as 49 of 50 while the whole suite ran; not reproduced alone): an attempt whose
    // bytes never reached the sidecar is refused without being plaintext it saw.
    assert!(
        eventually(Duration::from_secs(5), || {
            (48.0..=50.0).contains(&pod.metric("weir_sidecar_inbound_refused_total", &refused))
        }),
        "refusals counted: {}",
        pod.metric("weir_sidecar_inbound_refused_total", &refused)
    );
    assert_eq!(pod.metric("weir_sidecar_inbound_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn unknown_identities_are_refused_at_the_handshake() {
    let pod = Pod::start("strict");
    let intruder_id = id("other", "intruder");
    let intruder = pod.client(("other", "intruder"));
    for _ in 0..3 {
        let result = client::mtls_get(pod.port, &intruder, &pod.me, &[]).await;
        assert!(result.is_err(), "intruder got through: {result:?}");
    }
    assert!(eventually(Duration::from_secs(5), || {
        pod.metric(
            "weir_sidecar_inbound_refused_total",
            &[("reason", "identity")],
        ) == 3.0
    }));
    let log = pod.sidecar.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&intruder_id)),
        "the refusal names the peer; log:\n{log}"
    );

    // An SVID for an allowed name from another CA fails the chain check instead.
    let foreign = Pki::new();
    let stranger = foreign.svid("front", FRONT.0, FRONT.1);
    let result = client::mtls_get(pod.port, &stranger, &pod.me, &[]).await;
    assert!(result.is_err(), "a foreign CA got through: {result:?}");
    assert!(eventually(Duration::from_secs(5), || {
        pod.metric(
            "weir_sidecar_inbound_refused_total",
            &[("reason", "handshake")],
        ) == 1.0
    }));
    assert_eq!(pod.metric("weir_sidecar_inbound_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn permissive_forwards_plaintext_without_any_identity() {
    let pod = Pod::start("permissive");
    let spoof = [(HEADER, "spiffe://weir.test/ns/shop/sa/admin")];
    let mut conn = client::plain(pod.port).await.unwrap();
    for _ in 0..2 {
        let reply = conn.get("/", &spoof).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.seen(HEADER).is_empty(), "{}", reply.body);
    }
    assert_eq!(pod.metric("weir_sidecar_inbound_plaintext_total", &[]), 1.0);
    let plaintext = [("peer", "plaintext")];
    assert_eq!(
        pod.metric("weir_sidecar_inbound_requests_total", &plaintext),
        2.0
    );

    // mTLS still works on a permissive port, with the identity.
    let reply = client::mtls_get(pod.port, &pod.client(FRONT), &pod.me, &spoof)
        .await
        .unwrap();
    assert_eq!(reply.seen(HEADER), [id(FRONT.0, FRONT.1)]);
    assert_eq!(pod.metric("weir_sidecar_inbound_refused_total", &[]), 0.0);
}

#[tokio::test]
async fn only_identity_setters_choose_the_caller_identity() {
    let pod = Pod::start("strict");
    let customer = id("shop", "customer");
    let claim = [(HEADER, customer.as_str())];

    // Any other peer is named by its own certificate, whatever it claims.
    let reply = client::mtls_get(pod.port, &pod.client(FRONT), &pod.me, &claim)
        .await
        .unwrap();
    assert_eq!(reply.seen(HEADER), [id(FRONT.0, FRONT.1)]);

    // The gateway relays its caller's identity, and sets none when it has none.
    let gateway = pod.client(GATEWAY);
    let mut conn = client::mtls(pod.port, &gateway, &pod.me, Proto::H2)
        .await
        .unwrap();
    let reply = conn.get("/", &claim).await.unwrap();
    assert_eq!(reply.seen(HEADER), [customer]);
    let reply = conn.get("/", &[]).await.unwrap();
    assert!(reply.seen(HEADER).is_empty(), "{}", reply.body);
}

/// gRPC reaches the app over HTTP/2 (h2c), with its trailers both ways, where other
/// requests on the same connection reach it over HTTP/1.1: gRPC cannot cross HTTP/1.1.
#[tokio::test]
async fn grpc_reaches_the_app_over_http2_with_its_trailers() {
    let pod = Pod::start("strict");
    let front = pod.client(FRONT);
    let mut conn = client::mtls(pod.port, &front, &pod.me, Proto::H2)
        .await
        .expect("mTLS over HTTP/2");

    let reply = conn
        .grpc("app.test", "/shop.Cart/Add", b"item")
        .await
        .expect("a gRPC answer");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );
    let status = reply.trailers.as_ref().and_then(|t| t.get("grpc-status"));
    assert_eq!(status.map(|v| v.as_bytes()), Some(&b"0"[..]), "{reply:?}");
    let seen = reply.json();
    assert_eq!(seen["proto"], "HTTP/2.0", "{seen}");
    assert_eq!(seen["path"], "/shop.Cart/Add");
    // The caller's own authority, not the app's address; and the caller's identity.
    assert_eq!(seen["host"], "app.test", "{seen}");
    assert_eq!(reply.seen("te"), ["trailers"]);
    assert_eq!(reply.seen(HEADER), [id(FRONT.0, FRONT.1)]);

    let plain = conn.get("/plain", &[]).await.expect("a plain answer");
    assert_eq!(plain.json()["proto"], "HTTP/1.1");
    assert_eq!(plain.json()["host"], "app.test");
}

/// The sidecar keeps its connections to the app alive: one per request in flight, each
/// reused once its response has been read (an empty one too), and a restarted app gets
/// new ones without a failed request.
#[tokio::test]
async fn app_connections_are_kept_alive_and_replaced_when_the_app_restarts() {
    let mut pod = Pod::start("strict");
    let front = pod.client(FRONT);
    let mut a = client::mtls(pod.port, &front, &pod.me, Proto::H2)
        .await
        .unwrap();
    let mut b = client::mtls(pod.port, &front, &pod.me, Proto::H2)
        .await
        .unwrap();
    let conn = |r: &Reply| {
        assert_eq!(r.status, 200, "{r:?}");
        r.headers["x-echo-connection"].to_str().unwrap().to_owned()
    };

    let first = conn(&a.get("/1", &[]).await.unwrap());
    assert_eq!(conn(&a.get("/2", &[]).await.unwrap()), first);
    let empty = a.get("/status/204", &[]).await.unwrap();
    assert_eq!(empty.status, 204);
    assert_eq!(empty.headers["x-echo-connection"], first.as_str());
    assert_eq!(conn(&b.get("/3", &[]).await.unwrap()), first, "after a 204");

    // Two requests at once need two connections, and both stay for what follows.
    let (x, y) = tokio::join!(
        a.get("/slow?delay=300ms", &[]),
        b.get("/slow?delay=300ms", &[])
    );
    let both = [conn(&x.unwrap()), conn(&y.unwrap())];
    assert_ne!(both[0], both[1]);
    assert!(both.contains(&first), "{both:?} vs {first}");
    for i in 0..4 {
        let again = conn(&a.get(&format!("/again/{i}"), &[]).await.unwrap());
        assert!(both.contains(&again), "a third connection: {again}");
    }

    // The app restarts on its port: the pooled connections died with it.
    let port = pod.app.take().unwrap().port;
    pod.app = Some(Echo::start_on(port));
    for i in 0..3 {
        let reply = b.get(&format!("/restarted/{i}"), &[]).await.unwrap();
        assert_eq!(
            reply.status, 200,
            "request {i} after the restart: {reply:?}"
        );
    }
}
