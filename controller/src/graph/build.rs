//! The service graph of one window, built purely from its series.
//!
//! Nodes are callers (by verified identity, `namespace/serviceaccount`; callers without one
//! are the single `client` node), the fleet's Gateways, Services (`namespace/name`, merged
//! with the identity of the same name, as a workload's Service and service account usually
//! share it) and ExternalName egress targets. Every request the fleet answered is an edge
//! from its caller to its Gateway, and, when it reached a backend, one from the Gateway to
//! that backend. A sidecar adds what the fleet cannot see: connections it refused (from the
//! `client` node, as a refused peer has no identity anyone verified), plaintext requests on
//! permissive ports, and whether the hop into it was mTLS.
//!
//! Errors are 5xx answers. 429s from the fleet's own rate limiter (no backend chosen) are
//! counted apart as `rate_limited_ratio`, since they are the limiter working, not a fault.

use super::series::{self, Series, Window};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

pub const CLIENT: &str = "client";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Client,
    Gateway,
    Service,
    External,
}

#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    /// The window asked for (`5m`).
    pub window: String,
    /// The seconds the rates cover: less than the window while the history is shorter.
    pub window_seconds: f64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// The fleet's rate limit decisions per policy (they carry no Gateway label).
    pub rate_limits: Vec<PolicyFigures>,
    /// AuthorizationPolicy decisions per policy, at the fleet and the sidecars.
    pub authz: Vec<AuthzFigures>,
    /// Why the figures may be incomplete (a scrape target that did not answer).
    pub problems: Vec<String>,
}

/// Rates in requests per second; ratios in [0, 1]; latencies in milliseconds, `null` when
/// nothing was observed.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub rps: f64,
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rate_limited_ratio: f64,
    /// Requests the fleet refused by authorization (401 or 403 before any backend).
    pub denied_ratio: f64,
    pub denied_per_s: f64,
    /// Refused connections over connection attempts, at the destination's sidecar.
    pub refused_ratio: f64,
    pub refused_per_s: f64,
    /// Requests per second by status code.
    pub codes: BTreeMap<String, f64>,
    pub routes: Vec<String>,
    pub backends: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: String,
    pub kind: Kind,
    pub namespace: String,
    pub label: String,
    /// What it received; for a node nothing calls (a caller), what it sent.
    #[serde(flatten)]
    pub figures: Figures,
    pub rps_out: f64,
    /// Zone affinity: its requests kept in the caller's zone, for Services the fleet
    /// balances by zone.
    pub zone: Option<ZoneFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    /// `source -> destination`.
    pub id: String,
    pub source: String,
    pub destination: String,
    #[serde(flatten)]
    pub figures: Figures,
    /// The hop's caller presented a certificate its callee verified.
    pub mtls: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ZoneFigures {
    pub in_zone_share: f64,
    pub local_rps: f64,
    pub cross_rps: f64,
}

/// One AuthorizationPolicy's decisions per second; `shadow_denied_rps` is what a Shadow
/// policy would have refused.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthzFigures {
    pub policy: String,
    pub action: String,
    pub allowed_rps: f64,
    pub denied_rps: f64,
    pub shadow_denied_rps: f64,
    pub audited_rps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyFigures {
    pub policy: String,
    pub allowed_rps: f64,
    pub limited_rps: f64,
    pub shadow_limited_rps: f64,
}

/// What is summed for one edge, or for one node from its edges.
#[derive(Debug, Clone, Default)]
struct Acc {
    requests: f64,
    errors: f64,
    limited: f64,
    denied: f64,
    refused: f64,
    connections: f64,
    codes: BTreeMap<String, f64>,
    routes: BTreeSet<String>,
    backends: BTreeSet<String>,
    /// Cumulative bucket rates by `le` (as bits: positive floats order like their bits).
    buckets: BTreeMap<u64, f64>,
    mtls: bool,
}

