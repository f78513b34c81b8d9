//! One request's tries at its backend: which of the rule's backends it takes (session pin,
//! hash cohort or weight), which endpoint each try goes to, and what follows each try's end
//! (outlier detection, and retries on status codes, connect failures, resets and per-try
//! timeouts, all within the backend's retry budget). The proxy reports what happened; the
//! decisions are made here, so "why this pod" and "why was it retried" both land in
//! `balance/`.
//!
//! A retry stays on the backend the request was given: a backend with weight 0 therefore
//! gets nothing, retries included, and the backend's filters stay the ones applied.

use super::metrics::BalanceMetrics;
use super::session::{Token, cohort};
use super::{BackendRt, Outcome, Pool};
use crate::route::{RuleRt, Target};
use http::HeaderMap;
use std::time::Duration;

/// Connection attempts per request when a rule sets no more retries: the first endpoint and
/// two others. Nothing was sent, so these are safe for every method.
const CONNECT_RETRIES: u32 = 2;
/// Retries of a try that broke before any answer, when the rule sets no more: two, so that
/// a request caught by a whole zone going down (its retry may meet the zone's other dead
/// endpoint through a pooled connection) still reaches a live one.
const RESET_RETRIES: u32 = 2;
/// The backoff doubles per retry up to this multiple of the rule's `backoff`.
const MAX_BACKOFF_FACTOR: u32 = 8;

/// The endpoints a request has tried, kept inline: no allocation on the hot path.
#[derive(Debug, Default)]
struct Tried {
    list: [u32; 8],
    len: u8,
}

impl Tried {
    fn push(&mut self, i: u32) {
        if (self.len as usize) < self.list.len() {
            self.list[self.len as usize] = i;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[u32] {
        &self.list[..self.len as usize]
    }
}

/// How a try ended without a usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broke {
    /// The backend did not answer within the try's read timeout.
    TimedOut,
    /// The connection broke (before or during the answer).
    Reset,
}

/// One request's state across its tries.
#[derive(Debug, Default)]
pub struct Tries {
    /// The current try's endpoint in the backend's pool, counted in flight until released.
    endpoint: Option<u32>,
    tried: Tried,
    attempts: u32,
    /// Retries taken on status, timeout and reset (connect retries count in `attempts`).
    retries: u32,
    /// The next try follows a retried answer: wait the backoff first.
    retry_wait: bool,
    /// The current try got a response head.
    responded: bool,
    /// The request's live session token, and the endpoint it pins.
    session: Option<Token>,
    pinned: Option<u32>,
}

impl Tries {
    /// The rule's choice for this request: its pinned session's backend while that backend
    /// is still in the rule (whatever its weight now), else its cohort's, else the next by
    /// weight. `None` when every weight is zero.
    pub fn choose(&mut self, rule: &RuleRt, headers: &HeaderMap) -> Option<usize> {
        let schedule = rule.schedule.as_ref()?;
        if let Some(token) = rule.persistence.as_ref().and_then(|p| p.read(headers)) {
            self.session = Some(token);
            if let Some(i) = rule
                .choices
                .iter()
                .position(|c| c.token == token.backend && matches!(c.target, Target::Backend(_)))
            {
                self.pinned = Some(token.endpoint);
                return Some(i);
            }
        }
        if let Some(hash) = rule.split_key.as_ref().and_then(|k| cohort(k, headers)) {
            return Some(schedule.pick_hashed(hash));
        }
        Some(schedule.pick())
    }

    /// Before the request's first try: its share of the backend's retry budget.
    pub fn open(&self, rule: &RuleRt, pool: &Pool) {
        if self.attempts == 0
            && let Some(r) = &rule.retry
        {
            pool.deposit_retry_budget(r.budget_percent);
        }
    }

    /// The wait before this try when it retries an answer: the rule's backoff, doubling
    /// per retry, with up to a quarter of jitter so that the retries of many clients do not
    /// arrive together.
    pub fn backoff(&mut self, rule: &RuleRt) -> Option<Duration> {
        if !std::mem::take(&mut self.retry_wait) {
            return None;
        }
        let base = Duration::from_millis(rule.retry.as_ref()?.backoff_ms?);
        let factor = 2u32
            .saturating_pow(self.retries.saturating_sub(1))
            .min(MAX_BACKOFF_FACTOR);
        let wait = base * factor;
        Some(wait + wait.mul_f64(fastrand::f64() * 0.25))
    }

