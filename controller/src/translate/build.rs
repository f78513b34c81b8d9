//! Assembles the [`Config`]: programmed listeners, their virtual hosts with route entries in
//! the spec's precedence order, the rules, and the backends those rules use.

use super::hostname;
use super::state;
use super::state::Attachment;
use super::state::GatewayState;
use super::state::RouteView;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use weir_model::{
    Backend, BackendKey, BackendRef, Config, Filter, Listener, ListenerTls, Mesh, PathMatch,
    Protocol, RouteEntry, RouteMatch, Rule, RuleId, VirtualHost,
};

pub(crate) fn config(
    gateways: &[GatewayState<'_>],
    routes: &[RouteView<'_>],
    attachments: &[Attachment],
    mut backends: BTreeMap<BackendKey, Backend>,
    scope: Option<&state::Scope>,
    (mesh, mesh_rules): (Mesh, BTreeMap<RuleId, Rule>),
) -> Config {
    let mut listeners = Vec::new();
    let mut rules = mesh_rules;
    // Gateways are oldest first, so this order also puts the older Gateway first on a port.
    for (gi, gw) in gateways.iter().enumerate() {
        if gw.rejected.is_some() {
            continue;
        }
        for (li, l) in gw.listeners.iter().enumerate() {
            if !l.usable() {
                continue;
            }
            // Route → hostnames it serves on this listener (a route may reach a listener
            // through several parentRefs).
            let mut served: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
            for a in attachments
                .iter()
                .filter(|a| a.gateway == gi && a.listener == li)
            {
                served
                    .entry(a.route)
                    .or_default()
                    .extend(a.hostnames.iter().map(String::as_str));
            }
            let mut names: Vec<&str> = served
                .values()
                .flatten()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            names.sort_by_key(|h| hostname::specificity(h));
            let by_name = ByName::new(&served);
            let hosts = names
                .into_iter()
                .map(|host| VirtualHost {
                    hostname: host.to_string(),
                    routes: entries(host, routes, &served, by_name.serving(host)),
                })
                .collect();
            for &ri in served.keys() {
                for compiled in routes[ri].rules.iter().flatten() {
                    let r = &compiled.rule;
                    rules.insert(RuleId::new(r.kind, &r.route, r.index), r.clone());
                }
            }
            let mesh_namespaces = scope.and_then(|s| s.listeners.get(&(gi, li)).cloned());
            listeners.push(Listener {
                gateway: gw.id.clone(),
                name: l.name.clone(),
                port: l.port,
                protocol: l.protocol.unwrap_or(Protocol::Http),
                // A mesh listener answers for every Service name on its port.
                hostname: l.hostname.clone().filter(|_| mesh_namespaces.is_none()),
                tls: (l.protocol == Some(Protocol::Https)).then(|| ListenerTls {
                    certificates: l.certificates.clone(),
                    client_validation: l.client_validation.clone(),
                }),
                hosts,
                mesh: mesh_namespaces,
                rate_limit: None,
                authz: Vec::new(),
                backend_client_certificate: None,
            });
        }
    }
    // A stable sort keeps Gateway age order within a port.
    listeners.sort_by_key(|l| l.port);
    let used = used_backends(rules.values());
    backends.retain(|k, _| used.contains(k));
    Config {
        listeners,
        rules,
        backends,
        rate_limits: BTreeMap::new(),
        mesh,
        authz: Default::default(),
    }
}

/// The routes on a listener by hostname, so that finding a virtual host's routes looks at
/// its own name and the wildcards only: scanning every route for every host made a
/// thousand routes cost a million hostname comparisons per config.
struct ByName<'a> {
    routes: BTreeMap<&'a str, Vec<usize>>,
    wildcards: Vec<&'a str>,
}

impl<'a> ByName<'a> {
    fn new(served: &BTreeMap<usize, BTreeSet<&'a str>>) -> Self {
        let mut routes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (&ri, names) in served {
            for &n in names {
                routes.entry(n).or_default().push(ri);
            }
        }
        let wildcards = routes
            .keys()
            .copied()
            .filter(|n| hostname::is_wildcard(n))
            .collect();
        Self { routes, wildcards }
    }

    /// The routes with a hostname that covers `host`.
    fn serving(&self, host: &str) -> BTreeSet<usize> {
        let general = self.wildcards.iter().filter(|w| hostname::covers(w, host));
        std::iter::once(&host)
            .chain(general)
            .filter_map(|n| self.routes.get(n))
            .flatten()
            .copied()
            .collect()
    }
}

/// Every match of every rule of the routes serving `host`, in precedence order.
fn entries(
    host: &str,
    routes: &[RouteView<'_>],
    served: &BTreeMap<usize, BTreeSet<&str>>,
    serving: BTreeSet<usize>,
) -> Vec<RouteEntry> {
    let mut keyed = Vec::new();
    for (ri, names) in serving
        .into_iter()
        .filter_map(|ri| Some((ri, served.get(&ri)?)))
    {
        // The route's most specific hostname that covers this virtual host decides its
        // rank: exact names beat wildcards, longer beats shorter.
        let Some(best) = names
            .iter()
            .filter(|n| hostname::covers(n, host))
            .min_by_key(|n| hostname::specificity(n))
        else {
            continue;
        };
        let host_rank = (
            Reverse(if hostname::is_wildcard(best) {
                0
            } else {
                best.len()
            }),
            Reverse(best.len()),
        );
        keyed.extend(route_entries(&routes[ri], host_rank));
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// Every match of every rule of `members`, in precedence order, for a parent without
/// hostnames: a mesh Service port (GAMMA routes' hostnames are ignored, GEP-1294).
pub(crate) fn ranked_entries(
    routes: &[RouteView<'_>],
    members: &BTreeSet<usize>,
) -> Vec<RouteEntry> {
    let mut keyed: Vec<_> = members
        .iter()
        .flat_map(|&ri| route_entries(&routes[ri], (Reverse(0), Reverse(0))))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, e)| e).collect()
}

type HostRank = (Reverse<usize>, Reverse<usize>);

/// A route's entries, each with its precedence key behind the hostname's rank.
fn route_entries<'r>(
    route: &'r RouteView<'_>,
    host_rank: HostRank,
) -> impl Iterator<Item = (impl Ord + use<'r>, RouteEntry)> + 'r {
    route.rules.iter().flatten().flat_map(move |compiled| {
        compiled.matches.iter().enumerate().map(move |(mi, m)| {
            let key = (
                host_rank,
                match_rank(m),
                age(route.created),
                route.id.clone(),
                route.kind,
                compiled.rule.index,
                mi,
            );
            let entry = RouteEntry {
                rule: RuleId::new(route.kind, &route.id, compiled.rule.index),
                matcher: m.clone(),
            };
            (key, entry)
        })
    })
}

/// The Gateway API's match precedence: Exact path, then (Weir's choice for the
/// implementation-specific case) regular expressions, then the longest PathPrefix; then a
/// method, then more headers, then more query parameters.
fn match_rank(
    m: &RouteMatch,
) -> (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
) {
    let (kind, len) = match &m.path {
        PathMatch::Exact(v) => (0, v.len()),
        PathMatch::RegularExpression(v) => (1, v.len()),
        PathMatch::PathPrefix(v) => (2, v.len()),
    };
    (
        kind,
        Reverse(len),
        Reverse(m.method.is_some()),
        Reverse(m.headers.len()),
        Reverse(m.query_params.len()),
    )
}

/// Oldest first; no timestamp (objects from files) sorts last.
fn age(t: Option<&Time>) -> (bool, Option<jiff::Timestamp>) {
    (t.is_none(), t.map(|t| t.0))
}

/// The backends that rules send traffic to, mirrors included.
pub(crate) fn used_backends<'a>(
    rules: impl IntoIterator<Item = &'a weir_model::Rule>,
) -> BTreeSet<BackendKey> {
    fn mirrored(filters: &[Filter]) -> impl Iterator<Item = BackendKey> + '_ {
        filters.iter().filter_map(|f| match f {
            Filter::RequestMirror(m) => match &m.backend {
                BackendRef::Service(k) => Some(k.clone()),
                BackendRef::Error { .. } => None,
            },
            _ => None,
        })
    }
    let mut used = BTreeSet::new();
    for rule in rules {
        used.extend(mirrored(&rule.filters));
        for b in &rule.backends {
            used.extend(mirrored(&b.filters));
            if let BackendRef::Service(k) = &b.backend {
                used.insert(k.clone());
            }
        }
    }
    used
}