impl Acc {
    fn merge(&mut self, o: &Acc) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.limited += o.limited;
        self.denied += o.denied;
        self.refused += o.refused;
        self.connections += o.connections;
        for (c, v) in &o.codes {
            *self.codes.entry(c.clone()).or_default() += v;
        }
        self.routes.extend(o.routes.iter().cloned());
        self.backends.extend(o.backends.iter().cloned());
        for (le, v) in &o.buckets {
            *self.buckets.entry(*le).or_default() += v;
        }
    }

    fn figures(&self) -> Figures {
        let ratio = |part: f64, whole: f64| if whole > 0.0 { part / whole } else { 0.0 };
        let buckets: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|(le, v)| (f64::from_bits(*le), *v))
            .collect();
        let ms = |q| series::quantile(q, &buckets).map(|s| round(s * 1000.0));
        let attempts = self.connections.max(self.refused);
        Figures {
            rps: round(self.requests),
            error_ratio: round(ratio(self.errors, self.requests)),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            rate_limited_ratio: round(ratio(self.limited, self.requests)),
            denied_ratio: round(ratio(self.denied, self.requests)),
            denied_per_s: round(self.denied),
            refused_ratio: round(ratio(self.refused, attempts)),
            refused_per_s: round(self.refused),
            codes: self
                .codes
                .iter()
                .map(|(c, v)| (c.clone(), round(*v)))
                .collect(),
            routes: self.routes.iter().cloned().collect(),
            backends: self.backends.iter().cloned().collect(),
        }
    }

    fn had_traffic(&self) -> bool {
        self.requests > 0.0 || self.refused > 0.0
    }
}

/// Four significant decimals: rates from `rate()` carry float noise nobody wants to read.
fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

#[derive(Default)]
struct Builder {
    nodes: BTreeMap<String, (Kind, String, String)>,
    edges: BTreeMap<(String, String), Acc>,
}

impl Builder {
    fn node(&mut self, id: &str, kind: Kind, namespace: &str, label: &str) -> String {
        let entry = self
            .nodes
            .entry(id.to_string())
            .or_insert_with(|| (kind, namespace.to_string(), label.to_string()));
        // A Service and the identity of the same name are one node; what routes to it
        // says more than what calls from it.
        entry.0 = entry.0.max(kind);
        id.to_string()
    }

    fn caller(&mut self, source: &str) -> String {
        if source.is_empty() {
            return self.node(CLIENT, Kind::Client, "", "clients without an identity");
        }
        match weir_model::spiffe::workload_of(source) {
            Some((ns, sa)) => self.node(
                &format!("{ns}/{sa}"),
                Kind::Service,
                ns,
                &format!("{ns}/{sa}"),
            ),
            None => self.node(source, Kind::Service, "", source),
        }
    }

    fn service(&mut self, backend: &str) -> String {
        let name = without_port(backend);
        self.node(name, Kind::Service, namespace(name), name)
    }

    fn edge(&mut self, from: &str, to: &str) -> &mut Acc {
        self.edges
            .entry((from.to_string(), to.to_string()))
            .or_default()
    }
}

/// `ns/name:port` without its port.
fn without_port(backend: &str) -> &str {
    backend.rsplit_once(':').map_or(backend, |(n, _)| n)
}

/// The namespace of `ns/name` (empty when there is none).
fn namespace(name: &str) -> &str {
    name.split_once('/').map_or("", |(ns, _)| ns)
}

