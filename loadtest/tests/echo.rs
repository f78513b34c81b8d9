//! End-to-end tests of the `weir-echo` binary: each test starts the real process on port 0,
//! learns the port from its `listening on` line, and talks to it with real clients (hyper
//! for HTTP/1.1 and h2c, raw TCP for upgrades).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECHO_ENV: [&str; 9] = [
    "WEIR_ECHO_LISTEN",
    "WEIR_ECHO_THREADS",
    "WEIR_ECHO_SERVICE",
    "WEIR_ECHO_NAMESPACE",
    "WEIR_ECHO_POD",
    "WEIR_ECHO_ZONE",
    "WEIR_ECHO_FAIL_RATIO",
    "WEIR_ECHO_FAIL_STATUS",
    "RUST_LOG",
];

/// A running `weir-echo`; dropping it kills the process, so a failed assertion never
/// leaks one.
struct Echo {
    child: Child,
    addr: SocketAddr,
}

impl Echo {
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir-echo"));
        // The caller's environment must not leak flags into the test.
        for var in ECHO_ENV {
            command.env_remove(var);
        }
        command
            .args(["--listen", "127.0.0.1:0", "--threads", "2"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("weir-echo should start");
        let stdout = child.stdout.take().expect("stdout is piped");
        // Guard first, so the process dies even if the line below never comes.
        let mut echo = Self {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };

        let (first_line, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout).lines();
            let _ = first_line.send(reader.next());
            // Keep draining so the server can never block on a full pipe.
            for _ in reader {}
        });
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("weir-echo printed nothing within 30s")
            .expect("weir-echo exited before printing its address")
            .expect("reading weir-echo's stdout");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        echo.addr = addr.parse().expect("a socket address");
        assert_ne!(echo.addr.port(), 0, "the real port, not the requested 0");
        echo
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr)
            .await
            .expect("connect to weir-echo")
    }

    /// Sends SIGTERM and waits for the process to exit on its own.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "weir-echo ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

struct Reply {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing response header {name}"))
            .to_str()
            .expect("ASCII header")
    }

    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().expect("ASCII header"))
            .collect()
    }
}

async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Reply {
    let response = within(client.request(request))
        .await
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let collected = within(body.collect()).await.expect("reading the body");
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .body(Full::default())
        .expect("valid request")
}

/// Bounds every network wait, so a broken server fails the test instead of hanging it.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn http1_echoes_the_request_and_identity() {
    let echo = Echo::start_with_env(
        &["--pod", "pod-a", "--zone", "zone-1"],
        &[
            ("WEIR_ECHO_SERVICE", "svc-a"),
            ("WEIR_ECHO_NAMESPACE", "ns-a"),
        ],
    );
    let request = Request::post(echo.url("/some/path?x=1&y=two"))
        .header("x-multi", "first")
        .header("x-multi", "second")
        .header("X-Mixed-Case", "v")
        .body(Full::new(Bytes::from_static(b"hello world")))
        .unwrap();
    let reply = send(&http1_client(), request).await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_11);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("x-echo-service"), "svc-a");
    assert_eq!(reply.header("x-echo-pod"), "pod-a");
    let document = reply.json();
    assert_eq!(document["path"], "/some/path?x=1&y=two");
    assert_eq!(document["host"], echo.addr.to_string());
    assert_eq!(document["method"], "POST");
    assert_eq!(document["proto"], "HTTP/1.1");
    assert_eq!(document["headers"]["x-multi"], json!(["first", "second"]));
    assert_eq!(document["headers"]["x-mixed-case"], json!(["v"]));
    assert_eq!(document["headers"]["host"], json!([echo.addr.to_string()]));
    assert_eq!(document["service"], "svc-a");
    assert_eq!(document["namespace"], "ns-a");
    assert_eq!(document["pod"], "pod-a");
    assert_eq!(document["zone"], "zone-1");
    assert_eq!(document["body_bytes"], 11);
}

#[tokio::test]
async fn unset_identity_is_reported_as_empty_strings() {
    let echo = Echo::start(&[]);
    let reply = send(&http1_client(), get(&echo.url("/"))).await;
    let document = reply.json();
    for field in ["service", "namespace", "pod", "zone"] {
        assert_eq!(document[field], "", "{field}");
    }
    assert_eq!(reply.header("x-echo-service"), "");
    assert_eq!(document["body_bytes"], 0);
}

