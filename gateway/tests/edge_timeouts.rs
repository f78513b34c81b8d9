//! Nothing holds an edge connection for free: raw bytes against the real `weir-gateway`.
//!
//! - the shortest valid requests (`GET / HTTP/1.0`, 18 bytes) are answered;
//! - a silent or trickling client is closed at the header timeout, on HTTP/1 (first and
//!   later keep-alive requests), TLS, h2c and HTTP/2 over TLS;
//! - an idle keep-alive connection is closed after the idle timeout (HTTP/2: GOAWAY);
//! - SIGTERM closes idle connections at once, while a request in flight finishes;
//! - a backend that stops reading a request body meets the backend write timeout.

mod support;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::raw::{self, h2};
use support::*;

const SHORT: &[&str] = &["--header-timeout", "1s", "--idle-timeout", "2s"];

#[test]
fn the_shortest_requests_are_answered() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start(&one_route(port, &app));
    for req in ["GET / HTTP/1.0\r\n\r\n", "OPTIONS / HTTP/1.0\r\n\r\n"] {
        let got = raw::exchange(port, req.as_bytes());
        assert_eq!(got.statuses(), [200], "{req:?} got {:?}", got.text());
        // HTTP/1.0 without keep-alive: the answer ends the connection.
        assert!(got.closed, "{req:?}: the connection stayed open");
    }
    assert_eq!(app.count("requests"), 2);
}

/// Writes `bytes` one at a time, `gap` apart, until done or the peer stops taking them.
fn trickle(mut s: std::net::TcpStream, bytes: Vec<u8>, gap: Duration) {
    std::thread::spawn(move || {
        for b in bytes {
            if s.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(gap);
        }
    });
}

#[test]
fn silent_and_trickling_clients_are_closed_at_the_header_timeout() {
    let app = Echo::start("app");
    let port = free_port();
    let gw = Gateway::start_with(&one_route(port, &app), SHORT);

    // Nothing at all: closed, without an answer (nothing was asked).
    let mut silent = raw::connect(port);
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let got = raw::read_until(&mut silent, |_| false);
    assert!(got.closed && got.bytes.is_empty(), "silent: {got:?}");

    // A head trickled a byte every 50 ms would take 3 s: 408 after 1 s, and the backend
    // never sees it.
    let s = raw::connect(port);
    let mut reader = s.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(30)
    );
    trickle(s, head.into_bytes(), Duration::from_millis(50));
    let got = raw::read_until(&mut reader, |_| false);
    assert!(got.closed, "trickle: the connection stayed open");
    assert_eq!(got.statuses(), [408], "trickle: {}", got.text());

    // The same on a later keep-alive request: the first is served, the second trickles.
    let mut s = raw::connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let first = raw::read_until(&mut s, raw::has_response);
    assert_eq!(first.statuses(), [200]);
    let mut reader = s.try_clone().unwrap();
    trickle(
        s,
        b"GET /second HTTP/1.1\r\nHost: h\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec(),
        Duration::from_millis(50),
    );
    let got = raw::read_until(&mut reader, |_| false);
    assert!(got.closed, "keep-alive trickle: the connection stayed open");
    assert_eq!(got.statuses(), [408], "keep-alive trickle: {}", got.text());

    assert_eq!(
        app.count("requests"),
        1,
        "only the one whole request was served"
    );
    assert!(gw.metric("weir_downstream_closed_total{reason=\"header_timeout\"}") >= 3.0);
}

#[test]
fn a_stalled_request_body_meets_the_body_timeout() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start_with(&one_route(port, &app), &["--client-body-timeout", "1s"]);
    let mut s = raw::connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let got = raw::read_until(&mut s, |_| false);
    assert_eq!(got.statuses(), [408], "{}", got.text());
    assert!(got.closed);
}

fn https(pki: &Pki, port: u16, app: &Echo) -> String {
    let mut m = gateway(&[format!(
        "{{name: https, port: {port}, protocol: HTTPS, hostname: \"shop.example.com\", tls: {{certificateRefs: [{{name: cert}}]}}}}"
    )]);
    m += &pki.secret("cert", &["shop.example.com"]);
    m += &service("app", &[app]);
    m += &route("r", "  rules:\n  - backendRefs: [{name: app, port: 80}]\n");
    m
}