pub fn build(window_label: &str, w: &Window) -> Graph {
    let mut b = Builder::default();
    let external: BTreeMap<&str, &str> = w
        .named(series::EGRESS_INFO)
        .map(|s| (s.label("backend"), s.label("name")))
        .collect();
    // Where each fleet series goes: (caller, gateway, backend node).
    let hops = |b: &mut Builder, s: &Series| {
        let caller = b.caller(s.label("source"));
        let gw = s.label("gateway");
        let gw_label = if gw.is_empty() { "unknown" } else { gw };
        let gateway = b.node(
            &format!("gateway:{gw_label}"),
            Kind::Gateway,
            namespace(gw_label),
            gw_label,
        );
        let backend = s.label("backend");
        let target = match (backend, external.get(backend)) {
            ("", _) => None,
            (_, Some(name)) => Some(b.node(
                &format!("external:{name}"),
                Kind::External,
                namespace(backend),
                name,
            )),
            // A mesh request names the Service it was for; an edge one, its backend.
            _ => match s.label("destination") {
                "" => Some(b.service(backend)),
                d => Some(b.service(d)),
            },
        };
        (caller, gateway, target)
    };
    for s in w.named(series::REQUESTS) {
        if s.value <= 0.0 {
            continue;
        }
        let (caller, gateway, target) = hops(&mut b, s);
        let code = s.label("code");
        let add = |acc: &mut Acc| {
            acc.requests += s.value;
            if code.starts_with('5') {
                acc.errors += s.value;
            }
            *acc.codes.entry(code.to_string()).or_default() += s.value;
            if !s.label("route").is_empty() {
                acc.routes.insert(s.label("route").to_string());
            }
            if !s.label("backend").is_empty() {
                acc.backends.insert(s.label("backend").to_string());
            }
        };
        let first = b.edge(&caller, &gateway);
        add(first);
        first.mtls |= !s.label("source").is_empty();
        // Answered by the fleet itself, before any backend.
        if s.label("backend").is_empty() {
            match code {
                "429" => first.limited += s.value,
                "401" | "403" => first.denied += s.value,
                _ => {}
            }
        }
        if let Some(target) = target {
            add(b.edge(&gateway, &target));
        }
    }
    for s in w.named(series::DURATION_BUCKET) {
        let Ok(le) = s.label("le").parse::<f64>() else {
            continue;
        };
        let (caller, gateway, target) = hops(&mut b, s);
        *b.edge(&caller, &gateway)
            .buckets
            .entry(le.to_bits())
            .or_default() += s.value;
        if let Some(target) = target {
            *b.edge(&gateway, &target)
                .buckets
                .entry(le.to_bits())
                .or_default() += s.value;
        }
    }
    sidecars(&mut b, w);
    finish(b, window_label, w)
}

/// What each sidecar saw, joined to its identity by `instance`.
fn sidecars(b: &mut Builder, w: &Window) {
    let identities: BTreeMap<&str, &str> = w
        .named(series::SIDECAR_IDENTITY)
        .filter(|s| s.value > 0.0)
        .map(|s| (s.label("instance"), s.label("spiffe_id")))
        .collect();
    let of = |s: &Series| identities.get(s.label("instance")).copied();
    for s in w.named(series::SIDECAR_REFUSED) {
        if let (Some(id), true) = (of(s), s.value > 0.0) {
            let me = b.caller(id);
            let client = b.caller("");
            b.edge(&client, &me).refused += s.value;
        }
    }
    // Attempts, for the refused share: only where something was refused, since the
    // accepted connections are the fleet's and counted as its requests.
    for s in w.named(series::SIDECAR_CONNECTIONS) {
        if let Some(id) = of(s) {
            let me = b.caller(id);
            if let Some(edge) = b.edges.get_mut(&(CLIENT.to_string(), me)) {
                edge.connections += s.value;
            }
        }
    }
    for s in w.named(series::SIDECAR_REQUESTS) {
        let (Some(id), true) = (of(s), s.value > 0.0) else {
            continue;
        };
        let me = b.caller(id);
        let peer = s.label("peer");
        if peer == "plaintext" {
            let client = b.caller("");
            b.edge(&client, &me).requests += s.value;
            continue;
        }
        // A verified peer: the fleet, when the fleet routes here (then the fleet's own
        // edge holds the figures, and becomes mTLS); else a direct caller.
        let mut from_fleet = false;
        for ((from, to), edge) in b.edges.iter_mut() {
            if *to == me && from.starts_with("gateway:") && edge.requests > 0.0 {
                edge.mtls = true;
                from_fleet = true;
            }
        }
        if !from_fleet {
            let caller = b.caller(peer);
            let edge = b.edge(&caller, &me);
            edge.requests += s.value;
            edge.mtls = true;
        }
    }
    // Requests its AuthorizationPolicies refused: never the fleet's (it authorized them
    // itself), so always on the edge from the caller that sent them.
    for s in w.named(series::SIDECAR_DENIED) {
        let (Some(id), true) = (of(s), s.value > 0.0) else {
            continue;
        };
        let me = b.caller(id);
        let peer = s.label("peer");
        let mtls = peer != "plaintext";
        let caller = b.caller(if mtls { peer } else { "" });
        let edge = b.edge(&caller, &me);
        edge.requests += s.value;
        edge.denied += s.value;
        edge.mtls |= mtls;
    }
}

