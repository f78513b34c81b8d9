//! The graph built from fixed series: what each kind of traffic draws.

use super::build::{Graph, Kind, build};
use super::series::{self, Series, Window};

const FRONT: &str = "spiffe://td/ns/shop/sa/front";
const FLEET: &str = "spiffe://td/ns/weir-system/sa/weir-gateway";

fn requests(
    gateway: &str,
    backend: &str,
    source: &str,
    destination: &str,
    code: &str,
    n: f64,
) -> Series {
    Series::new(
        series::REQUESTS,
        &[
            ("gateway", gateway),
            ("route", "shop/store"),
            ("backend", backend),
            ("source", source),
            ("destination", destination),
            ("code", code),
        ],
        n,
    )
}

fn bucket(le: &str, n: f64) -> Series {
    Series::new(
        series::DURATION_BUCKET,
        &[
            ("gateway", "edge/web"),
            ("route", "shop/store"),
            ("backend", "shop/store:80"),
            ("source", ""),
            ("destination", ""),
            ("le", le),
        ],
        n,
    )
}

/// A series of the sidecar at `a:1`.
fn sidecar_a(labels: &[(&str, &str)], name: &str, n: f64) -> Series {
    let mut l = vec![("instance", "a:1")];
    l.extend_from_slice(labels);
    Series::new(name, &l, n)
}

fn fixture() -> Graph {
    let sidecar = |name: &str, labels: &[(&str, &str)], n: f64| {
        let mut l = vec![("instance", "10.0.0.9:15020")];
        l.extend_from_slice(labels);
        Series::new(name, &l, n)
    };
    let series = vec![
        requests("edge/web", "shop/store:80", "", "", "200", 8.0),
        requests("edge/web", "shop/store:80", "", "", "503", 2.0),
        // Refused by the fleet's limiter: no backend was chosen.
        requests("edge/web", "", "", "", "429", 5.0),
        requests("edge/web", "default/api:443", "", "", "200", 4.0),
        Series::new(
            series::EGRESS_INFO,
            &[("backend", "default/api:443"), ("name", "api.example.com")],
            1.0,
        ),
        requests(
            "weir-system/mesh",
            "pay/payments:8080",
            FRONT,
            "pay/payments:8080",
            "200",
            10.0,
        ),
        // A series that saw nothing in the window draws nothing.
        requests(
            "weir-system/mesh",
            "pay/ledger:80",
            FRONT,
            "pay/ledger:80",
            "200",
            0.0,
        ),
        bucket("0.01", 5.0),
        bucket("0.1", 9.0),
        bucket("+Inf", 10.0),
        sidecar(
            series::SIDECAR_IDENTITY,
            &[
                ("spiffe_id", "spiffe://td/ns/pay/sa/payments"),
                ("serial", "1"),
            ],
            1.0,
        ),
        sidecar(series::SIDECAR_REFUSED, &[("reason", "untrusted")], 3.0),
        sidecar(series::SIDECAR_CONNECTIONS, &[], 5.0),
        sidecar(series::SIDECAR_REQUESTS, &[("peer", FLEET)], 10.0),
        Series::new(
            series::ZONE_REQUESTS,
            &[("service", "pay/payments:8080"), ("locality", "local")],
            9.0,
        ),
        Series::new(
            series::ZONE_REQUESTS,
            &[("service", "pay/payments:8080"), ("locality", "cross")],
            1.0,
        ),
        Series::new(
            series::RATELIMIT_DECISIONS,
            &[("policy", "shop/per-client"), ("decision", "limited")],
            5.0,
        ),
        Series::new(
            series::RATELIMIT_DECISIONS,
            &[("policy", "shop/per-client"), ("decision", "allowed")],
            10.0,
        ),
    ];
    build(
        "5m",
        &Window {
            seconds: 300.0,
            series,
        },
    )
}

#[test]
fn callers_the_fleet_services_and_egress_are_nodes() {
    let g = fixture();
    let nodes: Vec<(&str, Kind, &str)> = g
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.kind, n.namespace.as_str()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("client", Kind::Client, ""),
            ("external:api.example.com", Kind::External, "default"),
            ("gateway:edge/web", Kind::Gateway, "edge"),
            ("gateway:weir-system/mesh", Kind::Gateway, "weir-system"),
            ("pay/payments", Kind::Service, "pay"),
            ("shop/front", Kind::Service, "shop"),
            ("shop/store", Kind::Service, "shop"),
        ]
    );
    // The sidecar's peer was the fleet: no node for the fleet's own identity.
    assert!(g.nodes.iter().all(|n| !n.id.contains("weir-gateway")));
}

