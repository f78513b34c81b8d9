//! Property tests: for random mixes of Gateway API and core objects (drawn from small pools
//! of names, ports and hostnames so that references, conflicts and grants actually collide),
//! `translate` never panics, is deterministic, ignores input order, and keeps its own
//! invariants.

use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use weir_controller::source::{Snapshot, files};
use weir_controller::translate::{StatusReport, translate};
use weir_model::{BackendRef, Config, Filter};

/// A valid `kubernetes.io/tls` Secret `example-com-tls` in `default`, made once per run (no
/// key is committed anywhere).
fn certificate() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        let hosts = ["example.com".to_string(), "*.example.com".to_string()];
        let (cert, key) = weir_controller::cli::certs::self_signed(&hosts, 1).unwrap();
        weir_controller::cli::certs::secret_yaml("example-com-tls", "default", &cert, &key)
    })
}

fn ns() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["default", "team-a", "team-b"])
}
fn host() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        None,
        Some("a.example.com"),
        Some("*.example.com"),
        Some("B.Example.com"),
        Some("example.com"),
        Some("x.test"),
        Some("bad_host"),
    ])
}
fn time() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        None,
        Some("2024-01-01T00:00:00Z"),
        Some("2025-01-01T00:00:00Z"),
    ])
}
fn meta(name: &str, ns: &str, created: Option<&str>) -> Value {
    let mut m = json!({"name": name, "namespace": ns});
    if let Some(t) = created {
        m["creationTimestamp"] = json!(t);
    }
    m
}

fn gateway_class() -> impl Strategy<Value = Value> {
    (prop::sample::select(vec!["weir-params", "other"]), any::<bool>(), any::<bool>()).prop_map(|(name, ours, params)| {
        let mut spec = json!({"controllerName": if ours { "weir.dev/gateway-controller" } else { "example.com/x" }});
        if params {
            spec["parametersRef"] = json!({"group": "example.com", "kind": "C", "name": "p"});
        }
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": name}, "spec": spec})
    })
}

fn listener() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["a", "b", "c", "d"]),
        prop::sample::select(vec![80, 80, 443, 8080, 0]),
        prop::sample::select(vec!["HTTP", "HTTP", "HTTP", "HTTPS", "HTTPS", "TCP"]),
        host(),
        prop::sample::select(vec![
            "example-com-tls",
            "example-com-tls",
            "missing",
            "plain",
        ]),
        prop::option::of(ns()),
        prop::sample::select(vec!["Same", "All", "Selector"]),
        prop::sample::select(vec![
            vec![],
            vec!["HTTPRoute"],
            vec!["GRPCRoute", "TCPRoute"],
        ]),
    )
        .prop_map(
            |(name, port, protocol, hostname, secret, secret_ns, from, kinds)| {
                let mut l = json!({"name": name, "port": port, "protocol": protocol});
                if let Some(h) = hostname {
                    l["hostname"] = json!(h);
                }
                if protocol == "HTTPS" {
                    let mut r = json!({"name": secret});
                    if let Some(n) = secret_ns {
                        r["namespace"] = json!(n);
                    }
                    l["tls"] = json!({"certificateRefs": [r]});
                }
                let mut allowed = json!({"namespaces": {"from": from}});
                if from == "Selector" {
                    allowed["namespaces"]["selector"] = json!({"matchLabels": {"team": "a"}});
                }
                if !kinds.is_empty() {
                    allowed["kinds"] =
                        json!(kinds.iter().map(|k| json!({"kind": k})).collect::<Vec<_>>());
                }
                l["allowedRoutes"] = allowed;
                l
            },
        )
}

fn gateway() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["gw1", "gw2"]),
        prop::sample::select(vec!["default", "default", "team-a"]),
        time(),
        prop::sample::select(vec!["weir", "weir", "weir", "weir-params", "other"]),
        prop::collection::vec(listener(), 1..4),
    )
        .prop_map(|(name, ns, created, class, listeners)| {
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": meta(name, ns, created),
                   "spec": {"gatewayClassName": class, "listeners": listeners}})
        })
}

fn path_match() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Exact", "PathPrefix", "RegularExpression"]),
        prop::sample::select(vec!["/", "/api", "/api/", "/a//b", "/(x", "/v[0-9]+"]),
    )
        .prop_map(|(t, v)| json!({"type": t, "value": v}))
}