#[tokio::test]
async fn h2c_with_prior_knowledge_is_served_on_the_same_port() {
    let echo = Echo::start(&["--service", "svc-h2"]);
    let request = Request::put(echo.url("/h2/path?q=1"))
        .header("x-h2", "yes")
        .body(Full::new(Bytes::from(vec![7u8; 100_000])))
        .unwrap();
    let reply = send(&h2c_client(), request).await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.header("x-echo-service"), "svc-h2");
    let document = reply.json();
    assert_eq!(document["proto"], "HTTP/2.0");
    assert_eq!(document["method"], "PUT");
    assert_eq!(document["path"], "/h2/path?q=1");
    // No Host header in HTTP/2: the host comes from :authority.
    assert_eq!(document["host"], echo.addr.to_string());
    assert_eq!(document["headers"]["x-h2"], json!(["yes"]));
    assert_eq!(document["body_bytes"], 100_000);
}

#[tokio::test]
async fn http1_keeps_the_connection_alive() {
    let echo = Echo::start(&[]);
    let io = TokioIo::new(echo.connect().await);
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .expect("handshake");
    let connection = tokio::spawn(connection);
    for path in ["/first", "/second", "/third"] {
        let request = Request::get(path)
            .header("host", "keepalive.test")
            .body(Full::default())
            .unwrap();
        let response = within(sender.send_request(request))
            .await
            .expect("request on the same connection");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let document: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(document["path"], path);
        assert_eq!(document["host"], "keepalive.test");
    }
    assert!(
        !connection.is_finished(),
        "server closed a keep-alive connection"
    );
}

#[tokio::test]
async fn delay_waits_before_answering() {
    let echo = Echo::start(&[]);
    let client = http1_client();
    for (query, delay) in [
        ("delay=300ms", 300),
        ("a=b&delay=250", 250),
        ("delay=1s", 1000),
    ] {
        let started = Instant::now();
        let reply = send(&client, get(&echo.url(&format!("/slow?{query}")))).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}");
        assert!(
            started.elapsed() >= Duration::from_millis(delay),
            "{query} answered after {:?}",
            started.elapsed()
        );
    }

    let reply = send(&client, get(&echo.url("/slow?delay=soon"))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"].as_str().unwrap().contains("soon"));
}

#[tokio::test]
async fn status_path_sets_the_status() {
    let echo = Echo::start(&["--service", "svc-status"]);
    let client = http1_client();
    for code in [201u16, 404, 418, 503, 599] {
        let reply = send(&client, get(&echo.url(&format!("/status/{code}")))).await;
        assert_eq!(reply.status.as_u16(), code);
        assert_eq!(reply.header("x-echo-service"), "svc-status");
        assert_eq!(reply.json()["path"], format!("/status/{code}"));
    }
    let reply = send(&h2c_client(), get(&echo.url("/status/502?delay=10ms"))).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json()["proto"], "HTTP/2.0");

    for bad in [
        "/status/101",
        "/status/100",
        "/status/600",
        "/status/abc",
        "/status/",
    ] {
        let reply = send(&client, get(&echo.url(bad))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn set_header_adds_response_headers() {
    let echo = Echo::start(&[]);
    for client in [http1_client(), h2c_client()] {
        let request = Request::get(echo.url("/"))
            .header("x-echo-set-header", "X-One: 1, X-Two:two")
            .header("x-echo-set-header", "x-one:again,Cache-Control:no-store")
            .body(Full::default())
            .unwrap();
        let reply = send(&client, request).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header_values("x-one"), ["1", "again"]);
        assert_eq!(reply.header_values("x-two"), ["two"]);
        assert_eq!(reply.header_values("cache-control"), ["no-store"]);
    }

    let request = Request::get(echo.url("/"))
        .header("x-echo-set-header", "no-colon-here")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&http1_client(), request).await.status,
        StatusCode::BAD_REQUEST
    );
}

/// Reads an HTTP/1.1 response head byte by byte, so nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = within(stream.read_u8())
            .await
            .expect("connection closed mid-head");
        head.push(byte);
    }
    String::from_utf8(head).expect("ASCII head")
}

fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

async fn assert_echoes_bytes(stream: &mut TcpStream) {
    for message in [
        &b"hello"[..],
        &[0u8, 255, 13, 10, 42],
        &vec![b'x'; 64 * 1024],
    ] {
        within(stream.write_all(message)).await.unwrap();
        let mut back = vec![0; message.len()];
        within(stream.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, message);
    }
    // Half-closing our side ends the echo, and the server closes its side in turn.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "unexpected bytes after EOF: {rest:?}");
}