    /// Starts a try at one of the pool's endpoints: the session's pinned one on the first
    /// try while it is usable, else the next not yet tried. `None` when none is usable.
    pub fn start(&mut self, pool: &Pool) -> Option<u32> {
        self.release(pool);
        let pinned = self
            .pinned
            .filter(|_| self.attempts == 0)
            .and_then(|hash| pool.find(hash))
            .filter(|&i| pool.usable_now(i));
        let i = pinned.or_else(|| pool.pick(self.tried.as_slice()))?;
        pool.start(i);
        self.endpoint = Some(i);
        self.tried.push(i);
        self.begin();
        Some(i)
    }

    /// Starts a try at an address outside any pool (an ExternalName's `i`th address).
    pub fn start_external(&mut self, i: u32) {
        self.tried.push(i);
        self.begin();
    }

    fn begin(&mut self) {
        self.responded = false;
        self.attempts += 1;
    }

    /// What was tried so far (endpoint or address indexes).
    pub fn tried(&self) -> &[u32] {
        self.tried.as_slice()
    }

    /// Ends the current try's in-flight count; returns its endpoint.
    pub fn release(&mut self, pool: &Pool) -> Option<u32> {
        let i = self.endpoint.take()?;
        pool.finish(i);
        Some(i)
    }

    /// The current try's endpoint.
    pub fn endpoint(&self) -> Option<u32> {
        self.endpoint
    }

    /// Whether the current try got a response head.
    pub fn responded(&self) -> bool {
        self.responded
    }

    /// The session field the response must carry, if any: a new pin, a pin moved off an
    /// endpoint that could not serve, or a sliding idle timeout.
    pub fn session_field(
        &self,
        rule: &RuleRt,
        b: &BackendRt,
        choice_token: u32,
        https: bool,
    ) -> Option<(http::HeaderName, http::HeaderValue)> {
        let p = rule.persistence.as_ref()?;
        let hash = b.pool.member(self.endpoint?).hash;
        (self.pinned != Some(hash) || p.refreshes())
            .then(|| p.issue(choice_token, hash, self.session, https))
    }

    /// A try could not connect. True when the request should try another endpoint.
    pub fn connect_failed(
        &mut self,
        rule: &RuleRt,
        b: &BackendRt,
        m: &BalanceMetrics,
        time_left: bool,
    ) -> bool {
        self.record(b, m, Outcome::Unreachable);
        let allowed = rule
            .retry
            .as_ref()
            .map_or(0, |r| r.attempts)
            .max(CONNECT_RETRIES);
        if self.attempts <= allowed && time_left {
            // Nothing reached the backend, so no budget: a dead endpoint costs nobody load.
            m.retries.with_label_values(&[&*b.label, "connect"]).inc();
            return true;
        }
        false
    }

    /// A try's response head arrived. True when its status is to be retried (within the
    /// rule's attempts and the budget). `replayable`: the request can be sent again (an
    /// idempotent method whose body is still buffered).
    pub fn answered(
        &mut self,
        rule: &RuleRt,
        b: &BackendRt,
        m: &BalanceMetrics,
        status: u16,
        replayable: bool,
        time_left: bool,
    ) -> bool {
        self.responded = true;
        let outcome = if status >= 500 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        self.record(b, m, outcome);
        let Some(r) = &rule.retry else {
            return false;
        };
        if replayable
            && r.codes.contains(&status)
            && self.retries < r.attempts
            && time_left
            && take_retry(b, m, "status")
        {
            self.retries += 1;
            self.retry_wait = true;
            return true;
        }
        false
    }

    /// A try broke while in progress: a broken or timed-out response counts as a failure
    /// of the endpoint. A try that broke before any answer (an endpoint dying with the
    /// request in flight) is retried on other endpoints even without a `retry` field, so
    /// losing a pod, or a zone, fails no request; a per-try timeout is retried when the
    /// rule retries 504s. Neither for a request that cannot be replayed. True to retry.
    pub fn broke(
        &mut self,
        rule: &RuleRt,
        b: &BackendRt,
        m: &BalanceMetrics,
        how: Broke,
        replayable: bool,
        time_left: bool,
    ) -> bool {
        self.record(b, m, Outcome::Failure);
        if !replayable {
            return false;
        }
        let timed_out = how == Broke::TimedOut;
        let (reason, allowed) = match &rule.retry {
            Some(r) if timed_out && r.codes.contains(&504) => ("timeout", r.attempts),
            Some(r) if !timed_out && !self.responded => ("reset", r.attempts.max(RESET_RETRIES)),
            None if !timed_out && !self.responded => ("reset", RESET_RETRIES),
            _ => return false,
        };
        if self.retries < allowed && time_left && take_retry(b, m, reason) {
            self.retries += 1;
            self.retry_wait = reason == "timeout";
            return true;
        }
        false
    }

