//! Proxy hygiene through a real `weir-gateway`: upstream keep-alive, forwarding headers and
//! trace context, hop-by-hop headers, WebSocket, h2c backends, and GRPCRoute over HTTP/2.

mod support;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{Read, Write};
use std::time::Duration;
use support::*;

fn simple(port: u16, app: &Echo, port_extra: &str) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service_with("app", &[app], port_extra);
    m += &route("r", "  rules:\n  - backendRefs: [{name: app, port: 80}]\n");
    m
}

async fn echo_stats(echo: &Echo) -> serde_json::Value {
    reqwest::get(format!("http://{}/__echo/stats", echo.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_pooled() {
    install_crypto();
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start(&simple(port, &app, ""));
    // Forty requests, each on a new client connection: the upstream side is reused.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = get(port, "h", "/", &[]).await;
        seen.insert(r.headers["x-echo-connection"].to_str().unwrap().to_string());
    }
    // Without pooling that would be 40 connections. With it, a few: the gateway runs two
    // proxy threads, and a connection returns to the pool just after its response is sent,
    // so a request arriving at that instant opens another.
    assert!(
        seen.len() < 10,
        "40 requests used upstream connections {seen:?}"
    );
    // The echo counted those connections, plus the one this stats request comes on.
    assert_eq!(echo_stats(&app).await["connections"], seen.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_and_trace_context() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start(&simple(port, &app, ""));
    let r = get(port, "shop.example.com", "/", &[]).await;
    assert_eq!(
        r.seen_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(r.seen_header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        r.seen_header("x-forwarded-host").as_deref(),
        Some("shop.example.com")
    );
    let started = r.seen_header("traceparent").expect("a trace is started");
    assert_eq!(started.len(), 55);
    assert!(
        started.starts_with("00-") && started.ends_with("-01"),
        "{started}"
    );

    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get(
        port,
        "shop.example.com",
        "/",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("traceparent", tp),
        ],
    )
    .await;
    assert_eq!(
        r.seen_header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(r.seen_header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        r.seen_header("traceparent").as_deref(),
        Some(tp),
        "passed through"
    );
    let other = get(port, "shop.example.com", "/", &[])
        .await
        .seen_header("traceparent");
    assert_ne!(
        other.as_deref(),
        Some(started.as_str()),
        "each request starts its own trace"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_do_not_cross() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start(&simple(port, &app, ""));
    let r = get(
        port,
        "h",
        "/",
        &[
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            (
                "x-echo-set-header",
                "Keep-Alive:timeout=99,Proxy-Authenticate:Basic,X-Kept:yes",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let headers = &r.json()["headers"];
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(
            headers[gone].is_null(),
            "{gone} reached the backend: {headers}"
        );
    }
    assert!(r.headers.get("proxy-authenticate").is_none());
    assert_ne!(
        r.headers.get("keep-alive").map(|v| v.to_str().unwrap()),
        Some("timeout=99")
    );
    assert_eq!(r.headers["x-kept"], "yes");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrades_pass_through() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start(&simple(port, &app, ""));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // A masked text frame "hi", echoed back byte for byte by the backend.
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    s.write_all(&frame).unwrap();
    let mut back = [0u8; 8];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, frame);
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_backends_get_http2() {
    let (plain, h2c) = (Echo::start("plain"), Echo::start("h2c"));
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("plain", &[&plain]);
    m += &service_with("h2c", &[&h2c], ", appProtocol: kubernetes.io/h2c");
    m += &route(
        "r",
        "  rules:\n  - matches: [{path: {value: /h2c}}]\n    backendRefs: [{name: h2c, port: 80}]\n  - backendRefs: [{name: plain, port: 80}]\n",
    );
    let _gw = Gateway::start(&m);
    assert_eq!(get(port, "h", "/", &[]).await.json()["proto"], "HTTP/1.1");
    let r = get(port, "h", "/h2c", &[]).await;
    assert_eq!(r.service(), "h2c");
    assert_eq!(r.json()["proto"], "HTTP/2.0");
}

/// A gRPC call over cleartext HTTP/2: (status, grpc-status, service that answered).
async fn grpc_call(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // One length-prefixed message: flag 0, length 5, "hello".
    let body = Bytes::from_static(&[0, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
    let mut req = http::Request::post(format!("http://grpc.example.com{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let mut grpc_status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let collected = resp.into_body().collect().await.unwrap();
    if let Some(t) = collected.trailers()
        && let Some(v) = t.get("grpc-status")
    {
        grpc_status = v.to_str().unwrap().to_string();
    }
    let mut data = collected.to_bytes();
    let service = if data.len() > 5 {
        data.advance(5);
        let doc: serde_json::Value = serde_json::from_slice(&data).unwrap();
        doc["service"].as_str().unwrap_or_default().to_string()
    } else {
        String::new()
    };
    (status, grpc_status, service)
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_routes_match_service_method_and_headers_over_http2() {
    let (cart, orders, tenant) = (
        Echo::start("cart"),
        Echo::start("orders"),
        Echo::start("tenant"),
    );
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("cart", &[&cart]);
    m += &service("orders", &[&orders]);
    m += &service("tenant", &[&tenant]);
    m += r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: gw}]
  hostnames: [grpc.example.com]
  rules:
  - matches: [{method: {service: shop.Cart, method: Add}}]
    backendRefs: [{name: cart, port: 80}]
  - matches: [{method: {service: shop.Orders}, headers: [{name: x-tenant, value: acme}]}]
    backendRefs: [{name: tenant, port: 80}]
  - matches: [{method: {service: shop.Orders}}]
    backendRefs: [{name: orders, port: 80}]
"#;
    let _gw = Gateway::start(&m);
    assert_eq!(
        grpc_call(port, "/shop.Cart/Add", &[]).await,
        (200, "0".into(), "cart".into())
    );
    assert_eq!(
        grpc_call(port, "/shop.Orders/List", &[]).await,
        (200, "0".into(), "orders".into())
    );
    assert_eq!(
        grpc_call(port, "/shop.Orders/List", &[("x-tenant", "acme")]).await,
        (200, "0".into(), "tenant".into())
    );
    // No matching method: a gRPC UNIMPLEMENTED, not an HTTP 404 a gRPC client cannot read.
    assert_eq!(
        grpc_call(port, "/shop.Cart/Remove", &[]).await,
        (200, "12".into(), String::new())
    );
}
