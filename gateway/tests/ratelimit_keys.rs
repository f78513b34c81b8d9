//! Rate limit keys chosen by clients cannot grow the gateway's memory without bound. A real
//! `weir-gateway` started with `--rate-limit-max-keys` takes a flood of distinct `X-Key`
//! values over HTTP/2 (h2c): 500,000 on its own, and 120,000, paced, sharing its counts
//! through a real `redis-server`. Its resident memory stays where it was after a warm-up
//! (with the cap lifted it grew by 50 MB and 96 MB), every key past the cap shows in
//! /metrics as an eviction, and a tenant whose requests run through the flood keeps its
//! limit: exactly, on its own.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::redis::Redis;
use support::*;

/// A flood: distinct keys, of which the first `warmup` come before the first memory
/// reading; the cap (`--rate-limit-max-keys`); HTTP/2 connections and the requests in
/// flight on each; and a pace in keys per second, if any.
struct Flood {
    keys: usize,
    warmup: usize,
    cap: usize,
    conns: usize,
    streams: usize,
    pace: Option<f64>,
}

/// The tenant's limit; its window outlasts the test, so that nothing refills it.
const TENANT_LIMIT: usize = 50;
/// One tenant request per this many flood keys: a use every 250 new keys, well within
/// either cap.
const TENANT_EVERY: usize = 250;
/// Resident memory may grow this much from the warm-up to the end.
const RSS_GROWTH_MAX_KB: u64 = 12 * 1024;

/// The memory readings are the point: one flood at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A policy with two limits: `per-key`, per `X-Key` value, is the one under test; `flood`
/// (one counter, one request) refuses what is sent to /flood once its one request is used,
/// so that the flood ends at the gateway and the test measures the limiter rather than the
/// backend. The tenant's requests, to /tenant, meet `per-key` only, and reach the echo.
fn manifests() -> (Echo, u16, String) {
    let app = Echo::start("app");
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("app", &[&app]);
    m += &route(
        "site",
        "  rules:\n  - backendRefs: [{name: app, port: 80}]\n",
    );
    m += &format!(
        "---\napiVersion: weir.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: site}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: site}}]\n  limits:\n  - {{name: per-key, requests: {TENANT_LIMIT}, window: 24h, key: [{{header: {{name: X-Key}}}}]}}\n  - {{name: flood, requests: 1, window: 24h, when: [{{path: {{value: /flood}}}}]}}\n"
    );
    (app, port, m)
}

/// What one flood phase saw.
#[derive(Debug, Default)]
struct Seen {
    flood: usize,
    tenant_ok: usize,
    tenant_limited: usize,
    other: Vec<u16>,
}

impl Seen {
    fn add(&mut self, o: Seen) {
        self.flood += o.flood;
        self.tenant_ok += o.tenant_ok;
        self.tenant_limited += o.tenant_limited;
        self.other.extend(o.other);
    }
}

/// Sends flood keys `keys` as `f` says, with a tenant request every `TENANT_EVERY` keys;
/// reads every response.
async fn send(f: &Flood, port: u16, keys: std::ops::Range<usize>) -> Seen {
    install_crypto();
    let next = Arc::new(AtomicUsize::new(keys.start));
    let (first, started, pace) = (keys.start, tokio::time::Instant::now(), f.pace);
    let mut tasks = tokio::task::JoinSet::new();
    let (flood, tenant) = (
        format!("http://127.0.0.1:{port}/flood"),
        format!("http://127.0.0.1:{port}/tenant"),
    );
    for _ in 0..f.conns {
        // One client is one connection: HTTP/2 carries every stream on it.
        let client = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        for _ in 0..f.streams {
            let (client, next, end) = (client.clone(), next.clone(), keys.end);
            let (flood, tenant) = (flood.clone(), tenant.clone());
            tasks.spawn(async move {
                let mut seen = Seen::default();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= end {
                        return seen;
                    }
                    if let Some(per_s) = pace {
                        let due = Duration::from_secs_f64((k - first) as f64 / per_s);
                        tokio::time::sleep_until(started + due).await;
                    }
                    if k % TENANT_EVERY == 0 {
                        match status(&client, &tenant, "tenant").await {
                            200 => seen.tenant_ok += 1,
                            429 => seen.tenant_limited += 1,
                            other => seen.other.push(other),
                        }
                    }
                    match status(&client, &flood, &format!("k{k}")).await {
                        200 | 429 => seen.flood += 1,
                        other => seen.other.push(other),
                    }
                }
            });
        }
    }
    let mut seen = Seen::default();
    while let Some(done) = tasks.join_next().await {
        seen.add(done.expect("a flood task"));
    }
    seen
}

async fn status(client: &reqwest::Client, url: &str, key: &str) -> u16 {
    let resp = client
        .get(url)
        .header("x-key", key)
        .send()
        .await
        .expect("a response");
    let status = resp.status().as_u16();
    // Read whole, so that the stream ends before the next one starts.
    resp.bytes().await.expect("a body");
    status
}

