//! The access log (`--access-log`) through a real `weir-gateway` and a real echo backend:
//! one JSON line per request with the fields a person tracing a request needs, the same
//! trace id the backend saw, the rate limiter's decision, and no line lost at shutdown.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// The log's lines so far, parsed.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} access log lines"),
        Duration::from_secs(10),
        || lines(path).len() >= n,
    );
    lines(path)
}

/// The one line whose `key` is `value`.
fn line<'a>(all: &'a [Value], key: &str, value: &str) -> &'a Value {
    let found: Vec<&Value> = all.iter().filter(|l| l[key] == value).collect();
    assert_eq!(found.len(), 1, "one line with {key} = {value}: {all:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_is_one_json_line_with_what_happened_to_it() {
    let (app, port, m) = site();
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let gw = Gateway::start_with(&m, &["--access-log", path.to_str().unwrap()]);

    let started = get(port, "shop", "/cart?item=1", &[]).await;
    assert_eq!(started.status, 200);
    let client_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = get(port, "shop", "/traced", &[("traceparent", client_trace)]).await;
    assert_eq!(traced.status, 200);
    assert_eq!(get(port, "quota", "/first", &[]).await.status, 200);
    let refused = get(port, "quota", "/second", &[("traceparent", client_trace)]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(get(port, "nowhere", "/lost", &[]).await.status, 404);

    let all = wait_lines(&path, 5);
    assert_eq!(all.len(), 5, "{all:#?}");

    let cart = line(&all, "path", "/cart?item=1");
    assert_eq!(cart["gateway"], "default/gw");
    assert_eq!(cart["route"], "default/shop");
    assert_eq!(cart["rule"], "0");
    assert_eq!(cart["backend"], "default/app:80");
    assert_eq!(cart["endpoint"], app.addr.to_string());
    assert_eq!(cart["zone"], "zone-a");
    assert_eq!(cart["method"], "GET");
    assert_eq!(cart["authority"], "shop");
    assert_eq!(cart["status"], 200);
    assert_eq!(cart["bytes_in"], 0);
    assert_eq!(cart["bytes_out"], started.body.len() as u64);
    assert_eq!(cart["retries"], 0);
    assert_eq!(cart["rate_limit"], Value::Null);
    assert_eq!(cart["caller"], Value::Null);
    let (total, upstream) = (
        cart["duration_ms"].as_f64().unwrap(),
        cart["upstream_duration_ms"].as_f64().unwrap(),
    );
    assert!(upstream > 0.0 && upstream <= total, "{cart}");
    assert!(cart["time"].as_str().unwrap().ends_with('Z'), "{cart}");
    // The trace the gateway started is the one the backend got.
    let sent = started
        .seen_header("traceparent")
        .expect("the backend got a traceparent");
    assert_eq!(cart["trace_id"], sent[3..35]);

    let traced_line = line(&all, "path", "/traced");
    assert_eq!(traced_line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        traced.seen_header("traceparent").as_deref(),
        Some(client_trace)
    );

    assert_eq!(line(&all, "path", "/first")["rate_limit"], "allowed");
    let refused = line(&all, "path", "/second");
    assert_eq!(refused["rate_limit"], "limited");
    assert_eq!(refused["status"], 429);
    assert_eq!(
        refused["endpoint"],
        Value::Null,
        "a refused request reached no endpoint"
    );
    // Answered by the gateway itself: the client's trace is still named.
    assert_eq!(refused["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    let lost = line(&all, "path", "/lost");
    assert_eq!(lost["status"], 404);
    assert_eq!(lost["route"], Value::Null);
    assert_eq!(lost["authority"], "nowhere");
    assert_eq!(lost["trace_id"], Value::Null);

    gw.wait_metric("weir_access_log_lines_total", 5.0);
    assert_eq!(gw.metric("weir_access_log_dropped_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_still_queued_at_shutdown_are_written() {
    let (_app, port, m) = site();
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let mut gw = Gateway::start_with(&m, &["--access-log", path.to_str().unwrap()]);
    for i in 0..20 {
        assert_eq!(get(port, "shop", &format!("/{i}"), &[]).await.status, 200);
    }
    // Stopped at once: the writer may not have looked at its queue yet.
    assert!(gw.proc().terminate().success());
    assert_eq!(lines(&path).len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigusr1_reopens_a_log_that_rotation_renamed() {
    let (_app, port, m) = site();
    let logs = tempfile::tempdir().unwrap();
    let (path, rotated) = (
        logs.path().join("access.log"),
        logs.path().join("access.log.1"),
    );
    let mut gw = Gateway::start_with(&m, &["--access-log", path.to_str().unwrap()]);
    assert_eq!(get(port, "shop", "/before", &[]).await.status, 200);
    wait_lines(&path, 1);
    std::fs::rename(&path, &rotated).unwrap();
    let kill = Command::new("kill")
        .args(["-USR1", &gw.proc().pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for("the reopen", Duration::from_secs(10), || {
        gw.log().contains("access log reopened")
    });
    assert_eq!(get(port, "shop", "/after", &[]).await.status, 200);
    let now = wait_lines(&path, 1);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0]["path"], "/after");
    let old = lines(&rotated);
    assert_eq!(old.len(), 1);
    assert_eq!(old[0]["path"], "/before");
}

#[test]
fn stdout_gets_the_lines_and_a_bad_path_stops_the_start() {
    let (_app, port, m) = site();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifests.yaml"), &m).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let base = |log: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weir-gateway"));
        c.arg("--manifests")
            .arg(dir.path())
            .args(["--admin", &admin, "--bind", "127.0.0.1", "--threads", "1"])
            .args(["--access-log", log])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };

    let bad = base("/nonexistent-dir/access.log").output().unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("access log") && stderr.contains("/nonexistent-dir/access.log"),
        "{stderr}"
    );

    let mut child = base("stdout").spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let line = wait_and_get(&rt, port, &rx);
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["path"], "/out");
    assert_eq!(v["status"], 200);
}

/// Sends requests until the gateway answers (it starts in the background), then returns
/// the first line on its stdout.
fn wait_and_get(
    rt: &tokio::runtime::Runtime,
    port: u16,
    rx: &std::sync::mpsc::Receiver<String>,
) -> String {
    wait_for("the gateway to serve", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let r = rt.block_on(get(port, "shop", "/out", &[]));
    assert_eq!(r.status, 200);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a line on stdout")
}
