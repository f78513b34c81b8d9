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
    one_rule_with(port, "", rule)
}

/// A route with one rule and the given route annotations.
fn one_rule_with(port: u16, annotations: &str, rule: &str) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += &format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, annotations: {{{annotations}}}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [svc.example.com]\n  rules:\n  - {rule}\n"
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

/// The requests an echo counted (`/__echo/stats`).
fn served(e: &Echo) -> u64 {
    let (_, body) = blocking_get(e.addr, "/__echo/stats").unwrap();
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["requests"]
        .as_u64()
        .unwrap()
}

fn metric(gw: &Gateway, name: &str, label: &str) -> f64 {
    let (_, metrics) = gw.admin_get("/metrics").unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn weight_zero_gets_nothing_even_on_retries() {
    let (s1, s2, canary) = (Echo::start("s1"), Echo::start("s2"), Echo::start("canary"));
    let port = free_port();
    let mut m = one_rule_with(
        port,
        "weir.dev/retry-budget: \"100\"",
        "backendRefs: [{name: stable, port: 80, weight: 100}, {name: canary, port: 80, weight: 0}]\n    retry: {codes: [503], attempts: 2}",
    );
    m += &zoned("stable", &[(&s1, "a"), (&s2, "a")], "", "");
    m += &zoned("canary", &[(&canary, "a")], "", "");
    let gw = Gateway::start(&m);
    // Every answer is a 503, so every request is retried on the stable backend.
    let (_, failed) = spread(port, "/status/503", 200, 4).await;
    assert_eq!(failed, 200);
    let retries = metric(&gw, "weir_retries_total", "reason=\"status\"");
    assert!(retries >= 200.0, "retries happened: {retries}");
    assert_eq!(
        served(&canary),
        0,
        "weight 0 means zero requests, retries included"
    );
    assert_eq!(served(&s1) + served(&s2), 200 + retries as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flaky_endpoint_is_ejected_and_retries_hide_it() {
    let flaky = Echo::start_with("flaky", &["--fail-ratio", "0.5"]);
    let good: Vec<Echo> = (1..=3).map(|i| Echo::start(&format!("good{i}"))).collect();
    let port = free_port();
    let mut m = one_rule(
        port,
        "backendRefs: [{name: svc, port: 80}]\n    retry: {codes: [503], attempts: 2}",
    );
    let mut eps = vec![(&flaky, "a")];
    eps.extend(good.iter().map(|e| (e, "a")));
    m += &zoned("svc", &eps, "", "");
    let gw = Gateway::start(&m);
    let (seen, failed) = spread(port, "/", 2000, 4).await;
    assert!(
        failed <= 2,
        "client-visible errors ≤ 0.1%: {failed} {seen:?}"
    );
    assert!(
        metric(&gw, "weir_endpoint_ejections_total", "default/svc:80") >= 1.0,
        "ejected"
    );
    // Once ejected it gets nothing for the ejection time (30 s at first).
    let before = served(&flaky);
    let (_, failed) = spread(port, "/", 400, 4).await;
    assert_eq!(failed, 0);
    assert_eq!(
        served(&flaky),
        before,
        "an ejected endpoint takes no requests"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_budget_caps_retries_in_an_outage() {
    let (e1, e2) = (Echo::start("e1"), Echo::start("e2"));
    let port = free_port();
    let mut m = one_rule(
        port,
        "backendRefs: [{name: svc, port: 80}]\n    retry: {codes: [503], attempts: 3}",
    );
    m += &zoned("svc", &[(&e1, "a"), (&e2, "a")], "", "");
    let gw = Gateway::start(&m);
    let start = Instant::now();
    let (_, failed) = spread(port, "/status/503", 1000, 4).await;
    assert_eq!(failed, 1000);
    let upstream = served(&e1) + served(&e2);
    // Without a budget this would be 4000. With 20%: 1000 + 200, plus the floor of 10
    // retries per second.
    let floor = 10 * (start.elapsed().as_secs() + 1);
    assert!(
        upstream <= 1200 + floor,
        "{upstream} upstream requests for 1000"
    );
    assert!(upstream >= 1150, "the budget was used: {upstream}");
    assert!(metric(&gw, "weir_retry_budget_exhausted_total", "default/svc:80") > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_are_per_try_and_per_request() {
    let slow = Echo::start("slow");
    let port = free_port();
    let mut m = one_rule_with(
        port,
        "weir.dev/retry-budget: \"100\"",
        "matches: [{path: {value: /try}}]\n    backendRefs: [{name: svc, port: 80}]\n    timeouts: {request: 2s, backendRequest: 200ms}\n    retry: {codes: [504], attempts: 2}\n  - matches: [{path: {value: /whole}}]\n    backendRefs: [{name: svc, port: 80}]\n    timeouts: {request: 300ms}",
    );
    m += &zoned("svc", &[(&slow, "a")], "", "");
    let _gw = Gateway::start(&m);
    let t = Instant::now();
    let r = get(port, "svc.example.com", "/try?delay=1s", &[]).await;
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(served(&slow), 3, "three tries of 200 ms each");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(1500),
        "{took:?}"
    );

    let t = Instant::now();
    let r = get(port, "svc.example.com", "/whole?delay=1s", &[]).await;
    assert_eq!(r.status, 504);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // A fast answer within the per-try time is untouched.
    assert_eq!(get(port, "svc.example.com", "/try", &[]).await.status, 200);
}

fn sticky_route(port: u16, canary: Option<u32>) -> String {
    let refs = match canary {
        Some(w) => format!(
            "[{{name: stable, port: 80, weight: 50}}, {{name: canary, port: 80, weight: {w}}}]"
        ),
        None => "[{name: stable, port: 80}]".into(),
    };
    one_rule(
        port,
        &format!(
            "matches: [{{path: {{value: /c}}}}]\n    backendRefs: {refs}\n    sessionPersistence: {{sessionName: weir-session, absoluteTimeout: 1h, cookieConfig: {{lifetimeType: Permanent}}}}\n  - matches: [{{path: {{value: /h}}}}]\n    backendRefs: {refs}\n    sessionPersistence: {{type: Header, sessionName: x-session}}"
        ),
    )
}

/// The pin a response asks for: the cookie pair, or the header value.
fn pin(r: &Reply, header: bool) -> Option<(String, String)> {
    if header {
        let v = r.headers.get("x-session")?.to_str().ok()?;
        return Some(("x-session".into(), v.into()));
    }
    let v = r.headers.get("set-cookie")?.to_str().ok()?;
    Some(("cookie".into(), v.split(';').next()?.to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_sessions_survive_weight_zero_and_leave_with_the_backend() {
    let stable = Echo::start("stable");
    let (c1, c2) = (Echo::start("canary1"), Echo::start("canary2"));
    let port = free_port();
    let services = zoned("stable", &[(&stable, "a")], "", "")
        + &zoned("canary", &[(&c1, "a"), (&c2, "a")], "", "");
    let gw = Gateway::start(&(sticky_route(port, Some(50)) + &services));
    for (path, header) in [("/c", false), ("/h", true)] {
        // New sessions, half of them pinned to the canary's two endpoints.
        let mut pinned = Vec::new();
        for _ in 0..40 {
            let r = get(port, "svc.example.com", path, &[]).await;
            let p = pin(&r, header).expect("a new session is pinned");
            if r.service().starts_with("canary") {
                pinned.push((p, r.service().to_string()));
            }
        }
        assert!(pinned.len() >= 10, "{path}: {}", pinned.len());
        if !header {
            let first = get(port, "svc.example.com", path, &[]).await;
            let cookie = first.headers["set-cookie"].to_str().unwrap();
            assert!(
                cookie.contains("Max-Age=3600") && cookie.contains("HttpOnly"),
                "{cookie}"
            );
        }
        gw.write_and_wait(&(sticky_route(port, Some(0)) + &services));
        for ((name, value), served) in &pinned {
            for _ in 0..3 {
                let r = get(port, "svc.example.com", path, &[(name, value)]).await;
                assert_eq!(&r.service(), served, "{path}: the pin outlives weight 0");
            }
        }
        for _ in 0..50 {
            let r = get(port, "svc.example.com", path, &[]).await;
            assert_eq!(
                r.service(),
                "stable",
                "{path}: new sessions follow weight 0"
            );
        }
        gw.write_and_wait(&(sticky_route(port, None) + &services));
        for ((name, value), _) in &pinned {
            let r = get(port, "svc.example.com", path, &[(name, value)]).await;
            assert_eq!(
                r.service(),
                "stable",
                "{path}: the pin ends with its backend"
            );
            assert!(pin(&r, header).is_some(), "{path}: and a new pin is issued");
        }
        gw.write_and_wait(&(sticky_route(port, Some(50)) + &services));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_cohorts_only_move_towards_the_canary() {
    let (stable, canary) = (Echo::start("stable"), Echo::start("canary"));
    let port = free_port();
    let rule = |w: u32| {
        one_rule_with(
            port,
            "weir.dev/split-key: \"header:x-user\"",
            &format!(
                "backendRefs: [{{name: stable, port: 80, weight: {}}}, {{name: canary, port: 80, weight: {w}}}]",
                100 - w
            ),
        ) + &zoned("stable", &[(&stable, "a")], "", "")
            + &zoned("canary", &[(&canary, "a")], "", "")
    };
    let gw = Gateway::start(&rule(10));
    let assign = || async {
        let mut out = Vec::new();
        for u in 0..300 {
            let user = format!("user-{u}");
            let r = get(port, "svc.example.com", "/", &[("x-user", &user)]).await;
            let again = get(port, "svc.example.com", "/", &[("x-user", &user)]).await;
            assert_eq!(r.service(), again.service(), "a user stays in its cohort");
            out.push(r.service() == "canary");
        }
        out
    };
    let before = assign().await;
    let n = before.iter().filter(|c| **c).count();
    assert!((15..=50).contains(&n), "about 10% of 300: {n}");
    gw.write_and_wait(&rule(50));
    let after = assign().await;
    for (b, a) in before.iter().zip(&after) {
        assert!(!*b || *a, "a canary user went back to stable");
    }
    let m = after.iter().filter(|c| **c).count();
    assert!((120..=180).contains(&m), "about half of 300: {m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_in_flight_on_a_dying_endpoint_are_retried_elsewhere() {
    let mut doomed = Some(Echo::start("doomed"));
    let survivor = Echo::start("survivor");
    let port = free_port();
    // No `retry` field: a try that broke before any answer is still retried.
    let mut m = one_rule(port, "backendRefs: [{name: svc, port: 80}]");
    m += &zoned(
        "svc",
        &[(doomed.as_ref().unwrap(), "a"), (&survivor, "a")],
        "weir.dev/load-balancer: round-robin",
        "",
    );
    let gw = Gateway::start(&m);
    let requests: Vec<_> = (0..6)
        .map(|_| tokio::spawn(get(port, "svc.example.com", "/?delay=400ms", &[])))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    doomed.take();
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.service(), "survivor");
    }
    assert!(metric(&gw, "weir_retries_total", "reason=\"reset\"") >= 1.0);
}
