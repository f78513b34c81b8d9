//! RateLimitPolicy through real `weir-gateway` processes and real `redis-server`s on
//! ephemeral ports: responses, key parts, shadow mode, fleet accuracy (single node and a
//! 3-master cluster), and each failureMode while Redis is killed and restarted.

mod support;

use std::time::{Duration, Instant};
use support::redis::{Cluster, Redis};
use support::*;

/// A RateLimitPolicy on HTTPRoute `route`; `spec` is the rest of the spec, indented by two.
fn policy(name: &str, route: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: weir.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {route}}}]\n{spec}"
    )
}

/// An HTTPRoute `name` for hostname `name` sending everything to `app`.
fn app_route(name: &str) -> String {
    route(
        name,
        &format!("  hostnames: [{name}]\n  rules:\n  - backendRefs: [{{name: app, port: 80}}]\n"),
    )
}

/// An echo backend `app`, a free listener port, and manifests with a Gateway on that port
/// and one `app_route` per host.
fn site(hosts: &[&str]) -> (Echo, u16, String) {
    let app = Echo::start("app");
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("app", &[&app]);
    for host in hosts {
        m += &app_route(host);
    }
    (app, port, m)
}

/// The value of one sample on the gateway's /metrics page (0 when absent).
fn metric(gw: &Gateway, sample: &str) -> f64 {
    let (_, body) = gw.admin_get("/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The bulk strings of a RESP reply (`KEYS`, `HVALS`).
fn bulk_strings(reply: &str) -> Vec<&str> {
    let lines: Vec<&str> = reply.split("\r\n").collect();
    lines
        .windows(2)
        .filter(|w| w[0].starts_with('$'))
        .map(|w| w[1])
        .collect()
}

/// What `node` counts for the limits whose keys match `pattern`: the sum of every key's
/// window buckets (synced admits and leased tokens).
fn redis_count(node: &Redis, pattern: &str) -> u64 {
    let keys = node.keys(pattern);
    bulk_strings(&keys)
        .into_iter()
        .map(|key| {
            let values = node.command(&format!("HVALS {key}")).unwrap_or_default();
            bulk_strings(&values)
                .into_iter()
                .filter_map(|v| v.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Waits until Redis counts at least `admitted` for the limits whose keys match `pattern`
/// (on any of `nodes`): the gateways have synced those admits.
fn wait_synced(nodes: &[Redis], pattern: &str, admitted: usize) {
    wait_for(
        &format!("{admitted} admits of {pattern} synced to Redis"),
        Duration::from_secs(5),
        || nodes.iter().map(|n| redis_count(n, pattern)).sum::<u64>() >= admitted as u64,
    );
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Sends `n` GETs one after the other; returns the status of each.
async fn statuses(port: u16, host: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(port, host, "/", headers).await.status);
    }
    out
}

fn count(statuses: &[u16], code: u16) -> usize {
    statuses.iter().filter(|&&s| s == code).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_429_with_retry_after_and_the_ratelimit_fields() {
    let redis = Redis::start();
    let (_app, port, mut m) = site(&["quota", "quiet"]);
    m += &policy(
        "quota",
        "quota",
        "  limits:\n  - {name: per-route, requests: 3, window: 10s}\n",
    );
    m += &policy(
        "quiet",
        "quiet",
        "  responseHeaders: false\n  limits:\n  - {name: hidden, requests: 1, window: 10s}\n",
    );
    let gw = Gateway::start_with(&m, &["--redis", &redis.url()]);
    // Until Redis has counted the fleet, a late lease admits within a fleet's allowance.
    wait_for("the first heartbeat", Duration::from_secs(5), || {
        metric(&gw, "weir_ratelimit_live_gateways") == 1.0
    });

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = get(port, "quota", "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some(r#""per-route";q=3;w=10"#)
        );
        remaining.push(header(&r, "ratelimit").unwrap().to_string());
    }
    assert!(
        remaining[0].starts_with(r#""per-route";r=2;t="#),
        "{remaining:?}"
    );
    assert!(
        remaining[2].starts_with(r#""per-route";r=0;t="#),
        "{remaining:?}"
    );

    let r = get(port, "quota", "/", &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body, "rate limited\n");
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    // The three admits leave the 10 s window as their 500 ms bucket fades out: room for one
    // comes back within 10.5 s, rounded up.
    assert!((9..=11).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some(r#""per-route";q=3;w=10"#)
    );
    let state = header(&r, "ratelimit").unwrap();
    assert!(state.starts_with(r#""per-route";r=0;t="#), "{state}");

    // gRPC clients read grpc-status: RESOURCE_EXHAUSTED.
    let grpc = send(
        &client(),
        reqwest::Method::POST,
        port,
        "quota",
        "/pkg.Svc/Call",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(grpc.status, 200);
    assert_eq!(header(&grpc, "grpc-status"), Some("8"));

    // A policy with the fields switched off still says when to come back.
    let ok = get(port, "quiet", "/", &[]).await;
    assert_eq!(ok.status, 200);
    assert!(header(&ok, "ratelimit").is_none() && header(&ok, "ratelimit-policy").is_none());
    let refused = get(port, "quiet", "/", &[]).await;
    assert_eq!(refused.status, 429);
    assert!(header(&refused, "retry-after").is_some());
    assert!(header(&refused, "ratelimit").is_none());

    let limited = metric(
        &gw,
        r#"weir_ratelimit_decisions_total{decision="limited",limit="per-route",policy="default/quota"}"#,
    );
    assert_eq!(limited, 2.0, "the 429 and the gRPC refusal");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_separate_clients_headers_and_routes() {
    let redis = Redis::start();
    let (_app, port, mut m) = site(&["by-ip", "by-tenant"]);
    m += &route(
        "by-rule",
        "  hostnames: [by-rule]\n  rules:\n  - matches: [{path: {value: /a}}]\n    backendRefs: [{name: app, port: 80}]\n  - matches: [{path: {value: /b}}]\n    backendRefs: [{name: app, port: 80}]\n",
    );
    let two =
        |key: &str| format!("  limits:\n  - {{name: l, requests: 2, window: 30s, key: [{key}]}}\n");
    m += &policy("by-ip", "by-ip", &two("{clientIP: {}}"));
    m += &policy("by-tenant", "by-tenant", &two("{header: {name: X-Tenant}}"));
    m += &policy("by-rule", "by-rule", &two("{route: {}}"));
    let _gw = Gateway::start_with(&m, &["--redis", &redis.url()]);

    // Client IP: 127.0.0.1 uses its two, 127.0.0.2 still has its own.
    assert_eq!(statuses(port, "by-ip", &[], 3).await, [200, 200, 429]);
    let other_ip = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = send(&other_ip, reqwest::Method::GET, port, "by-ip", "/", &[]).await;
    assert_eq!(r.status, 200, "another client address has its own counter");

    // Header: one counter per tenant; without the header the limit does not apply.
    let acme = [("x-tenant", "acme")];
    assert_eq!(statuses(port, "by-tenant", &acme, 3).await, [200, 200, 429]);
    assert_eq!(
        statuses(port, "by-tenant", &[("x-tenant", "globex")], 1).await,
        [200]
    );
    assert_eq!(statuses(port, "by-tenant", &[], 4).await, [200; 4]);

    // Route: each rule of the route counts on its own.
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(get(port, "by-rule", "/a", &[]).await.status);
    }
    assert_eq!(a, [200, 200, 429]);
    assert_eq!(get(port, "by-rule", "/b", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_counts_and_logs_but_never_refuses() {
    let redis = Redis::start();
    let (_app, port, mut m) = site(&["trial"]);
    m += &policy(
        "trial",
        "trial",
        "  mode: Shadow\n  limits:\n  - {name: l, requests: 2, window: 30s}\n",
    );
    let gw = Gateway::start_with(&m, &["--redis", &redis.url()]);
    assert_eq!(statuses(port, "trial", &[], 6).await, [200; 6]);
    let sample = |d: &str| {
        metric(
            &gw,
            &format!(
                r#"weir_ratelimit_decisions_total{{decision="{d}",limit="l",policy="default/trial"}}"#
            ),
        )
    };
    assert_eq!(sample("allowed"), 2.0);
    assert_eq!(sample("shadow_limited"), 4.0);
    assert_eq!(sample("limited"), 0.0);
    assert!(
        gw.log()
            .contains("shadow mode: admitted requests over the limit"),
        "{}",
        gw.log()
    );
}

/// Three gateways, each with its own listener port, sharing one limit through `redis_url`:
/// 240 concurrent requests against a limit of 60 per minute.
async fn fleet_admits(redis_url: &str) -> (usize, Vec<Gateway>) {
    let app = Echo::start("app");
    let mut gateways = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let mut m = gateway(&[http_listener("http", port)]);
        m += &service("app", &[&app]);
        m += &app_route("fleet");
        m += &policy(
            "fleet",
            "fleet",
            "  limits:\n  - {name: all, requests: 60, window: 60s}\n",
        );
        gateways.push(Gateway::start_with(&m, &["--redis", redis_url]));
        ports.push(port);
    }
    // Each gateway learns from Redis that the fleet has three members.
    for gw in &gateways {
        wait_for("three live gateways", Duration::from_secs(5), || {
            metric(gw, "weir_ratelimit_live_gateways") == 3.0
        });
    }
    let client = client();
    let mut tasks = Vec::new();
    for worker in 0..12 {
        let (client, port) = (client.clone(), ports[worker % 3]);
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..20 {
                let r = send(&client, reqwest::Method::GET, port, "fleet", "/", &[]).await;
                assert!(matches!(r.status, 200 | 429), "{} {}", r.status, r.body);
                admitted += usize::from(r.status == 200);
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    drop(app);
    (admitted, gateways)
}

/// Over-admission is bounded by one request per gateway (the issue's goal); the lower bound
/// allows for leased tokens a gateway still held when the load stopped.
fn assert_fleet_accuracy(admitted: usize, gateways: &[Gateway]) {
    let report: Vec<String> = gateways
        .iter()
        .map(|gw| {
            let (_, body) = gw.admin_get("/metrics").unwrap();
            body.lines()
                .filter(|l| l.starts_with("weir_ratelimit") && !l.contains("_bucket"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert!(
        (54..=63).contains(&admitted),
        "the fleet admitted {admitted} against a limit of 60\n{}",
        report.join("\n---\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_gateways_share_one_limit_through_a_single_node() {
    let redis = Redis::start();
    let (admitted, gateways) = fleet_admits(&redis.url()).await;
    assert_fleet_accuracy(admitted, &gateways);
    // Redis comes to hold what the fleet admitted (plus any leased tokens left unused).
    wait_synced(
        std::slice::from_ref(&redis),
        "weir:rl:{default/fleet/all/*",
        admitted,
    );
    let keys = redis.keys("weir:rl:{default/fleet/all/*");
    assert!(keys.contains("weir:rl:{default/fleet/all/"), "{keys}");
    for gw in &gateways {
        assert_eq!(metric(gw, "weir_ratelimit_live_gateways"), 3.0);
        assert_eq!(metric(gw, "weir_ratelimit_sync_errors_total"), 0.0);
        let calls = metric(gw, "weir_ratelimit_redis_calls_total");
        assert!(
            calls > 0.0 && calls < 200.0,
            "{calls} Redis calls for 80 requests"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_gateways_share_one_limit_through_a_cluster() {
    let cluster = Cluster::start();
    let (admitted, gateways) = fleet_admits(&cluster.url()).await;
    assert_fleet_accuracy(admitted, &gateways);
    // Once the fleet's admits are synced, the counter's keys share a hash tag: one node
    // holds all of them.
    wait_synced(&cluster.nodes, "weir:rl:{default/fleet/all/*", admitted);
    let holders: Vec<u16> = cluster
        .keys("weir:rl:{default/fleet/all/*")
        .into_iter()
        .filter(|(_, keys)| keys.contains("weir:rl:"))
        .map(|(port, _)| port)
        .collect();
    assert_eq!(
        holders.len(),
        1,
        "keys of one counter on one node: {holders:?}"
    );
    for gw in &gateways {
        assert_eq!(metric(gw, "weir_ratelimit_sync_errors_total"), 0.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_modes_apply_while_redis_is_down_and_its_return_is_picked_up() {
    let mut redis = Redis::start();
    let (_app, port, mut m) = site(&["local", "open", "closed"]);
    m += &policy(
        "local",
        "local",
        "  failureMode: Local\n  limits:\n  - {name: l, requests: 4, window: 60s}\n",
    );
    m += &policy(
        "open",
        "open",
        "  failureMode: Open\n  limits:\n  - {name: l, requests: 2, window: 60s}\n",
    );
    m += &policy(
        "closed",
        "closed",
        "  failureMode: Closed\n  limits:\n  - {name: l, requests: 100, window: 60s}\n",
    );
    let gw = Gateway::start_with(&m, &["--redis", &redis.url()]);
    wait_for("the first heartbeat", Duration::from_secs(5), || {
        metric(&gw, "weir_ratelimit_live_gateways") == 1.0
    });

    assert_eq!(statuses(port, "local", &[], 2).await, [200, 200]);
    assert_eq!(statuses(port, "open", &[], 3).await, [200, 200, 429]);
    assert_eq!(statuses(port, "closed", &[], 1).await, [200]);
    for (policy, admitted) in [("local", 2), ("open", 2), ("closed", 1)] {
        let pattern = format!("weir:rl:{{default/{policy}/l/*");
        wait_synced(std::slice::from_ref(&redis), &pattern, admitted);
    }

    redis.kill();
    // Traffic makes the sync task notice; the breaker opens within a few rounds.
    let killed = Instant::now();
    let mut seen = Vec::new();
    while metric(&gw, "weir_ratelimit_breaker_open") == 0.0 {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "the breaker did not open within a second of traffic"
        );
        seen.push(get(port, "closed", "/", &[]).await.status);
    }
    assert!(seen.iter().all(|s| matches!(s, 200 | 429)), "{seen:?}");

    // Each request is decided at once by its policy's failure mode.
    let mut slowest = Duration::ZERO;
    let mut timed = |statuses: Vec<u16>, started: Instant, n: u32| {
        slowest = slowest.max(started.elapsed() / n);
        statuses
    };
    let t = Instant::now();
    let open = timed(statuses(port, "open", &[], 5).await, t, 5);
    assert_eq!(open, [200; 5], "Open admits everything");
    let t = Instant::now();
    let closed = timed(statuses(port, "closed", &[], 3).await, t, 3);
    assert_eq!(closed, [429; 3], "Closed refuses everything");
    let t = Instant::now();
    let local = timed(statuses(port, "local", &[], 10).await, t, 10);
    // One live gateway keeps the whole limit of 4, of which 2 were used before the outage.
    let admitted = count(&local, 200);
    assert!(
        (1..=3).contains(&admitted),
        "Local admitted {admitted}: {local:?}"
    );
    assert_eq!(count(&local, 429), 10 - admitted);
    assert!(
        slowest < Duration::from_millis(200),
        "requests took {slowest:?} each"
    );

    // Redis comes back empty: the breaker closes within a second, and nothing errs.
    redis.restart();
    wait_for("the breaker closing", Duration::from_secs(1), || {
        metric(&gw, "weir_ratelimit_breaker_open") == 0.0
    });
    let errors = metric(&gw, "weir_ratelimit_sync_errors_total");
    assert_eq!(
        statuses(port, "closed", &[], 3).await,
        [200; 3],
        "counts start over"
    );
    assert_eq!(statuses(port, "open", &[], 3).await, [200, 200, 429]);
    // The new counts reach the empty Redis, through scripts it no longer had...
    for (policy, admitted) in [("open", 2), ("closed", 3)] {
        let pattern = format!("weir:rl:{{default/{policy}/l/*");
        wait_synced(std::slice::from_ref(&redis), &pattern, admitted);
    }
    // ...which were loaded again without an error.
    assert_eq!(
        metric(&gw, "weir_ratelimit_sync_errors_total"),
        errors,
        "scripts lost with the data are loaded again without an error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_redis_never_holds_requests_up() {
    let redis = Redis::start();
    let (_app, port, mut m) = site(&["hang"]);
    m += &policy(
        "hang",
        "hang",
        "  failureMode: Local\n  limits:\n  - {name: l, requests: 10, window: 60s}\n",
    );
    let gw = Gateway::start_with(&m, &["--redis", &redis.url()]);
    wait_for("the first heartbeat", Duration::from_secs(5), || {
        metric(&gw, "weir_ratelimit_live_gateways") == 1.0
    });
    // Past 80% of the limit every request needs a lease from Redis.
    assert_eq!(statuses(port, "hang", &[], 8).await, [200; 8]);

    redis.pause(true);
    let mut slowest = Duration::ZERO;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        seen.push(get(port, "hang", "/", &[]).await.status);
        slowest = slowest.max(t.elapsed());
    }
    // A hung Redis takes the 100 ms call timeout to notice; no request waits for it.
    // Its own deadline is generous: a loaded machine may run the sync task late.
    wait_for("the breaker opening", Duration::from_secs(3), || {
        metric(&gw, "weir_ratelimit_breaker_open") == 1.0
    });
    redis.pause(false);
    assert!(seen.iter().all(|s| matches!(s, 200 | 429)), "{seen:?}");
    assert!(
        count(&seen, 200) <= 2,
        "at most the 2 left of the limit: {seen:?}"
    );
    assert!(
        slowest < Duration::from_millis(80),
        "a request took {slowest:?}"
    );
    wait_for("the breaker closing", Duration::from_secs(2), || {
        metric(&gw, "weir_ratelimit_breaker_open") == 0.0
    });
}