fn finish(b: Builder, window_label: &str, w: &Window) -> Graph {
    let edges: BTreeMap<_, _> = b
        .edges
        .into_iter()
        .filter(|(_, a)| a.had_traffic())
        .collect();
    let mut zones: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for s in w.named(series::ZONE_REQUESTS) {
        let z = zones
            .entry(without_port(s.label("service")).to_string())
            .or_default();
        match s.label("locality") {
            "local" => z.0 += s.value,
            _ => z.1 += s.value,
        }
    }
    let nodes = b
        .nodes
        .into_iter()
        .filter(|(id, _)| edges.keys().any(|(f, t)| f == id || t == id))
        .map(|(id, (kind, namespace, label))| {
            let (mut inbound, mut outbound) = (Acc::default(), Acc::default());
            for ((f, t), a) in &edges {
                if *t == id {
                    inbound.merge(a);
                }
                if *f == id {
                    outbound.merge(a);
                }
            }
            let rps_out = round(outbound.requests);
            let figures = match inbound.had_traffic() {
                true => inbound.figures(),
                false => outbound.figures(),
            };
            let zone = zones
                .get(&id)
                .filter(|z| z.0 + z.1 > 0.0)
                .map(|z| ZoneFigures {
                    in_zone_share: round(z.0 / (z.0 + z.1)),
                    local_rps: round(z.0),
                    cross_rps: round(z.1),
                });
            Node {
                id,
                kind,
                namespace,
                label,
                figures,
                rps_out,
                zone,
            }
        })
        .collect();
    let mut policies: BTreeMap<String, PolicyFigures> = BTreeMap::new();
    for s in w.named(series::RATELIMIT_DECISIONS) {
        let p = policies
            .entry(s.label("policy").to_string())
            .or_insert_with(|| PolicyFigures {
                policy: s.label("policy").to_string(),
                allowed_rps: 0.0,
                limited_rps: 0.0,
                shadow_limited_rps: 0.0,
            });
        match s.label("decision") {
            "allowed" => p.allowed_rps += s.value,
            "limited" => p.limited_rps += s.value,
            _ => p.shadow_limited_rps += s.value,
        }
    }
    let mut authz: BTreeMap<String, AuthzFigures> = BTreeMap::new();
    for s in w.named(series::AUTHZ_DECISIONS) {
        let p = authz
            .entry(s.label("policy").to_string())
            .or_insert_with(|| AuthzFigures {
                policy: s.label("policy").to_string(),
                action: s.label("action").to_string(),
                ..AuthzFigures::default()
            });
        match s.label("decision") {
            "denied" => p.denied_rps += s.value,
            "shadow_denied" => p.shadow_denied_rps += s.value,
            "audited" => p.audited_rps += s.value,
            // allowed, and shadow_allowed: what a Shadow policy would have let through.
            _ => p.allowed_rps += s.value,
        }
    }
    Graph {
        window: window_label.to_string(),
        window_seconds: round(w.seconds),
        nodes,
        edges: edges
            .into_iter()
            .map(|((source, destination), a)| Edge {
                id: format!("{source} -> {destination}"),
                figures: a.figures(),
                mtls: a.mtls,
                source,
                destination,
            })
            .collect(),
        rate_limits: policies
            .into_values()
            .filter(|p| p.allowed_rps + p.limited_rps + p.shadow_limited_rps > 0.0)
            .map(|p| PolicyFigures {
                allowed_rps: round(p.allowed_rps),
                limited_rps: round(p.limited_rps),
                shadow_limited_rps: round(p.shadow_limited_rps),
                ..p
            })
            .collect(),
        authz: authz
            .into_values()
            .filter(|p| p.allowed_rps + p.denied_rps + p.shadow_denied_rps + p.audited_rps > 0.0)
            .map(|p| AuthzFigures {
                allowed_rps: round(p.allowed_rps),
                denied_rps: round(p.denied_rps),
                shadow_denied_rps: round(p.shadow_denied_rps),
                audited_rps: round(p.audited_rps),
                ..p
            })
            .collect(),
        problems: Vec::new(),
    }
}
