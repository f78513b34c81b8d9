//! Weir's own HTTP/1 path and its upstream pool, through a real `weir-gateway`: backend
//! connections are kept and reused, a pooled connection the backend has closed costs no
//! failed request and no retry, a request refused by a rate limit takes no slot of the
//! weighted schedule, `Expect: 100-continue` is answered by the gateway, and a backend's
//! answer whose framing is in doubt is a 502 (Weir's own client, `proxy/backend_h1.rs`).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::*;

/// A backend that answers the first request on each connection (advertising keep-alive)
/// and closes the connection, unanswered, when a second one arrives: the race of a
/// backend whose keep-alive timeout fires as the gateway reuses the connection.
struct OneShot {
    addr: SocketAddr,
    answered: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl OneShot {
    fn start() -> OneShot {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (a, d) = (answered.clone(), dropped.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (a, d) = (a.clone(), d.clone());
                std::thread::spawn(move || serve_one(conn, &a, &d));
            }
        });
        OneShot {
            addr,
            answered,
            dropped,
        }
    }
}

/// Reads one request head; true when one came.
fn read_head(r: &mut BufReader<TcpStream>) -> bool {
    let mut line = String::new();
    let mut any = false;
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) if line == "\r\n" => return any,
            Ok(_) => any = true,
        }
    }
}

fn serve_one(conn: TcpStream, answered: &AtomicUsize, dropped: &AtomicUsize) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    if !read_head(&mut r) {
        return;
    }
    let n = answered.fetch_add(1, Ordering::SeqCst) + 1;
    let body = format!("{n}");
    let _ = write!(
        w,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: keep-alive\r\n\r\n{body}",
        body.len()
    );
    if read_head(&mut r) {
        dropped.fetch_add(1, Ordering::SeqCst);
    }
    // Dropped here: closed with the second request unanswered.
}

fn manifests(port: u16, backend: SocketAddr) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: app}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-0, labels: {{kubernetes.io/service-name: app}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        backend.port()
    );
    m += &route("r", "  rules:\n  - backendRefs: [{name: app, port: 80}]\n");
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_the_backend_closed_fails_no_request() {
    let backend = OneShot::start();
    let port = free_port();
    let gw = Gateway::start(&manifests(port, backend.addr));
    for i in 0..20 {
        let r = get(port, "h", "/", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", gw.log());
    }
    assert_eq!(backend.answered.load(Ordering::SeqCst), 20);
    // The pool handed out connections the backend then closed: each such request went
    // again on a fresh connection, and counted as no retry.
    assert!(
        backend.dropped.load(Ordering::SeqCst) > 0,
        "no pooled connection was ever reused"
    );
    assert_eq!(gw.metric("weir_retries_total"), 0.0, "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_connections_are_kept_and_reused() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start(&one_route(port, &app));
    let mut connections = std::collections::HashSet::new();
    for _ in 0..10 {
        let r = get(port, "h", "/", &[]).await;
        assert_eq!(r.status, 200);
        let conn = r.headers.get("x-echo-connection").cloned();
        connections.insert(conn.expect("the echo numbers its connections"));
    }
    // Sequential requests from one client need one backend connection (the pool is per
    // proxy thread; the default is one thread per core, so allow one each).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        connections.len() <= threads,
        "{} backend connections for 10 sequential requests",
        connections.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_request_takes_no_weighted_slot() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("a", &[&a]);
    m += &service("b", &[&b]);
    m += &route(
        "split",
        "  rules:\n  - backendRefs: [{name: a, port: 80, weight: 1}, {name: b, port: 80, weight: 1}]\n",
    );
    // One request per tenant: each tenant's second request is refused.
    m += "---\napiVersion: weir.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: once}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: split}]\n  limits:\n  - {name: l, requests: 1, window: 5m, key: [{header: {name: X-Tenant}}]}\n";
    let _gw = Gateway::start(&m);
    let mut admitted = Vec::new();
    for t in 0..8 {
        let tenant = format!("t{t}");
        let first = get(port, "h", "/", &[("x-tenant", &tenant)]).await;
        assert_eq!(first.status, 200);
        admitted.push(first.service().to_string());
        let second = get(port, "h", "/", &[("x-tenant", &tenant)]).await;
        assert_eq!(second.status, 429);
    }
    // With 1:1 weights the admitted requests alternate. Had each 429 taken a slot, every
    // admitted request would have met the same backend.
    let on_a = admitted.iter().filter(|s| *s == "a").count();
    assert_eq!(on_a, 4, "admitted requests went to {admitted:?}");
}

#[test]
fn expect_continue_is_answered_by_the_gateway() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start(&one_route(port, &app));
    let mut s = support::raw::connect(port);
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    // The client waits for the go-ahead before it sends its body, as curl does.
    let interim =
        support::raw::read_until(&mut s, |b| String::from_utf8_lossy(b).contains("\r\n\r\n"));
    assert_eq!(interim.statuses(), [100], "{}", interim.text());
    s.write_all(b"hello").unwrap();
    let got = support::raw::read_until(&mut s, |_| false);
    assert_eq!(got.statuses(), [200], "{}", got.text());
    let body = got.text();
    assert!(body.contains("\"body_bytes\":5"), "{body}");
    assert!(
        !body.to_ascii_lowercase().contains("\"expect\""),
        "the backend was not asked again: {body}"
    );
}

/// A backend that answers every request with the bytes the request's path names.
fn scripted() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let mut first = String::new();
                while r.read_line(&mut first).is_ok_and(|n| n > 0) {
                    if !read_head(&mut r) {
                        return;
                    }
                    let path = first.split(' ').nth(1).unwrap_or("");
                    if path.starts_with("/big")
                        && stream_big(&mut w, path == "/big-chunked").is_err()
                    {
                        return;
                    }
                    let answer: &[u8] = match first.split(' ').nth(1) {
                        Some("/big" | "/big-chunked") => b"",
                        Some("/chunked") => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-app: 1\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n",
                        Some("/two-lengths") => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
                        Some("/gzip-coding") => b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx",
                        Some("/unasked-101") => b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
                        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                    };
                    if w.write_all(answer).is_err() {
                        return;
                    }
                    first.clear();
                }
            });
        }
    });
    addr
}

