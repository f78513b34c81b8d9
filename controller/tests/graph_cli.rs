//! `weir-controller graph` as a process, with raw bytes: what it says when its source is
//! down or a query is wrong, what the page is served with, and that a client that never
//! finishes its request does not hold a connection. (The graph drawn from real traffic is
//! tested in sidecar/tests/graph_page.rs, where the fleet and the sidecars run.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Graph(Child, SocketAddr);

impl Drop for Graph {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> Graph {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir-controller"))
        .args(["graph", "--listen", "127.0.0.1:0", "--interval", "200ms"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    Graph(child, addr)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn get(addr: SocketAddr, path: &str) -> String {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn a_target_that_does_not_answer_is_named_and_the_graph_stays_up() {
    let target = format!("http://127.0.0.1:{}/metrics", closed_port());
    let g = start(&["--scrape", &target]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = get(g.1, "/api/graph?window=1m");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        if resp.contains(&target) && resp.contains("\"problems\"") {
            assert!(resp.contains("\"nodes\":[]"), "{resp}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failing target is never named: {resp}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn wrong_windows_and_methods_get_clear_errors() {
    let g = start(&["--scrape", "http://127.0.0.1:1/metrics"]);
    let bad = get(g.1, "/api/graph?window=fortnight");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(bad.contains("window \\\"fortnight\\\""), "{bad}");
    let long = get(g.1, "/api/graph?window=30d");
    assert!(
        long.starts_with("HTTP/1.1 400") && long.contains("24h"),
        "{long}"
    );
    let post = raw(
        g.1,
        "POST /api/graph HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(get(g.1, "/nope").starts_with("HTTP/1.1 404"));
}

#[test]
fn a_prometheus_that_is_down_is_a_502_that_says_so() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let g = start(&["--prometheus", &url]);
    let resp = get(g.1, "/api/graph");
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    assert!(resp.contains("Prometheus query"), "{resp}");
}

#[test]
fn the_page_and_its_scripts_come_from_the_binary_under_a_strict_policy() {
    let g = start(&["--scrape", "http://127.0.0.1:1/metrics"]);
    let page = get(g.1, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("script-src 'self'"), "{page}");
    assert!(page.contains("<script src=\"/cytoscape.min.js\">"));
    assert!(!page.contains("https://"), "nothing from elsewhere: {page}");
    let lib = get(g.1, "/cytoscape.min.js");
    assert!(lib.starts_with("HTTP/1.1 200"));
    assert!(lib.contains("Cytoscape Consortium"));
    assert!(get(g.1, "/graph.js").contains("weirGraph"));
}

#[test]
fn a_request_head_that_never_ends_is_cut_off() {
    let g = start(&["--scrape", "http://127.0.0.1:1/metrics"]);
    let mut s = TcpStream::connect(g.1).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    // The server answers 408 or just closes; either way the read ends, well before 30 s.
    let n = loop {
        match s.read(&mut buf) {
            Ok(0) => break 0,
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    };
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