fn http_match() -> impl Strategy<Value = Value> {
    (
        path_match(),
        prop::option::of(prop::sample::select(vec!["GET", "POST"])),
        prop::collection::vec(prop::sample::select(vec!["x-a", "X-A", "x-b"]), 0..3),
        prop::collection::vec(prop::sample::select(vec!["q", "Q"]), 0..2),
    )
        .prop_map(|(path, method, headers, query)| {
            let mut m = json!({"path": path});
            if let Some(method) = method {
                m["method"] = json!(method);
            }
            m["headers"] = json!(
                headers
                    .iter()
                    .map(|h| json!({"name": h, "value": "1"}))
                    .collect::<Vec<_>>()
            );
            m["queryParams"] = json!(
                query
                    .iter()
                    .map(|q| json!({"name": q, "value": "1"}))
                    .collect::<Vec<_>>()
            );
            m
        })
}

fn filter() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-A", "value": "1"}]}}),
        json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-b", "value": "2"}]}}),
        json!({"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}),
        json!({"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}),
        json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "svc1", "port": 80}, "percent": 50}}),
        json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "gone", "port": 80}}}),
        json!({"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}),
    ])
}

fn backend_ref() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["svc1", "svc2", "gone"]),
        prop::option::of(ns()),
        prop::sample::select(vec![80, 81]),
        prop::option::of(0..3i32),
        any::<bool>(),
    )
        .prop_map(|(name, ns, port, weight, odd_kind)| {
            let mut b = json!({"name": name, "port": port});
            if let Some(n) = ns {
                b["namespace"] = json!(n);
            }
            if let Some(w) = weight {
                b["weight"] = json!(w);
            }
            if odd_kind {
                b["kind"] = json!("Bucket");
                b["group"] = json!("example.com");
            }
            b
        })
}

fn parent_ref() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["gw1", "gw1", "gw2", "nowhere"]),
        prop::option::of(ns()),
        prop::option::of(prop::sample::select(vec!["a", "b", "zz"])),
        prop::option::weighted(0.3, prop::sample::select(vec![80, 443, 9])),
    )
        .prop_map(|(name, ns, section, port)| {
            let mut p = json!({"name": name});
            if let Some(n) = ns {
                p["namespace"] = json!(n);
            }
            if let Some(s) = section {
                p["sectionName"] = json!(s);
            }
            if let Some(port) = port {
                p["port"] = json!(port);
            }
            p
        })
}

fn route() -> impl Strategy<Value = Value> {
    let rule = (
        prop::collection::vec(http_match(), 0..3),
        prop::collection::vec(filter(), 0..2),
        prop::collection::vec(backend_ref(), 0..3),
        prop::option::of(prop::sample::select(vec!["1s", "0s", "bogus"])),
    )
        .prop_map(|(matches, filters, backends, timeout)| {
            let mut r = json!({"matches": matches, "filters": filters, "backendRefs": backends});
            if let Some(t) = timeout {
                r["timeouts"] = json!({"request": t});
            }
            r
        });
    (
        prop::sample::select(vec!["r1", "r2", "r3"]),
        ns(),
        time(),
        any::<bool>(),
        prop::collection::vec(parent_ref(), 0..3),
        prop::collection::vec(host(), 0..3),
        prop::collection::vec(rule, 0..3),
    )
        .prop_map(|(name, ns, created, grpc, parents, hosts, mut rules)| {
            let hostnames: Vec<&str> = hosts.into_iter().flatten().collect();
            let kind = if grpc { "GRPCRoute" } else { "HTTPRoute" };
            if grpc {
                // GRPCRoute rules have method matches and fewer filter types.
                for r in &mut rules {
                    r["matches"] = json!([{"method": {"service": "shop.Cart", "method": "Add"}}]);
                    r["filters"] = json!([]);
                    r.as_object_mut().unwrap().remove("timeouts");
                }
            }
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind, "metadata": meta(name, ns, created),
                   "spec": {"parentRefs": parents, "hostnames": hostnames, "rules": rules}})
        })
}

fn service_and_slice() -> impl Strategy<Value = Vec<Value>> {
    (prop::sample::select(vec!["svc1", "svc2"]), ns(), any::<bool>(), 1..4u8).prop_map(|(name, ns, headless, n)| {
        let mut spec = json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
        if headless {
            spec = json!({"clusterIP": "None"});
        }
        let endpoints: Vec<Value> = (0..n)
            .map(|i| json!({"addresses": [format!("10.0.0.{i}")], "zone": if i % 2 == 0 { "a" } else { "b" }, "conditions": {"ready": i != 2}}))
            .collect();
        vec![
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(name, ns, None), "spec": spec}),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": format!("{name}-x"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
                   "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints}),
        ]
    })
}

fn grant() -> impl Strategy<Value = Value> {
    (ns(), ns(), prop::sample::select(vec!["Gateway", "HTTPRoute", "GRPCRoute"]), prop::sample::select(vec!["Secret", "Service"])).prop_map(
        |(to_ns, from_ns, from_kind, to_kind)| {
            json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                   "metadata": {"name": format!("g-{from_ns}-{from_kind}-{to_kind}").to_lowercase(), "namespace": to_ns},
                   "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": from_kind, "namespace": from_ns}],
                            "to": [{"group": "", "kind": to_kind}]}})
        },
    )
}

