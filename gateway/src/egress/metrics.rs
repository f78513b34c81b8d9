//! The metrics of the gateway's way out: DNS resolution of ExternalName Services and TLS to
//! backends (both answer "why did my egress request fail").

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct EgressMetrics {
    /// Failed lookups by DNS name (the last good addresses keep serving meanwhile).
    pub dns_failures: IntCounterVec,
    /// Addresses each name currently resolves to.
    pub dns_addresses: IntGaugeVec,
    /// Upstream TLS failures by backend and reason: `handshake` (trust, hostname, client
    /// certificate), `subject_alt_names`, `policy` (the BackendTLSPolicy is unusable).
    pub tls_failures: IntCounterVec,
    /// 1 per ExternalName backend of the live config, labelled with its DNS name: what lets
    /// the service graph draw an egress target instead of a Service.
    pub backend_info: IntGaugeVec,
}

impl EgressMetrics {
    pub fn register(registry: &Registry) -> Self {
        let dns_failures = IntCounterVec::new(
            Opts::new(
                "dns_resolution_failures_total",
                "Failed DNS lookups of ExternalName Services, by name; the last good addresses keep serving.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let dns_addresses = IntGaugeVec::new(
            Opts::new(
                "dns_addresses",
                "Addresses an ExternalName Service's DNS name resolves to now.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let tls_failures = IntCounterVec::new(
            Opts::new(
                "upstream_tls_failures_total",
                "Connections to TLS backends that failed verification, by backend and reason (handshake, subject_alt_names, policy).",
            ),
            &["backend", "reason"],
        )
        .expect("valid metric");
        let backend_info = IntGaugeVec::new(
            Opts::new(
                "egress_backend_info",
                "ExternalName backends of the live config and the DNS name each one reaches: always 1, for its labels.",
            ),
            &["backend", "name"],
        )
        .expect("valid metric");
        for c in [&dns_failures, &tls_failures] {
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
        }
        for g in [&dns_addresses, &backend_info] {
            registry
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
        }
        Self {
            dns_failures,
            dns_addresses,
            tls_failures,
            backend_info,
        }
    }

    /// Metrics registered nowhere, for tools and tests that build a runtime alone.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new())
    }
}