#[tokio::test]
async fn websocket_upgrade_answers_101_and_echoes_bytes() {
    let echo = Echo::start(&["--service", "svc-ws"]);
    let mut stream = echo.connect().await;
    let handshake = "GET /chat HTTP/1.1\r\n\
        Host: ws.test\r\n\
        Upgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(handshake.as_bytes()).await.unwrap();

    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(head_header(&head, "upgrade"), Some("websocket"));
    assert_eq!(
        head_header(&head, "connection").map(str::to_ascii_lowercase),
        Some("upgrade".to_owned())
    );
    assert_eq!(
        head_header(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(head_header(&head, "x-echo-service"), Some("svc-ws"));
    assert_echoes_bytes(&mut stream).await;
}

#[tokio::test]
async fn generic_upgrade_switches_without_websocket_headers() {
    let echo = Echo::start(&[]);
    let mut stream = echo.connect().await;
    let handshake =
        "POST /tunnel HTTP/1.1\r\nHost: x\r\nUpgrade: weir-test/1\r\nConnection: upgrade\r\n\r\n";
    stream.write_all(handshake.as_bytes()).await.unwrap();

    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(head_header(&head, "upgrade"), Some("weir-test/1"));
    assert_eq!(head_header(&head, "sec-websocket-accept"), None);
    assert_echoes_bytes(&mut stream).await;
}

#[tokio::test]
async fn h2c_upgrade_offer_gets_an_ordinary_answer() {
    let echo = Echo::start(&[]);
    let mut stream = echo.connect().await;
    let request = "GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
        Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(head_header(&head, "content-type"), Some("application/json"));
}

#[tokio::test]
async fn grpc_gets_one_framed_message_and_ok_trailers() {
    let echo = Echo::start(&["--service", "svc-grpc"]);
    let message = b"\x0a\x05hello";
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    let request = Request::post(echo.url("/weir.test.Echo/Say"))
        .header("content-type", "application/grpc+proto")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(framed.clone())))
        .unwrap();
    let reply = send(&h2c_client(), request).await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.header("content-type"), "application/grpc");
    assert_eq!(reply.header("x-echo-service"), "svc-grpc");
    let body = &reply.body;
    assert!(body.len() > 5, "body too short for a gRPC frame: {body:?}");
    assert_eq!(body[0], 0, "uncompressed flag");
    let length = u32::from_be_bytes(body[1..5].try_into().unwrap());
    assert_eq!(length as usize, body.len() - 5, "exactly one message");
    let document: Value = serde_json::from_slice(&body[5..]).expect("JSON message");
    assert_eq!(document["path"], "/weir.test.Echo/Say");
    assert_eq!(document["proto"], "HTTP/2.0");
    assert_eq!(document["body_bytes"], framed.len());
    assert_eq!(document["service"], "svc-grpc");

    let trailers = reply.trailers.as_ref().expect("gRPC trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "OK");
}

#[tokio::test]
async fn stats_count_requests_and_reset_zeroes_them() {
    let echo = Echo::start(&[]);
    let client = http1_client();
    let requests = |reply: Reply| reply.json()["requests"].as_u64().expect("a count");

    assert_eq!(
        requests(send(&client, get(&echo.url("/__echo/stats"))).await),
        0
    );
    send(&client, get(&echo.url("/a"))).await;
    send(&client, get(&echo.url("/status/500"))).await;
    send(&h2c_client(), get(&echo.url("/b"))).await;
    assert_eq!(
        requests(send(&client, get(&echo.url("/__echo/stats"))).await),
        3
    );
    // Reading the stats did not count itself.
    assert_eq!(
        requests(send(&client, get(&echo.url("/__echo/stats"))).await),
        3
    );

    let reset = Request::post(echo.url("/__echo/reset"))
        .body(Full::default())
        .unwrap();
    let reply = send(&client, reset).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["previous"], 3);
    assert_eq!(
        requests(send(&client, get(&echo.url("/__echo/stats"))).await),
        0
    );
    send(&client, get(&echo.url("/c"))).await;
    assert_eq!(
        requests(send(&client, get(&echo.url("/__echo/stats"))).await),
        1
    );

    let wrong_method = Request::builder()
        .method(Method::GET)
        .uri(echo.url("/__echo/reset"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&client, wrong_method).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        requests(send(&client, get(&echo.url("/__echo/stats"))).await),
        1
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_cleanly() {
    let mut echo = Echo::start(&[]);
    let client = http1_client();
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = echo.url("/slow?delay=1s");
        async move { send(&client, get(&url)).await.status }
    });
    // Give the request time to reach the server before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = echo.terminate();
        drop(echo);
        status
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(in_flight.await.unwrap(), StatusCode::OK);
}

