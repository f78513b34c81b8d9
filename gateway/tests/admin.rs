//! The admin listener and the command line of a real `weir-gateway`.

mod support;

use std::time::{Duration, Instant};
use support::*;

#[test]
fn help_documents_every_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir-gateway"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--manifests",
        "--admin",
        "--threads",
        "--bind",
        "--debounce-ms",
        "--drain-seconds",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("[default: 127.0.0.1:9901]"), "{help}");
}

#[test]
fn unreadable_manifests_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: [}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir-gateway"))
        .arg("--manifests")
        .arg(dir.path())
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml document 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_config_and_metrics() {
    let app = Echo::start("app");
    // The listener port is taken: the gateway cannot serve yet, so it is not ready.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let dead_port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("app", &[&app]);
    m += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: down}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: down-0, labels: {{kubernetes.io/service-name: down}}}}\naddressType: IPv4\nports: [{{name: http, port: {dead_port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
    );
    m += &route(
        "r",
        "  rules:\n  - matches: [{path: {value: /down}}]\n    backendRefs: [{name: down, port: 80}]\n  - backendRefs: [{name: app, port: 80}]\n",
    );
    let gw = Gateway::spawn(&m, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.admin_get("/healthz").is_none() {
        assert!(
            Instant::now() < deadline,
            "admin never came up:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gw.admin_get("/healthz").unwrap().0, 200);
    let (code, body) = gw.admin_get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no config is live yet"), "{body}");

    // Once the port is free the gateway binds it on its own and becomes ready.
    drop(squatter);
    gw.wait_ready();
    assert_eq!(get(port, "h", "/", &[]).await.status, 200);
    assert_eq!(
        get(port, "h", "/down", &[]).await.status,
        503,
        "connection refused: no healthy upstream"
    );

    let cfg = gw.config();
    assert_eq!(cfg["generation"], 1);
    assert!(cfg["loadedAt"].as_f64().unwrap() > 1.7e9);
    assert!(cfg["error"].is_null());
    assert_eq!(cfg["config"]["listeners"][0]["port"], port);

    // A request is counted once its response is written, which can trail the client seeing
    // it: wait for the last one to land before reading the rest.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, metrics) = loop {
        let (code, metrics) = gw.admin_get("/metrics").unwrap();
        if metrics.contains(r#"code="503""#) || Instant::now() > deadline {
            break (code, metrics);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, 200);
    for want in [
        r#"weir_requests_total{backend="default/app:80",code="200",destination="",gateway="default/gw",route="default/r",rule="1",source=""} 1"#,
        r#"weir_requests_total{backend="default/down:80",code="503",destination="",gateway="default/gw",route="default/r",rule="0",source=""} 1"#,
        r#"weir_upstream_connect_errors_total{backend="default/down:80",gateway="default/gw",route="default/r",rule="0"}"#,
        "weir_request_duration_seconds_bucket{backend=\"default/app:80\"",
        "weir_config_generation 1",
        "weir_config_last_reload_timestamp_seconds 1",
    ] {
        assert!(
            metrics.contains(want),
            "{want} missing from /metrics:\n{metrics}"
        );
    }
    assert_eq!(gw.admin_get("/nope").unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_turns_readiness_off_and_exits_cleanly() {
    let app = Echo::start("app");
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("app", &[&app]);
    m += &route("r", "  rules:\n  - backendRefs: [{name: app, port: 80}]\n");
    let mut gw = Gateway::start_with(&m, &["--drain-seconds", "5"]);
    // A slow request in flight when SIGTERM arrives still completes. It is in flight once
    // the backend has counted it (the echo counts a request when it arrives, before the
    // delay), long enough for readiness to be seen off while it drains.
    let slow = tokio::spawn(async move { get(port, "h", "/?delay=2s", &[]).await.status });
    let deadline = Instant::now() + Duration::from_secs(10);
    let arrived = || {
        blocking_get(app.addr, "/__echo/stats").is_some_and(|(_, body)| {
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["requests"] == 1
        })
    };
    while !arrived() {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.admin_get("/readyz").unwrap().0, 200);
    gw.proc().sigterm();
    // Readiness turns off while the slow request drains (the process cannot exit before
    // it ends, so this is seen before the exit).
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        if let Some((503, body)) = gw.admin_get("/readyz") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never turned off:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(body.contains("shutting down"), "{body}");
    let status = gw.proc().wait();
    assert!(status.success(), "exit status {status:?}\n{}", gw.log());
    assert_eq!(slow.await.unwrap(), 200);
    assert!(gw.log().contains("stopping"), "{}", gw.log());
}

/// This machine's address on a non-loopback interface, as another pod would reach the
/// gateway's: the source address the kernel picks for a route off the host.
fn outside_address() -> std::net::IpAddr {
    for target in ["192.0.2.1:9", "10.255.255.1:9", "172.16.0.1:9", "8.8.8.8:9"] {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        if s.connect(target).is_ok()
            && let Ok(local) = s.local_addr()
            && !local.ip().is_loopback()
            && !local.ip().is_unspecified()
        {
            return local.ip();
        }
    }
    panic!("this test needs a non-loopback IPv4 interface, as a pod has");
}

/// `/config` shows every route, endpoint and certificate chain: it answers connections
/// over loopback (a process in the pod, kubectl port-forward) and refuses the pod's
/// address, where the kubelet's probes and Prometheus still get theirs.
#[test]
fn config_is_served_to_loopback_clients_only_unless_opened() {
    let outside = outside_address();
    for (access, outside_status) in [(None, 403), (Some("any"), 200)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.yaml"),
            gateway(&[http_listener("http", free_port())]),
        )
        .unwrap();
        let port = free_port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir-gateway"));
        cmd.arg("--manifests")
            .arg(dir.path())
            .args(["--admin", &format!("0.0.0.0:{port}"), "--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(a) = access {
            cmd.args(["--config-access", a]);
        }
        let _gw = Proc::spawn("weir-gateway", &mut cmd);
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let pod = std::net::SocketAddr::new(outside, port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while weir_loadtest::procs::http_get(local, "/readyz").map(|r| r.0) != Some(200) {
            assert!(Instant::now() < deadline, "not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        let get = |addr, path| weir_loadtest::procs::http_get(addr, path).expect("answers");
        assert_eq!(get(local, "/config").0, 200);
        let (status, body) = get(pod, "/config");
        assert_eq!(status, outside_status, "{access:?}: {body}");
        if outside_status == 403 {
            assert!(body.contains("port-forward"), "{body}");
            assert!(!body.contains("generation"), "{body}");
        }
        for path in ["/metrics", "/healthz", "/readyz"] {
            assert_eq!(get(pod, path).0, 200, "{path} from the pod's address");
        }
    }
}
