//! The service graph, end to end: real traffic through a real fleet and real sidecars,
//! `weir-controller graph` reading their metrics (directly, and through a real Prometheus),
//! and the page driven in Debian's headless Chromium (playwright-core from npm).
//!
//! The traffic: an app with sidecar A (`shop/front`) calls `pay/payments` through the
//! fleet's mesh listener and B's STRICT sidecar; clients without an identity call an edge
//! Gateway (`edge/web`): some requests answered, some refused by a rate limit, some by an
//! AuthorizationPolicy, some 503 for a Service without endpoints; and plaintext connections
//! knock on B and are refused.

mod support;

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::client;
use support::free_port;
use support::mesh::MeshPath;
use weir_loadtest::procs::{self, Proc};

const WEB: &str = "gateway:edge/web";
const MESH: &str = "gateway:weir-system/mesh";
/// Requests of each kind the edge gets.
const SERVED: usize = 6;
const LIMITED_SENT: usize = 7;
const LIMIT: usize = 3;
const BROKEN: usize = 4;
const DENIED: usize = 2;
const MESH_CALLS: usize = 10;
const KNOCKS: usize = 3;

/// The edge Gateway, its routes and their Services, beside the mesh ones.
fn edge(listener: u16, app: u16) -> String {
    format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: edge}}
spec:
  gatewayClassName: weir
  listeners: [{{name: http, port: {listener}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: store, namespace: shop}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: store-0, namespace: shop, labels: {{kubernetes.io/service-name: store}}}}
addressType: IPv4
ports: [{{name: http, port: {app}}}]
endpoints: [{{addresses: ["127.0.0.1"], zone: zone-a}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: shop}}
spec: {{ports: [{{name: http, port: 80}}]}}
{routes}---
apiVersion: weir.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: limited, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: limited}}]
  mode: Enforce
  limits: [{{name: l, requests: {LIMIT}, window: 60s}}]
---
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: private, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: private}}]
  action: DENY
  rules: [{{to: [{{paths: ["/private/*"]}}]}}]
"#,
        routes = [("store", "/store", "store"), ("limited", "/limited", "store"), ("private", "/private", "store"), ("broken", "/broken", "empty")]
            .iter()
            .map(|(name, path, service)| format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  parentRefs: [{{name: web, namespace: edge}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    backendRefs: [{{name: {service}, port: 80}}]\n"
            ))
            .collect::<String>(),
    )
}

/// A running `weir-controller graph`.
struct Graph {
    _proc: Proc,
    addr: SocketAddr,
}

impl Graph {
    fn start(source: &[&str]) -> Graph {
        let mut child = Command::new(procs::controller_bin().unwrap())
            .args([
                "graph",
                "--listen",
                "127.0.0.1:0",
                "--interval",
                "300ms",
                "--refresh",
                "1s",
            ])
            .args(source)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("weir-controller graph starts");
        let addr = procs::listening_on(&mut child).unwrap();
        Graph {
            _proc: Proc::new(child),
            addr,
        }
    }

