//! What the gateway learns about endpoints while serving: requests in flight, failures,
//! ejections, health-check verdicts, and each backend's retry budget.
//!
//! This state outlives a config swap. An endpoint ejected a moment ago must stay ejected
//! when an unrelated route changes, and an in-flight count must not drop to zero while its
//! requests still run, so the runtime holds `Arc`s to states kept in the [`Registry`], keyed
//! by backend and address.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use weir_model::BackendKey;

/// Consecutive 5xx answers or connect failures that eject an endpoint (Envoy's default).
pub const CONSECUTIVE_FAILURES: u32 = 5;
/// The first ejection lasts this long; each further one doubles it, up to the maximum.
const BASE_EJECTION: Duration = Duration::from_secs(30);
const MAX_EJECTION: Duration = Duration::from_secs(300);
/// At most this share of a backend's endpoints is ejected at once, so an outlier detector
/// fooled by a backend-wide problem cannot take the whole backend out.
const MAX_EJECTED_PERCENT: usize = 50;
/// Retries allowed per second whatever the budget, so a quiet backend can still retry.
const MIN_RETRIES_PER_SECOND: u32 = 10;
/// Retry tokens saved up at most, in retries: a burst after a long calm is bounded.
const MAX_SAVED_RETRIES: i64 = 100;

/// Milliseconds on one clock shared by every state of the process (0 means "never").
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64 + 1
    }
}

#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    inflight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Clock time the current ejection ends; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Ejections so far, for the backoff; forgotten after a long healthy spell.
    ejections: AtomicU32,
    /// The active health check's verdict (true without a health check).
    check_passing: AtomicBool,
    /// The current ejection followed a connect failure: the endpoint was unreachable rather
    /// than answering badly, so a passing health check proves it back.
    ejected_unreachable: AtomicBool,
}

impl EndpointState {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            inflight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            check_passing: AtomicBool::new(true),
            ejected_unreachable: AtomicBool::new(false),
        }
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn start(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finish(&self) {
        // Saturating: never wraps even if a finish were ever doubled.
        let _ = self
            .inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until() > now_ms
    }

    pub fn check_passing(&self) -> bool {
        self.check_passing.load(Ordering::Relaxed)
    }

    /// Usable for new requests: not ejected and passing its health check.
    pub fn healthy(&self, now_ms: u64) -> bool {
        self.check_passing() && !self.is_ejected(now_ms)
    }
}

/// One backend's learned state: its endpoints' states, a health epoch and the retry budget.
#[derive(Debug)]
pub struct BackendState {
    pub clock: Clock,
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
    /// Bumped whenever an endpoint's health changes, so cached zone plans know to refresh.
    epoch: AtomicU64,
    budget: RetryBudget,
    /// Ejections performed, for the metric (read by whoever exports it).
    pub ejections_total: AtomicU64,
}

/// What happened to one attempt, as the outlier detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx answer or a broken response.
    Failure,
    /// The endpoint could not be reached at all.
    Unreachable,
}

