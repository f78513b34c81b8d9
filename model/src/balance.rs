//! How a rule spreads requests and how a backend is kept healthy: session persistence,
//! hash cohorts, retries, zone affinity, the load balancer and active health checks.
//!
//! These come from Gateway API fields where one exists (`sessionPersistence`, `retry`),
//! from `Service.spec.trafficDistribution`, and otherwise from `weir.dev/*` annotations.

use serde::{Deserialize, Serialize};

/// Gateway API `sessionPersistence` (GEP-1619) on a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionPersistence {
    pub kind: SessionKind,
    /// The cookie or header name carrying the session token.
    pub name: String,
    /// A session ends this long after it was pinned, whatever its activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout_ms: Option<u64>,
    /// A session ends after this long without a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Cookie lifetime `Permanent` (a `Max-Age` from the absolute timeout) rather than a
    /// browser-session cookie.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionKind {
    Cookie,
    Header,
}

/// `weir.dev/split-key` on a route: the backend split is keyed on this request value, so a
/// user stays in one cohort and raising a canary's weight only moves users towards it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SplitKey {
    /// Lower-cased header name.
    Header(String),
    Cookie(String),
}

/// Gateway API `retry` (GEP-1731) on a rule, with Weir's retry budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Response codes that are retried. Connect failures are always retried.
    pub codes: Vec<u16>,
    /// Retries after the first try (not counting it).
    pub attempts: u32,
    /// The least wait before a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// Retries may add at most this percentage to a backend's request rate
    /// (`weir.dev/retry-budget`, default 20).
    pub budget_percent: u32,
}

/// The retry budget when a route does not set `weir.dev/retry-budget`.
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;

/// How a backend picks one of its endpoints (`weir.dev/load-balancer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadBalancer {
    /// Power of two random choices, the one with fewer requests in flight.
    #[default]
    LeastRequest,
    RoundRobin,
}

impl LoadBalancer {
    pub fn is_default(&self) -> bool {
        *self == LoadBalancer::default()
    }
}

/// Active HTTP health checking of every endpoint (`weir.dev/health-check: /path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Path of the `GET` probe; a 2xx or 3xx answer is healthy.
    pub path: String,
    /// `weir.dev/health-check-interval`, default 5 s.
    pub interval_ms: u64,
    /// Probe timeout: the smaller of the interval and 2 s.
    pub timeout_ms: u64,
    /// Consecutive failed probes that mark an endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive passed probes that mark it healthy again.
    pub healthy_threshold: u32,
}
