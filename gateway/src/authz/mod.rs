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
//! match nobody. An end-user token is verified first by the `jwt` issuers of the policies
//! that apply: one that does not verify gets 401 (`weir_authz_invalid_tokens_total`), and
//! issuers that do not forward their token have it removed before the backend.

use crate::metrics::Metrics;
use crate::problems::{POLICY_DENIES_ALL, Problems};
use crate::route::rules::label;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use weir_model::Config;
use weir_model::authz::{self, AuthzAction, AuthzPolicy, Decision, Request, Verifier};

/// One policy, with its metric series resolved on first use.
#[derive(Debug)]
pub struct PolicyRt {
    pub policy: AuthzPolicy,
    /// Its JWT issuers' keys, decoded; `None` without issuers.
    verifier: Option<Verifier>,
    counters: [OnceLock<IntCounter>; Decision::ALL.len()],
}

impl PolicyRt {
    /// Compiles a policy; keys that do not decode make it deny everything instead.
    fn new(policy: AuthzPolicy, problems: &mut Problems) -> Self {
        match Verifier::new(&policy.jwt) {
            Ok(v) => Self {
                verifier: (!v.is_empty()).then_some(v),
                policy,
                counters: Default::default(),
            },
            Err(e) => {
                let object = format!("AuthorizationPolicy {}", policy.id);
                problems.add(object, e, POLICY_DENIES_ALL);
                Self {
                    policy: deny_all(&policy.id),
                    verifier: None,
                    counters: Default::default(),
                }
            }
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
        policies.push(PolicyRt::new(p.clone(), problems));
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
            problems.add(object.clone(), message, POLICY_DENIES_ALL);
            index.insert(id.as_str(), policies.len());
            policies.push(PolicyRt::new(deny_all(id), problems));
        }
    }
    (policies, index)
}

/// What a policy that cannot be enforced as written becomes: an ALLOW matching nothing.
fn deny_all(id: &str) -> AuthzPolicy {
    AuthzPolicy {
        id: id.to_string(),
        action: AuthzAction::Allow,
        shadow: false,
        rules: Vec::new(),
        jwt: Vec::new(),
    }
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
    /// Refused before any rule: the request's token did not verify (401).
    pub unauthenticated: bool,
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
    let ids = listener.iter().chain(rule).copied();
    let auth = match authz::authenticate(
        ids.clone(),
        |i| policies[i].verifier.as_ref(),
        input.headers,
    ) {
        Ok(auth) => auth,
        Err(e) => {
            metrics.authz_invalid_tokens.inc();
            tracing::debug!(target: "weir::authz", error = %e, caller = input.principal, "token refused");
            return Some(Verdict {
                allowed: false,
                unauthenticated: true,
                by: None,
            });
        }
    };
    let path = authz::normalize_path(input.target);
    let ports = [input.port];
    let req = Request {
        principal: input.principal,
        ip: input.client_ip,
        method: input.method,
        path: &path,
        ports: &ports,
        headers: input.headers,
        auth: auth.as_ref(),
    };
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
    Some(Verdict {
        allowed,
        unauthenticated: false,
        by,
    })
}

/// The token headers to remove before the backend: those of the applying policies'
/// issuers that do not forward their token.
pub fn stripped<'p>(
    policies: &'p [PolicyRt],
    listener: &'p [usize],
    rule: &'p [usize],
) -> impl Iterator<Item = &'p http::HeaderName> {
    listener
        .iter()
        .chain(rule)
        .filter_map(|i| policies[*i].verifier.as_ref())
        .flat_map(Verifier::stripped)
}

#[cfg(test)]
mod tests;
