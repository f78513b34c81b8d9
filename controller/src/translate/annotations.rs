//! Weir's `weir.dev/*` annotations on routes and Services: the settings the Gateway API
//! has no field for.
//!
//! A bad value never takes routing down. The annotation is ignored, its default applies,
//! and every route it affects says so in its `weir.dev/AnnotationsIgnored` condition: a
//! route for its own annotations, a route for those of the Services it sends traffic to.

use super::balance::{is_token, millis};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;
use std::str::FromStr;
use weir_model::{DEFAULT_RETRY_BUDGET_PERCENT, HealthCheck, LoadBalancer, SplitKey};

/// Route: `header:<name>` or `cookie:<name>`.
pub(crate) const SPLIT_KEY: &str = "weir.dev/split-key";
/// Route: a percentage, `20` or `20%`, within 1-100.
pub(crate) const RETRY_BUDGET: &str = "weir.dev/retry-budget";
/// Service: `true` or `false`; it overrides `spec.trafficDistribution` either way.
pub(crate) const ZONE_AFFINITY: &str = "weir.dev/zone-affinity";
/// Service: `least-request` (the default) or `round-robin`.
pub(crate) const LOAD_BALANCER: &str = "weir.dev/load-balancer";
/// Service: the path of an active HTTP health check, e.g. `/healthz`.
pub(crate) const HEALTH_CHECK: &str = "weir.dev/health-check";
/// Service: a GEP-2257 duration, at least 100ms.
pub(crate) const HEALTH_CHECK_INTERVAL: &str = "weir.dev/health-check-interval";
/// Service: a positive integer.
pub(crate) const HEALTH_CHECK_UNHEALTHY: &str = "weir.dev/health-check-unhealthy-threshold";
/// Service: a positive integer.
pub(crate) const HEALTH_CHECK_HEALTHY: &str = "weir.dev/health-check-healthy-threshold";

const DEFAULT_INTERVAL_MS: u64 = 5_000;
/// Probing faster than this costs the backends more than it tells.
const MIN_INTERVAL_MS: u64 = 100;
/// A probe waits at most this long, however long the interval.
const MAX_PROBE_TIMEOUT_MS: u64 = 2_000;
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;
const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
/// `spec.trafficDistribution` values that ask for endpoints in the client's zone.
const ZONE_DISTRIBUTIONS: [&str; 2] = ["PreferClose", "PreferSameZone"];

/// A route's settings from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteSettings {
    pub split_key: Option<SplitKey>,
    pub retry_budget_percent: u32,
    /// One message per ignored annotation.
    pub problems: Vec<String>,
}

/// A Service's settings from its spec and annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceSettings {
    pub zone_affinity: bool,
    pub load_balancer: LoadBalancer,
    pub health_check: Option<HealthCheck>,
    /// One message per ignored annotation.
    pub problems: Vec<String>,
}

/// Reads annotations, collecting a message for each value that does not parse.
struct Reader<'a> {
    annotations: Option<&'a BTreeMap<String, String>>,
    problems: Vec<String>,
}

impl<'a> Reader<'a> {
    fn new(meta: &'a ObjectMeta) -> Self {
        Self {
            annotations: meta.annotations.as_ref(),
            problems: Vec::new(),
        }
    }

    fn raw(&self, key: &str) -> Option<&'a str> {
        self.annotations?.get(key).map(|v| v.trim())
    }

    /// The parsed value; `None` when absent or invalid (and then a problem is noted).
    fn get<T>(&mut self, key: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let v = self.raw(key)?;
        parse(v)
            .map_err(|e| self.problems.push(format!("{key} {v:?}: {e}")))
            .ok()
    }
}

pub(crate) fn route(meta: &ObjectMeta) -> RouteSettings {
    let mut r = Reader::new(meta);
    let split_key = r.get(SPLIT_KEY, split_key);
    let retry_budget_percent = r
        .get(RETRY_BUDGET, percent)
        .unwrap_or(DEFAULT_RETRY_BUDGET_PERCENT);
    RouteSettings {
        split_key,
        retry_budget_percent,
        problems: r.problems,
    }
}