#[test]
fn every_hop_with_traffic_is_an_edge_with_its_figures() {
    let g = fixture();
    let edge = |id: &str| {
        g.edges.iter().find(|e| e.id == id).unwrap_or_else(|| {
            panic!(
                "no edge {id} in {:#?}",
                g.edges.iter().map(|e| &e.id).collect::<Vec<_>>()
            )
        })
    };
    let ids: Vec<&str> = g.edges.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 6, "{ids:?}");

    let into_edge = edge("client -> gateway:edge/web");
    assert_eq!(into_edge.figures.rps, 19.0);
    assert_eq!(into_edge.figures.rate_limited_ratio, round(5.0 / 19.0));
    assert_eq!(into_edge.figures.error_ratio, round(2.0 / 19.0));
    assert!(!into_edge.mtls);
    // The limiter's 429s never reached the backend.
    let store = edge("gateway:edge/web -> shop/store");
    assert_eq!(store.figures.rps, 10.0);
    assert_eq!(store.figures.error_ratio, 0.2);
    assert_eq!(store.figures.rate_limited_ratio, 0.0);
    assert_eq!(store.figures.p50_ms, Some(10.0));
    // The top 1% lies above the highest finite bound: that bound is all that is known.
    assert_eq!(store.figures.p99_ms, Some(100.0));
    assert_eq!(store.figures.backends, ["shop/store:80"]);
    assert_eq!(store.figures.routes, ["shop/store"]);
    assert_eq!(
        edge("gateway:edge/web -> external:api.example.com")
            .figures
            .rps,
        4.0
    );

    let caller = edge("shop/front -> gateway:weir-system/mesh");
    assert!(caller.mtls, "a verified caller identity is an mTLS hop");
    let callee = edge("gateway:weir-system/mesh -> pay/payments");
    assert!(callee.mtls, "the callee's sidecar verified the fleet");
    assert_eq!(callee.figures.rps, 10.0);
    // Refused at the callee's sidecar: 3 of 5 connections, from nobody anyone verified.
    let refused = edge("client -> pay/payments");
    assert_eq!(refused.figures.refused_ratio, 0.6);
    assert_eq!(refused.figures.refused_per_s, 3.0);
    assert_eq!(refused.figures.rps, 0.0);
}

#[test]
fn nodes_carry_their_zone_and_rate_limit_figures() {
    let g = fixture();
    let node = |id: &str| g.nodes.iter().find(|n| n.id == id).unwrap();
    let payments = node("pay/payments");
    let zone = payments.zone.as_ref().expect("zone figures");
    assert_eq!(zone.in_zone_share, 0.9);
    assert_eq!(payments.figures.rps, 10.0);
    assert_eq!(payments.figures.refused_ratio, 0.6);
    let web = node("gateway:edge/web");
    assert_eq!(web.figures.rate_limited_ratio, round(5.0 / 19.0));
    assert_eq!(web.rps_out, 14.0);
    // A caller is described by what it sent.
    assert_eq!(node("client").figures.rps, 19.0);
    assert_eq!(g.rate_limits.len(), 1);
    assert_eq!(g.rate_limits[0].limited_rps, 5.0);
}

#[test]
fn plaintext_and_direct_callers_of_a_sidecar_are_their_own_edges() {
    let s = sidecar_a;
    let w = Window {
        seconds: 60.0,
        series: vec![
            s(
                &[("spiffe_id", "spiffe://td/ns/pay/sa/payments")],
                series::SIDECAR_IDENTITY,
                1.0,
            ),
            s(&[("peer", "plaintext")], series::SIDECAR_REQUESTS, 2.0),
            s(&[("peer", FRONT)], series::SIDECAR_REQUESTS, 3.0),
        ],
    };
    let g = build("1m", &w);
    let ids: Vec<(&str, bool, f64)> = g
        .edges
        .iter()
        .map(|e| (e.id.as_str(), e.mtls, e.figures.rps))
        .collect();
    assert_eq!(
        ids,
        [
            ("client -> pay/payments", false, 2.0),
            ("shop/front -> pay/payments", true, 3.0)
        ]
    );
}

#[test]
fn an_empty_window_is_an_empty_graph() {
    let g = build("5m", &Window::default());
    assert!(g.nodes.is_empty() && g.edges.is_empty());
    let json = serde_json::to_value(&g).unwrap();
    assert_eq!(json["window"], "5m");
    assert!(json["nodes"].as_array().unwrap().is_empty());
}