const EVICTIONS: &str = r#"weir_ratelimit_key_evictions_total{policy="default/site"}"#;
const TRACKED: &str = r#"weir_ratelimit_tracked_keys{policy="default/site"}"#;

/// Floods a gateway started with `extra` flags and checks what every mode must hold;
/// returns the gateway and what the tenant got, for the mode's own checks.
#[allow(clippy::print_stderr)] // the time, memory and evictions are reported for the record
async fn flood_within_the_cap(f: &Flood, extra: &[&str]) -> (Gateway, Seen) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_app, port, m) = manifests();
    let cap = f.cap.to_string();
    let mut args = vec!["--rate-limit-max-keys", &cap];
    args.extend(extra);
    let mut gw = Gateway::start_with(&m, &args);
    let pid = gw.proc().pid();

    let started = Instant::now();
    let mut seen = send(f, port, 0..f.warmup).await;
    let warm = rss_kib(pid);
    seen.add(send(f, port, f.warmup..f.keys).await);
    let took = started.elapsed();
    let end = rss_kib(pid);
    let sent = f.keys + seen.tenant_ok + seen.tenant_limited;
    eprintln!(
        "{sent} requests, {} keys, in {took:.1?} ({:.0}/s); RSS {warm} kB after {} keys, {end} kB after {} ({:+} kB)",
        f.keys,
        sent as f64 / took.as_secs_f64(),
        f.warmup,
        f.keys,
        end as i64 - warm as i64,
    );

    assert!(
        seen.other.is_empty(),
        "unexpected statuses: {:?}",
        &seen.other[..seen.other.len().min(20)]
    );
    assert_eq!(seen.flood, f.keys);
    assert_eq!(
        seen.tenant_ok + seen.tenant_limited,
        f.keys.div_ceil(TENANT_EVERY),
        "the tenant's requests ran through the flood"
    );
    assert!(
        end.saturating_sub(warm) < RSS_GROWTH_MAX_KB,
        "RSS grew from {warm} kB to {end} kB with the cap at {} keys",
        f.cap
    );
    // The tracked count is published once a second; evictions are counted as they happen.
    wait_for(
        "the tracked keys at the cap",
        Duration::from_secs(5),
        || gw.metric(TRACKED) == f.cap as f64,
    );
    let evicted = gw.metric(EVICTIONS);
    eprintln!("{evicted} evictions");
    // The flood's keys, the tenant's and the `flood` limit's one, less those tracked.
    assert_eq!(evicted, (f.keys + 2 - f.cap) as f64);
    (gw, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_keys_stays_within_the_cap_alone() {
    let flood = Flood {
        keys: 500_000,
        warmup: 50_000,
        cap: 5_000,
        conns: 2,
        streams: 32,
        pace: None,
    };
    let (_gw, seen) = flood_within_the_cap(&flood, &[]).await;
    assert_eq!(
        seen.tenant_ok, TENANT_LIMIT,
        "the tenant gets exactly its limit"
    );
}

/// Paced: a debug build's sync task, on a busy machine, cannot send a flood's counts to
/// Redis as fast as the proxy threads admit them; its calls then time out and the
/// breaker opens, which is not what this test is about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_keys_stays_within_the_cap_with_redis() {
    let redis = Redis::start();
    let flood = Flood {
        keys: 120_000,
        warmup: 20_000,
        cap: 1_000,
        conns: 1,
        streams: 8,
        pace: Some(4_000.0),
    };
    let (gw, seen) = flood_within_the_cap(&flood, &["--redis", &redis.url()]).await;
    assert_eq!(gw.metric("weir_ratelimit_sync_errors_total"), 0.0);
    // Never more than the limit: a tenant whose count were forgotten would start over here
    // and get more. One fewer per lease that came back after its request gave up on it
    // (1 ms) is the limiter's own caution: that request's admit, made on the last known
    // count, and the late lease are both counted in Redis.
    let late = gw.metric(r#"weir_ratelimit_lease_waits_total{outcome="timeout"}"#) as usize;
    assert!(
        (TENANT_LIMIT.saturating_sub(late)..=TENANT_LIMIT).contains(&seen.tenant_ok),
        "the tenant got {} of its {TENANT_LIMIT}, with {late} late leases",
        seen.tenant_ok
    );
    // Forgotten keys' admits reached Redis too: a hash per key (the flood's, the tenant's,
    // the `flood` limit's) and the set of live gateways.
    let dbsize = || {
        redis
            .command("DBSIZE")
            .and_then(|r| r.trim().strip_prefix(':')?.parse::<usize>().ok())
            .unwrap_or(0)
    };
    wait_for(
        "every key's admits in Redis",
        Duration::from_secs(10),
        || dbsize() == flood.keys + 3,
    );
}