pub(crate) fn service(svc: &Service) -> ServiceSettings {
    let mut r = Reader::new(&svc.metadata);
    let distribution = svc
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref());
    // The annotation wins over trafficDistribution, so that `false` can opt one gateway
    // out of affinity that kube-proxy still applies to in-cluster clients.
    let zone_affinity = r
        .get(ZONE_AFFINITY, boolean)
        .unwrap_or_else(|| distribution.is_some_and(|d| ZONE_DISTRIBUTIONS.contains(&d)));
    let load_balancer = r.get(LOAD_BALANCER, load_balancer).unwrap_or_default();
    let health_check = health_check(&mut r);
    ServiceSettings {
        zone_affinity,
        load_balancer,
        health_check,
        problems: r.problems,
    }
}

fn health_check(r: &mut Reader<'_>) -> Option<HealthCheck> {
    let tuning = [
        HEALTH_CHECK_INTERVAL,
        HEALTH_CHECK_UNHEALTHY,
        HEALTH_CHECK_HEALTHY,
    ];
    if r.raw(HEALTH_CHECK).is_none() {
        for key in tuning {
            if r.raw(key).is_some() {
                r.problems
                    .push(format!("{key} has no effect without {HEALTH_CHECK}"));
            }
        }
        return None;
    }
    let path = r.get(HEALTH_CHECK, probe_path);
    let interval_ms = r
        .get(HEALTH_CHECK_INTERVAL, interval)
        .unwrap_or(DEFAULT_INTERVAL_MS);
    let unhealthy_threshold = r
        .get(HEALTH_CHECK_UNHEALTHY, positive)
        .unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD);
    let healthy_threshold = r
        .get(HEALTH_CHECK_HEALTHY, positive)
        .unwrap_or(DEFAULT_HEALTHY_THRESHOLD);
    Some(HealthCheck {
        path: path?,
        interval_ms,
        timeout_ms: interval_ms.min(MAX_PROBE_TIMEOUT_MS),
        unhealthy_threshold,
        healthy_threshold,
    })
}

fn split_key(v: &str) -> Result<SplitKey, String> {
    let (kind, name) = v
        .split_once(':')
        .ok_or("expected header:<name> or cookie:<name>")?;
    if !is_token(name) {
        return Err(format!("{name:?} is not a valid {kind} name"));
    }
    match kind {
        "header" => Ok(SplitKey::Header(name.to_ascii_lowercase())),
        "cookie" => Ok(SplitKey::Cookie(name.to_owned())),
        _ => Err(format!(
            "{kind:?} is not header or cookie; expected header:<name> or cookie:<name>"
        )),
    }
}

fn percent(v: &str) -> Result<u32, String> {
    v.strip_suffix('%')
        .unwrap_or(v)
        .parse::<u32>()
        .ok()
        .filter(|p| (1..=100).contains(p))
        .ok_or_else(|| "expected a percentage within 1-100, such as 20 or 20%".into())
}

fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn load_balancer(v: &str) -> Result<LoadBalancer, String> {
    match v {
        "least-request" => Ok(LoadBalancer::LeastRequest),
        "round-robin" => Ok(LoadBalancer::RoundRobin),
        _ => Err("expected least-request or round-robin".into()),
    }
}

fn probe_path(v: &str) -> Result<String, String> {
    // The path goes into the probe's request line as it is.
    if !v.starts_with('/') || !v.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err("expected a path starting with '/', without spaces or '#'".into());
    }
    Ok(v.to_owned())
}

fn interval(v: &str) -> Result<u64, String> {
    let ms = millis(v).map_err(|e| format!("{e}; expected a duration such as 5s"))?;
    if ms < MIN_INTERVAL_MS {
        return Err(format!("must be at least {MIN_INTERVAL_MS}ms"));
    }
    Ok(ms)
}

