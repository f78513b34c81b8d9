//! Rate limits shared by the whole gateway fleet (RateLimitPolicy).
//!
//! Why a request got a 429 is decided here:
//! - [`window`]: the per-key sliding window and the local decision: far below the limit a
//!   key is decided locally; close to it only tokens leased from Redis admit;
//! - [`sync`]: the background task that sends local counts and lease requests to Redis in
//!   batches (every 50 to 500 ms, at once for a waiting lease) and brings the fleet's
//!   counts back;
//! - [`breaker`]: when Redis fails, the policy's failure mode decides, without waiting;
//! - [`policy`]: which requests a limit applies to, and their counter keys;
//! - [`keys`]: how many keys a policy tracks, and which it forgets first;
//! - [`headers`]: `Retry-After` and the `RateLimit-Policy` / `RateLimit` fields.
//!
//! No request waits on Redis more than 2 ms: a lease that takes longer is given up and the
//! failure mode decides that request.

mod breaker;
mod compile;
pub mod headers;
mod keys;
pub mod policy;
mod store;
mod sync;
mod target;
pub mod window;

pub use compile::compile;
pub use keys::DEFAULT_MAX_KEYS;
pub use policy::{PolicyRt, RequestInfo};
pub use target::Target;

use crate::metrics::Metrics;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use keys::{KeyedStore, Tracked};
use parking_lot::Mutex;
use policy::{Key, LimitRt};
use prometheus::IntCounter;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use weir_model::{FailureMode, RateLimitMode};
use window::{KeyState, Local, Shape};

/// The longest a request waits for leased tokens. Tokio's timers round up to the next
/// millisecond, so a 1 ms timeout fires within 2 ms.
const LEASE_WAIT: Duration = Duration::from_millis(1);

/// What the limiter decided for a request.
#[derive(Debug)]
pub enum Verdict {
    Allow {
        headers: Option<headers::Fields>,
    },
    Deny {
        retry_after_s: u64,
        headers: Option<headers::Fields>,
    },
}

/// The decision for one limit.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    allowed: bool,
    remaining: u64,
    reset_ms: u64,
}

pub(crate) struct Entry {
    pub state: KeyState,
    pub base: Arc<str>,
    pub shape: Shape,
    /// Labels for the count metrics.
    pub policy: Arc<str>,
    pub limit: Arc<str>,
}

/// A lease request for the sync task.
pub(crate) struct LeaseRequest {
    pub key: u64,
    pub want: u64,
    pub reply: oneshot::Sender<u64>,
}

/// State shared between the request path and the sync task.
pub(crate) struct Shared {
    pub table: DashMap<u64, Entry>,
    /// Keys with unsynced admits.
    pub dirty: Mutex<Vec<u64>>,
    pub breaker_open: Arc<AtomicBool>,
    /// The live gateways Redis last counted; 0 until the first heartbeat answers, which
    /// every reader takes as 1 except [`window::KeyState::admit_unconfirmed`]: a fleet of
    /// one it has not heard of yet may be three.
    pub live: AtomicU32,
    /// Redis clock minus local clock, ms.
    pub clock_offset: AtomicI64,
    /// Counts the times the breaker opened, so that each key's failure-mode limiter is
    /// seeded once per outage.
    pub outages: AtomicU32,
    /// Per limit, the limiter of the failure mode `Local` (and of a gateway without Redis).
    pub fallback: DashMap<u64, Fallback>,
    /// Per policy id, the keys it tracks. A compiled policy holds its own once it is first
    /// checked, so a request never looks here.
    pub tracked: Mutex<HashMap<Arc<str>, Arc<Tracked>>>,
    /// Keys a policy tracks at most (`--rate-limit-max-keys`).
    pub max_keys: usize,
    /// Unsynced admits of forgotten keys, for the next sync round.
    pub orphans: Mutex<Vec<store::Op>>,
    pub metrics: Arc<Metrics>,
    pub lease_waits: LeaseWaits,
}

