//! A RateLimitPolicy compiled for the request path: which requests a limit applies to, and
//! each request's counter key, hashed without allocating.

use super::headers::Rendered;
use super::keys::Tracked;
use super::window::Shape;
use crate::metrics::Metrics;
use crate::route::matcher::{CompiledMatch, RequestView};
use http::{HeaderMap, HeaderName};
use prometheus::IntCounter;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use weir_model::{self as model, FailureMode, RateLimitMode};
use xxhash_rust::xxh3::Xxh3;

#[derive(Debug)]
pub struct PolicyRt {
    pub id: Arc<str>,
    pub mode: RateLimitMode,
    pub failure_mode: FailureMode,
    pub response_headers: bool,
    pub limits: Vec<LimitRt>,
    /// The keys the policy tracks, found once per compiled config rather than by id on
    /// every request.
    tracked: OnceLock<Arc<Tracked>>,
}

#[derive(Debug)]
pub struct LimitRt {
    pub name: Arc<str>,
    /// The policy's id, `namespace/name`.
    pub policy: Arc<str>,
    pub shape: Shape,
    key: Vec<Part>,
    when: Vec<CompiledMatch>,
    /// Identifies the limit in key hashes and Redis keys: `policy/limit`.
    id: String,
    id_hash: u64,
    rendered: Rendered,
    /// The decision counters (allowed, limited, shadow_limited), looked up once per
    /// compiled config rather than by label on every request.
    decisions: OnceLock<[IntCounter; 3]>,
}

#[derive(Debug)]
enum Part {
    ClientIp,
    Header(HeaderName),
    PeerIdentity,
    Route,
}

/// What a key can be built from.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub view: RequestView<'a>,
    pub headers: &'a HeaderMap,
    pub client_ip: Option<IpAddr>,
    pub peer_identity: Option<&'a str>,
    pub rule: &'a str,
}

/// A request's counter for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub u64);

