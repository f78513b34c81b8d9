//! Balancing through a real `weir-gateway --zone a` and real `weir-echo` endpoints labelled
//! with zones: zone affinity and its spill-over, endpoint loss and recovery, canary weights,
//! `weight: 0`, outlier ejection with retries, and the retry budget.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::*;

/// A Service whose endpoints are the given echoes with their zones (`ready: false` when
/// the zone is prefixed with `!`), plus extra Service metadata and spec lines.
fn zoned(name: &str, eps: &[(&Echo, &str)], annotations: &str, spec: &str) -> String {
    let mut out = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, annotations: {{{annotations}}}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n{spec}"
    );
    for (i, (e, zone)) in eps.iter().enumerate() {
        let (zone, ready) = match zone.strip_prefix('!') {
            Some(z) => (z, false),
            None => (*zone, true),
        };
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{i}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"], zone: {zone}, conditions: {{ready: {ready}}}}}]\n",
            e.addr.port()
        ));
    }
    out
}

const AFFINITY: &str = "  trafficDistribution: PreferClose\n";
const CHECKED: &str = "weir.dev/health-check: /healthz, weir.dev/health-check-interval: 100ms";

/// What `n` requests (over `concurrency` connections) got: answers by echo name, and the
/// count of failed requests (transport errors and 5xx).
async fn spread(
    port: u16,
    path: &str,
    n: usize,
    concurrency: usize,
) -> (HashMap<String, usize>, usize) {
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let path = path.to_string();
        let count = n / concurrency + usize::from(t < n % concurrency);
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut failed = 0;
            for _ in 0..count {
                match client
                    .get(format!("http://127.0.0.1:{port}{path}"))
                    .header("host", "svc.example.com")
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() < 500 => {
                        let who = r
                            .headers()
                            .get("x-echo-service")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let _ = r.bytes().await;
                        *seen.entry(who).or_default() += 1;
                    }
                    _ => failed += 1,
                }
            }
            (seen, failed)
        }));
    }
    let mut all: HashMap<String, usize> = HashMap::new();
    let mut failed = 0;
    for t in tasks {
        let (seen, f) = t.await.unwrap();
        failed += f;
        for (k, v) in seen {
            *all.entry(k).or_default() += v;
        }
    }
    (all, failed)
}

/// The share (in percent) of answers from echoes whose name starts with `prefix`.
fn share(seen: &HashMap<String, usize>, prefix: &str) -> f64 {
    let total: usize = seen.values().sum();
    let part: usize = seen
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum();
    100.0 * part as f64 / total.max(1) as f64
}

