//! The Grafana dashboards in `deploy/dashboards/` against a real `prometheus` (Debian's
//! package) that scrapes a real gateway carrying traffic: every panel's query must parse and
//! return data, so a dashboard that names a metric or label the gateway no longer exports
//! fails here.

mod support;

use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::redis::Redis;
use support::*;

/// Manifests: `shop` to an endpoint in zone-a, `quota` with an enforced limit it exceeds,
/// `tenants` with a limit per `X-Tenant` (each new tenant's first request asks Redis at
/// once, so sync rounds run while Prometheus watches), `shadow` with a shadow-mode limit,
/// and `broken` to a Service without endpoints (503s).
fn site(app: &Echo, port: u16) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: app}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-0, labels: {{kubernetes.io/service-name: app}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"], zone: zone-a}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: empty}}\nspec:\n  ports: [{{name: http, port: 80}}]\n",
        app.addr.port()
    );
    for (host, service) in [
        ("shop", "app"),
        ("quota", "app"),
        ("tenants", "app"),
        ("shadow", "app"),
        ("broken", "empty"),
    ] {
        m += &route(
            host,
            &format!(
                "  hostnames: [{host}]\n  rules:\n  - backendRefs: [{{name: {service}, port: 80}}]\n"
            ),
        );
    }
    for (name, mode, key) in [
        ("quota", "Enforce", ""),
        ("tenants", "Enforce", ", key: [{header: {name: X-Tenant}}]"),
        ("shadow", "Shadow", ""),
    ] {
        m += &format!(
            "---\napiVersion: weir.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {name}}}]\n  mode: {mode}\n  limits:\n  - {{name: l, requests: 1, window: 60s{key}}}\n"
        );
    }
    m
}

/// A Prometheus scraping the gateway every second.
struct Prometheus {
    server: weir_loadtest::procs::Prometheus,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let server =
            weir_loadtest::procs::Prometheus::start(dir.path(), &[target.to_string()]).unwrap();
        Prometheus { server, _dir: dir }
    }

    /// An instant query's result vector; `None` when Prometheus is not answering yet.
    async fn query(&self, expr: &str) -> Option<Result<Vec<Value>, String>> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .finish();
        let resp: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query?{query}", self.server.url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        if resp["status"] != "success" {
            return Some(Err(resp.to_string()));
        }
        Some(Ok(resp["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()))
    }
}

/// Every panel query of every dashboard, with Grafana's variables filled in as Grafana
/// would for "All" and a short window.
fn panel_queries() -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$gateway", ".*");
                out.push((
                    d["title"].as_str().unwrap().to_string(),
                    p["title"].as_str().unwrap().to_string(),
                    expr,
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_panel_query_returns_data_from_a_real_prometheus() {
    let queries = panel_queries();
    assert!(queries.len() >= 20, "{} panel queries", queries.len());
    let redis = Redis::start();
    let app = Echo::start("app");
    let port = free_port();
    let gw = Gateway::start_with(
        &site(&app, port),
        &["--redis", &redis.url(), "--zone", "zone-a"],
    );

    // Traffic all along, so each rate has two scrapes with something between them.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut tenant = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for host in ["shop", "quota", "shadow", "broken"] {
                    get(port, host, "/", &[]).await;
                }
                tenant += 1;
                get(port, "tenants", "/", &[("x-tenant", &format!("t{tenant}"))]).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    // The shapes each panel needs, on the gateway's own page first.
    for sample in [
        r#"decision="shadow_limited""#,
        r#"decision="limited""#,
        r#"code="503""#,
        r#"locality="local""#,
    ] {
        wait_for(sample, Duration::from_secs(20), || {
            gw.admin_get("/metrics")
                .is_some_and(|(_, body)| body.contains(sample))
        });
    }

    let prom = Prometheus::start(&gw.admin.to_string());
    let scraped = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let up = prom
            .query(r#"count_over_time(up{job="weir"}[1m]) >= 10"#)
            .await;
        if matches!(up, Some(Ok(r)) if !r.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < scraped,
            "ten scrapes of the gateway within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A panel's data can lag its traffic by a round or a scrape (the Redis sync runs when
    // leases run low): each query is polled until it has a number, within one deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut empty = Vec::new();
    for (dashboard, panel, expr) in &queries {
        loop {
            let result = match prom.query(expr).await {
                Some(Ok(result)) => result,
                Some(Err(e)) => {
                    panic!("{dashboard} / {panel}: the query does not run: {expr}: {e}")
                }
                None => panic!("prometheus stopped answering"),
            };
            let numbers = result.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            });
            if numbers {
                break;
            }
            if std::time::Instant::now() > deadline {
                empty.push(format!("{dashboard} / {panel}: {expr} -> {result:?}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
}

/// The kustomization ships every dashboard the directory has, and the PodMonitor scrapes
/// the port the gateway's Deployment names `admin`, on the pods it labels.
#[test]
fn the_kustomization_ships_every_dashboard_and_scrapes_the_admin_port() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    // The first document of a file (the gateway's is the Deployment).
    let read = |p: &str| -> serde_yaml::Value {
        let text = std::fs::read_to_string(dir.join(p)).unwrap();
        let first = serde_yaml::Deserializer::from_str(&text).next().unwrap();
        serde::Deserialize::deserialize(first).unwrap()
    };
    let k = read("dashboards/kustomization.yaml");
    let mut shipped: Vec<String> = k["configMapGenerator"][0]["files"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    let mut present: Vec<String> = std::fs::read_dir(dir.join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    shipped.sort();
    present.sort();
    assert_eq!(shipped, present);

    let monitor = read("dashboards/podmonitor.yaml");
    let gateway = read("base/gateway.yaml");
    assert_eq!(gateway["kind"], "Deployment");
    let pod = &gateway["spec"]["template"];
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );
    let port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    let ports = pod["spec"]["containers"][0]["ports"].as_sequence().unwrap();
    assert!(
        ports.iter().any(|p| p["name"] == port),
        "{port} in {ports:?}"
    );
}
