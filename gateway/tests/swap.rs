//! Atomic config swap under load: 100 manifest rewrites while clients keep sending, with no
//! failed request and no reset connection; the time from a file write to the new route
//! answering; and broken changes that leave the last good config serving.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;

fn manifests(port: u16, a: &Echo, b: &Echo, generation: usize) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("a", &[a]);
    m += &service("b", &[b]);
    // Every generation moves the canary weight and adds one route: the old routes keep
    // working throughout, the new one must appear.
    let canary = generation % 10;
    m += &route(
        "main",
        &format!(
            "  rules:\n  - matches: [{{path: {{value: /load}}}}]\n    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Generation, value: \"{generation}\"}}]}}}}]\n    backendRefs: [{{name: a, port: 80, weight: {}}}, {{name: b, port: 80, weight: {canary}}}]\n",
            10 - canary
        ),
    );
    for i in 0..=generation {
        m += &format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: gen-{i}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{path: {{type: Exact, value: /gen-{i}}}}}]\n    backendRefs: [{{name: a, port: 80}}]\n"
        );
    }
    m
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::print_stderr)] // the swap latency is reported for the benchmark record
async fn a_hundred_rewrites_under_load_fail_nothing() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let port = free_port();
    let gw = Gateway::start(&manifests(port, &a, &b, 0));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for worker in 0..8 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            // Half the workers keep their connections alive, half open one per request:
            // both must survive every swap.
            let keep = client();
            while !stop.load(Ordering::Relaxed) {
                let c = if worker % 2 == 0 {
                    keep.clone()
                } else {
                    client()
                };
                let res = c
                    .get(format!("http://127.0.0.1:{port}/load"))
                    .header("host", "load")
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("error {e:?}")),
                }
            }
        }));
    }

    let mut latencies = Vec::new();
    for generation in 1..=100 {
        let path = format!("/gen-{generation}");
        let written = Instant::now();
        gw.write(&manifests(port, &a, &b, generation));
        // Poll the new route until it answers (404 until then): that is the swap latency a
        // user sees.
        loop {
            if get(port, "probe", &path, &[]).await.status == 200 {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "generation {generation} never went live:\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(written.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }

    let failures = failures.lock().unwrap();
    let served = ok.load(Ordering::Relaxed);
    assert!(served > 500, "the load kept going: {served} requests");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        served,
        &failures[..failures.len().min(5)]
    );
    assert!(gw.generation() >= 101);
    latencies.sort();
    // Reported, not asserted: timing is a benchmark figure on a shared machine.
    eprintln!(
        "swap latency over 100 rewrites: p50 {:?}, p99 {:?}, max {:?}; {served} requests served during the rewrites, 0 failed",
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_change_keeps_the_last_good_config_serving() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let port = free_port();
    let gw = Gateway::start(&manifests(port, &a, &b, 3));
    assert_eq!(get(port, "h", "/gen-3", &[]).await.status, 200);

    // A YAML syntax error: rejected, reported in /config, nothing changes.
    gw.write("apiVersion: v1\nkind: [broken\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.config()["error"].is_null() {
        assert!(Instant::now() < deadline, "the error was never reported");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cfg = gw.config();
    assert!(
        cfg["error"]
            .as_str()
            .unwrap()
            .contains("manifests.yaml document 1"),
        "{cfg}"
    );
    assert_eq!(
        get(port, "h", "/gen-3", &[]).await.status,
        200,
        "still serving"
    );
    assert_eq!(gw.generation(), 1);

    // A field of the wrong type: rejected with the field named.
    gw.write(&manifests(port, &a, &b, 3).replace(&format!("port: {port}"), "port: eighty"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.config()["error"]
        .as_str()
        .unwrap_or("")
        .contains("spec.listeners[0].port")
    {
        assert!(
            Instant::now() < deadline,
            "the field was never named: {}",
            gw.config()["error"]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gw.log().contains("last good config keeps serving"),
        "{}",
        gw.log()
    );
    assert_eq!(
        get(port, "h", "/gen-2", &[]).await.status,
        200,
        "still serving"
    );

    // The fix goes live and clears the error.
    gw.write_and_wait(&manifests(port, &a, &b, 4));
    assert_eq!(get(port, "h", "/gen-4", &[]).await.status, 200);
    assert!(gw.config()["error"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_ports_come_and_go_with_the_gateway_spec() {
    let a = Echo::start("a");
    let (p1, p2) = (free_port(), free_port());
    let with_ports = |ports: &[u16]| {
        let listeners: Vec<String> = ports
            .iter()
            .map(|p| http_listener(&format!("l{p}"), *p))
            .collect();
        let mut m = gateway(&listeners);
        m += &service("a", &[&a]);
        m += &route("r", "  rules:\n  - backendRefs: [{name: a, port: 80}]\n");
        m
    };
    let gw = Gateway::start(&with_ports(&[p1]));
    assert_eq!(get(p1, "h", "/", &[]).await.status, 200);
    assert!(std::net::TcpStream::connect(("127.0.0.1", p2)).is_err());

    gw.write_and_wait(&with_ports(&[p1, p2]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", p2)).is_err() {
        assert!(Instant::now() < deadline, "port {p2} never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(p2, "h", "/", &[]).await.status, 200);
    assert!(
        gw.log()
            .contains(&format!("listening port={p2} protocol=HTTP"))
    );

    gw.write_and_wait(&with_ports(&[p2]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", p1)).is_ok() {
        assert!(Instant::now() < deadline, "port {p1} never closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(p2, "h", "/", &[]).await.status, 200);
}
