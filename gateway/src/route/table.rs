//! The routing tables a config compiles to: ports and their listeners by hostname, each
//! listener's virtual hosts with their route entries, and the rules those entries point to.

use super::filters::{HeaderOps, RewriteOps};
use super::hosts::HostTable;
use super::matcher::CompiledMatch;
use super::mesh::MeshTable;
use crate::balance::WeightedSchedule;
use crate::balance::session::Persistence;
use pingora::utils::tls::CertKey;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use weir_model::{MeshNamespaces, Protocol, Redirect, Retry, RouteKind, RuleId, Scheme, SplitKey};

/// Everything [`super::compile`] builds.
#[derive(Debug, Default)]
pub struct Routes {
    pub ports: BTreeMap<u16, Port>,
    pub rules: Vec<RuleRt>,
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
    /// The Gateway's AuthorizationPolicies (indexes into the runtime's `authz`).
    pub authz: Box<[usize]>,
    /// On a mesh listener, the namespaces whose Services it serves; its requests are routed
    /// by the [`MeshTable`], not by `hosts`.
    pub mesh: Option<MeshNamespaces>,
    /// The Gateway's client certificate for TLS backends.
    pub backend_client_cert: Option<Arc<CertKey>>,
    pub(super) hosts: HostTable<usize>,
    pub(super) vhosts: Vec<Vec<Entry>>,
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
    /// The rule's AuthorizationPolicies (indexes into the runtime's `authz`).
    pub authz: Box<[usize]>,
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

    /// Whether a rewrite or a redirect of this rule may need the PathPrefix the request
    /// matched: most rules have neither, and their requests need not keep it.
    pub fn needs_matched_prefix(&self) -> bool {
        let needs = |f: &FilterSet| f.rewrite.is_some() || f.redirect.is_some();
        needs(&self.filters) || self.choices.iter().any(|c| needs(&c.filters))
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
    /// This rule's and backend's request series, once looked up.
    pub series: crate::metrics::OkSeries,
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
