//! The config's routing, compiled: rules, the route entries of every virtual host and mesh
//! Service, and the listeners that serve them.

use super::listeners;
use super::mesh::MeshTable;
use super::rules;
use super::table::Routes;
use crate::problems::Problems;
use crate::tls::TlsTable;
use std::collections::HashMap;
use weir_model::{BackendKey, Config, RouteEntry, RuleId};

/// Compiles the routing of `config`. `backends` gives each backend's index in the
/// balancer's table, `policy` a RateLimitPolicy's index (when it compiled), `authz` the
/// indexes of AuthorizationPolicies, and `tls` which listeners may be programmed and each
/// Gateway's backend client certificate.
pub fn compile(
    config: &Config,
    backends: &HashMap<&BackendKey, usize>,
    policy: impl Fn(Option<&str>) -> Option<usize>,
    authz: &dyn Fn(&[String]) -> Box<[usize]>,
    tls: &TlsTable,
    problems: &mut Problems,
) -> Routes {
    let mut rule_index: HashMap<&RuleId, usize> = HashMap::new();
    let mut rule_list = Vec::with_capacity(config.rules.len());
    for (id, r) in &config.rules {
        rule_index.insert(id, rule_list.len());
        let limit = policy(r.rate_limit.as_deref());
        let authz = authz(&r.authz);
        rule_list.push(rules::compile(
            id, r, backends, limit, authz, config, problems,
        ));
    }
    let mut entries =
        |list: &[RouteEntry]| rules::entries(list, &rule_index, config, &mut *problems);

    let mut mesh = MeshTable::default();
    for s in &config.mesh.services {
        let consumers = s
            .consumers
            .iter()
            .map(|(ns, list)| (ns.as_str().into(), entries(list)))
            .collect();
        let routes = entries(&s.routes);
        mesh.insert(
            &s.service.namespace,
            &s.service.name,
            s.port,
            routes,
            consumers,
        );
    }
    let ports = listeners::compile(
        &config.listeners,
        &tls.programmed,
        entries,
        policy,
        authz,
        &tls.client_certs,
    );
    Routes {
        ports,
        rules: rule_list,
        mesh,
    }
}
