//! Prometheus metrics, owned by one [`Metrics`] value (no global registry) that the proxy,
//! the reloader and the admin server share.

use crate::balance::metrics::BalanceMetrics;
use crate::egress::EgressMetrics;
use crate::listen::metrics::ListenMetrics;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::borrow::Cow;
use std::sync::OnceLock;

/// The request series of one rule's backend for its commonest outcome (200, no caller
/// identity), looked up on first use rather than per request: a lookup by label values
/// hashes seven strings and takes two locks. The gateway and destination labels can vary
/// for one backend (a route attached to two Gateways); a request whose labels differ from
/// the cached ones takes the lookup.
#[derive(Debug, Default)]
pub struct OkSeries(OnceLock<Cached>);

#[derive(Debug)]
struct Cached {
    gateway: Box<str>,
    destination: Box<str>,
    requests: IntCounter,
    duration: Histogram,
}

/// `source` (the caller's verified SPIFFE ID) and `destination` (the Service port a mesh
/// listener routed to) make each edge of the service graph a series; both are empty at the
/// edge, where there is no caller identity and the destination is the route.
const REQUEST_LABELS: [&str; 7] = [
    "gateway",
    "route",
    "rule",
    "backend",
    "source",
    "destination",
    "code",
];
const UPSTREAM_LABELS: [&str; 4] = ["gateway", "route", "rule", "backend"];
/// Seconds; from sub-millisecond local answers to slow backends.
/// The limiter decides in microseconds and never waits more than 2 ms.
const LIMITER_BUCKETS: [f64; 12] = [
    0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_2, 0.000_5,
    0.001, 0.002, 0.005,
];
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    connect_errors: IntCounterVec,
    pub config_generation: IntGauge,
    pub config_last_reload: Gauge,
    pub config_reload_errors: IntCounter,
    /// Objects of the live config left out because they did not compile (`compileErrors`).
    pub config_compile_problems: IntGauge,
    pub downstream_connections: IntGauge,
    /// Rate limit decisions by policy, limit and decision (allowed, limited, shadow_limited).
    pub rl_decisions: IntCounterVec,
    /// Authorization decisions by policy, its action, and decision (allowed, denied,
    /// audited, shadow_denied, shadow_allowed).
    pub authz_decisions: IntCounterVec,
    /// Requests refused with 401: their end-user token did not verify.
    pub authz_invalid_tokens: IntCounter,
    /// Sync rounds with Redis: their duration, failures and count (each is one round trip
    /// per Redis node).
    pub rl_sync_seconds: Histogram,
    pub rl_sync_errors: IntCounter,
    pub rl_redis_calls: IntCounter,
    /// 1 while the breaker in front of Redis is open.
    pub rl_breaker_open: IntGauge,
    /// Requests that waited for a lease, by outcome (granted, denied, timeout, unavailable).
    pub rl_lease_waits: IntCounterVec,
    /// Counts by policy and limit, summed over keys: `local` admits not yet synced, `global`
    /// the fleet's counts in the current window as last synced.
    pub rl_counts: IntGaugeVec,
    /// Live gateway replicas sharing the limits, as Redis reports them.
    pub rl_live_gateways: IntGauge,
    /// Time a request spent in the rate limiter, for the latency the limiter adds.
    pub rl_check_seconds: Histogram,
    /// Keys each policy tracks, and those it forgot to stay within `--rate-limit-max-keys`.
    pub rl_tracked_keys: IntGaugeVec,
    pub rl_key_evictions: IntCounterVec,
    pub balance: BalanceMetrics,
    pub egress: EgressMetrics,
    pub listen: ListenMetrics,
    pub access_log: crate::accesslog::AccessLogMetrics,
    /// Sampled spans handed to the OTLP exporter (`--otlp-endpoint`).
    pub trace_spans: IntCounter,
}

