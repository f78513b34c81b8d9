//! The Grafana dashboards in `deploy/dashboards/` against a real `prometheus` (Debian's
//! package) that scrapes a real gateway carrying traffic: every panel's query must parse and
//! return data, so a dashboard that names a metric or label the gateway no longer exports
//! fails here.

mod support;

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

/// The dashboards this test checks: the gateway's own. The mesh and sidecar dashboards
/// need sidecars, and sidecar/tests/dashboards.rs checks them.
const DASHBOARDS: [&str; 3] = ["fleet.json", "ratelimits.json", "zones.json"];
const SIDECAR_DASHBOARDS: [&str; 2] = ["mesh.json", "sidecars.json"];

fn dashboards_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dashboards")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_panel_query_returns_data_from_a_real_prometheus() {
    let queries = weir_loadtest::procs::panel_queries(&dashboards_dir(), &DASHBOARDS).unwrap();
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

    let dir = tempfile::tempdir().unwrap();
    let prom =
        weir_loadtest::procs::Prometheus::start(dir.path(), &[gw.admin.to_string()]).unwrap();
    prom.wait_scraped(1, Duration::from_secs(60)).unwrap();
    // A panel's data can lag its traffic by a round or a scrape (the Redis sync runs when
    // leases run low): each query is polled until it has a number, within one deadline.
    let empty =
        tokio::task::block_in_place(|| prom.panels_without_data(&queries, Duration::from_secs(60)));
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
    // And every dashboard is checked against a real Prometheus, here or with sidecars.
    let mut tested: Vec<String> = DASHBOARDS
        .iter()
        .chain(&SIDECAR_DASHBOARDS)
        .map(|s| s.to_string())
        .collect();
    tested.sort();
    assert_eq!(tested, present, "a dashboard no test runs");

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