/// Bytes of the big answers: more than the gateway's RSS may grow by.
const BIG: usize = 32 << 20;

/// Writes a `BIG`-byte answer of `a`s in 64 KiB pieces, length-framed or chunked.
fn stream_big(w: &mut TcpStream, chunked: bool) -> std::io::Result<()> {
    let piece = vec![b'a'; 64 << 10];
    if chunked {
        w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")?;
    } else {
        write!(w, "HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n")?;
    }
    for _ in 0..BIG / piece.len() {
        if chunked {
            write!(w, "{:x}\r\n", piece.len())?;
        }
        w.write_all(&piece)?;
        if chunked {
            w.write_all(b"\r\n")?;
        }
    }
    if chunked {
        w.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn big_answers_stream_through_without_being_held_whole() {
    let port = free_port();
    let mut gw = Gateway::start(&manifests(port, scripted()));
    let pid = gw.proc().pid();
    assert_eq!(get(port, "h", "/", &[]).await.body, "ok");
    let before = rss_kib(pid);
    for path in ["/big", "/big-chunked"] {
        let r = get(port, "h", path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body.len(), BIG, "{path}");
        assert!(r.body.bytes().all(|b| b == b'a'), "{path}");
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < (BIG as u64 / 1024) / 2,
        "the gateway grew by {grown} KiB relaying two {BIG}-byte answers"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_answers_in_doubt_are_502_and_chunked_ones_arrive_whole() {
    let port = free_port();
    let gw = Gateway::start(&manifests(port, scripted()));
    let r = get(port, "h", "/chunked", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello world"));
    assert_eq!(
        r.headers.get("x-app").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    for path in ["/two-lengths", "/gzip-coding", "/unasked-101"] {
        let r = get(port, "h", path, &[]).await;
        assert_eq!(r.status, 502, "{path}: {}", gw.log());
        assert!(r.body.is_empty() || !r.body.contains("hello"), "{path}");
    }
    // The gateway still serves from the same backend afterwards.
    assert_eq!(get(port, "h", "/", &[]).await.body, "ok");
}
