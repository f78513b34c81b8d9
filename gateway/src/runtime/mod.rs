//! The compiled runtime: the IR turned into lookup structures for the hot path (host
//! tables, compiled matches and filters, weighted schedules, endpoint sets, certificates).
//!
//! Compiling happens off the hot path whenever the config changes; the proxy then reads the
//! whole runtime through one `ArcSwap` load, so a request sees one consistent config from
//! start to end.

mod hosts;
mod mesh;
mod ports;
pub mod problems;
mod rules;

pub use hosts::{HostTable, normalize_host};
pub use mesh::{MeshHit, MeshMiss, MeshPort, MeshTable, authority_port};
pub use problems::CompileProblem;

use crate::backend_tls::{self, BackendTlsRt};
use crate::balance::health::Wanted;
use crate::balance::metrics::ZoneCounters;
use crate::balance::session::Persistence;
use crate::balance::{Balancer, Pool, WeightedSchedule};
use crate::egress::External;
use crate::ratelimit::PolicyRt;
use crate::route::filters::{HeaderOps, RewriteOps};
use crate::route::matcher::CompiledMatch;
use crate::tls::PortCerts;
use pingora::utils::tls::CertKey;
use problems::{BACKEND_TLS_REFUSED, NO_CLIENT_CERTIFICATE, POLICY_NOT_ENFORCED, Problems};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use weir_model::{
    BackendKey, Config, MeshNamespaces, ObjectName, Protocol, Redirect, Retry, RouteEntry,
    RouteKind, RuleId, Scheme, SplitKey,
};

/// `appProtocol` values that mean cleartext HTTP/2 to the backend.
const H2C_APP_PROTOCOLS: [&str; 2] = ["kubernetes.io/h2c", "h2c"];

#[derive(Debug)]
pub struct Runtime {
    pub generation: u64,
    /// The IR this runtime was compiled from, for `/config`.
    pub config: Arc<Config>,
    pub ports: BTreeMap<u16, Port>,
    pub rules: Vec<RuleRt>,
    pub backends: Vec<BackendRt>,
    /// RateLimitPolicies, referred to by index from rules and listeners.
    pub policies: Vec<PolicyRt>,
    /// The active health checks this config asks for.
    pub checks: Vec<Wanted>,
    /// Service frontends for the mesh listeners.
    pub mesh: MeshTable,
    /// The objects that did not compile, and what serves instead.
    pub problems: Vec<CompileProblem>,
}

#[derive(Debug)]
pub struct Port {
    pub port: u16,
    pub protocol: Protocol,
    pub listeners: Vec<ListenerRt>,
    /// Listener index by listener hostname (`*` for a listener without one).
    pub by_host: HostTable<usize>,
    pub certs: Option<PortCerts>,
}

impl Port {
    pub fn listener_for(&self, host: &str) -> Option<usize> {
        self.by_host.get(host).copied()
    }
}

#[derive(Debug)]
pub struct ListenerRt {
    /// `namespace/name` of the Gateway, for metrics.
    pub gateway: Arc<str>,
    pub name: Arc<str>,
    pub scheme: Scheme,
    pub port: u16,
    /// The Gateway-level rate limit policy, for rules without one of their own.
    pub rate_limit: Option<usize>,
    /// On a mesh listener, the namespaces whose Services it serves; its requests are routed
    /// by [`Runtime::mesh`], not by `hosts`.
    pub mesh: Option<MeshNamespaces>,
    /// The Gateway's client certificate for TLS backends.
    pub backend_client_cert: Option<Arc<CertKey>>,
    hosts: HostTable<usize>,
    vhosts: Vec<Vec<Entry>>,
}

impl ListenerRt {
    /// The route entries serving `host`, most precedent first.
    pub fn entries(&self, host: &str) -> &[Entry] {
        self.hosts.get(host).map_or(&[], |&i| &self.vhosts[i])
    }
}

#[derive(Debug)]
pub struct Entry {
    pub matcher: CompiledMatch,
    pub rule: usize,
}

#[derive(Debug)]
pub struct RuleRt {
    pub id: RuleId,
    /// `namespace/name` of the route and the rule index, for metrics.
    pub route: Arc<str>,
    pub rule_index: Arc<str>,
    pub kind: RouteKind,
    pub filters: FilterSet,
    pub choices: Vec<Choice>,
    /// `None` when every weight is zero: the rule answers 500.
    pub schedule: Option<WeightedSchedule>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    /// The rate limit policy targeting this rule, its route or (mesh) its Service.
    pub rate_limit: Option<usize>,
    /// The rule's identity for the `route` key part of rate limits.
    pub key_id: Arc<str>,
    pub persistence: Option<Persistence>,
    pub split_key: Option<SplitKey>,
    pub retry: Option<Retry>,
}