impl BackendState {
    fn new(clock: Clock) -> Self {
        Self {
            clock,
            endpoints: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            budget: RetryBudget::new(clock),
            ejections_total: AtomicU64::new(0),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointState> {
        self.endpoints
            .lock()
            .entry(addr)
            .or_insert_with(|| Arc::new(EndpointState::new(addr)))
            .clone()
    }

    fn retain(&self, keep: &[SocketAddr]) {
        self.endpoints.lock().retain(|a, _| keep.contains(a));
    }

    /// Passive outlier detection. Returns true when this outcome ejected the endpoint.
    pub fn record(&self, ep: &EndpointState, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Success => {
                ep.consecutive_failures.store(0, Ordering::Relaxed);
                let until = ep.ejected_until();
                if until != 0 && self.clock.now_ms() > until + MAX_EJECTION.as_millis() as u64 {
                    // Long healthy since its last ejection: the next one starts short again.
                    ep.ejections.store(0, Ordering::Relaxed);
                }
                false
            }
            Outcome::Failure | Outcome::Unreachable => {
                let n = ep.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                n >= CONSECUTIVE_FAILURES && self.try_eject(ep, outcome == Outcome::Unreachable)
            }
        }
    }

    fn try_eject(&self, ep: &EndpointState, unreachable: bool) -> bool {
        let now = self.clock.now_ms();
        let endpoints = self.endpoints.lock();
        if ep.is_ejected(now) {
            return false;
        }
        let ejected = endpoints.values().filter(|e| e.is_ejected(now)).count();
        if (ejected + 1) * 100 > endpoints.len() * MAX_EJECTED_PERCENT {
            return false;
        }
        let k = ep.ejections.fetch_add(1, Ordering::Relaxed).min(10);
        let time = (BASE_EJECTION * 2u32.pow(k)).min(MAX_EJECTION);
        ep.ejected_unreachable.store(unreachable, Ordering::Relaxed);
        ep.ejected_until
            .store(now + time.as_millis() as u64, Ordering::Relaxed);
        ep.consecutive_failures.store(0, Ordering::Relaxed);
        drop(endpoints);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        self.bump();
        tracing::warn!(endpoint = %ep.addr, seconds = time.as_secs(), "endpoint ejected after consecutive failures");
        true
    }

    /// An active health check's verdict. A passing check also ends an ejection early when
    /// the endpoint was unreachable (it has just proven it answers again), but not one for
    /// bad answers: that would undo every ejection of an endpoint that answers its health
    /// path but fails real requests.
    pub fn set_check(&self, ep: &EndpointState, passing: bool) {
        let was = ep.check_passing.swap(passing, Ordering::Relaxed);
        let mut changed = was != passing;
        if passing
            && (!was || ep.ejected_unreachable.load(Ordering::Relaxed))
            && ep.ejected_until() != 0
        {
            ep.ejected_until.store(0, Ordering::Relaxed);
            ep.consecutive_failures.store(0, Ordering::Relaxed);
            changed = true;
        }
        if changed {
            tracing::info!(endpoint = %ep.addr, passing, "health check verdict changed");
            self.bump();
        }
    }

    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }
}

/// Retries may add at most a set share of a backend's requests (Finagle and Linkerd's retry
/// budget): every request deposits a fraction of a token, every retry withdraws a whole
/// one, and a floor of a few retries per second keeps a quiet backend retryable. During an
/// outage the retries then add at most that share to the load instead of multiplying it.
#[derive(Debug)]
pub struct RetryBudget {
    clock: Clock,
    /// Thousandths of a retry.
    tokens: AtomicI64,
    /// (second << 32) | retries taken from the per-second floor in that second.
    floor: AtomicU64,
}

impl RetryBudget {
    fn new(clock: Clock) -> Self {
        Self {
            clock,
            tokens: AtomicI64::new(0),
            floor: AtomicU64::new(0),
        }
    }

    /// Every first try deposits `percent` hundredths of a retry.
    pub fn deposit(&self, percent: u32) {
        let add = i64::from(percent) * 10;
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + add).min(MAX_SAVED_RETRIES * 1000))
            });
    }

    /// Takes one retry from the budget, or refuses.
    pub fn withdraw(&self) -> bool {
        if self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
        {
            return true;
        }
        let second = self.clock.now_ms() / 1000;
        self.floor
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                let (s, n) = (v >> 32, (v & 0xffff_ffff) as u32);
                match (s == second, n < MIN_RETRIES_PER_SECOND) {
                    (false, _) => Some((second << 32) | 1),
                    (true, true) => Some((second << 32) | u64::from(n + 1)),
                    (true, false) => None,
                }
            })
            .is_ok()
    }
}

/// Every backend's state, kept across config swaps.
#[derive(Debug)]
pub struct Registry {
    clock: Clock,
    backends: Mutex<HashMap<BackendKey, Arc<BackendState>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            clock: Clock(Instant::now()),
            backends: Mutex::new(HashMap::new()),
        }
    }
}

