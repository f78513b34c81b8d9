//! The config's backends, compiled: each one's endpoint pool (with the state it learned
//! across config swaps), its TLS (BackendTLSPolicy), its ExternalName resolution, and the
//! health checks it asks for.
//!
//! Compiling only reads the [`Balancer`] (looking up, or starting, the state of the
//! backends this config has); what the config no longer uses is forgotten by
//! [`Balancer::forget_unused`] once the new runtime is live.

use super::health::Wanted;
use super::metrics::ZoneCounters;
use super::{Balancer, Pool};
use crate::egress::External;
use crate::problems::{BACKEND_TLS_REFUSED, Problems};
use crate::tls::upstream::{self, BackendTlsRt};
use pingora::utils::tls::CertKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use weir_model::{BackendKey, Config};

/// `appProtocol` values that mean cleartext HTTP/2 to the backend.
const H2C_APP_PROTOCOLS: [&str; 2] = ["kubernetes.io/h2c", "h2c"];

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

/// Everything [`compile`] builds.
#[derive(Debug, Default)]
pub struct Backends {
    pub backends: Vec<BackendRt>,
    /// The active health checks this config asks for.
    pub checks: Vec<Wanted>,
}

/// Compiles the backends of `config`, and returns each one's index by key. A backend whose
/// BackendTLSPolicy does not compile answers 502 without connecting, and is reported.
/// `probe_client` is the client certificate health probes present to TLS backends.
pub fn compile<'c>(
    config: &'c Config,
    balancer: &Balancer,
    probe_client: Option<&Arc<CertKey>>,
    problems: &mut Problems,
) -> (Backends, HashMap<&'c BackendKey, usize>) {
    let mut index = HashMap::with_capacity(config.backends.len());
    let mut out = Backends {
        backends: Vec::with_capacity(config.backends.len()),
        checks: Vec::new(),
    };
    let mut roots = None;
    let mut system_roots = || roots.get_or_insert_with(upstream::system_roots).clone();
    for (key, b) in &config.backends {
        index.insert(key, out.backends.len());
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
                .map(|t| t.probe(probe_client.map(|c| &**c), &mut system_roots));
            out.checks.extend(states.iter().map(|ep| Wanted {
                backend: key.clone(),
                state: state.clone(),
                endpoint: ep.clone(),
                check: check.clone(),
                tls: probe_tls.clone(),
            }));
        }
        let label: Arc<str> = key.0.as_str().into();
        if let Some(name) = b.external_name.as_deref() {
            balancer.egress.describe(&label, name);
        }
        out.backends.push(BackendRt {
            key: key.clone(),
            label,
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
    (out, index)
}