fn one_rule(port: u16, rule: &str) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += &route(
        "r",
        &format!("  hostnames: [svc.example.com]\n  rules:\n  - {rule}\n"),
    );
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn zone_affinity_keeps_local_spills_evenly_and_recovers() {
    let a1 = Echo::start("a1");
    let mut a2 = Some(Echo::start("a2"));
    let (b1, b2, c1, c2) = (
        Echo::start("b1"),
        Echo::start("b2"),
        Echo::start("c1"),
        Echo::start("c2"),
    );
    let not_ready = Echo::start("a3-not-ready");
    let port = free_port();
    let a2_port = a2.as_ref().unwrap().addr.port();
    let a1_port = a1.addr.port();
    let mut m = one_rule(port, "backendRefs: [{name: cache, port: 80}]");
    m += &zoned(
        "cache",
        &[
            (&a1, "a"),
            (a2.as_ref().unwrap(), "a"),
            (&not_ready, "!a"),
            (&b1, "b"),
            (&b2, "b"),
            (&c1, "c"),
            (&c2, "c"),
        ],
        CHECKED,
        AFFINITY,
    );
    let gw = Gateway::start_with(&m, &["--zone", "a"]);

    let (seen, failed) = spread(port, "/", 600, 4).await;
    assert_eq!(failed, 0);
    assert!(share(&seen, "a") >= 99.0, "balanced: {seen:?}");
    assert!(!seen.contains_key("a3-not-ready"), "ready=false is skipped");

    // Zone a loses one of two endpoints: nothing fails while the gateway notices, and
    // then it keeps 60% local and splits the rest evenly.
    a2.take();
    let (_, failed) = spread(port, "/", 300, 4).await;
    assert_eq!(
        failed, 0,
        "connect failures are retried on another endpoint"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (seen, failed) = spread(port, "/", 2000, 4).await;
    assert_eq!(failed, 0);
    let (a, b, c) = (share(&seen, "a"), share(&seen, "b"), share(&seen, "c"));
    assert!((a - 60.0).abs() <= 5.0, "a keeps 60% ± 5: {seen:?}");
    assert!(
        (b - 20.0).abs() <= 5.0 && (c - 20.0).abs() <= 5.0,
        "{seen:?}"
    );

    // Zone a loses everything: b and c serve it all.
    drop(a1);
    let (seen, failed) = spread(port, "/", 600, 4).await;
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(share(&seen, "a"), 0.0);

    // Recovery: within 2 s of the endpoints coming back, ≥ 99% is in-zone again.
    let _a1 = Echo::start_on("a1", a1_port, &[]);
    let _a2 = Echo::start_on("a2", a2_port, &[]);
    let back = Instant::now();
    loop {
        let (seen, failed) = spread(port, "/", 100, 2).await;
        assert_eq!(failed, 0);
        if share(&seen, "a") >= 99.0 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "not back in zone: {seen:?}"
        );
    }

    let (_, metrics) = gw.admin_get("/metrics").unwrap();
    let line = |locality: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("weir_zone_requests_total")
                    && l.contains("default/cache:80")
                    && l.contains(&format!("locality=\"{locality}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(line("local") > 1000.0 && line("cross") > 600.0, "{metrics}");
    assert!(metrics.contains("weir_zone_bytes_total{direction=\"response\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_zone_spills_further_and_comes_back() {
    let (a, b, c) = (Echo::start("a1"), Echo::start("b1"), Echo::start("c1"));
    let port = free_port();
    let mut m = one_rule(port, "backendRefs: [{name: cache, port: 80}]");
    m += &zoned("cache", &[(&a, "a"), (&b, "b"), (&c, "c")], "", AFFINITY);
    let _gw = Gateway::start_with(&m, &["--zone", "a"]);
    // One endpoint per zone (Envoy would not do zone-aware routing at all) and 32 slow
    // requests at a time: the local endpoint is far past the high-water mark.
    let (seen, failed) = spread(port, "/?delay=50ms", 320, 32).await;
    assert_eq!(failed, 0);
    assert!(share(&seen, "a") < 70.0, "spilled under load: {seen:?}");
    let (seen, _) = spread(port, "/", 200, 1).await;
    assert_eq!(
        share(&seen, "a"),
        100.0,
        "back when the load fell: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_weights_are_exact_overall_and_per_zone() {
    // Zone a has one endpoint per Service, b and c two: the gateway in a spills 40%.
    let zones = ["a", "b", "b", "c", "c"];
    let start = |svc: &str| -> Vec<Echo> {
        (0..zones.len())
            .map(|i| Echo::start(&format!("{svc}-{}{i}", zones[i])))
            .collect()
    };
    let (stable, canary) = (start("stable"), start("canary"));
    let port = free_port();
    let mut m = one_rule(
        port,
        "backendRefs: [{name: stable, port: 80, weight: 90}, {name: canary, port: 80, weight: 10}]",
    );
    fn list<'a>(echoes: &'a [Echo], zones: [&'static str; 5]) -> Vec<(&'a Echo, &'static str)> {
        echoes.iter().zip(zones).collect()
    }
    m += &zoned("stable", &list(&stable, zones), "", AFFINITY);
    m += &zoned("canary", &list(&canary, zones), "", AFFINITY);
    let _gw = Gateway::start_with(&m, &["--zone", "a"]);
    let (seen, failed) = spread(port, "/", 10_000, 8).await;
    assert_eq!(failed, 0);
    let canary = share(&seen, "canary");
    assert!((canary - 10.0).abs() <= 0.05, "canary {canary}%: {seen:?}");
    for zone in ["a", "b", "c"] {
        let count = |svc: &str| -> f64 {
            seen.iter()
                .filter(|(k, _)| k.starts_with(&format!("{svc}-{zone}")))
                .map(|(_, v)| *v as f64)
                .sum()
        };
        let (s, c) = (count("stable"), count("canary"));
        let in_zone = 100.0 * c / (s + c);
        assert!(
            (in_zone - 10.0).abs() <= 1.0,
            "zone {zone}: {in_zone}% {seen:?}"
        );
    }
}
