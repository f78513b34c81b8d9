//! Route propagation: from a watch event arriving on the HTTPRoute watch to that route
//! being live in a gateway, through the same path as `weir-gateway --kube`: kube's client
//! and watcher, the reflector stores and debounce, translation, compilation and the swap.

pub mod fakeapi;
pub mod nginx;

use fakeapi::{FakeApi, Objects};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_controller::source::kube as source;
use weir_gateway::balance::{Balancer, Locality};
use weir_gateway::metrics::Metrics;
use weir_gateway::reload::{self, Live};

/// One size's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figures {
    pub routes: usize,
    pub events: usize,
    /// Event sent → the route's rules are in the live runtime, in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Translate + compile + swap alone for this size (`Live::apply`), median.
    pub apply_p50_ms: f64,
    /// Of which translation, median.
    pub translate_p50_ms: f64,
    /// Proportional set size once the initial list is live, in KiB (measured in a run
    /// of its own, with jemalloc returning freed pages at once, so it is live memory).
    pub pss_kib: u64,
}

pub fn route(i: usize, name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": format!("{}", 10 + i),
                     "uid": format!("uid-{name}"), "generation": 1,
                     "creationTimestamp": "2026-11-01T00:00:00Z"},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "hostnames": [format!("{name}.example.com")],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                 "backendRefs": [{"name": "echo", "port": 80, "weight": 90}, {"name": "echo-canary", "port": 80, "weight": 10}]},
                {"backendRefs": [{"name": "echo", "port": 80}]}
            ]
        }
    })
}

fn cluster(routes: usize) -> Objects {
    let class = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "weir"}, "spec": {"controllerName": "weir.dev/gateway-controller"}});
    // Port 0: compiled like any listener, with nothing bound (no proxy threads run here).
    let gateway = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "default", "generation": 1},
        "spec": {"gatewayClassName": "weir", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}});
    let service = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    };
    let slice = |name: &str, ip: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "zone": "a"}]})
    };
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
    Objects {
        by_plural: vec![
            ("gatewayclasses", vec![class]),
            ("gateways", vec![gateway]),
            (
                "httproutes",
                (0..routes).map(|i| route(i, &format!("r{i}"))).collect(),
            ),
            ("namespaces", vec![ns]),
            ("services", vec![service("echo"), service("echo-canary")]),
            (
                "endpointslices",
                vec![slice("echo", "10.0.0.1"), slice("echo-canary", "10.0.0.2")],
            ),
        ],
    }
}

fn has_route(live: &Live, name: &str) -> bool {
    let prefix = format!("HTTPRoute/default/{name}/");
    let rt = live.runtime.load();
    rt.config
        .rules
        .range(weir_model::RuleId(prefix.clone())..)
        .next()
        .is_some_and(|(id, _)| id.0.starts_with(&prefix))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Measures one size: lists `routes` routes, then adds `events` new ones one at a time.
pub async fn measure(routes: usize, events: usize, debounce: Duration) -> anyhow::Result<Figures> {
    let api = FakeApi::start(cluster(routes));
    let watch = source::watch(
        api.client.clone(),
        source::Options {
            debounce,
            ..Default::default()
        },
    );
    let metrics = Arc::new(Metrics::new());
    let live = Live::new(1, Balancer::new(Locality::default()), None);
    reload::follow(watch.subscribe(), live.clone(), metrics.clone()).await;
    let began = Instant::now();
    while live.status.load().generation == 0 {
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(120),
            "the initial list never went live"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    anyhow::ensure!(
        routes == 0 || has_route(&live, &format!("r{}", routes - 1)),
        "initial routes missing"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pss = nginx::pss_kib(std::process::id());

    let mut took = Vec::with_capacity(events);
    for e in 0..events {
        let name = format!("new{e}");
        let sent = Instant::now();
        api.send("ADDED", &route(routes + e, &name));
        while !has_route(&live, &name) {
            anyhow::ensure!(
                sent.elapsed() < Duration::from_secs(30),
                "{name} never went live"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        took.push(sent.elapsed().as_secs_f64() * 1e3);
        // Spaced beyond the debounce, so each event is its own swap.
        tokio::time::sleep(debounce * 3 + Duration::from_millis(fastrand::u64(0..10))).await;
    }
    took.sort_by(f64::total_cmp);

    // The pipeline's own share, without the watch and the debounce.
    let snapshot = watch.subscribe().borrow().snapshot.clone();
    let mut apply = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        live.apply(&snapshot, &metrics);
        apply.push(t.elapsed().as_secs_f64() * 1e3);
    }
    apply.sort_by(f64::total_cmp);
    let mut translate = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        std::hint::black_box(weir_controller::translate(&snapshot));
        translate.push(t.elapsed().as_secs_f64() * 1e3);
    }
    translate.sort_by(f64::total_cmp);
    Ok(Figures {
        routes,
        events,
        p50_ms: percentile(&took, 0.5),
        p99_ms: percentile(&took, 0.99),
        max_ms: took.last().copied().unwrap_or(0.0),
        apply_p50_ms: percentile(&apply, 0.5),
        translate_p50_ms: percentile(&translate, 0.5),
        pss_kib: pss,
    })
}
