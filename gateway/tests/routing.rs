//! Routing through a real `weir-gateway`: hosts, paths, headers, query parameters, methods,
//! and the status codes of everything that is not a match.

mod support;

use support::*;

fn manifests(port: u16, a: &Echo, b: &Echo, c: &Echo) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("svc-a", &[a]);
    m += &service("svc-b", &[b]);
    m += &service("svc-c", &[c]);
    m += &route(
        "hosts",
        "  hostnames: [shop.example.com, \"*.apps.example.com\"]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /v2}}]\n    backendRefs: [{name: svc-b, port: 80}]\n  - backendRefs: [{name: svc-a, port: 80}]\n",
    );
    m += &route(
        "matches",
        "  hostnames: [match.example.com]\n  rules:\n  - matches: [{path: {value: /}, headers: [{name: X-Canary, value: \"yes\"}]}]\n    backendRefs: [{name: svc-b, port: 80}]\n  - matches: [{path: {value: /}, queryParams: [{name: Version, value: \"2\"}]}]\n    backendRefs: [{name: svc-c, port: 80}]\n  - matches: [{path: {value: /}, method: DELETE}]\n    backendRefs: [{name: svc-c, port: 80}]\n  - matches: [{path: {type: Exact, value: /exact}}]\n    backendRefs: [{name: svc-c, port: 80}]\n  - matches: [{path: {type: RegularExpression, value: \"/users/[0-9]+\"}}]\n    backendRefs: [{name: svc-b, port: 80}]\n  - backendRefs: [{name: svc-a, port: 80}]\n",
    );
    m += &route(
        "broken",
        "  hostnames: [broken.example.com]\n  rules:\n  - matches: [{path: {value: /missing}}]\n    backendRefs: [{name: nope, port: 80}]\n  - matches: [{path: {value: /empty}}]\n    backendRefs: [{name: no-endpoints, port: 80}]\n  - matches: [{path: {value: /zero}}]\n    backendRefs: [{name: svc-a, port: 80, weight: 0}]\n  - matches: [{path: {value: /half}}]\n    backendRefs: [{name: svc-a, port: 80}, {name: nope, port: 80}]\n",
    );
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: no-endpoints}\nspec: {ports: [{name: http, port: 80}]}\n";
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_paths_headers_queries_and_methods() {
    let (a, b, c) = (Echo::start("a"), Echo::start("b"), Echo::start("c"));
    let port = free_port();
    let gw = Gateway::start(&manifests(port, &a, &b, &c));
    // Ready can be reported before the log line is written out: wait for the line.
    let line = format!("listening port={port} protocol=HTTP");
    wait_for(
        "the listening log line",
        std::time::Duration::from_secs(5),
        || gw.log().contains(&line),
    );

    // Host matching ignores the port and the case; wildcards need a label.
    assert_eq!(get(port, "shop.example.com", "/", &[]).await.service(), "a");
    assert_eq!(
        get(port, "SHOP.Example.COM:8080", "/", &[]).await.service(),
        "a"
    );
    assert_eq!(
        get(port, "x.apps.example.com", "/", &[]).await.service(),
        "a"
    );
    assert_eq!(get(port, "apps.example.com", "/", &[]).await.status, 404);
    assert_eq!(get(port, "unknown.example.com", "/", &[]).await.status, 404);

    // PathPrefix matches whole segments.
    assert_eq!(
        get(port, "shop.example.com", "/v2", &[]).await.service(),
        "b"
    );
    assert_eq!(
        get(port, "shop.example.com", "/v2/x", &[]).await.service(),
        "b"
    );
    assert_eq!(
        get(port, "shop.example.com", "/v2x", &[]).await.service(),
        "a"
    );

    // Header names are case-insensitive, values exact; query names case-sensitive.
    let m = "match.example.com";
    assert_eq!(
        get(port, m, "/", &[("x-CANARY", "yes")]).await.service(),
        "b"
    );
    assert_eq!(
        get(port, m, "/", &[("x-canary", "YES")]).await.service(),
        "a"
    );
    assert_eq!(get(port, m, "/?Version=2", &[]).await.service(), "c");
    assert_eq!(get(port, m, "/?version=2", &[]).await.service(), "a");
    let deleted = send(&client(), reqwest::Method::DELETE, port, m, "/", &[]).await;
    assert_eq!(deleted.service(), "c");
    assert_eq!(get(port, m, "/exact", &[]).await.service(), "c");
    assert_eq!(get(port, m, "/exact/", &[]).await.service(), "a");
    assert_eq!(get(port, m, "/users/42", &[]).await.service(), "b");
    assert_eq!(get(port, m, "/users/x", &[]).await.service(), "a");

    // The backend sees the original path and query.
    let r = get(port, m, "/deep/path?q=1&r=2", &[]).await;
    assert_eq!(r.json()["path"], "/deep/path?q=1&r=2");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_codes_for_everything_that_cannot_be_served() {
    let (a, b, c) = (Echo::start("a"), Echo::start("b"), Echo::start("c"));
    let port = free_port();
    let _gw = Gateway::start(&manifests(port, &a, &b, &c));
    let h = "broken.example.com";
    // No route: 404. A missing backend: 500. No ready endpoint: 503. All weights zero: 500.
    assert_eq!(get(port, h, "/nothing-here", &[]).await.status, 404);
    assert_eq!(get(port, h, "/missing", &[]).await.status, 500);
    assert_eq!(get(port, h, "/empty", &[]).await.status, 503);
    assert_eq!(get(port, h, "/zero", &[]).await.status, 500);
    // The invalid backend's share (half, by weight) gets 500; the rest is served.
    let mut ok = 0;
    let mut errors = 0;
    for _ in 0..40 {
        match get(port, h, "/half", &[]).await.status {
            200 => ok += 1,
            500 => errors += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(
        (ok, errors),
        (20, 20),
        "smooth weighted round-robin splits exactly"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_answer_504() {
    let slow = Echo::start("slow");
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("slow", &[&slow]);
    m += &route(
        "t",
        "  rules:\n  - matches: [{path: {value: /request}}]\n    timeouts: {request: 300ms}\n    backendRefs: [{name: slow, port: 80}]\n  - matches: [{path: {value: /backend}}]\n    timeouts: {request: 10s, backendRequest: 300ms}\n    backendRefs: [{name: slow, port: 80}]\n  - backendRefs: [{name: slow, port: 80}]\n",
    );
    let _gw = Gateway::start(&m);
    let start = std::time::Instant::now();
    assert_eq!(get(port, "t", "/request?delay=3s", &[]).await.status, 504);
    assert_eq!(get(port, "t", "/backend?delay=3s", &[]).await.status, 504);
    assert!(
        start.elapsed() < std::time::Duration::from_millis(2500),
        "timeouts cut the wait"
    );
    // Within the timeout the request is served.
    assert_eq!(get(port, "t", "/request?delay=50ms", &[]).await.status, 200);
    // Without a timeout the slow backend is waited for.
    assert_eq!(get(port, "t", "/other?delay=500ms", &[]).await.status, 200);
}