impl Registry {
    /// The state of `key` and of each of `addrs`, created when new.
    pub fn backend(
        &self,
        key: &BackendKey,
        addrs: &[SocketAddr],
    ) -> (Arc<BackendState>, Vec<Arc<EndpointState>>) {
        let backend = self
            .backends
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(BackendState::new(self.clock)))
            .clone();
        backend.retain(addrs);
        let eps = addrs.iter().map(|a| backend.endpoint(*a)).collect();
        (backend, eps)
    }

    /// Forgets backends that are no longer configured.
    pub fn retain(&self, keep: &dyn Fn(&BackendKey) -> bool) {
        self.backends.lock().retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    #[test]
    fn consecutive_failures_eject_at_most_half() {
        let reg = Registry::default();
        let (b, eps) = reg.backend(&BackendKey("ns/s:80".into()), &addrs(4));
        let fail = |e: &EndpointState| {
            (0..CONSECUTIVE_FAILURES)
                .fold(false, |ejected, _| b.record(e, Outcome::Failure) || ejected)
        };
        // A success in between resets the streak.
        for _ in 0..CONSECUTIVE_FAILURES - 1 {
            b.record(&eps[0], Outcome::Failure);
        }
        b.record(&eps[0], Outcome::Success);
        assert!(!eps[0].is_ejected(b.clock.now_ms()));
        assert!(fail(&eps[0]));
        assert!(fail(&eps[1]));
        assert!(!fail(&eps[2]), "a third of four would exceed 50%");
        let now = b.clock.now_ms();
        assert_eq!(eps.iter().filter(|e| e.is_ejected(now)).count(), 2);
        assert_eq!(b.ejections_total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ejections_back_off_and_a_passing_check_ends_them() {
        let reg = Registry::default();
        let (b, eps) = reg.backend(&BackendKey("ns/s:80".into()), &addrs(2));
        let epoch = b.epoch();
        for _ in 0..CONSECUTIVE_FAILURES {
            b.record(&eps[0], Outcome::Failure);
        }
        let first = eps[0].ejected_until() - b.clock.now_ms();
        assert!(b.epoch() > epoch, "plans must refresh");
        b.set_check(&eps[0], true);
        assert!(
            eps[0].is_ejected(b.clock.now_ms()),
            "a check that kept passing"
        );
        b.set_check(&eps[0], false);
        b.set_check(&eps[0], true);
        assert!(
            !eps[0].is_ejected(b.clock.now_ms()),
            "a check that passes again"
        );
        for _ in 0..CONSECUTIVE_FAILURES {
            b.record(&eps[0], Outcome::Failure);
        }
        let second = eps[0].ejected_until() - b.clock.now_ms();
        assert!(second > first + 20_000, "{first} then {second}");
    }

    #[test]
    fn state_survives_a_new_config_and_goes_with_the_endpoint() {
        let reg = Registry::default();
        let key = BackendKey("ns/s:80".into());
        let (_, eps) = reg.backend(&key, &addrs(2));
        eps[1].start();
        let (_, again) = reg.backend(&key, &addrs(3));
        assert!(Arc::ptr_eq(&eps[1], &again[1]));
        assert_eq!(again[1].inflight(), 1);
        let (_, gone) = reg.backend(&key, &addrs(1));
        let (_, back) = reg.backend(&key, &addrs(2));
        assert_eq!(gone.len(), 1);
        assert!(
            !Arc::ptr_eq(&eps[1], &back[1]),
            "a removed endpoint starts afresh"
        );
    }

    #[test]
    fn the_budget_allows_its_share_plus_a_small_floor() {
        let reg = Registry::default();
        let (b, _) = reg.backend(&BackendKey("ns/s:80".into()), &addrs(1));
        for _ in 0..400 {
            b.budget().deposit(20);
        }
        let allowed = (0..1000).filter(|_| b.budget().withdraw()).count();
        // 80 from the deposits, and the per-second floor (10, or 20 across a second tick).
        assert!((90..=100).contains(&allowed), "{allowed}");
        for _ in 0..100_000 {
            b.budget().deposit(20);
        }
        let saved = (0..1000).filter(|_| b.budget().withdraw()).count();
        assert!(saved <= 100 + 20, "savings are capped: {saved}");
    }
}
