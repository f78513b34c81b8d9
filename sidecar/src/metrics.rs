//! Prometheus metrics, in one registry owned by the process (no global default registry,
//! so tests and embedders get their own).
//!
//! Label cardinality is bounded by configuration, never by traffic: `port` by `--inbound`,
//! `peer` by the SPIFFE IDs the allow-list admits (or `plaintext`), `reason` by a fixed set.
//! Hot-path code resolves its label set once (per port or per connection) and increments
//! the resulting counter, so a request costs one atomic add.

use crate::identity::Identity;
use crate::outbound::upstream::UpstreamMetrics;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Why an inbound connection was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Plaintext on a strict port.
    Plaintext,
    /// A valid certificate whose SPIFFE ID the allow-list does not admit.
    Identity,
    /// Any other failed TLS handshake: no client certificate, an untrusted chain, a
    /// protocol error, or a timeout.
    Handshake,
    /// TLS before the sidecar has loaded an identity of its own.
    NoIdentity,
    /// A peer that AuthorizationPolicies refuse whatever it asks (`--authz-file`).
    Policy,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Plaintext => "plaintext",
            Refusal::Identity => "identity",
            Refusal::Handshake => "handshake",
            Refusal::NoIdentity => "no_identity",
            Refusal::Policy => "policy",
        }
    }
}

/// All of the sidecar's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    refused: IntCounterVec,
    plaintext: IntCounterVec,
    requests: IntCounterVec,
    denied: IntCounterVec,
    connections: IntCounterVec,
    outbound_requests: IntCounterVec,
    upstream_errors: IntCounter,
    upstream_connections: IntCounter,
    reloads: IntCounterVec,
    not_after: IntGauge,
    identity: IntGaugeVec,
    upstream_tls: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let refused = counter(
            "weir_sidecar_inbound_refused_total",
            "Inbound connections refused, by port and reason.",
            &["port", "reason"],
        );
        let plaintext = counter(
            "weir_sidecar_inbound_plaintext_total",
            "Plaintext connections accepted on permissive ports.",
            &["port"],
        );
        let requests = counter(
            "weir_sidecar_inbound_requests_total",
            "Requests forwarded to the app, by port and peer SPIFFE ID (or plaintext).",
            &["port", "peer"],
        );
        let denied = counter(
            "weir_sidecar_inbound_denied_total",
            "Requests refused by an AuthorizationPolicy (401 or 403) instead of forwarded, by \
             port and peer SPIFFE ID (or plaintext).",
            &["port", "peer"],
        );
        let connections = counter(
            "weir_sidecar_inbound_connections_total",
            "TCP connections accepted on inbound ports, before TLS or mode checks.",
            &["port"],
        );
        let outbound_requests = counter(
            "weir_sidecar_outbound_requests_total",
            "Requests from the app on the outbound listener, by response status class.",
            &["code_class"],
        );
        let single = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let upstream_errors = single(
            "weir_sidecar_outbound_upstream_errors_total",
            "Outbound requests answered 502 because the upstream could not be reached or failed.",
        );
        let upstream_connections = single(
            "weir_sidecar_outbound_upstream_connections_total",
            "mTLS HTTP/2 connections opened to the upstream (ideally one per sidecar).",
        );
        let reloads = counter(
            "weir_sidecar_identity_reloads_total",
            "Identity loads from the identity directory, by result (ok or error).",
            &["result"],
        );
        let not_after = IntGauge::new(
            "weir_sidecar_identity_not_after_seconds",
            "Expiry (Unix time) of the certificate the sidecar presents.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(not_after.clone()))
            .expect("unique metric");
        let info = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let identity = info(
            "weir_sidecar_identity_info",
            "The identity new handshakes present: always 1, for its labels.",
            &["spiffe_id", "serial"],
        );
        let upstream_tls = info(
            "weir_sidecar_outbound_upstream_tls_info",
            "The live upstream connection's handshake: the serial it presented and the \
             upstream's. Always 1, for its labels.",
            &["serial", "peer_serial"],
        );
        Self {
            registry,
            refused,
            plaintext,
            requests,
            denied,
            connections,
            outbound_requests,
            upstream_errors,
            upstream_connections,
            reloads,
            not_after,
            identity,
            upstream_tls,
        }
    }

    /// The registry, for parts that register metrics of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The counter of refusals for `port` and `reason`. It exists (at zero) from this call
    /// on, so dashboards see a flat line rather than no data.
    pub fn refused(&self, port: u16, reason: Refusal) -> IntCounter {
        self.refused
            .with_label_values(&[&port.to_string(), reason.label()])
    }

    pub fn plaintext(&self, port: u16) -> IntCounter {
        self.plaintext.with_label_values(&[&port.to_string()])
    }

    /// Requests on `port` from `peer`: a SPIFFE ID the allow-list admitted, or `plaintext`.
    pub fn requests(&self, port: &str, peer: &str) -> IntCounter {
        self.requests.with_label_values(&[port, peer])
    }

    /// Requests on `port` from `peer` that an AuthorizationPolicy refused.
    pub fn denied(&self, port: &str, peer: &str) -> IntCounter {
        self.denied.with_label_values(&[port, peer])
    }

    pub fn inbound_connections(&self, port: u16) -> IntCounter {
        self.connections.with_label_values(&[&port.to_string()])
    }

    /// Outbound requests answered with `class` (`2xx`, `5xx`, ...).
    pub fn outbound_requests(&self, class: &str) -> IntCounter {
        self.outbound_requests.with_label_values(&[class])
    }

    pub fn outbound_upstream_errors(&self) -> IntCounter {
        self.upstream_errors.clone()
    }

    /// The upstream's connection counter and handshake info.
    pub fn upstream(&self) -> UpstreamMetrics {
        UpstreamMetrics {
            connections: self.upstream_connections.clone(),
            tls: self.upstream_tls.clone(),
        }
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Reports `identity` as the one in use (expiry and serial), replacing the last.
    pub fn set_identity(&self, identity: &Identity) {
        self.not_after.set(identity.not_after);
        self.identity.reset();
        self.identity
            .with_label_values(&[identity.spiffe_id.as_str(), &identity.serial])
            .set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_series_exist_at_zero_once_resolved() {
        let m = Metrics::new();
        let c = m.refused(15006, Refusal::Plaintext);
        assert!(
            m.render().contains(
                "weir_sidecar_inbound_refused_total{port=\"15006\",reason=\"plaintext\"} 0"
            )
        );
        c.inc();
        assert!(m.render().contains("reason=\"plaintext\"} 1"));
    }
}
