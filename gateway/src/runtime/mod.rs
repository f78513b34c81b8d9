//! The compiled runtime: the IR turned into lookup structures for the hot path (host
//! tables, compiled matches and filters, weighted schedules, endpoint sets, certificates).
//!
//! Compiling happens off the hot path whenever the config changes; the proxy then reads the
//! whole runtime through one `ArcSwap` load, so a request sees one consistent config from
//! start to end.

mod hosts;
mod mesh;

pub use hosts::{HostTable, normalize_host};
pub use mesh::{MeshHit, MeshMiss, MeshPort, MeshTable, authority_port};

use crate::backend_tls::{self, BackendTlsRt};
use crate::balance::health::Wanted;
use crate::balance::metrics::ZoneCounters;
use crate::balance::session::Persistence;
use crate::balance::{Balancer, Pool, WeightedSchedule};
use crate::egress::External;
use crate::ratelimit::PolicyRt;
use crate::route::filters::{HeaderOps, RewriteOps};
use crate::route::matcher::CompiledMatch;
use crate::tls::{ClientAuth, PortCerts, ServedCert};
use pingora::utils::tls::CertKey;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use weir_controller::model::{
    BackendKey, BackendRef, Config, Filter, MeshNamespaces, Protocol, Redirect, Retry, RouteEntry,
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

#[derive(Debug, thiserror::Error)]
#[error("config does not compile: {0}")]
pub struct CompileError(String);

/// Compiles `config`. Fails only on what the translation cannot have checked (it validates
/// regexes and certificates too), so a failure keeps the previous runtime serving.
pub fn compile(
    config: Arc<Config>,
    generation: u64,
    balancer: &Balancer,
) -> Result<Runtime, CompileError> {
    let err = |m: String| CompileError(m);
    let mut backend_index: HashMap<&BackendKey, usize> = HashMap::new();
    let mut backends = Vec::with_capacity(config.backends.len());
    let mut checks = Vec::new();
    balancer
        .registry
        .retain(&|k: &BackendKey| config.backends.contains_key(k));
    let mut roots = None;
    let mut system_roots = || roots.get_or_insert_with(backend_tls::system_roots).clone();
    // Health probes are per backend, not per Gateway: they present the first backend client
    // certificate a Gateway sets (in the mesh, the fleet's one SVID).
    let probe_client = config
        .listeners
        .iter()
        .find_map(|l| l.backend_client_certificate.as_ref())
        .map(backend_tls::client_cert_key)
        .transpose()
        .map_err(err)?;
    for (key, b) in &config.backends {
        backend_index.insert(key, backends.len());
        let addrs: Vec<SocketAddr> = b
            .endpoints
            .iter()
            .map(|e| SocketAddr::new(e.address, e.port))
            .collect();
        let (state, states) = balancer.registry.backend(key, &addrs);
        let tls = b
            .tls
            .as_ref()
            .map(|t| BackendTlsRt::compile(t, b.app_protocol.as_deref(), &mut system_roots))
            .transpose()
            .map_err(|m| err(format!("backend {key}: {m}")))?;
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
            h2c: b
                .app_protocol
                .as_deref()
                .is_some_and(|p| H2C_APP_PROTOCOLS.contains(&p)),
            tls,
            external: b.external_name.as_deref().and_then(|name| {
                Some(External {
                    resolved: balancer.egress.track(name)?,
                    port: b.port,
                })
            }),
        });
    }

    let filters = |list: &[Filter]| -> Result<FilterSet, CompileError> {
        let mut set = FilterSet::default();
        for f in list {
            match f {
                Filter::RequestHeaderModifier(m) => {
                    set.request_headers = Some(HeaderOps::compile(m).map_err(err)?)
                }
                Filter::ResponseHeaderModifier(m) => {
                    set.response_headers = Some(HeaderOps::compile(m).map_err(err)?)
                }
                Filter::RequestRedirect(r) => set.redirect = Some(r.clone()),
                Filter::UrlRewrite(r) => set.rewrite = Some(RewriteOps::compile(r).map_err(err)?),
                Filter::RequestMirror(m) => {
                    if let BackendRef::Service(k) = &m.backend
                        && let Some(&backend) = backend_index.get(k)
                    {
                        set.mirrors.push(MirrorRt {
                            backend,
                            numerator: m.numerator,
                            denominator: m.denominator.max(1),
                        });
                    }
                }
            }
        }
        Ok(set)
    };

    let mut policy_index: HashMap<&str, usize> = HashMap::new();
    let mut policies = Vec::with_capacity(config.rate_limits.len());
    for (id, p) in &config.rate_limits {
        policy_index.insert(id, policies.len());
        policies.push(PolicyRt::compile(p).map_err(|m| err(format!("RateLimitPolicy {id}: {m}")))?);
    }
    let policy = |id: &Option<String>| -> Result<Option<usize>, CompileError> {
        id.as_deref()
            .map(|id| {
                policy_index
                    .get(id)
                    .copied()
                    .ok_or_else(|| err(format!("unknown RateLimitPolicy {id}")))
            })
            .transpose()
    };

    let mut rule_index: HashMap<&RuleId, usize> = HashMap::new();
    let mut rules = Vec::with_capacity(config.rules.len());
    for (id, r) in &config.rules {
        let mut choices = Vec::with_capacity(r.backends.len());
        let mut weights = Vec::with_capacity(r.backends.len());
        for b in &r.backends {
            let target = match &b.backend {
                BackendRef::Service(k) => match backend_index.get(k) {
                    Some(&i) => Target::Backend(i),
                    None => Target::Error(500),
                },
                BackendRef::Error { status, .. } => Target::Error(*status),
            };
            choices.push(Choice {
                token: match &b.backend {
                    BackendRef::Service(k) => backend_token(k),
                    BackendRef::Error { .. } => 0,
                },
                target,
                filters: filters(&b.filters)?,
            });
            weights.push(b.weight);
        }
        rule_index.insert(id, rules.len());
        rules.push(RuleRt {
            id: id.clone(),
            route: r.route.to_string().into(),
            rule_index: r.index.to_string().into(),
            kind: r.kind,
            filters: filters(&r.filters)?,
            schedule: WeightedSchedule::new(&weights),
            choices,
            request_timeout: r.timeouts.request_ms.map(Duration::from_millis),
            backend_timeout: r.timeouts.backend_request_ms.map(Duration::from_millis),
            rate_limit: policy(&r.rate_limit)?,
            key_id: id.to_string().into(),
            persistence: r
                .session_persistence
                .as_ref()
                .map(Persistence::compile)
                .transpose()
                .map_err(|m| err(format!("{id}: {m}")))?,
            split_key: r.split_key.clone(),
            retry: r.retry.clone(),
        });
    }

    let entries = |list: &[RouteEntry]| -> Result<Vec<Entry>, CompileError> {
        list.iter()
            .map(|e| {
                let Some(&rule) = rule_index.get(&e.rule) else {
                    return Err(err(format!("route entry names unknown rule {}", e.rule)));
                };
                Ok(Entry {
                    matcher: CompiledMatch::compile(&e.matcher)
                        .map_err(|m| err(format!("{}: {m}", e.rule)))?,
                    rule,
                })
            })
            .collect()
    };
    let mut mesh = MeshTable::default();
    for s in &config.mesh.services {
        let consumers = s
            .consumers
            .iter()
            .map(|(ns, list)| Ok((ns.as_str().into(), entries(list)?)))
            .collect::<Result<_, CompileError>>()?;
        mesh.insert(
            &s.service.namespace,
            &s.service.name,
            s.port,
            entries(&s.routes)?,
            consumers,
        );
    }

    let mut ports: BTreeMap<u16, Port> = BTreeMap::new();
    for l in &config.listeners {
        let port = ports.entry(l.port).or_insert_with(|| Port {
            port: l.port,
            protocol: l.protocol,
            listeners: Vec::new(),
            by_host: HostTable::default(),
            certs: (l.protocol == Protocol::Https).then(PortCerts::default),
        });
        if port.protocol != l.protocol {
            // The translation resolves protocol conflicts; a mismatch here is a bug upstream.
            return Err(err(format!(
                "port {} has both HTTP and HTTPS listeners",
                l.port
            )));
        }
        let mut hosts = HostTable::default();
        let mut vhosts = Vec::with_capacity(l.hosts.len());
        for vh in &l.hosts {
            hosts.insert(&vh.hostname, vhosts.len());
            vhosts.push(entries(&vh.routes)?);
        }
        if let (Some(store), Some(tls)) = (port.certs.as_mut(), &l.tls) {
            let certs = tls
                .certificates
                .iter()
                .map(ServedCert::compile)
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            store.add_listener(l.hostname.as_deref(), certs);
            // Validation is per port; the first listener that asks for it (the oldest
            // Gateway's) decides.
            if store.client_auth.is_none()
                && let Some(v) = &tls.client_validation
            {
                store.client_auth = Some(ClientAuth::compile(v).map_err(err)?);
            }
        }
        port.by_host
            .insert(l.hostname.as_deref().unwrap_or("*"), port.listeners.len());
        port.listeners.push(ListenerRt {
            gateway: l.gateway.to_string().into(),
            name: l.name.as_str().into(),
            scheme: match l.protocol {
                Protocol::Http => Scheme::Http,
                Protocol::Https => Scheme::Https,
            },
            port: l.port,
            rate_limit: policy(&l.rate_limit)?,
            mesh: l.mesh.clone(),
            backend_client_cert: l
                .backend_client_certificate
                .as_ref()
                .map(backend_tls::client_cert_key)
                .transpose()
                .map_err(err)?,
            hosts,
            vhosts,
        });
    }
    let names: BTreeSet<&str> = config
        .backends
        .values()
        .filter_map(|b| b.external_name.as_deref())
        .collect();
    balancer.egress.keep_only(&names);

    Ok(Runtime {
        generation,
        config,
        ports,
        rules,
        backends,
        policies,
        checks,
        mesh,
    })
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