/// A limit's failure-mode limiter, the share it was built for, and its per-key state.
pub(crate) struct Fallback {
    share: u32,
    limiter: Arc<LocalLimiter>,
    store: KeyedStore,
}

type LocalLimiter = RateLimiter<u64, KeyedStore, DefaultClock>;

/// The lease-wait counters, looked up once rather than by label on every wait.
pub(crate) struct LeaseWaits {
    granted: IntCounter,
    denied: IntCounter,
    timeout: IntCounter,
    unavailable: IntCounter,
}

impl LeaseWaits {
    fn new(metrics: &Metrics) -> Self {
        let c = |outcome| metrics.rl_lease_waits.with_label_values(&[outcome]);
        Self {
            granted: c("granted"),
            denied: c("denied"),
            timeout: c("timeout"),
            unavailable: c("unavailable"),
        }
    }
}

impl Shared {
    /// Now on Redis's clock (ms), as well as this gateway knows it.
    pub(crate) fn now_ms(&self) -> u64 {
        (unix_ms() as i64 + self.clock_offset.load(Ordering::Relaxed)).max(0) as u64
    }

    /// Puts a key with unsynced admits on the sync task's list, once.
    fn queue(&self, key: u64, state: &mut KeyState) {
        if state.pending() > 0 && !state.queued {
            state.queued = true;
            self.dirty.lock().push(key);
        }
    }

    /// The keys `policy` tracks, shared by every compiled version of it.
    fn tracked(&self, policy: &str) -> Arc<Tracked> {
        let mut all = self.tracked.lock();
        if let Some(t) = all.get(policy) {
            return t.clone();
        }
        let evictions = self.metrics.rl_key_evictions.with_label_values(&[policy]);
        let t = Arc::new(Tracked::new(self.max_keys, evictions));
        all.insert(policy.into(), t.clone());
        t
    }

    /// Drops what this gateway holds for a key of `limit` that its policy no longer tracks;
    /// true when it held something. Its admits not yet synced still go to Redis, so that
    /// the fleet's count does not lose them.
    fn forget(&self, key: u64, limit: u64) -> bool {
        let mut held = false;
        if let Some((_, mut e)) = self.table.remove(&key) {
            held = true;
            // Admits whose leases are still out will find no key to settle with.
            e.state.owed_to_pending(self.now_ms(), e.shape);
            if e.state.pending() > 0 {
                self.orphans.lock().push(store::Op {
                    base: e.base,
                    bucket_ms: e.shape.bucket_ms,
                    buckets: e.shape.buckets,
                    add: e.state.pending_buckets,
                    want: 0,
                    cap: e.shape.cap,
                    live: self.live.load(Ordering::Relaxed),
                });
            }
        }
        if let Some(f) = self.fallback.get(&limit) {
            held |= f.store.forget(key);
        }
        held
    }
}

/// The local wall clock, ms since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Limiter {
    shared: Arc<Shared>,
    leases: Option<mpsc::Sender<LeaseRequest>>,
    /// Per limit in Shadow mode: when it was last logged, and the refusals since.
    shadow_log: DashMap<u64, (u64, u64)>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("keys", &self.shared.table.len())
            .field("redis", &self.leases.is_some())
            .finish()
    }
}

