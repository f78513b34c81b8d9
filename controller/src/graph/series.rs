//! What a graph is built from: the series of the gateways' and sidecars' metrics over one
//! window, counters as per-second rates and info gauges as their value. Both sources (a
//! Prometheus server, or the targets scraped directly) produce this, so the graph itself
//! never knows where its figures came from.

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// The fleet's requests, one series per Gateway, route, backend, caller and code.
pub const REQUESTS: &str = "weir_requests_total";
/// Their latency histogram: cumulative buckets, `le` in seconds.
pub const DURATION_BUCKET: &str = "weir_request_duration_seconds_bucket";
/// 1 per ExternalName backend, labelled with the DNS name it reaches.
pub const EGRESS_INFO: &str = "weir_egress_backend_info";
/// Requests by backend (`service`) and `locality` (`local` or `cross` zone).
pub const ZONE_REQUESTS: &str = "weir_zone_requests_total";
/// Rate limit decisions by `policy` and `decision`.
pub const RATELIMIT_DECISIONS: &str = "weir_ratelimit_decisions_total";
/// AuthorizationPolicy decisions by `policy`, `action` and `decision`, at the fleet and at
/// the sidecars alike (summed: a policy is one policy wherever it is enforced).
pub const AUTHZ_DECISIONS: &str = "weir_authz_decisions_total";
/// The SPIFFE ID a sidecar presents (joined to its other series by `instance`).
pub const SIDECAR_IDENTITY: &str = "weir_sidecar_identity_info";
/// Inbound connections a sidecar refused (no or untrusted certificate, caller not allowed).
pub const SIDECAR_REFUSED: &str = "weir_sidecar_inbound_refused_total";
/// Inbound connections a sidecar accepted at TCP level, refused ones included.
pub const SIDECAR_CONNECTIONS: &str = "weir_sidecar_inbound_connections_total";
/// Requests a sidecar passed to its app, by `peer` (a SPIFFE ID, or `plaintext`).
pub const SIDECAR_REQUESTS: &str = "weir_sidecar_inbound_requests_total";
/// Requests a sidecar's AuthorizationPolicies refused (401/403), by `peer`.
pub const SIDECAR_DENIED: &str = "weir_sidecar_inbound_denied_total";

/// Whether a metric is read as a rate over the window or as its latest value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Rate,
    Latest,
}

/// Every metric the graph reads, how, and the labels it keeps. `instance` joins a
/// sidecar's series to its identity; the fleet's series are summed over replicas.
pub const WANTED: [(&str, Reading, &[&str]); 11] = [
    (
        REQUESTS,
        Reading::Rate,
        &[
            "gateway",
            "route",
            "backend",
            "source",
            "destination",
            "code",
        ],
    ),
    (
        DURATION_BUCKET,
        Reading::Rate,
        &["gateway", "route", "backend", "source", "destination", "le"],
    ),
    (EGRESS_INFO, Reading::Latest, &["backend", "name"]),
    (ZONE_REQUESTS, Reading::Rate, &["service", "locality"]),
    (RATELIMIT_DECISIONS, Reading::Rate, &["policy", "decision"]),
    (
        AUTHZ_DECISIONS,
        Reading::Rate,
        &["policy", "action", "decision"],
    ),
    (
        SIDECAR_IDENTITY,
        Reading::Latest,
        &["instance", "spiffe_id"],
    ),
    (SIDECAR_REFUSED, Reading::Rate, &["instance", "reason"]),
    (SIDECAR_CONNECTIONS, Reading::Rate, &["instance"]),
    (SIDECAR_REQUESTS, Reading::Rate, &["instance", "peer"]),
    (SIDECAR_DENIED, Reading::Rate, &["instance", "peer"]),
];

/// How a metric is read, if the graph reads it at all.
pub fn reading(name: &str) -> Option<Reading> {
    WANTED.iter().find(|w| w.0 == name).map(|w| w.1)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Labels,
    /// Per second for [`Reading::Rate`] metrics, else the gauge's value.
    pub value: f64,
}

impl Series {
    pub fn new(name: &str, labels: &[(&str, &str)], value: f64) -> Self {
        Self {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    /// A label's value; empty when absent, as in PromQL.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// The series of one window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// The time the rates were taken over (shorter than asked when the history is).
    pub seconds: f64,
    pub series: Vec<Series>,
}

impl Window {
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Series> + 'a {
        self.series.iter().filter(move |s| s.name == name)
    }
}

/// A quantile of a histogram given as cumulative `(le, count)` buckets in ascending `le`,
/// interpolated within its bucket as PromQL's `histogram_quantile` does; `None` without
/// observations. A quantile that falls in the `+Inf` bucket is the highest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            let share = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_promql() {
        // 100 observations: 50 at or below 10 ms, 90 at or below 100 ms, all below 1 s.
        let b = [
            (0.01, 50.0),
            (0.1, 90.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(0.5, &b), Some(0.01));
        let p99 = quantile(0.99, &b).unwrap();
        assert!((p99 - 0.91).abs() < 1e-9, "{p99}");
        let p70 = quantile(0.7, &b).unwrap();
        assert!((p70 - 0.055).abs() < 1e-9, "{p70}");
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
        // Everything above the highest bound: the bound is all that is known.
        assert_eq!(
            quantile(0.99, &[(0.1, 0.0), (f64::INFINITY, 5.0)]),
            Some(0.1)
        );
    }
}