impl RuleRt {
    pub fn pick(&self) -> Option<&Choice> {
        self.schedule.as_ref().map(|s| &self.choices[s.pick()])
    }
}

#[derive(Debug)]
pub enum Target {
    Backend(usize),
    Error(u16),
}

#[derive(Debug)]
pub struct Choice {
    pub target: Target,
    pub filters: FilterSet,
    /// The backend's name in session tokens: a stable hash of its key.
    pub token: u32,
}

#[derive(Debug, Default)]
pub struct FilterSet {
    pub request_headers: Option<HeaderOps>,
    pub response_headers: Option<HeaderOps>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<RewriteOps>,
    pub mirrors: Vec<MirrorRt>,
}

#[derive(Debug)]
pub struct MirrorRt {
    pub backend: usize,
    pub numerator: u32,
    pub denominator: u32,
}

#[derive(Debug)]
pub struct BackendRt {
    pub key: BackendKey,
    /// `namespace/name:port`, for metrics.
    pub label: Arc<str>,
    pub pool: Pool,
    /// `weir_zone_*` counters for this backend, `[local, cross]`, resolved on first use.
    pub zone_counters: OnceLock<[ZoneCounters; 2]>,
    pub h2c: bool,
    /// BackendTLSPolicy: reached over TLS.
    pub tls: Option<BackendTlsRt>,
    /// An ExternalName Service: endpoints from DNS instead of `pool`.
    pub external: Option<External>,
}

impl BackendRt {
    /// Whether a request can be sent at all (an ExternalName answers once resolved).
    pub fn has_endpoints(&self) -> bool {
        self.external.is_some() || !self.pool.is_empty()
    }
}

/// Compiles `config`. Compiling is local to each object: one that translated but does not
/// compile here is left out or fails closed on its own, and is listed in
/// [`Runtime::problems`] (see [`problems`]); the rest of the config compiles.
pub fn compile(config: Arc<Config>, generation: u64, balancer: &Balancer) -> Runtime {
    let mut problems = Problems::default();
    let mut backend_index: HashMap<&BackendKey, usize> = HashMap::new();
    let mut backends = Vec::with_capacity(config.backends.len());
    let mut checks = Vec::new();
    balancer
        .registry
        .retain(&|k: &BackendKey| config.backends.contains_key(k));
    let mut roots = None;
    let mut system_roots = || roots.get_or_insert_with(backend_tls::system_roots).clone();
    let client_certs = client_certificates(&config, &mut problems);
    // Health probes are per backend, not per Gateway: they present the first backend client
    // certificate a Gateway sets (in the mesh, the fleet's one SVID).
    let probe_client = config
        .listeners
        .iter()
        .find_map(|l| client_certs.get(&l.gateway).cloned().flatten());
    for (key, b) in &config.backends {
        backend_index.insert(key, backends.len());
        let addrs: Vec<SocketAddr> = b
            .endpoints
            .iter()
            .map(|e| SocketAddr::new(e.address, e.port))
            .collect();
        let (state, states) = balancer.registry.backend(key, &addrs);
        let app_protocol = b.app_protocol.as_deref();
        let tls = b.tls.as_ref().map(|t| {
            BackendTlsRt::compile(t, app_protocol, &mut system_roots).unwrap_or_else(|why| {
                let object = format!("BackendTLSPolicy {} (backend {key})", t.policy);
                problems.add(object, why.clone(), BACKEND_TLS_REFUSED);
                BackendTlsRt::unusable(t, app_protocol, &why)
            })
        });
        if let Some(check) = &b.health_check {
            let probe_tls = tls
                .as_ref()
                .map(|t| t.probe(probe_client.as_deref(), &mut system_roots));
            checks.extend(states.iter().map(|ep| Wanted {
                backend: key.clone(),
                state: state.clone(),
                endpoint: ep.clone(),
                check: check.clone(),
                tls: probe_tls.clone(),
            }));
        }
        backends.push(BackendRt {
            key: key.clone(),
            label: key.0.as_str().into(),
            zone_counters: OnceLock::new(),
            pool: Pool::new(
                state,
                &b.endpoints,
                states,
                b.zone_affinity,
                b.load_balancer,
                &balancer.locality.load(),
            ),
            h2c: app_protocol.is_some_and(|p| H2C_APP_PROTOCOLS.contains(&p)),
            tls,
            external: b.external_name.as_deref().and_then(|name| {
                Some(External {
                    resolved: balancer.egress.track(name)?,
                    port: b.port,
                })
            }),
        });
    }

    let mut policy_index: HashMap<&str, usize> = HashMap::new();
    let mut policies = Vec::with_capacity(config.rate_limits.len());
    for (id, p) in &config.rate_limits {
        match PolicyRt::compile(p) {
            Ok(rt) => {
                policy_index.insert(id, policies.len());
                policies.push(rt);
            }
            Err(m) => {
                let object = format!("RateLimitPolicy {id}");
                problems.add(object, m, POLICY_NOT_ENFORCED);
            }
        }
    }
    let policy = |id: Option<&str>| id.and_then(|id| policy_index.get(id).copied());
    unknown_policies(&config, &mut problems);

    let mut rule_index: HashMap<&RuleId, usize> = HashMap::new();
    let mut rules = Vec::with_capacity(config.rules.len());
    for (id, r) in &config.rules {
        rule_index.insert(id, rules.len());
        let limit = policy(r.rate_limit.as_deref());
        let rt = rules::compile(id, r, &backend_index, limit, &config, &mut problems);
        rules.push(rt);
    }

    let entries = |list: &[RouteEntry], problems: &mut Problems| {
        rules::entries(list, &rule_index, &config, problems)
    };
    let mut mesh = MeshTable::default();
    for s in &config.mesh.services {
        let consumers = s
            .consumers
            .iter()
            .map(|(ns, list)| (ns.as_str().into(), entries(list, &mut problems)))
            .collect();
        let routes = entries(&s.routes, &mut problems);
        mesh.insert(
            &s.service.namespace,
            &s.service.name,
            s.port,
            routes,
            consumers,
        );
    }

    let shared = ports::Shared {
        entries,
        policy,
        client_certs: &client_certs,
    };
    let ports = ports::compile(&config.listeners, shared, &mut problems);
    let names: BTreeSet<&str> = config
        .backends
        .values()
        .filter_map(|b| b.external_name.as_deref())
        .collect();
    balancer.egress.keep_only(&names);

    let problems = problems.into_vec();
    Runtime {
        generation,
        config,
        ports,
        rules,
        backends,
        policies,
        checks,
        mesh,
        problems,
    }
}