#[test]
fn the_json_has_the_documented_fields() {
    let g = fixture();
    let json = serde_json::to_value(&g).unwrap();
    let edge = &json["edges"][0];
    for field in [
        "source",
        "destination",
        "rps",
        "error_ratio",
        "p50_ms",
        "p99_ms",
        "rate_limited_ratio",
        "refused_ratio",
        "mtls",
    ] {
        assert!(edge.get(field).is_some(), "edge lacks {field}: {edge}");
    }
    let node = &json["nodes"][0];
    for field in ["id", "kind", "namespace"] {
        assert!(node.get(field).is_some(), "node lacks {field}: {node}");
    }
    assert_eq!(json["nodes"][0]["kind"], "client");
}

fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// Authorization refusals: the fleet's 401s and 403s before any backend are the edge's
/// denied share (a backend's own 403 is not), and each policy's decisions, from the fleet
/// and the sidecars, are summed per policy.
#[test]
fn authorization_refusals_show_on_their_edge_and_per_policy() {
    let decision = |instance: &str, policy: &str, action: &str, decision: &str, n: f64| {
        Series::new(
            series::AUTHZ_DECISIONS,
            &[
                ("instance", instance),
                ("policy", policy),
                ("action", action),
                ("decision", decision),
            ],
            n,
        )
    };
    let w = Window {
        seconds: 60.0,
        series: vec![
            requests("edge/web", "shop/store:80", "", "", "200", 6.0),
            // The backend said 403 itself: not a refusal of Weir's.
            requests("edge/web", "shop/store:80", "", "", "403", 1.0),
            requests("edge/web", "", "", "", "403", 2.0),
            requests("edge/web", "", "", "", "401", 1.0),
            decision("fleet-1:9901", "shop/private", "DENY", "denied", 2.0),
            decision("fleet-2:9901", "shop/private", "DENY", "denied", 1.0),
            decision("10.0.0.9:15020", "shop/private", "DENY", "allowed", 6.0),
            decision("fleet-1:9901", "pay/trial", "ALLOW", "shadow_denied", 0.5),
            decision("fleet-1:9901", "pay/trial", "ALLOW", "shadow_allowed", 1.5),
            decision("fleet-1:9901", "pay/idle", "ALLOW", "allowed", 0.0),
        ],
    };
    let g = build("5m", &w);
    let into_web = g
        .edges
        .iter()
        .find(|e| e.id == "client -> gateway:edge/web")
        .unwrap();
    assert_eq!(into_web.figures.denied_per_s, 3.0);
    assert_eq!(into_web.figures.denied_ratio, 0.3);
    let store = g
        .edges
        .iter()
        .find(|e| e.id == "gateway:edge/web -> shop/store")
        .unwrap();
    assert_eq!(store.figures.denied_ratio, 0.0);
    assert_eq!(store.figures.codes["403"], 1.0);
    let policies: Vec<(&str, &str, f64, f64, f64)> = g
        .authz
        .iter()
        .map(|p| {
            (
                p.policy.as_str(),
                p.action.as_str(),
                p.allowed_rps,
                p.denied_rps,
                p.shadow_denied_rps,
            )
        })
        .collect();
    assert_eq!(
        policies,
        [
            ("pay/trial", "ALLOW", 1.5, 0.0, 0.5),
            ("shop/private", "DENY", 6.0, 3.0, 0.0)
        ],
        "a policy that decided nothing in the window is left out"
    );
}

/// A sidecar's own refusals (direct callers, by peer): on the edge from that caller, with
/// the requests it forwarded, so the share is of everything the caller sent.
#[test]
fn a_sidecars_request_refusals_land_on_the_callers_edge() {
    let s = sidecar_a;
    let w = Window {
        seconds: 60.0,
        series: vec![
            s(
                &[("spiffe_id", "spiffe://td/ns/pay/sa/payments")],
                series::SIDECAR_IDENTITY,
                1.0,
            ),
            s(&[("peer", FRONT)], series::SIDECAR_REQUESTS, 3.0),
            s(&[("peer", FRONT)], series::SIDECAR_DENIED, 1.0),
            s(&[("peer", "plaintext")], series::SIDECAR_DENIED, 2.0),
        ],
    };
    let g = build("5m", &w);
    let edge = |id: &str| {
        g.edges
            .iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("{id} in {:?}", g.edges))
    };
    let front = edge("shop/front -> pay/payments");
    assert_eq!(
        (front.figures.rps, front.figures.denied_ratio, front.mtls),
        (4.0, 0.25, true)
    );
    let plain = edge("client -> pay/payments");
    assert_eq!(
        (
            plain.figures.denied_per_s,
            plain.figures.denied_ratio,
            plain.mtls
        ),
        (2.0, 1.0, false)
    );
}