    fn json(&self) -> Value {
        let (status, body) = procs::http_get(self.addr, "/api/graph?window=5m").expect("answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Polls the graph until `ready` holds; panics with the last graph if it never does.
    fn until(&self, what: &str, within: Duration, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let g = self.json();
            if ready(&g) {
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never held; last graph:\n{g:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn edge_of<'a>(g: &'a Value, id: &str) -> Option<&'a Value> {
    g["edges"].as_array()?.iter().find(|e| e["id"] == id)
}

fn node_of<'a>(g: &'a Value, id: &str) -> Option<&'a Value> {
    g["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

fn ids(g: &Value, what: &str) -> Vec<String> {
    let mut v: Vec<String> = g[what]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Plaintext at a STRICT port: refused before any request.
async fn knock(port: u16) {
    let refused = match client::plain(port).await {
        Ok(mut c) => c.get("/", &[]).await.map(|r| r.status),
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "{refused:?}");
}

fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// The browser driver's directory, with playwright-core installed by `script/setup test`.
fn browser_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {}: run `script/setup test` (npm ci there)",
        dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: `script/setup test` installs it (Debian package chromium)"
    );
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_graph_page_shows_who_calls_whom_with_live_figures() {
    let browser = browser_dir();
    let web_port = free_port();
    let path = MeshPath::start_with(&[], &["--zone", "zone-a"], |app| edge(web_port, app));
    let (a, out, b_port) = (&path.a, path.out, path.b_port);
    let targets = [path.gateway.admin, path.a.admin, path.b.admin];
    let scrape: Vec<String> = targets
        .iter()
        .map(|t| format!("http://{t}/metrics"))
        .collect();
    let graph = Graph::start(&["--scrape", &scrape.join(",")]);
    let prom_dir = tempfile::tempdir().unwrap();
    let prometheus =
        procs::Prometheus::start(prom_dir.path(), &targets.map(|t| t.to_string())).unwrap();
    let via_prometheus = Graph::start(&["--prometheus", &prometheus.url()]);
    // Rates need a reading from before the traffic.
    graph.until("a first window", Duration::from_secs(20), |g| {
        g["window_seconds"].as_f64() > Some(0.0)
    });

    // The traffic.
    let web: SocketAddr = format!("127.0.0.1:{web_port}").parse().unwrap();
    let send = |path: &str, n: usize, want: &[u16]| {
        for _ in 0..n {
            let (status, body) = procs::http_get(web, path).expect("the edge answers");
            assert!(want.contains(&status), "{path}: {status} {body}");
        }
    };
    send("/store/x", SERVED, &[200]);
    send("/limited/x", LIMITED_SENT, &[200, 429]);
    send("/broken/x", BROKEN, &[503]);
    send("/private/x", DENIED, &[403]);
    let mut caller = client::plain(out).await.unwrap();
    for i in 0..MESH_CALLS {
        let reply = caller
            .get_uri(&format!("http://payments.pay:8080/call/{i}"), &[])
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}\nA:\n{}", reply.body, a.log());
    }
    for _ in 0..KNOCKS {
        knock(b_port).await;
    }

    // The JSON: every hop, with the figures the traffic implies.
    let edge_total = (SERVED + LIMITED_SENT + BROKEN + DENIED) as f64;
    let limited = (LIMITED_SENT - LIMIT) as f64;
    let g = graph.until(
        "every hop drawn with all its traffic",
        Duration::from_secs(30),
        |g| {
            let e = edge_of(g, &format!("client -> {WEB}"));
            e.is_some_and(|e| {
                e["codes"]["429"].as_f64().unwrap_or(0.0) > 0.0
                    && round(e["rate_limited_ratio"].as_f64().unwrap())
                        == round(limited / edge_total)
                    && round(e["denied_ratio"].as_f64().unwrap())
                        == round(DENIED as f64 / edge_total)
            }) && g["authz"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["policy"] == "shop/private"))
                && edge_of(g, &format!("{MESH} -> pay/payments")).is_some_and(|e| e["mtls"] == true)
                && edge_of(g, "client -> pay/payments")
                    .is_some_and(|e| e["refused_per_s"].as_f64() > Some(0.0))
        },
    );
    assert_eq!(
        ids(&g, "nodes"),
        [
            "client",
            WEB,
            MESH,
            "pay/payments",
            "shop/empty",
            "shop/front",
            "shop/store"
        ],
        "{g:#}"
    );
    assert_eq!(
        ids(&g, "edges"),
        [
            format!("client -> {WEB}"),
            "client -> pay/payments".into(),
            format!("{WEB} -> shop/empty"),
            format!("{WEB} -> shop/store"),
            format!("{MESH} -> pay/payments"),
            format!("shop/front -> {MESH}"),
        ],
        "{g:#}"
    );
    let into_web = edge_of(&g, &format!("client -> {WEB}")).unwrap();
    assert_eq!(
        into_web["error_ratio"].as_f64(),
        Some(round(BROKEN as f64 / edge_total))
    );
    assert_eq!(into_web["mtls"], false);
    assert!(into_web["p99_ms"].as_f64().is_some(), "{into_web}");
    assert_eq!(
        edge_of(&g, &format!("{WEB} -> shop/empty")).unwrap()["error_ratio"],
        1.0
    );
    let store = edge_of(&g, &format!("{WEB} -> shop/store")).unwrap();
    assert_eq!(store["error_ratio"], 0.0);
    assert_eq!(
        store["rate_limited_ratio"], 0.0,
        "a refused request reached no backend"
    );
    assert_eq!(store["denied_ratio"], 0.0, "nor did a denied one");
    let private = g["authz"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == "shop/private")
        .unwrap();
    assert_eq!(private["action"], "DENY");
    assert!(private["denied_rps"].as_f64() > Some(0.0), "{private}");
    assert_eq!(
        edge_of(&g, &format!("shop/front -> {MESH}")).unwrap()["mtls"],
        true
    );
    let knocks = edge_of(&g, "client -> pay/payments").unwrap();
    assert!(knocks["refused_ratio"].as_f64() > Some(0.0), "{knocks}");
    assert_eq!(knocks["mtls"], false);
    let store_node = node_of(&g, "shop/store").unwrap();
    assert_eq!(store_node["zone"]["in_zone_share"], 1.0, "{store_node}");

    // The same hops through Prometheus. Its rate() counts increases between its own
    // scrapes, so a series that appeared between two of them counts from the second one:
    // the traffic goes on, a little of each kind, until every hop shows. Only the shape is
    // compared; the figures differ by what each source saw.
    let shape = |g: &Value| (ids(g, "nodes"), ids(g, "edges"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0.0;
    loop {
        rounds += 1.0;
        send("/store/x", 1, &[200]);
        send("/limited/x", 1, &[429]);
        send("/broken/x", 1, &[503]);
        let reply = caller
            .get_uri("http://payments.pay:8080/more", &[])
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        knock(b_port).await;
        let p = via_prometheus.json();
        if shape(&p) == shape(&g) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never showed the graph:\n{p:#}\nwant:\n{g:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The page, in Chromium.
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("graph.png");
    let _ = std::fs::remove_file(&screenshot);
    let edge_id = format!("client -> {WEB}");
    let out = Command::new("node")
        .current_dir(&browser)
        .arg("graph_page.mjs")
        .arg(format!("http://{}/", graph.addr))
        .arg(&screenshot)
        .args(["shop/store", &edge_id])
        .output()
        .expect("node runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    assert_eq!(
        report["foreign_requests"],
        serde_json::json!([]),
        "nothing from a CDN"
    );

    // What is drawn is what the JSON says, and what the traffic made.
    let drawn = &report["drawn"];
    let data = &drawn["data"];
    let mut drawn_nodes: Vec<String> = drawn["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    drawn_nodes.sort();
    assert_eq!(drawn_nodes, ids(data, "nodes"));
    assert_eq!(drawn_nodes, ids(&g, "nodes"));
    for e in drawn["edges"].as_array().unwrap() {
        let json = edge_of(data, e["id"].as_str().unwrap()).expect("a drawn edge is in the JSON");
        assert_eq!(e["source"], json["source"]);
        assert_eq!(e["target"], json["destination"]);
        // Not mTLS: dashed.
        assert_eq!(e["style"] == "dashed", json["mtls"] == false, "{e}");
    }
    assert_eq!(
        drawn["edges"].as_array().unwrap().len(),
        g["edges"].as_array().unwrap().len()
    );
    let colour = |id: &str| {
        drawn["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap()["colour"]
            .clone()
    };
    assert_eq!(
        colour(&format!("{WEB} -> shop/empty")),
        "#c62828",
        "all 503s: red"
    );
    assert_eq!(
        colour(&format!("{WEB} -> shop/store")),
        "#2e7d32",
        "no errors: green"
    );

    // A click on a node, then on an edge, shows their figures.
    let node_click = &report["node_click"];
    assert_eq!(node_click["title"], "shop/store");
    let node_json = node_of(&node_click["data"], "shop/store").unwrap();
    let figure = |click: &Value, name: &str| {
        click["figures"][name]["value"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    // The panel's number is the JSON's (an empty one stands for null).
    let same = |shown: String, json: &Value| match json.as_f64() {
        None => shown.is_empty() && json.is_null(),
        Some(v) => shown.parse::<f64>().ok() == Some(v),
    };
    assert!(
        same(figure(node_click, "rps"), &node_json["rps"]),
        "{node_click:#}"
    );
    assert!(
        same(figure(node_click, "in_zone_share"), &serde_json::json!(1.0)),
        "{node_click:#}"
    );
    assert_eq!(
        node_click["lists"]["backends"],
        serde_json::json!(["shop/store:80"])
    );
    let edge_click = &report["edge_click"];
    assert_eq!(edge_click["title"], format!("client → {WEB}"));
    let edge_json = edge_of(&edge_click["data"], &edge_id).unwrap();
    for name in [
        "rps",
        "error_ratio",
        "p50_ms",
        "p99_ms",
        "rate_limited_ratio",
        "denied_ratio",
    ] {
        assert!(
            same(figure(edge_click, name), &edge_json[name]),
            "{name}: {edge_click:#}"
        );
    }
    // Every request the edge got is in the 5m window: the share is exact.
    let limited_share = (limited + rounds) / (edge_total + 3.0 * rounds);
    let shown: f64 = figure(edge_click, "rate_limited_ratio").parse().unwrap();
    assert_eq!(shown, round(limited_share));
    assert_eq!(
        edge_click["figures"]["rate_limited_ratio"]["text"],
        format!("{:.1}%", 100.0 * limited_share)
    );
    let denied_share = DENIED as f64 / (edge_total + 3.0 * rounds);
    let shown: f64 = figure(edge_click, "denied_ratio").parse().unwrap();
    assert_eq!(shown, round(denied_share));
    // The text is the figure as a percentage with one decimal (rounded from the rounded
    // figure, so it may differ from the exact share's by that last digit).
    let text = edge_click["figures"]["denied_ratio"]["text"]
        .as_str()
        .unwrap();
    let percent: f64 = text.trim_end_matches('%').parse().unwrap();
    assert!(
        text.ends_with('%') && (percent - 100.0 * shown).abs() <= 0.051,
        "{text} for {shown}"
    );
    let mut routes = edge_click["lists"]["routes"].as_array().unwrap().clone();
    routes.sort_by_key(|r| r.to_string());
    assert_eq!(
        routes,
        ["shop/broken", "shop/limited", "shop/private", "shop/store"]
    );
    // A Service's panel lists its namespace's policies, with what they decided.
    let policies = node_click["lists"]["authorization policies"]
        .as_array()
        .unwrap_or_else(|| panic!("{node_click:#}"));
    assert!(
        policies.len() == 1
            && policies[0]
                .as_str()
                .unwrap()
                .starts_with("shop/private (DENY): "),
        "{policies:?}"
    );

    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
