//! Outbound end to end, all real processes on loopback: an app-side plain HTTP client →
//! sidecar A (outbound, as `shop/front`) → mTLS + HTTP/2 → sidecar B (inbound, strict,
//! as `pay/payments`) → `weir-echo`. The echo document shows what the destination app saw.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use support::client::{self, Proto, Reply};
use support::{Echo, Pki, Sidecar, eventually, id};

const HEADER: &str = "x-weir-caller-identity";

/// Sidecar B in front of the echo app, and sidecar A's SVID ready to call it.
struct Mesh {
    pki: Pki,
    _app: Echo,
    app_port: u16,
    b: Sidecar,
    b_port: u16,
}

impl Mesh {
    fn start() -> Mesh {
        let pki = Pki::new();
        let app = Echo::start();
        let (b, b_port) = Sidecar::callee(
            &pki.svid("payments", "pay", "payments"),
            app.port,
            &["--allow", &id("shop", "front")],
        );
        Mesh {
            pki,
            app_port: app.port,
            _app: app,
            b,
            b_port,
        }
    }

    /// Sidecar A (`shop/front`) with its outbound port, requiring the upstream to be
    /// `upstream_id`.
    fn caller(&self, upstream_id: &str) -> (Sidecar, u16) {
        Sidecar::caller(
            &self.pki.svid("front", "shop", "front"),
            &format!("127.0.0.1:{}", self.b_port),
            upstream_id,
            &["--allow", "spiffe://weir.test/*"],
        )
    }
}

/// Sends one request with `target` exactly as written on the request line.
async fn raw(port: u16, method: &str, target: &str, host: &str) -> Reply {
    raw_with_body(port, method, target, host, Bytes::new()).await
}

/// [`raw`] with a request body (sent with its `content-length`).
async fn raw_with_body(port: u16, method: &str, target: &str, host: &str, body: Bytes) -> Reply {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(target)
        .header("host", host)
        .header(HEADER, "spiffe://weir.test/ns/x/sa/admin")
        .body(Full::new(body))
        .unwrap();
    let send = async {
        let (parts, body) = sender.send_request(req).await.unwrap().into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            bytes: body,
            trailers: None,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), send)
        .await
        .expect("reply in time")
}

#[tokio::test]
async fn origin_and_absolute_form_reach_the_app_as_the_callers_identity() {
    let mesh = Mesh::start();
    let (a, out) = mesh.caller(&id("pay", "payments"));

    let reply = raw(out, "GET", "/hello?x=1", "payments.pay:8080").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, a.log());
    let doc = reply.json();
    assert_eq!(doc["path"], "/hello?x=1");
    assert_eq!(doc["host"], "payments.pay:8080");
    // B writes A's mTLS identity; the spoofed value the app sent never arrives.
    assert_eq!(reply.seen(HEADER), [id("shop", "front")]);

    let reply = raw(out, "GET", "http://payments.pay:8080/abs", "ignored.test").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let doc = reply.json();
    assert_eq!(doc["path"], "/abs");
    assert_eq!(doc["host"], "payments.pay:8080");
    assert_eq!(reply.seen(HEADER), [id("shop", "front")]);

    // Refused, and the app's developer is told why and what to do instead.
    let reply = raw(out, "CONNECT", "payments.pay:443", "payments.pay:443").await;
    assert_eq!(reply.status, 405, "{}", reply.body);
    for why in ["bypassing the fleet", "plain http://", "BackendTLSPolicy"] {
        assert!(reply.body.contains(why), "{why:?} not in {:?}", reply.body);
    }
    let reply = raw(out, "GET", "https://payments.pay/x", "payments.pay").await;
    assert_eq!(reply.status, 400, "{}", reply.body);

    assert!(eventually(Duration::from_secs(5), || {
        a.metric(
            "weir_sidecar_outbound_requests_total",
            &[("code_class", "2xx")],
        ) == 2.0
            && a.metric(
                "weir_sidecar_outbound_requests_total",
                &[("code_class", "4xx")],
            ) == 2.0
    }));
}