/// The labels of one request. Empty strings where nothing matched (no route, no backend).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLabels<'a> {
    pub gateway: &'a str,
    pub route: &'a str,
    pub rule: &'a str,
    pub backend: &'a str,
    pub source: &'a str,
    pub destination: &'a str,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("weir".into()), None).expect("valid prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests answered, by Gateway, route, rule, backend, caller identity, mesh destination Service and status code.",
            ),
            &REQUEST_LABELS,
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request start to the end of the response, by Gateway, route, rule, backend, caller identity, mesh destination Service and status code.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &REQUEST_LABELS,
        )
        .expect("valid metric");
        let connect_errors = IntCounterVec::new(
            Opts::new(
                "upstream_connect_errors_total",
                "Failed attempts to connect to a backend endpoint.",
            ),
            &UPSTREAM_LABELS,
        )
        .expect("valid metric");
        let config_generation = IntGauge::new(
            "config_generation",
            "Generation of the config being served.",
        )
        .expect("valid metric");
        let config_last_reload = Gauge::new(
            "config_last_reload_timestamp_seconds",
            "Unix time at which the config being served was swapped in.",
        )
        .expect("valid metric");
        let config_compile_problems = IntGauge::new(
            "config_compile_problems",
            "Objects of the live config left out or failed closed because they did not compile; /config lists them under compileErrors.",
        )
        .expect("valid metric");
        let config_reload_errors = IntCounter::new(
            "config_reload_errors_total",
            "Config changes rejected; the previous config kept serving.",
        )
        .expect("valid metric");
        let downstream_connections = IntGauge::new(
            "downstream_connections",
            "Client connections currently open.",
        )
        .expect("valid metric");
        let rl_decisions = IntCounterVec::new(
            Opts::new(
                "ratelimit_decisions_total",
                "Rate limit decisions by policy, limit and decision: allowed, limited or shadow_limited.",
            ),
            &["policy", "limit", "decision"],
        )
        .expect("valid metric");
        let authz_decisions = IntCounterVec::new(
            Opts::new(
                "authz_decisions_total",
                "AuthorizationPolicy decisions by policy, action and decision: allowed, denied, audited, shadow_denied or shadow_allowed.",
            ),
            &["policy", "action", "decision"],
        )
        .expect("valid metric");
        let authz_invalid_tokens = IntCounter::new(
            "authz_invalid_tokens_total",
            "Requests refused with 401 because their end-user token did not verify.",
        )
        .expect("valid metric");
        let rl_sync_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ratelimit_sync_duration_seconds",
                "Duration of a sync round with Redis (one pipelined call per Redis node).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let rl_sync_errors = IntCounter::new(
            "ratelimit_sync_errors_total",
            "Failed or timed-out calls to Redis.",
        )
        .expect("valid metric");
        let rl_redis_calls = IntCounter::new(
            "ratelimit_redis_calls_total",
            "Round trips to Redis made by the rate limiter.",
        )
        .expect("valid metric");
        let rl_breaker_open = IntGauge::new(
            "ratelimit_breaker_open",
            "1 while Redis is failing and each policy's failureMode decides.",
        )
        .expect("valid metric");
        let rl_lease_waits = IntCounterVec::new(
            Opts::new(
                "ratelimit_lease_waits_total",
                "Requests that waited for tokens leased from Redis, by outcome: granted, denied, timeout or unavailable.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let rl_counts = IntGaugeVec::new(
            Opts::new(
                "ratelimit_counts",
                "Requests counted in the current window, summed over keys: kind=local for admits not yet synced, kind=global for the fleet's count as last synced.",
            ),
            &["policy", "limit", "kind"],
        )
        .expect("valid metric");
        let rl_check_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ratelimit_check_duration_seconds",
                "Time a request spent in the rate limiter (local decision, or waiting for a lease).",
            )
            .buckets(LIMITER_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let rl_live_gateways = IntGauge::new(
            "ratelimit_live_gateways",
            "Gateway replicas sharing the rate limits, as Redis last reported.",
        )
        .expect("valid metric");
        let rl_tracked_keys = IntGaugeVec::new(
            Opts::new(
                "ratelimit_tracked_keys",
                "Rate limit keys a policy tracks, at most --rate-limit-max-keys.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let rl_key_evictions = IntCounterVec::new(
            Opts::new(
                "ratelimit_key_evictions_total",
                "Rate limit keys a policy forgot, least recently used first, to make room for new ones within --rate-limit-max-keys.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let trace_spans = IntCounter::new(
            "trace_spans_total",
            "Sampled request spans handed to the OTLP exporter; its queue drops spans when the collector falls behind.",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(connect_errors.clone()),
            Box::new(config_generation.clone()),
            Box::new(config_last_reload.clone()),
            Box::new(config_reload_errors.clone()),
            Box::new(config_compile_problems.clone()),
            Box::new(downstream_connections.clone()),
            Box::new(rl_decisions.clone()),
            Box::new(authz_decisions.clone()),
            Box::new(authz_invalid_tokens.clone()),
            Box::new(rl_sync_seconds.clone()),
            Box::new(rl_sync_errors.clone()),
            Box::new(rl_redis_calls.clone()),
            Box::new(rl_breaker_open.clone()),
            Box::new(rl_lease_waits.clone()),
            Box::new(rl_counts.clone()),
            Box::new(rl_live_gateways.clone()),
            Box::new(rl_check_seconds.clone()),
            Box::new(rl_tracked_keys.clone()),
            Box::new(rl_key_evictions.clone()),
            Box::new(trace_spans.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            balance: BalanceMetrics::register(&registry),
            egress: EgressMetrics::register(&registry),
            listen: ListenMetrics::register(&registry),
            access_log: crate::accesslog::AccessLogMetrics::register(&registry),
            trace_spans,
            registry,
            requests,
            duration,
            connect_errors,
            config_generation,
            config_last_reload,
            config_reload_errors,
            config_compile_problems,
            downstream_connections,
            rl_decisions,
            authz_decisions,
            authz_invalid_tokens,
            rl_sync_seconds,
            rl_sync_errors,
            rl_redis_calls,
            rl_breaker_open,
            rl_lease_waits,
            rl_counts,
            rl_live_gateways,
            rl_check_seconds,
            rl_tracked_keys,
            rl_key_evictions,
        }
    }

    pub fn observe(&self, l: &RequestLabels<'_>, code: u16, seconds: f64) {
        let code = code_label(code);
        let values = [
            l.gateway,
            l.route,
            l.rule,
            l.backend,
            l.source,
            l.destination,
            &code,
        ];
        self.requests.with_label_values(&values).inc();
        self.duration.with_label_values(&values).observe(seconds);
    }

    /// [`Self::observe`], through `cache` for the commonest outcome.
    pub fn observe_cached(&self, cache: &OkSeries, l: &RequestLabels<'_>, code: u16, seconds: f64) {
        if code == 200 && l.source.is_empty() {
            let c = cache.0.get_or_init(|| {
                let values = [
                    l.gateway,
                    l.route,
                    l.rule,
                    l.backend,
                    "",
                    l.destination,
                    "200",
                ];
                Cached {
                    gateway: l.gateway.into(),
                    destination: l.destination.into(),
                    requests: self.requests.with_label_values(&values),
                    duration: self.duration.with_label_values(&values),
                }
            });
            if *c.gateway == *l.gateway && *c.destination == *l.destination {
                c.requests.inc();
                c.duration.observe(seconds);
                return;
            }
        }
        self.observe(l, code, seconds);
    }

    pub fn connect_error(&self, l: &RequestLabels<'_>) {
        self.connect_errors
            .with_label_values(&[l.gateway, l.route, l.rule, l.backend])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Status codes as label values, without allocating for the common ones.
fn code_label(code: u16) -> Cow<'static, str> {
    const COMMON: [(u16, &str); 24] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (206, "206"),
        (101, "101"),
        (301, "301"),
        (302, "302"),
        (303, "303"),
        (304, "304"),
        (307, "307"),
        (308, "308"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (408, "408"),
        (421, "421"),
        (429, "429"),
        (499, "499"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
        (0, "0"),
    ];
    COMMON
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| Cow::Owned(code.to_string()), |(_, s)| Cow::Borrowed(*s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_labels() {
        let m = Metrics::new();
        let l = RequestLabels {
            gateway: "edge/web",
            route: "shop/store",
            rule: "0",
            backend: "shop/store:80",
            ..Default::default()
        };
        m.observe(&l, 200, 0.003);
        m.observe(&l, 200, 0.004);
        m.observe(&l, 418, 0.001);
        m.connect_error(&l);
        let mesh = RequestLabels {
            source: "spiffe://cluster.local/ns/web/sa/frontend",
            destination: "shop/store:80",
            ..l
        };
        m.observe(&mesh, 200, 0.002);
        let text = m.render();
        assert!(text.contains(r#"weir_requests_total{backend="shop/store:80",code="200",destination="",gateway="edge/web",route="shop/store",rule="0",source=""} 2"#), "{text}");
        assert!(text.contains(r#"weir_requests_total{backend="shop/store:80",code="200",destination="shop/store:80",gateway="edge/web",route="shop/store",rule="0",source="spiffe://cluster.local/ns/web/sa/frontend"} 1"#), "{text}");
        assert!(text.contains(r#"code="418""#));
        assert!(text.contains("weir_request_duration_seconds_bucket"));
        assert!(text.contains("weir_upstream_connect_errors_total"));
    }
}