impl PolicyRt {
    pub fn compile(p: &model::RateLimitPolicy) -> Result<Self, String> {
        let policy: Arc<str> = p.id.as_str().into();
        let limits = p
            .limits
            .iter()
            .map(|l| {
                let id = format!("{}/{}", p.id, l.name);
                let shape = Shape::new(u64::from(l.requests) + u64::from(l.burst), l.window_ms);
                Ok(LimitRt {
                    name: l.name.as_str().into(),
                    policy: policy.clone(),
                    shape,
                    rendered: Rendered::new(&l.name, shape),
                    decisions: OnceLock::new(),
                    key: l
                        .key
                        .iter()
                        .map(|k| {
                            Ok(match k {
                                model::KeyPart::ClientIp => Part::ClientIp,
                                model::KeyPart::Header(h) => Part::Header(
                                    HeaderName::from_bytes(h.as_bytes())
                                        .map_err(|e| e.to_string())?,
                                ),
                                model::KeyPart::PeerIdentity => Part::PeerIdentity,
                                model::KeyPart::Route => Part::Route,
                            })
                        })
                        .collect::<Result<_, String>>()?,
                    when: l
                        .when
                        .iter()
                        .map(CompiledMatch::compile)
                        .collect::<Result<_, _>>()?,
                    id_hash: xxhash_rust::xxh3::xxh3_64(id.as_bytes()),
                    id,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            id: policy,
            mode: p.mode,
            failure_mode: p.failure_mode,
            response_headers: p.response_headers,
            limits,
            tracked: OnceLock::new(),
        })
    }

    pub(super) fn tracked(&self, find: impl FnOnce() -> Arc<Tracked>) -> &Tracked {
        self.tracked.get_or_init(find)
    }
}

impl LimitRt {
    /// The counter of `req`, or `None` when the limit does not apply to it (no `when`
    /// matches, or a key part it needs is missing).
    pub fn key(&self, req: &RequestInfo<'_>) -> Option<Key> {
        if !self.when.is_empty() && !self.when.iter().any(|m| m.matches(&req.view)) {
            return None;
        }
        let mut h = Xxh3::new();
        h.update(&self.id_hash.to_le_bytes());
        for part in &self.key {
            // A separator keeps ("ab", "c") and ("a", "bc") apart.
            match part {
                Part::ClientIp => match req.client_ip? {
                    IpAddr::V4(ip) => h.update(&ip.octets()),
                    IpAddr::V6(ip) => h.update(&ip.octets()),
                },
                Part::Header(name) => h.update(req.headers.get(name)?.as_bytes()),
                Part::PeerIdentity => h.update(req.peer_identity?.as_bytes()),
                Part::Route => h.update(req.rule.as_bytes()),
            }
            h.update(&[0x1f]);
        }
        Some(Key(h.digest()))
    }

    /// The Redis key of a counter (a hash of its buckets). The hash tag covers the whole
    /// key, so one counter is one cluster slot.
    pub fn redis_base(&self, key: Key) -> Arc<str> {
        format!("weir:rl:{{{}/{:016x}}}", self.id, key.0).into()
    }

    /// Identifies the limit across reloads (for the local fallback limiters).
    pub fn id_hash(&self) -> u64 {
        self.id_hash
    }

    pub(super) fn rendered(&self) -> &Rendered {
        &self.rendered
    }

    /// The counter of a decision: 0 allowed, 1 limited, 2 shadow_limited.
    pub(super) fn decision(&self, metrics: &Metrics, which: usize) -> &IntCounter {
        let counters = self.decisions.get_or_init(|| {
            ["allowed", "limited", "shadow_limited"].map(|d| {
                metrics
                    .rl_decisions
                    .with_label_values(&[&*self.policy, &*self.name, d])
            })
        });
        &counters[which]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::Method;

    /// The limit `per-client` of a policy `shop/checkout`, compiled.
    pub(crate) fn compiled(
        requests: u32,
        burst: u32,
        window_ms: u64,
        key: Vec<model::KeyPart>,
        when: Vec<model::RouteMatch>,
    ) -> LimitRt {
        let p = model::RateLimitPolicy {
            id: "shop/checkout".into(),
            mode: RateLimitMode::Enforce,
            failure_mode: FailureMode::Local,
            response_headers: true,
            limits: vec![model::RateLimit {
                name: "per-client".into(),
                requests,
                burst,
                window_ms,
                key,
                when,
            }],
        };
        PolicyRt::compile(&p).unwrap().limits.remove(0)
    }

    fn limit(key: Vec<model::KeyPart>, when: Vec<model::RouteMatch>) -> LimitRt {
        compiled(10, 2, 1000, key, when)
    }

    fn info<'a>(path: &'a str, headers: &'a HeaderMap, ip: &str, rule: &'a str) -> RequestInfo<'a> {
        static GET: Method = Method::GET;
        RequestInfo {
            view: RequestView::new(path, &GET, headers),
            headers,
            client_ip: Some(ip.parse().unwrap()),
            peer_identity: None,
            rule,
        }
    }

    #[test]
    fn keys_separate_what_the_parts_name() {
        let l = limit(
            vec![
                model::KeyPart::ClientIp,
                model::KeyPart::Header("x-tenant".into()),
            ],
            vec![],
        );
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "acme".parse().unwrap());
        let a = l.key(&info("/", &h, "10.0.0.1", "r")).unwrap();
        assert_eq!(
            a,
            l.key(&info("/x", &h, "10.0.0.1", "other")).unwrap(),
            "path and rule are not parts"
        );
        assert_ne!(a, l.key(&info("/", &h, "10.0.0.2", "r")).unwrap());
        let mut h2 = HeaderMap::new();
        h2.insert("x-tenant", "globex".parse().unwrap());
        assert_ne!(a, l.key(&info("/", &h2, "10.0.0.1", "r")).unwrap());
        assert!(
            l.key(&info("/", &HeaderMap::new(), "10.0.0.1", "r"))
                .is_none(),
            "no header: not limited"
        );
        assert!(
            l.redis_base(a)
                .starts_with("weir:rl:{shop/checkout/per-client/")
        );
        assert_eq!(l.shape.cap, 12);
    }

    #[test]
    fn when_selects_requests_and_an_empty_key_is_one_counter() {
        let when = vec![model::RouteMatch {
            path: model::PathMatch::PathPrefix("/api".into()),
            ..model::RouteMatch::default()
        }];
        let l = limit(vec![], when);
        let h = HeaderMap::new();
        assert!(l.key(&info("/web", &h, "10.0.0.1", "r")).is_none());
        let a = l.key(&info("/api/x", &h, "10.0.0.1", "r")).unwrap();
        assert_eq!(a, l.key(&info("/api/y", &h, "10.9.9.9", "q")).unwrap());
        let by_route = limit(vec![model::KeyPart::Route], vec![]);
        assert_ne!(
            by_route.key(&info("/", &h, "10.0.0.1", "HTTPRoute/a/b/0")),
            by_route.key(&info("/", &h, "10.0.0.1", "HTTPRoute/a/b/1"))
        );
    }
}