impl Limiter {
    /// A limiter sharing counts through Redis at `redis`, or, without it, enforcing every
    /// limit in this process alone. Its background work (the Redis sync, housekeeping)
    /// runs as a task on `control` (the control runtime), which ends when the limiter is
    /// dropped. Each policy tracks at most `max_keys` keys: past
    /// that, the least recently used are forgotten (see `keys`).
    pub fn new(
        redis: Option<Target>,
        gateway_id: String,
        metrics: Arc<Metrics>,
        max_keys: usize,
        control: &tokio::runtime::Handle,
    ) -> Self {
        let shared = Arc::new(Shared {
            table: DashMap::new(),
            dirty: Mutex::new(Vec::new()),
            breaker_open: Arc::new(AtomicBool::new(false)),
            live: AtomicU32::new(0),
            clock_offset: AtomicI64::new(0),
            outages: AtomicU32::new(0),
            fallback: DashMap::new(),
            tracked: Mutex::new(HashMap::new()),
            max_keys,
            orphans: Mutex::new(Vec::new()),
            lease_waits: LeaseWaits::new(&metrics),
            metrics,
        });
        let weak = Arc::downgrade(&shared);
        let (leases, task) = match redis {
            Some(target) => {
                let (tx, rx) = mpsc::channel(4096);
                (
                    Some(tx),
                    Box::pin(sync::run(weak, target, gateway_id, rx)) as sync::Task,
                )
            }
            None => (None, Box::pin(sync::housekeeping_only(weak)) as sync::Task),
        };
        control.spawn(task);
        Self {
            shared,
            leases,
            shadow_log: DashMap::new(),
        }
    }

    /// Decides a request against every limit of `policy` that applies to it.
    pub async fn check(&self, policy: &PolicyRt, req: &RequestInfo<'_>) -> Verdict {
        let mut denied: Option<(&LimitRt, Outcome)> = None;
        let mut tightest: Option<(&LimitRt, Outcome)> = None;
        let tracked = policy.tracked(|| self.shared.tracked(&policy.id));
        for limit in &policy.limits {
            let Some(key) = limit.key(req) else { continue };
            let hash = key.0;
            let outcome = self.decide(limit, key, policy.failure_mode).await;
            // After the decision, so that the key's state exists before it can be evicted:
            // touched first, a key could be evicted (with nothing to forget) before its
            // decision created state that no ring then holds, outside the cap. No table
            // entry is locked here, which matters: making room removes entries.
            tracked.touch(hash, limit.id_hash(), |k, l| self.shared.forget(k, l));
            let decision = match (outcome.allowed, policy.mode) {
                (true, _) => 0,
                (false, RateLimitMode::Enforce) => 1,
                (false, RateLimitMode::Shadow) => 2,
            };
            limit.decision(&self.shared.metrics, decision).inc();
            if !outcome.allowed {
                if policy.mode == RateLimitMode::Shadow {
                    self.log_shadow(policy, limit);
                } else if denied.is_none_or(|(_, d)| outcome.reset_ms > d.reset_ms) {
                    denied = Some((limit, outcome));
                }
            }
            if tightest.is_none_or(|(_, t)| outcome.remaining < t.remaining) {
                tightest = Some((limit, outcome));
            }
        }
        let fields = |(limit, o): (&LimitRt, Outcome)| {
            policy
                .response_headers
                .then(|| headers::Fields::new(limit, o.remaining, o.reset_ms))
        };
        match denied {
            Some((limit, o)) => Verdict::Deny {
                retry_after_s: o.reset_ms.div_ceil(1000).max(1),
                headers: fields((limit, o)),
            },
            None => Verdict::Allow {
                headers: tightest.and_then(fields),
            },
        }
    }

    /// Shadow mode logs what it would have refused, once a second per limit at most, so
    /// that a policy under trial can be judged from the log as well as from the metrics.
    fn log_shadow(&self, policy: &PolicyRt, limit: &LimitRt) {
        let now = unix_ms();
        let mut e = self.shadow_log.entry(limit.id_hash()).or_insert((0, 0));
        e.1 += 1;
        if now >= e.0 + 1000 {
            tracing::info!(
                policy = %policy.id,
                limit = %limit.name,
                would_limit = e.1,
                "shadow mode: admitted requests over the limit"
            );
            *e = (now, 0);
        }
    }