fn rate_limit_policy() -> impl Strategy<Value = Value> {
    let target = (
        prop::sample::select(vec![
            "Gateway",
            "HTTPRoute",
            "GRPCRoute",
            "Service",
            "Deployment",
        ]),
        prop::sample::select(vec!["gw1", "r1", "r2", "svc1", "nope"]),
        prop::option::of(prop::sample::select(vec!["a", "zz"])),
    )
        .prop_map(|(kind, name, section)| {
            let group = if kind == "Service" {
                ""
            } else if kind == "Deployment" {
                "apps"
            } else {
                "gateway.networking.k8s.io"
            };
            let mut t = json!({"group": group, "kind": kind, "name": name});
            if let Some(s) = section {
                t["sectionName"] = json!(s);
            }
            t
        });
    (
        prop::sample::select(vec!["p1", "p2", "p3"]),
        ns(),
        time(),
        prop::collection::vec(target, 0..3),
        prop::sample::select(vec!["1s", "1m", "0s", "soon"]),
        prop::sample::select(vec!["Enforce", "Shadow"]),
    )
        .prop_map(|(name, ns, created, targets, window, mode)| {
            json!({"apiVersion": "weir.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": meta(name, ns, created),
                   "spec": {"targetRefs": targets, "mode": mode,
                            "limits": [{"name": "l", "requests": 10, "window": window, "key": [{"clientIP": {}}]}]}})
        })
}

/// Random documents, deduplicated by kind/namespace/name (the file source rejects
/// duplicates, and so would the API server).
fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        prop::collection::vec(gateway_class(), 0..3),
        prop::collection::vec(gateway(), 1..3),
        prop::collection::vec(route(), 0..6),
        prop::collection::vec(service_and_slice(), 0..3),
        prop::collection::vec(grant(), 0..3),
        any::<bool>(),
        prop::collection::vec(rate_limit_policy(), 0..3),
    )
        .prop_map(|(classes, gateways, routes, services, grants, labelled, policies)| {
            // Weir's own class is always there, so that most Gateways are Weir's.
            let mut docs: Vec<Value> = vec![json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": "weir"}, "spec": {"controllerName": "weir.dev/gateway-controller"}})];
            docs.extend(classes);
            docs.extend(gateways);
            docs.extend(routes);
            docs.extend(services.into_iter().flatten());
            docs.extend(grants);
            docs.extend(policies);
            if labelled {
                docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {"team": "a"}}}));
            }
            let mut seen = BTreeSet::new();
            docs.retain(|d| {
                seen.insert((d["kind"].to_string(), d["metadata"]["namespace"].to_string(), d["metadata"]["name"].to_string()))
            });
            let mut text: String = docs
                .iter()
                .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
                .collect();
            // A valid certificate in the default namespace and an Opaque Secret beside it.
            text.push_str("---\n");
            text.push_str(certificate());
            text.push_str("---\napiVersion: v1\nkind: Secret\nmetadata: {name: plain, namespace: default}\ntype: Opaque\n");
            files::parse_str(Path::new("generated.yaml"), &text)
                .unwrap_or_else(|e| panic!("generated manifests must parse: {e}\n{text}"))
                .snapshot
        })
}

/// A deterministic shuffle of every list, driven by `seed`.
fn shuffled(s: &Snapshot, seed: u64) -> Snapshot {
    fn shuffle<T: Clone>(v: &[T], state: &mut u64) -> Vec<T> {
        let mut v = v.to_vec();
        for i in (1..v.len()).rev() {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            v.swap(i, (*state % (i as u64 + 1)) as usize);
        }
        v
    }
    let mut st = seed | 1;
    Snapshot {
        gateway_classes: shuffle(&s.gateway_classes, &mut st),
        gateways: shuffle(&s.gateways, &mut st),
        http_routes: shuffle(&s.http_routes, &mut st),
        grpc_routes: shuffle(&s.grpc_routes, &mut st),
        reference_grants: shuffle(&s.reference_grants, &mut st),
        namespaces: shuffle(&s.namespaces, &mut st),
        services: shuffle(&s.services, &mut st),
        endpoint_slices: shuffle(&s.endpoint_slices, &mut st),
        secrets: shuffle(&s.secrets, &mut st),
        rate_limit_policies: shuffle(&s.rate_limit_policies, &mut st),
        authorization_policies: shuffle(&s.authorization_policies, &mut st),
        backend_tls_policies: shuffle(&s.backend_tls_policies, &mut st),
        config_maps: shuffle(&s.config_maps, &mut st),
    }
}