/// Each Gateway's `tls.backend.clientCertificateRef`, compiled once. One that does not
/// compile leaves the Gateway's listeners without a client certificate, as an invalid
/// reference does in the translation; the Gateway keeps serving.
fn client_certificates<'a>(
    config: &'a Config,
    problems: &mut Problems,
) -> HashMap<&'a ObjectName, Option<Arc<CertKey>>> {
    let mut certs = HashMap::new();
    for l in &config.listeners {
        let Some(cert) = &l.backend_client_certificate else {
            continue;
        };
        certs.entry(&l.gateway).or_insert_with(|| {
            backend_tls::client_cert_key(cert)
                .map_err(|e| {
                    let object = format!("Gateway {}", l.gateway);
                    let message = format!("tls.backend.clientCertificateRef: {e}");
                    problems.add(object, message, NO_CLIENT_CERTIFICATE);
                })
                .ok()
        });
    }
    certs
}

/// Rules and listeners naming a RateLimitPolicy the config does not hold: a bug in the
/// translation, reported rather than failing the whole config.
fn unknown_policies(config: &Config, problems: &mut Problems) {
    let named = config
        .rules
        .iter()
        .map(|(id, r)| (rules::label(id, config), &r.rate_limit))
        .chain(config.listeners.iter().map(|l| {
            let what = format!("Gateway {} listener {}", l.gateway, l.name);
            (what, &l.rate_limit)
        }));
    for (object, id) in named {
        if let Some(id) = id
            && !config.rate_limits.contains_key(id)
        {
            let message = format!("names RateLimitPolicy {id}, which is not in the config");
            problems.add(object, message, POLICY_NOT_ENFORCED);
        }
    }
}

/// A backend's name in session tokens, the same on every replica.
pub fn backend_token(key: &BackendKey) -> u32 {
    xxhash_rust::xxh3::xxh3_64(key.0.as_bytes()) as u32
}

impl Runtime {
    /// An empty runtime: serves nothing until the first config compiles.
    pub fn empty() -> Self {
        Self {
            generation: 0,
            config: Arc::new(Config::default()),
            ports: BTreeMap::new(),
            rules: Vec::new(),
            backends: Vec::new(),
            policies: Vec::new(),
            checks: Vec::new(),
            mesh: MeshTable::default(),
            problems: Vec::new(),
        }
    }

    /// The ports to listen on, with their protocol.
    pub fn port_set(&self) -> BTreeMap<u16, Protocol> {
        self.ports
            .iter()
            .map(|(p, port)| (*p, port.protocol))
            .collect()
    }
}

#[cfg(test)]
mod tests;