    async fn decide(&self, limit: &LimitRt, key: Key, failure: FailureMode) -> Outcome {
        let Some(leases) = &self.leases else {
            // Without Redis this gateway is the whole fleet.
            return self.fallback(limit, key, FailureMode::Local, 1);
        };
        let live = self.shared.live.load(Ordering::Relaxed);
        if self.shared.breaker_open.load(Ordering::Relaxed) {
            return self.fallback(limit, key, failure, live);
        }
        let now = self.shared.now_ms();
        let (local, prefetch) = {
            let mut e = self.shared.table.entry(key.0).or_insert_with(|| Entry {
                state: KeyState::default(),
                base: limit.redis_base(key),
                shape: limit.shape,
                policy: limit.policy.clone(),
                limit: limit.name.clone(),
            });
            let local = e.state.decide(now, limit.shape, live);
            self.shared.queue(key.0, &mut e.state);
            let prefetch = std::mem::take(&mut e.state.prefetch);
            (local, prefetch)
        };
        if prefetch > 0 {
            // Nobody waits for this one: the sync task keeps its tokens for the key.
            let (reply, _) = oneshot::channel();
            let _ = leases.try_send(LeaseRequest {
                key: key.0,
                want: prefetch,
                reply,
            });
        }
        let window_end = |now: u64| limit.shape.window_ms - now % limit.shape.window_ms;
        match local {
            Local::Allow { remaining } => Outcome {
                allowed: true,
                remaining,
                reset_ms: window_end(now),
            },
            Local::Deny { until } => Outcome {
                allowed: false,
                remaining: 0,
                reset_ms: until.saturating_sub(now).max(1),
            },
            Local::Lease { want } => {
                let (tx, rx) = oneshot::channel();
                let waits = &self.shared.lease_waits;
                if leases
                    .try_send(LeaseRequest {
                        key: key.0,
                        want,
                        reply: tx,
                    })
                    .is_err()
                {
                    waits.unavailable.inc();
                    return self.fallback(limit, key, failure, live);
                }
                let mut rx = rx;
                let answer = match tokio::time::timeout(LEASE_WAIT, &mut rx).await {
                    Ok(answer) => answer.ok(),
                    Err(_) => {
                        // Slow, not failed (failures open the breaker): the last known fleet
                        // count decides. Decided under the key's lock, which the sync task
                        // holds while it answers: the answer either came just now, or it
                        // will find this admit owed and settle it (`settle_gave_up`).
                        let now = self.shared.now_ms();
                        let Some(mut e) = self.shared.table.get_mut(&key.0) else {
                            waits.unavailable.inc();
                            return self.fallback(limit, key, failure, live);
                        };
                        match rx.try_recv() {
                            Ok(granted) => Some(granted),
                            Err(oneshot::error::TryRecvError::Closed) => None,
                            Err(oneshot::error::TryRecvError::Empty) => {
                                waits.timeout.inc();
                                let admitted = e.state.admit_unconfirmed(now, limit.shape, live);
                                drop(rx);
                                drop(e);
                                return Outcome {
                                    allowed: admitted,
                                    remaining: 0,
                                    // Without Redis's answer, when room comes back is
                                    // unknown: at the latest, once a whole window has passed.
                                    reset_ms: if admitted {
                                        window_end(now)
                                    } else {
                                        limit.shape.window_ms
                                    },
                                };
                            }
                        }
                    }
                };
                match answer {
                    Some(granted) if granted > 0 => {
                        waits.granted.inc();
                        let now = self.shared.now_ms();
                        let remaining = self.shared.table.get_mut(&key.0).map_or(0, |mut e| {
                            e.state.take_lease(now, granted, limit.shape);
                            e.state.remaining(now, limit.shape)
                        });
                        Outcome {
                            allowed: true,
                            remaining,
                            reset_ms: window_end(now),
                        }
                    }
                    Some(_) => {
                        waits.denied.inc();
                        let now = self.shared.now_ms();
                        let until = self
                            .shared
                            .table
                            .get(&key.0)
                            .map_or(now + 1, |e| e.state.deny_until);
                        Outcome {
                            allowed: false,
                            remaining: 0,
                            reset_ms: until.saturating_sub(now).max(1),
                        }
                    }
                    None => {
                        // The sync task could not reach Redis for this round.
                        waits.unavailable.inc();
                        self.fallback(limit, key, failure, live)
                    }
                }
            }
        }
    }

