//! The compiled runtime: the IR turned into lookup structures for the hot path.
//!
//! [`compile`] only assembles: each module compiles its own table ([`crate::tls::compile`],
//! [`crate::balance::compile`], [`crate::ratelimit::compile`], [`crate::authz::compile`],
//! [`crate::route::compile`]),
//! in the order their inputs need, and every one reports what did not compile to the same
//! [`CompileProblem`] list. Compiling changes nothing outside the runtime it returns:
//! `reload` applies what goes with a new runtime (health checks, forgetting unused backend
//! state) once it is live.
//!
//! Compiling happens off the hot path whenever the config changes; the proxy then reads the
//! whole runtime through one `ArcSwap` load, so a request sees one consistent config from
//! start to end.

pub use crate::problems::CompileProblem;

use crate::authz;
use crate::balance::health::Wanted;
use crate::balance::{self, BackendRt, Balancer};
use crate::problems::Problems;
use crate::ratelimit::{self, PolicyRt};
use crate::route::{self, MeshTable, Port, RuleRt};
use crate::tls::{self, TlsTable};
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_model::{Config, Protocol};

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
    /// AuthorizationPolicies, referred to by index from rules and listeners.
    pub authz: Vec<authz::PolicyRt>,
    /// The active health checks this config asks for.
    pub checks: Vec<Wanted>,
    /// Service frontends for the mesh listeners.
    pub mesh: MeshTable,
    /// Certificates and client validation per HTTPS port.
    pub tls: TlsTable,
    /// The objects that did not compile, and what serves instead.
    pub problems: Vec<CompileProblem>,
}

/// Compiles `config`. Compiling is local to each object: one that translated but does not
/// compile here is left out or fails closed on its own, and is listed in
/// [`Runtime::problems`] (see [`crate::problems`]); the rest of the config compiles.
pub fn compile(config: Arc<Config>, generation: u64, balancer: &Balancer) -> Runtime {
    let mut problems = Problems::default();
    let tls = tls::compile(&config, &mut problems);
    // Health probes are per backend, not per Gateway: they present the first backend client
    // certificate a Gateway sets (in the mesh, the fleet's one SVID).
    let probe_client = config
        .listeners
        .iter()
        .find_map(|l| tls.client_certs.get(&l.gateway).cloned().flatten());
    let (backends, backend_index) =
        balance::compile(&config, balancer, probe_client.as_ref(), &mut problems);
    let (policies, policy_index) = ratelimit::compile(&config, &mut problems);
    let policy = |id: Option<&str>| id.and_then(|id| policy_index.get(id).copied());
    let (authz, authz_index) = authz::compile(&config, &mut problems);
    let authz_of = |ids: &[String]| authz::indexes(&authz_index, ids);
    let routes = route::compile(
        &config,
        &backend_index,
        policy,
        &authz_of,
        &tls,
        &mut problems,
    );
    drop((backend_index, policy_index, authz_index));
    Runtime {
        generation,
        config,
        ports: routes.ports,
        rules: routes.rules,
        backends: backends.backends,
        policies,
        authz,
        checks: backends.checks,
        mesh: routes.mesh,
        tls,
        problems: problems.into_vec(),
    }
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
            authz: Vec::new(),
            checks: Vec::new(),
            mesh: MeshTable::default(),
            tls: TlsTable::default(),
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
