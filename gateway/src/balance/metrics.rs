//! The balancing metrics: where requests went (in-zone or cross-zone, per Service), the
//! ejections, and the retries with what the budget refused.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct BalanceMetrics {
    /// Requests by Service and locality (`local` or `cross`), for backends whose endpoints
    /// have zones, when the gateway knows its own.
    pub zone_requests: IntCounterVec,
    /// Body bytes by Service, locality and direction (`request`, `response`).
    pub zone_bytes: IntCounterVec,
    pub ejections: IntCounterVec,
    /// Retries by backend and reason (`status`, `connect`, `reset`, `timeout`).
    pub retries: IntCounterVec,
    /// Retries the budget refused, by backend.
    pub budget_exhausted: IntCounterVec,
}

impl BalanceMetrics {
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        Self {
            zone_requests: counter(
                "zone_requests_total",
                "Requests sent to a Service's endpoints in this gateway's zone (local) or another (cross).",
                &["service", "locality"],
            ),
            zone_bytes: counter(
                "zone_bytes_total",
                "Body bytes carried to and from a Service's endpoints, by locality and direction.",
                &["service", "locality", "direction"],
            ),
            ejections: counter(
                "endpoint_ejections_total",
                "Endpoints ejected by passive outlier detection (consecutive 5xx or connect failures).",
                &["backend"],
            ),
            retries: counter(
                "retries_total",
                "Upstream retries, by backend and reason: status, connect, reset (no answer) or timeout.",
                &["backend", "reason"],
            ),
            budget_exhausted: counter(
                "retry_budget_exhausted_total",
                "Retries refused because the backend's retry budget was spent.",
                &["backend"],
            ),
        }
    }
}

/// One Service's zone counters for one locality, resolved once per config so a request
/// pays no label lookup.
#[derive(Debug, Clone)]
pub struct ZoneCounters {
    pub requests: IntCounter,
    pub request_bytes: IntCounter,
    pub response_bytes: IntCounter,
}

impl BalanceMetrics {
    /// The `[local, cross]` counters of `service`.
    pub fn zone_counters(&self, service: &str) -> [ZoneCounters; 2] {
        ["local", "cross"].map(|locality| ZoneCounters {
            requests: self.zone_requests.with_label_values(&[service, locality]),
            request_bytes: self
                .zone_bytes
                .with_label_values(&[service, locality, "request"]),
            response_bytes: self
                .zone_bytes
                .with_label_values(&[service, locality, "response"]),
        })
    }
}