    /// The failure mode's decision: the limit divided among the live gateways, enforced
    /// here alone (`Local`), or admit (`Open`), or refuse (`Closed`).
    fn fallback(&self, limit: &LimitRt, key: Key, failure: FailureMode, live: u32) -> Outcome {
        let window = limit.shape.window_ms;
        match failure {
            FailureMode::Open => Outcome {
                allowed: true,
                remaining: limit.shape.cap,
                reset_ms: window,
            },
            FailureMode::Closed => Outcome {
                allowed: false,
                remaining: 0,
                reset_ms: window,
            },
            FailureMode::Local => {
                let share = (limit.shape.cap.div_ceil(u64::from(live.max(1))))
                    .clamp(1, u64::from(u32::MAX)) as u32;
                // A shared read on the hot path; a write only when the share changed.
                let current = self
                    .shared
                    .fallback
                    .get(&limit.id_hash())
                    .filter(|e| e.share == share)
                    .map(|e| e.limiter.clone());
                // Made under the entry's lock: two threads meeting a limit first at once
                // would each make one, and the admits of the one overwritten were lost
                // (seen as a tenant admitted 51 times under a limit of 50).
                let limiter = current.unwrap_or_else(|| {
                    let mut e = self
                        .shared
                        .fallback
                        .entry(limit.id_hash())
                        .or_insert_with(|| local_limiter(share, window));
                    if e.share != share {
                        *e = local_limiter(share, window);
                    }
                    e.limiter.clone()
                });
                self.seed(&limiter, limit, key, live, share);
                match limiter.check_key(&key.0) {
                    Ok(_) => Outcome {
                        allowed: true,
                        remaining: 0,
                        reset_ms: window,
                    },
                    Err(not_until) => Outcome {
                        allowed: false,
                        remaining: 0,
                        reset_ms: not_until
                            .wait_time_from(DefaultClock::default().now())
                            .as_millis() as u64,
                    },
                }
            }
        }
    }

    /// At the start of an outage, a key's local limiter starts with this gateway's share of
    /// what the fleet already admitted in the sliding window, so that falling back does not
    /// hand out a fresh burst on top of it.
    fn seed(&self, limiter: &LocalLimiter, limit: &LimitRt, key: Key, live: u32, share: u32) {
        let outage = self.shared.outages.load(Ordering::Relaxed);
        if outage == 0 {
            // No outage yet (or no Redis at all): nothing to seed from.
            return;
        }
        let Some(mut e) = self.shared.table.get_mut(&key.0) else {
            return;
        };
        if e.state.seeded_outage == outage {
            return;
        }
        e.state.seeded_outage = outage;
        let used = e.state.estimate(self.shared.now_ms(), limit.shape) / f64::from(live.max(1));
        let used = (used.ceil() as u32).min(share);
        if let Some(n) = NonZeroU32::new(used) {
            // Fails only when `used` exceeds the bucket, which the `min` rules out.
            let _ = limiter.check_key_n(&key.0, n);
        }
    }
}

/// A keyed GCRA limiter admitting `share` requests per window, in bursts of up to `share`.
fn local_limiter(share: u32, window_ms: u64) -> Fallback {
    let burst = NonZeroU32::new(share).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_millis(window_ms) / burst.get();
    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst);
    let store = KeyedStore::default();
    Fallback {
        share,
        limiter: Arc::new(RateLimiter::new(
            quota,
            store.clone(),
            DefaultClock::default(),
        )),
        store,
    }
}