#[test]
fn tls_connections_have_the_same_deadlines() {
    let pki = Pki::new();
    let app = Echo::start("app");
    let port = free_port();
    let gw = Gateway::start_with(&https(&pki, port, &app), SHORT);

    // No ClientHello: the handshake is part of the header time.
    let mut s = raw::connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let got = raw::read_until(&mut s, |_| false);
    assert!(got.closed, "a connection without a handshake stayed open");
    gw.wait_metric(
        "weir_downstream_closed_total{reason=\"handshake_timeout\"}",
        1.0,
    );

    // A handshake, then nothing; then a handshake and a trickled head.
    let config = pki.client_config(&[b"http/1.1"], rustls::ALL_VERSIONS);
    let mut tls = raw::tls(port, "shop.example.com", config.clone());
    let got = raw::read_until(&mut tls, |_| false);
    assert!(got.closed && got.bytes.is_empty(), "silent TLS: {got:?}");

    let mut tls = raw::tls(port, "shop.example.com", config);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n")
        .unwrap();
    let got = raw::read_until(&mut tls, |_| false);
    assert_eq!(got.statuses(), [408], "partial TLS head: {}", got.text());
    assert!(got.closed);
    assert_eq!(app.count("requests"), 0);
}

/// Reads frames until the gateway closes the connection (or the read bound).
fn until_goaway(s: &mut impl Read) -> (Vec<h2::Frame>, bool) {
    let got = raw::read_until(s, |_| false);
    (h2::parse(&got.bytes), got.closed)
}

#[test]
fn http2_connections_that_send_no_request_get_goaway() {
    let pki = Pki::new();
    let app = Echo::start("app");
    let (plain, tls_port) = (free_port(), free_port());
    let mut m = https(&pki, tls_port, &app);
    m = m.replacen(
        "  listeners:\n",
        &format!("  listeners:\n  - {}\n", http_listener("http", plain)),
        1,
    );
    let gw = Gateway::start_with(&m, SHORT);

    // h2c: the preface and SETTINGS, then no HEADERS.
    let mut s = raw::connect(plain);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(&h2::hello()).unwrap();
    let (frames, closed) = until_goaway(&mut s);
    assert_eq!(h2::goaway(&frames), Some(0), "h2c: {frames:?}");
    assert!(closed);

    // h2c: a HEADERS frame that never ends (no END_HEADERS, no CONTINUATION).
    let mut s = raw::connect(plain);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut open = h2::hello();
    let mut headers = h2::get(1, "h", &[], true);
    headers[4] &= !h2::END_HEADERS;
    open.extend(headers);
    s.write_all(&open).unwrap();
    let (frames, closed) = until_goaway(&mut s);
    assert!(h2::goaway(&frames).is_some(), "partial HEADERS: {frames:?}");
    assert!(closed);

    // HTTP/2 over TLS: ALPN h2, the preface, then nothing.
    let config = pki.client_config(&[b"h2"], rustls::ALL_VERSIONS);
    let mut tls = raw::tls(tls_port, "shop.example.com", config);
    tls.write_all(&h2::hello()).unwrap();
    let (frames, closed) = until_goaway(&mut tls);
    assert_eq!(h2::goaway(&frames), Some(0), "TLS h2: {frames:?}");
    assert!(closed);

    assert!(gw.metric("weir_downstream_closed_total{reason=\"header_timeout\"}") >= 3.0);
    assert_eq!(app.count("requests"), 0);
}

#[test]
fn idle_keepalive_connections_are_closed() {
    let app = Echo::start("app");
    let port = free_port();
    let gw = Gateway::start_with(&one_route(port, &app), SHORT);

    let mut s = raw::connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let got = raw::read_until(&mut s, |_| false);
    assert_eq!(got.statuses(), [200]);
    assert!(got.closed, "an idle HTTP/1.1 connection stayed open");

    let mut s = raw::connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut req = h2::hello();
    req.extend(h2::get(1, "h", &[], true));
    s.write_all(&req).unwrap();
    let (frames, closed) = until_goaway(&mut s);
    assert!(
        frames.iter().any(|f| f.0 == h2::HEADERS && f.2 == 1),
        "h2c request answered: {frames:?}"
    );
    assert_eq!(h2::goaway(&frames), Some(0), "idle h2c: {frames:?}");
    assert!(closed);
    assert!(gw.metric("weir_downstream_closed_total{reason=\"idle_timeout\"}") >= 2.0);
}

