//! Whether a request, or a peer alone, matches a policy's rules.

use super::{AuthzPolicy, AuthzRule, Condition, Operation, Peer, Request, Source, Verified};
use ipnet::IpNet;
use std::net::IpAddr;

/// `*` matches any value, `prefix*` and `*suffix` what they say, anything else itself.
pub(super) fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        pattern == value
    }
}

/// Whether `value` (absent: no identity) matches any of `patterns`. Absent matches none,
/// not even `*`.
fn any(patterns: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| pattern_matches(p, v)))
}

fn in_blocks(blocks: &[IpNet], ip: Option<IpAddr>) -> bool {
    // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
    let ip = ip.map(|ip| ip.to_canonical());
    ip.is_some_and(|ip| blocks.iter().any(|b| b.contains(&ip)))
}

impl AuthzPolicy {
    pub fn matches(&self, req: &Request<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(req))
    }

    /// Whether a rule on the connection alone (no `to`, no `when`, no token) matches the
    /// peer: then every request on its connection matches.
    pub(super) fn denies_peer(&self, peer: &Peer<'_>) -> bool {
        self.rules.iter().any(|r| {
            r.to.is_empty()
                && r.when.is_empty()
                && (r.from.is_empty()
                    || r.from
                        .iter()
                        .any(|s| !s.per_request() && s.matches(peer, None)))
        })
    }

    /// Whether some request from this peer could match a rule (a token could satisfy
    /// whatever a rule asks of one).
    pub(super) fn may_allow_peer(&self, peer: &Peer<'_>) -> bool {
        self.rules
            .iter()
            .any(|r| r.from.is_empty() || r.from.iter().any(|s| s.matches_connection(peer)))
    }
}

impl AuthzRule {
    fn matches(&self, req: &Request<'_>) -> bool {
        let peer = Peer {
            principal: req.principal,
            ip: req.ip,
        };
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(&peer, req.auth)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self.when.iter().all(|c| c.matches(req))
    }
}

impl Source {
    fn matches(&self, peer: &Peer<'_>, auth: Option<&Verified>) -> bool {
        let request_principal = auth.map(|a| a.principal.as_str());
        self.matches_connection(peer)
            && (self.request_principals.is_empty()
                || any(&self.request_principals, request_principal))
            && !any(&self.not_request_principals, request_principal)
    }

    /// The fields a handshake can check.
    fn matches_connection(&self, peer: &Peer<'_>) -> bool {
        let namespace = peer.principal.and_then(crate::spiffe::namespace_of);
        (self.principals.is_empty() || any(&self.principals, peer.principal))
            && !any(&self.not_principals, peer.principal)
            && (self.namespaces.is_empty() || any(&self.namespaces, namespace))
            && !any(&self.not_namespaces, namespace)
            && (self.ip_blocks.is_empty() || in_blocks(&self.ip_blocks, peer.ip))
            && !in_blocks(&self.not_ip_blocks, peer.ip)
    }
}

impl Operation {
    fn matches(&self, req: &Request<'_>) -> bool {
        let method = |m: &String| m == req.method;
        let port = |p: &u16| req.ports.contains(p);
        (self.methods.is_empty() || self.methods.iter().any(method))
            && !self.not_methods.iter().any(method)
            && (self.paths.is_empty() || any(&self.paths, Some(req.path)))
            && !any(&self.not_paths, Some(req.path))
            && (self.ports.is_empty() || self.ports.iter().any(port))
            && !self.not_ports.iter().any(port)
    }
}

impl Condition {
    fn matches(&self, req: &Request<'_>) -> bool {
        let listed = |patterns: &[String], v: &str| patterns.iter().any(|p| pattern_matches(p, v));
        if let Some(path) = &self.claim {
            // No token: no claim, so only `notValues` can hold.
            let values = req.auth.map(|a| a.claim_values(path)).unwrap_or_default();
            return (self.values.is_empty() || values.iter().any(|v| listed(&self.values, v)))
                && !values.iter().any(|v| listed(&self.not_values, v));
        }
        let name = self.header.as_deref().unwrap_or("");
        let values = || {
            req.headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
        };
        (self.values.is_empty() || values().any(|v| listed(&self.values, v)))
            && !values().any(|v| listed(&self.not_values, v))
    }
}
