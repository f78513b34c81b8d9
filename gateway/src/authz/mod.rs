//! AuthorizationPolicy at the fleet: which policies a request meets, the evaluation it
//! shares with the sidecars ([`weir_model::authz`]), and what it records. "Why did this
//! request get a 403" lands here: `weir_authz_decisions_total{policy,action,decision}`,
//! the access log's `authz` and `authz_policy`, and a log line for each denial, audit and
//! shadow denial (target `weir::authz`).
//!
//! A request meets the policies of its listener's Gateway and those of its rule (the rule,
//! its route, the Services it reaches and their namespaces). It is decided after routing
//! and before the rate limit and any redirect, on the request as the client sent it: the
//! route's header filters change what the backend gets, not what the caller may do.
//!
//! The caller's identity is the SPIFFE ID of a client certificate the listener verified
//! (mesh listeners, and edge listeners with frontend validation); `x-weir-caller-identity`
//! from a client is never read. On a listener without validation, a principal rule can
//! match nobody.

use crate::metrics::Metrics;
use crate::problems::{POLICY_NOT_ENFORCED, Problems};
use crate::route::rules::label;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use weir_model::Config;
use weir_model::authz::{self, AuthzAction, AuthzPolicy, Decision, Request};

/// One policy, with its metric series resolved on first use.
#[derive(Debug)]
pub struct PolicyRt {
    pub policy: AuthzPolicy,
    counters: [OnceLock<IntCounter>; Decision::ALL.len()],
}

impl PolicyRt {
    fn new(policy: AuthzPolicy) -> Self {
        Self {
            policy,
            counters: Default::default(),
        }
    }

    fn count(&self, metrics: &Metrics, d: Decision) {
        let slot = Decision::ALL.iter().position(|x| *x == d).unwrap_or(0);
        self.counters[slot]
            .get_or_init(|| {
                metrics.authz_decisions.with_label_values(&[
                    self.policy.id.as_str(),
                    self.policy.action.as_str(),
                    d.as_str(),
                ])
            })
            .inc();
    }
}

/// The config's policies, and each one's index by id. A rule or listener naming a policy
/// the config lacks (a translation bug) gets one that denies everything in its place, and
/// a problem: failing open would be the wrong way to fail.
pub fn compile<'c>(
    config: &'c Config,
    problems: &mut Problems,
) -> (Vec<PolicyRt>, HashMap<&'c str, usize>) {
    let mut index = HashMap::new();
    let mut policies = Vec::with_capacity(config.authz.policies.len());
    for (id, p) in &config.authz.policies {
        index.insert(id.as_str(), policies.len());
        policies.push(PolicyRt::new(p.clone()));
    }
    let named = config
        .rules
        .iter()
        .map(|(id, r)| (label(id, config), &r.authz))
        .chain(config.listeners.iter().map(|l| {
            let what = format!("Gateway {} listener {}", l.gateway, l.name);
            (what, &l.authz)
        }));
    for (object, ids) in named {
        for id in ids {
            if index.contains_key(id.as_str()) {
                continue;
            }
            let message = format!(
                "names AuthorizationPolicy {id}, which is not in the config: every request is denied in its name"
            );
            problems.add(object.clone(), message, POLICY_NOT_ENFORCED);
            index.insert(id.as_str(), policies.len());
            policies.push(PolicyRt::new(AuthzPolicy {
                id: id.clone(),
                action: AuthzAction::Allow,
                shadow: false,
                rules: Vec::new(),
            }));
        }
    }
    (policies, index)
}

/// Policy ids to indexes, for rules and listeners.
pub fn indexes(index: &HashMap<&str, usize>, ids: &[String]) -> Box<[usize]> {
    ids.iter()
        .filter_map(|id| index.get(id.as_str()).copied())
        .collect()
}

/// What authorization knows of a request.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub principal: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    /// The request target's path and query, as sent.
    pub target: &'a str,
    /// The port the caller addressed: the Service port on a mesh listener, else the
    /// listener's.
    pub port: u16,
    pub headers: &'a http::HeaderMap,
}

/// The decision, for the access log and the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The policy that decided, and how: the DENY that matched, the ALLOW that did (or the
    /// first ALLOW, when none did), else the first shadow or audit record.
    pub by: Option<(usize, Decision)>,
}

/// Decides a request against `listener`'s and `rule`'s policies. `None` when none applies,
/// which is most requests: they cost two length checks.
pub fn check(
    policies: &[PolicyRt],
    listener: &[usize],
    rule: &[usize],
    input: &Input<'_>,
    metrics: &Metrics,
) -> Option<Verdict> {
    if listener.is_empty() && rule.is_empty() {
        return None;
    }
    let path = authz::normalize_path(input.target);
    let ports = [input.port];
    let req = Request {
        principal: input.principal,
        ip: input.client_ip,
        method: input.method,
        path: &path,
        ports: &ports,
        headers: input.headers,
    };
    let ids = listener.iter().chain(rule).copied();
    let mut by: Option<(usize, Decision)> = None;
    let allowed = authz::evaluate(
        ids,
        |i| &policies[i].policy,
        &req,
        |i, d| {
            let p = &policies[i];
            p.count(metrics, d);
            // The first decisive record names the request's deciding policy.
            let decisive = matches!(d, Decision::Denied | Decision::Allowed);
            if by.is_none_or(|(_, old)| {
                decisive && !matches!(old, Decision::Denied | Decision::Allowed)
            }) {
                by = Some((i, d));
            }
            match d {
                Decision::Denied => tracing::debug!(
                    target: "weir::authz", policy = %p.policy.id, caller = input.principal,
                    method = input.method, path = %path, "denied"
                ),
                Decision::Audited | Decision::ShadowDenied => tracing::info!(
                    target: "weir::authz", policy = %p.policy.id, decision = d.as_str(),
                    caller = input.principal, method = input.method, path = %path, "authorization"
                ),
                Decision::Allowed | Decision::ShadowAllowed => {}
            }
        },
    );
    Some(Verdict { allowed, by })
}

#[cfg(test)]
mod tests;