#[test]
fn sigterm_closes_idle_connections_and_waits_only_for_requests_in_flight() {
    let app = Echo::start("app");
    let port = free_port();
    // A drain deadline no test run reaches: the exit must come from the connections.
    let mut gw = Gateway::start_with(&one_route(port, &app), &["--drain-seconds", "120"]);

    let mut idle_h1 = raw::connect(port);
    idle_h1
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    idle_h1
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    assert_eq!(
        raw::read_until(&mut idle_h1, raw::has_response).statuses(),
        [200]
    );

    let mut idle_h2 = raw::connect(port);
    idle_h2
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut req = h2::hello();
    req.extend(h2::get(1, "h", &[], true));
    idle_h2.write_all(&req).unwrap();
    let answered = raw::read_until(&mut idle_h2, |b| {
        h2::parse(b).iter().any(|f| f.0 == h2::HEADERS && f.2 == 1)
    });
    assert!(!answered.closed);

    let mut silent = raw::connect(port);
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    // A request in flight: the echo answers it after 2 s.
    let mut slow = raw::connect(port);
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    slow.write_all(b"GET /?delay=2s HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.count("requests") < 3 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the echo"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let start = Instant::now();
    gw.proc().sigterm();
    let got = raw::read_until(&mut idle_h1, |_| false);
    assert!(got.closed && got.bytes.is_empty(), "idle HTTP/1.1: {got:?}");
    let (frames, closed) = until_goaway(&mut idle_h2);
    assert_eq!(h2::goaway(&frames), Some(0), "idle h2c: {frames:?}");
    assert!(closed);
    let got = raw::read_until(&mut silent, |_| false);
    assert!(got.closed, "a silent connection held the shutdown");
    // The request in flight is answered, then its connection closes.
    let got = raw::read_until(&mut slow, |_| false);
    assert_eq!(got.statuses(), [200], "in flight: {}", got.text());
    assert!(got.closed);

    let status = gw.proc().wait();
    assert!(status.success(), "exit status {status}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "the drain waited {:?} for idle connections",
        start.elapsed()
    );
}

#[test]
fn a_backend_that_stops_reading_meets_the_write_timeout() {
    // A backend that reads the request head and then reads no more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = listener.local_addr().unwrap().port();
    let (got_head, head_seen) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        got_head.send(()).unwrap();
        // Stop reading until the client has its answer; then the gateway's side of this
        // connection must be gone.
        released.recv().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match s.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                // Still open after the read bound: the gateway kept it.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    });

    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: stuck}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: stuck-0, labels: {{kubernetes.io/service-name: stuck}}}}\naddressType: IPv4\nports: [{{name: http, port: {backend_port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
    );
    m += &route(
        "r",
        "  rules:\n  - backendRefs: [{name: stuck, port: 80}]\n",
    );
    // Both are short here. On HTTP/1 (Weir's own loop) the write timeout ends the request;
    // Pingora's HttpProxy (HTTP/2 clients) still waits one read timeout for an early answer
    // (a 413, say) after it. Without the write timeout the write would never end.
    let gw = Gateway::start_with(
        &m,
        &[
            "--backend-write-timeout",
            "1s",
            "--backend-read-timeout",
            "2s",
        ],
    );

    // 256 MiB announced; the writer sends until the gateway stops taking bytes.
    let s = raw::connect(port);
    let mut reader = s.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut writer = s;
    std::thread::spawn(move || {
        let _ = writer
            .write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 268435456\r\n\r\n");
        let chunk = vec![b'x'; 64 * 1024];
        while writer.write_all(&chunk).is_ok() {}
    });
    head_seen
        .recv_timeout(Duration::from_secs(20))
        .expect("the backend got the request head");
    let got = raw::read_until(&mut reader, raw::has_response);
    assert_eq!(got.statuses(), [504], "client got: {}", got.text());
    release.send(()).unwrap();
    assert!(
        backend.join().unwrap(),
        "the gateway kept the stalled backend connection"
    );
    drop(gw);
}