fn positive(v: &str) -> Result<u32, String> {
    u32::from_str(v)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "expected a positive integer".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    fn meta(pairs: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn svc(distribution: Option<&str>, pairs: &[(&str, &str)]) -> ServiceSettings {
        service(&Service {
            metadata: meta(pairs),
            spec: Some(ServiceSpec {
                traffic_distribution: distribution.map(str::to_owned),
                ..Default::default()
            }),
            status: None,
        })
    }

    #[test]
    fn split_keys() {
        assert_eq!(
            split_key("header:X-User").unwrap(),
            SplitKey::Header("x-user".into())
        );
        assert_eq!(
            split_key("cookie:Uid").unwrap(),
            SplitKey::Cookie("Uid".into())
        );
        for bad in ["x-user", "header:", "cookie:a b", "query:u", "Header:x"] {
            assert!(split_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_annotations_fall_back_to_defaults() {
        let r = route(&meta(&[(SPLIT_KEY, "hdr:x"), (RETRY_BUDGET, "150%")]));
        assert_eq!(r.split_key, None);
        assert_eq!(r.retry_budget_percent, DEFAULT_RETRY_BUDGET_PERCENT);
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        assert!(r.problems[0].starts_with("weir.dev/split-key \"hdr:x\": "));
        let r = route(&meta(&[(RETRY_BUDGET, " 35% ")]));
        assert_eq!((r.retry_budget_percent, r.problems.len()), (35, 0));
        assert_eq!(route(&ObjectMeta::default()).retry_budget_percent, 20);
        for bad in ["0", "101", "-5", "20%%", "twenty", ""] {
            assert!(percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zone_affinity_annotation_overrides_traffic_distribution() {
        assert!(svc(Some("PreferClose"), &[]).zone_affinity);
        assert!(svc(Some("PreferSameZone"), &[]).zone_affinity);
        assert!(!svc(Some("PreferSameNode"), &[]).zone_affinity);
        assert!(!svc(None, &[]).zone_affinity);
        assert!(svc(None, &[(ZONE_AFFINITY, "true")]).zone_affinity);
        assert!(!svc(Some("PreferClose"), &[(ZONE_AFFINITY, "false")]).zone_affinity);
        let bad = svc(Some("PreferClose"), &[(ZONE_AFFINITY, "yes")]);
        assert!(bad.zone_affinity, "an invalid value is ignored");
        assert_eq!(bad.problems.len(), 1);
    }

    #[test]
    fn health_checks() {
        let s = svc(None, &[(HEALTH_CHECK, "/healthz")]);
        assert_eq!(
            s.health_check.unwrap(),
            HealthCheck {
                path: "/healthz".into(),
                interval_ms: 5_000,
                timeout_ms: 2_000,
                unhealthy_threshold: 2,
                healthy_threshold: 1,
            }
        );
        let s = svc(
            None,
            &[
                (HEALTH_CHECK, "/ready?full=1"),
                (HEALTH_CHECK_INTERVAL, "500ms"),
                (HEALTH_CHECK_UNHEALTHY, "3"),
                (HEALTH_CHECK_HEALTHY, "2"),
            ],
        );
        let h = s.health_check.unwrap();
        assert_eq!(
            (
                h.interval_ms,
                h.timeout_ms,
                h.unhealthy_threshold,
                h.healthy_threshold
            ),
            (500, 500, 3, 2)
        );
        let s = svc(
            None,
            &[
                (HEALTH_CHECK, "/h"),
                (HEALTH_CHECK_INTERVAL, "50ms"),
                (HEALTH_CHECK_HEALTHY, "0"),
            ],
        );
        assert_eq!(s.health_check.unwrap().interval_ms, 5_000);
        assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
        let s = svc(None, &[(HEALTH_CHECK, "healthz")]);
        assert_eq!((s.health_check, s.problems.len()), (None, 1));
        let s = svc(None, &[(HEALTH_CHECK_INTERVAL, "1s")]);
        assert_eq!(
            s.problems,
            vec!["weir.dev/health-check-interval has no effect without weir.dev/health-check"]
        );
        assert!(probe_path("/a b").is_err());
        assert!(interval("1 s").is_err());
    }

    #[test]
    fn load_balancers() {
        assert_eq!(svc(None, &[]).load_balancer, LoadBalancer::LeastRequest);
        let s = svc(None, &[(LOAD_BALANCER, "round-robin")]);
        assert_eq!(s.load_balancer, LoadBalancer::RoundRobin);
        let s = svc(None, &[(LOAD_BALANCER, "random")]);
        assert_eq!(
            (s.load_balancer, s.problems),
            (
                LoadBalancer::LeastRequest,
                vec![
                    "weir.dev/load-balancer \"random\": expected least-request or round-robin"
                        .to_string()
                ]
            )
        );
    }
}