#[tokio::test]
async fn h2c_with_prior_knowledge_reaches_the_app_as_the_callers_identity() {
    let mesh = Mesh::start();
    let (a, out) = mesh.caller(&id("pay", "payments"));
    // As a gRPC client speaks: HTTP/2 from the first byte, no upgrade, :authority only.
    let mut conn = client::plain_with(out, Proto::H2).await.unwrap();
    for path in ["/h2?n=1", "/h2?n=2"] {
        let reply = conn
            .get(path, &[(HEADER, "spiffe://weir.test/ns/x/sa/admin")])
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}\n{}", reply.body, a.log());
        let doc = reply.json();
        assert_eq!(doc["path"], path);
        assert_eq!(doc["host"], "app.test");
        assert_eq!(reply.seen(HEADER), [id("shop", "front")]);
    }
    // Both requests rode the one HTTP/2 connection from the app, and on to B.
    assert_eq!(
        a.metric(
            "weir_sidecar_outbound_requests_total",
            &[("code_class", "2xx")]
        ),
        2.0
    );
    assert_eq!(
        a.metric("weir_sidecar_outbound_upstream_connections_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let mesh = Mesh::start();
    let (a, out) = mesh.caller("spiffe://weir.test/ns/pay/*");
    // Several app connections, several requests each: all on one mTLS connection to B.
    for _ in 0..4 {
        let mut conn = client::plain(out).await.unwrap();
        for _ in 0..5 {
            let reply = conn.get("/n", &[]).await.unwrap();
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    }
    let port = mesh.b_port.to_string();
    let front = id("shop", "front");
    let b_requests = &[("port", port.as_str()), ("peer", front.as_str())];
    assert!(eventually(Duration::from_secs(5), || {
        mesh.b
            .metric("weir_sidecar_inbound_requests_total", b_requests)
            == 20.0
    }));
    let b_conns = mesh
        .b
        .metric("weir_sidecar_inbound_connections_total", &[("port", &port)]);
    assert_eq!(b_conns, 1.0, "B accepted more than one connection");
    assert_eq!(
        a.metric("weir_sidecar_outbound_upstream_connections_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn an_upstream_with_the_wrong_identity_gets_nothing() {
    let mesh = Mesh::start();
    let (a, out) = mesh.caller(&id("pay", "someone-else"));
    let reply = raw(out, "GET", "/secret", "payments.pay:8080").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.body, "upstream unavailable\n");
    assert!(
        eventually(Duration::from_secs(5), || a
            .log()
            .contains("is not allowed")),
        "{}",
        a.log()
    );
    assert_eq!(
        a.metric("weir_sidecar_outbound_upstream_errors_total", &[]),
        1.0
    );
    assert_eq!(
        a.metric(
            "weir_sidecar_outbound_requests_total",
            &[("code_class", "5xx")]
        ),
        1.0
    );
    let port = mesh.b_port.to_string();
    let b_requests = mesh
        .b
        .metric("weir_sidecar_inbound_requests_total", &[("port", &port)]);
    assert_eq!(b_requests, 0.0, "the request must not reach B");
}

/// A request body larger than the HTTP/2 stream's flow-control window crosses the mesh
/// whole: the caller's sidecar sends it as the callee's grants capacity.
#[tokio::test]
async fn request_bodies_larger_than_the_window_arrive_whole() {
    let mesh = Mesh::start();
    let (_a, out) = mesh.caller("spiffe://weir.test/ns/pay/*");
    for size in [1, 100_000, 5 * 1024 * 1024 + 7] {
        let body = Bytes::from(vec![b'x'; size]);
        let reply = raw_with_body(out, "POST", "/upload", "payments.pay:8080", body).await;
        assert_eq!(reply.status, 200, "{size} bytes: {}", reply.body);
        let doc: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(doc["body_bytes"], size, "{doc}");
        assert_eq!(doc["method"], "POST");
    }
}

/// The callee's sidecar restarts on its port: the caller's sidecar notices the connection
/// is gone (GOAWAY, then the close) and opens a new one, without a failed request.
#[tokio::test]
async fn a_restarted_upstream_gets_a_new_connection() {
    let mut mesh = Mesh::start();
    let (a, out) = mesh.caller("spiffe://weir.test/ns/pay/*");
    let mut conn = client::plain(out).await.unwrap();
    assert_eq!(conn.get("/before", &[]).await.unwrap().status, 200);

    // SIGTERM: B drains (GOAWAY to A) and exits once idle; a new B takes its port.
    mesh.b.sigterm();
    assert!(
        mesh.b.wait_exit(Duration::from_secs(10)).is_some(),
        "B did not exit"
    );
    let inbound = format!("{}={},strict", mesh.b_port, mesh.app_port);
    mesh.b = Sidecar::start(
        &mesh.pki.svid("payments", "pay", "payments"),
        &["--inbound", &inbound, "--allow", &id("shop", "front")],
    );
    for i in 0..3 {
        let reply = conn.get(&format!("/after/{i}"), &[]).await.unwrap();
        assert_eq!(
            reply.status,
            200,
            "request {i} after the restart: {}\ncaller's log:\n{}",
            reply.body,
            a.log()
        );
    }
    assert_eq!(
        a.metric("weir_sidecar_outbound_upstream_connections_total", &[]),
        2.0
    );
}

/// A HEAD answer declares the length of a body it does not carry: the app gets the
/// length, no body, and no wait for one.
#[tokio::test]
async fn head_requests_get_the_length_without_a_body() {
    let mesh = Mesh::start();
    let (_a, out) = mesh.caller("spiffe://weir.test/ns/pay/*");
    let head = raw(out, "HEAD", "/h", "payments.pay:8080").await;
    assert_eq!(head.status, 200);
    assert!(head.bytes.is_empty(), "{:?}", head.body);
    // The echo's document for this HEAD request, which it did not send.
    let length = head
        .headers
        .get("content-length")
        .map(|v| v.to_str().unwrap());
    assert!(
        length.is_some_and(|l| l.parse::<u64>().unwrap() > 100),
        "{length:?}"
    );
    let get = raw(out, "GET", "/h", "payments.pay:8080").await;
    assert_eq!(get.status, 200, "{}", get.body);
}