#[test]
fn help_documents_every_flag_and_env_var() {
    let output = Command::new(env!("CARGO_BIN_EXE_weir-echo"))
        .arg("--help")
        .output()
        .expect("run weir-echo --help");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "listen",
        "threads",
        "service",
        "namespace",
        "pod",
        "zone",
        "fail-ratio",
        "fail-status",
    ] {
        assert!(help.contains(&format!("--{flag}")), "--{flag} missing");
        let env = format!("WEIR_ECHO_{}", flag.to_uppercase().replace('-', "_"));
        assert!(help.contains(&env), "{env} missing");
    }
}

fn post(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::default())
        .expect("valid request")
}

#[tokio::test]
async fn fail_ratio_fails_that_share_with_the_chosen_status() {
    let echo = Echo::start(&[
        "--pod",
        "flaky-1",
        "--zone",
        "z",
        "--fail-ratio",
        "0.5",
        "--fail-status",
        "502",
    ]);
    let client = http1_client();
    let mut failed = 0;
    for _ in 0..400 {
        let reply = send(&client, get(&echo.url("/x"))).await;
        // A failed answer still names its instance, so a harness can tell who failed.
        assert_eq!(reply.header("x-echo-pod"), "flaky-1");
        match reply.status {
            StatusCode::BAD_GATEWAY => failed += 1,
            StatusCode::OK => assert_eq!(reply.json()["zone"], "z"),
            other => panic!("unexpected status {other}"),
        }
    }
    // Binomial(400, 0.5): sd 10, so 140..=260 is six of them either side.
    assert!((140..=260).contains(&failed), "{failed} of 400 failed");

    // Control paths are neither counted nor failed.
    for _ in 0..50 {
        let stats = send(&client, get(&echo.url("/__echo/stats"))).await;
        assert_eq!(stats.status, StatusCode::OK);
        let stats = stats.json();
        assert_eq!(stats["requests"], 400);
        assert_eq!(stats["failures"], failed);
        assert_eq!(stats["fail_ratio"], 0.5);
        assert_eq!(stats["fail_status"], 502);
    }
}

#[tokio::test]
async fn fail_control_changes_the_ratio_at_runtime() {
    let echo = Echo::start_with_env(&[], &[("WEIR_ECHO_FAIL_RATIO", "1")]);
    let client = http1_client();
    for _ in 0..20 {
        let reply = send(&client, get(&echo.url("/"))).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "default status"
        );
    }

    let reply = send(&client, post(&echo.url("/__echo/fail?ratio=0"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["previous"], 1.0);
    assert_eq!(reply.json()["ratio"], 0.0);
    for _ in 0..20 {
        assert_eq!(
            send(&client, get(&echo.url("/"))).await.status,
            StatusCode::OK
        );
    }

    for bad in [
        "/__echo/fail?ratio=1.5",
        "/__echo/fail?ratio=-1",
        "/__echo/fail",
    ] {
        let reply = send(&client, post(&echo.url(bad))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(reply.json()["error"].as_str().unwrap().contains("ratio"));
    }
    assert_eq!(
        send(&client, get(&echo.url("/__echo/fail?ratio=1")))
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // The refused changes left the ratio at 0.
    assert_eq!(
        send(&client, get(&echo.url("/__echo/stats"))).await.json()["fail_ratio"],
        0.0
    );
}

#[test]
fn out_of_range_failure_settings_are_refused_at_start() {
    for (args, env, expect) in [
        (&["--fail-ratio", "1.5"][..], None, "0.0..=1.0"),
        (&["--fail-ratio", "-0.1"][..], None, "0.0..=1.0"),
        (&["--fail-ratio", "lots"][..], None, "lots"),
        (&[][..], Some("2"), "0.0..=1.0"),
        (&["--fail-status", "700"][..], None, "700"),
        (&["--fail-status", "100"][..], None, "100"),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir-echo"));
        for var in ECHO_ENV {
            command.env_remove(var);
        }
        if let Some(ratio) = env {
            command.env("WEIR_ECHO_FAIL_RATIO", ratio);
        }
        let output = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run weir-echo");
        assert!(!output.status.success(), "{args:?} {env:?} was accepted");
        assert!(
            output.stdout.is_empty(),
            "{args:?}: it must not announce a port"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{args:?} {env:?}: {stderr}");
    }
}