    /// Feeds one try's result to outlier detection, counting an ejection it causes.
    fn record(&self, b: &BackendRt, m: &BalanceMetrics, outcome: Outcome) {
        let Some(i) = self.endpoint else {
            return;
        };
        if b.pool.record(i, outcome) {
            m.ejections.with_label_values(&[&*b.label]).inc();
        }
    }
}

/// Takes a retry from the budget, counting it by `reason`, or counts the refusal.
fn take_retry(b: &BackendRt, m: &BalanceMetrics, reason: &str) -> bool {
    if b.pool.withdraw_retry() {
        m.retries.with_label_values(&[&*b.label, reason]).inc();
        true
    } else {
        m.budget_exhausted.with_label_values(&[&*b.label]).inc();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Balancer, Locality};
    use crate::runtime::{Runtime, compile};
    use std::path::Path;
    use std::sync::Arc;
    use weir_controller::source::files::parse_str;

    /// One rule retrying 503 twice with a 100 ms backoff, over a Service of three
    /// endpoints.
    fn runtime() -> Runtime {
        let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weir}\nspec: {controllerName: weir.dev/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  gatewayClassName: weir\n  listeners: [{name: http, port: 8080, protocol: HTTP}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: app}\nspec: {ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: app, labels: {kubernetes.io/service-name: app}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}, {addresses: [10.0.0.3]}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: app, port: 80}]\n    retry: {codes: [503], attempts: 2, backoff: 100ms}\n";
        let loaded = parse_str(Path::new("test.yaml"), yaml).unwrap();
        let (config, _) = weir_controller::translate(&loaded.snapshot);
        compile(Arc::new(config), 1, &Balancer::new(Locality::default()))
    }

    #[test]
    fn each_try_takes_an_endpoint_not_tried_yet() {
        let rt = runtime();
        let pool = &rt.backends[0].pool;
        let mut tries = Tries::default();
        let mut seen: Vec<u32> = (0..3).map(|_| tries.start(pool).unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2], "three tries, three endpoints");
        assert_eq!(tries.tried().len(), 3);
        let current = tries.endpoint();
        assert!(current.is_some());
        assert_eq!(
            tries.release(pool),
            current,
            "the last try's endpoint is released"
        );
        assert_eq!(tries.endpoint(), None);
    }

    #[test]
    fn statuses_are_retried_within_the_attempts_with_a_doubling_backoff() {
        let rt = runtime();
        let (rule, b) = (&rt.rules[0], &rt.backends[0]);
        let m = crate::metrics::Metrics::new();
        let mut tries = Tries::default();
        tries.open(rule, &b.pool);
        let mut waits = Vec::new();
        for _ in 0..2 {
            tries.start(&b.pool).unwrap();
            assert!(
                tries.answered(rule, b, &m.balance, 503, true, true),
                "retried"
            );
            waits.push(
                tries
                    .backoff(rule)
                    .expect("a backoff after a retried answer"),
            );
        }
        tries.start(&b.pool).unwrap();
        assert!(
            !tries.answered(rule, b, &m.balance, 503, true, true),
            "two attempts, then the answer stands"
        );
        assert_eq!(tries.backoff(rule), None, "no wait without a retry");
        // 100 ms, then 200 ms, each with up to a quarter of jitter.
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert!(
            (100..=125).contains(&ms[0]) && (200..=250).contains(&ms[1]),
            "{ms:?}"
        );
    }

    #[test]
    fn what_cannot_be_replayed_is_not_retried() {
        let rt = runtime();
        let (rule, b) = (&rt.rules[0], &rt.backends[0]);
        let m = crate::metrics::Metrics::new();
        let mut tries = Tries::default();
        tries.open(rule, &b.pool);
        tries.start(&b.pool).unwrap();
        assert!(!tries.answered(rule, b, &m.balance, 503, false, true));
        tries.start(&b.pool).unwrap();
        assert!(!tries.broke(rule, b, &m.balance, Broke::Reset, false, true));
        // A reset before any answer is retried even for codes the rule does not list.
        let mut fresh = Tries::default();
        fresh.start(&b.pool).unwrap();
        assert!(fresh.broke(rule, b, &m.balance, Broke::Reset, true, true));
        // Out of time: nothing is retried.
        fresh.start(&b.pool).unwrap();
        assert!(!fresh.broke(rule, b, &m.balance, Broke::Reset, true, false));
    }
}