/// Invariants of one translation.
fn check_invariants(config: &Config, report: &StatusReport) {
    let mut backends_used = BTreeSet::new();
    for rule in config.rules.values() {
        assert!(
            !rule.backends.is_empty()
                || rule
                    .filters
                    .iter()
                    .any(|f| matches!(f, Filter::RequestRedirect(_)))
        );
        for b in &rule.backends {
            if let BackendRef::Service(k) = &b.backend {
                assert!(config.backends.contains_key(k), "dangling backend {k}");
                backends_used.insert(k.clone());
            }
        }
    }
    // Every policy a rule or listener names is in the config.
    for name in config
        .rules
        .values()
        .filter_map(|r| r.rate_limit.as_ref())
        .chain(
            config
                .listeners
                .iter()
                .filter_map(|l| l.rate_limit.as_ref()),
        )
    {
        assert!(
            config.rate_limits.contains_key(name),
            "dangling rate limit policy {name}"
        );
    }
    // attachedRoutes of every programmed listener is the number of routes in its hosts.
    let mut routes_per_listener: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for l in &config.listeners {
        let set = routes_per_listener
            .entry((l.gateway.to_string(), l.name.clone()))
            .or_default();
        for h in &l.hosts {
            for e in &h.routes {
                let rule = config
                    .rules
                    .get(&e.rule)
                    .expect("route entries point at rules");
                set.insert(format!("{}/{}", rule.kind, rule.route));
            }
        }
        let status = report
            .gateways
            .get(&l.gateway)
            .expect("a programmed listener's Gateway has a status");
        let ls = status
            .listeners
            .iter()
            .flatten()
            .find(|s| s.name == l.name)
            .expect("listener status");
        assert_eq!(
            ls.attached_routes as usize,
            set.len(),
            "attachedRoutes of {}/{}",
            l.gateway,
            l.name
        );
        let programmed = ls
            .conditions
            .iter()
            .find(|c| c.type_ == "Programmed")
            .unwrap();
        assert_eq!(
            programmed.status, "True",
            "listeners in the config are Programmed"
        );
    }
    // Every Accepted route parent puts at least one of the route's rules in the config.
    for (id, s) in &report.http_routes {
        let accepted = s.parents.iter().any(|p| {
            p.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.status == "True")
        });
        let present = config
            .rules
            .values()
            .any(|r| r.route == *id && r.kind == weir_model::RouteKind::Http);
        assert_eq!(
            accepted, present,
            "HTTPRoute {id}: accepted={accepted} but in config={present}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn translate_is_total_deterministic_and_order_independent(s in snapshot(), seed in any::<u64>()) {
        let (config, report) = translate(&s);
        check_invariants(&config, &report);
        let again = translate(&s);
        prop_assert_eq!(&again.0, &config);
        prop_assert_eq!(&again.1, &report);
        let permuted = translate(&shuffled(&s, seed));
        prop_assert_eq!(&permuted.0, &config);
        prop_assert_eq!(&permuted.1, &report);
        // The IR survives a JSON round trip: it is what `/config` and the controller emit.
        let json = serde_json::to_string(&config).unwrap();
        let back: Config = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, config);
    }
}

/// Guards the generator against drifting into trivia: enough generated snapshots must reach
/// the interesting paths (programmed listeners, accepted and refused routes, conflicts) for
/// the property above to mean something.
#[test]
fn generated_snapshots_exercise_translation() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut listeners, mut accepted, mut refused, mut conflicts) = (0, 0, 0, 0);
    for _ in 0..300 {
        let s = snapshot().new_tree(&mut runner).unwrap().current();
        let (config, report) = translate(&s);
        listeners += usize::from(!config.listeners.is_empty());
        let conds: Vec<_> = report
            .http_routes
            .values()
            .flat_map(|r| r.parents.iter().flat_map(|p| p.conditions.iter()))
            .chain(report.gateways.values().flat_map(|g| {
                g.listeners
                    .iter()
                    .flatten()
                    .flat_map(|l| l.conditions.iter())
            }))
            .collect();
        accepted += usize::from(
            conds
                .iter()
                .any(|c| c.type_ == "Accepted" && c.status == "True" && c.reason == "Accepted"),
        );
        refused += usize::from(
            conds
                .iter()
                .any(|c| c.type_ == "Accepted" && c.status == "False"),
        );
        conflicts += usize::from(
            conds
                .iter()
                .any(|c| c.type_ == "Conflicted" && c.status == "True"),
        );
    }
    assert!(listeners > 80, "programmed listeners in {listeners}/300");
    assert!(accepted > 50, "accepted routes in {accepted}/300");
    assert!(refused > 50, "refusals in {refused}/300");
    assert!(conflicts > 8, "conflicts in {conflicts}/300");
}
