//! The per-key sliding-window state and the local decision, as pure functions of time.
//!
//! Redis counts each limit in 20 buckets per window. The sliding estimate at `now` is the
//! sum of the buckets wholly inside the window ending at `now`, plus the oldest, partly
//! inside, weighed by its overlap. Weighing a whole previous window instead (`prev × (1 −
//! f) + curr`) assumes its requests were spread evenly; after a burst that assumption let
//! half the limit again through on a traffic jump. With 20 buckets the assumption only
//! covers one twentieth of the window.
//!
//! A key far below its limit is decided locally and its admits are synced to Redis in
//! batches. A key close to it (by the fleet's projected rate) only admits with tokens leased
//! from Redis, which counts them for every gateway at once: this is what keeps the fleet's
//! over-admission near zero without a round trip per request.

/// Share of capacity under which keys are decided locally.
pub(crate) const LOCAL_FRACTION: f64 = 0.8;
/// Buckets per window in Redis.
pub(crate) const BUCKETS: u64 = 20;
/// Width of the buckets measuring a key's local admit rate.
const RATE_BUCKET_MS: u64 = 10;
/// The shortest sync period (that of keys close to their local threshold) and the longest.
pub(crate) const NEAR_PERIOD_MS: u64 = 50;
const FAR_PERIOD_MS: u64 = 500;
/// Allowance for the round trip to Redis on top of the sync period.
const ROUND_TRIP_MS: u64 = 10;
/// Leases are renewed ahead of need, at most this often per key, when the tokens left would
/// last less than this at the key's rate.
const PREFETCH_EVERY_MS: u64 = 20;
const PREFETCH_AHEAD_MS: f64 = 5.0;

/// How long a key's admits may stay unsynced: the time the fleet, at this gateway's rate,
/// would take to use half the headroom left under the local threshold; between 50 and
/// 500 ms. Far from the threshold syncs are rare (few Redis calls per request); close to
/// it they are frequent (fresh counts where they matter).
pub(crate) fn sync_period_ms(estimate: f64, cap: u64, fleet_rate: f64) -> u64 {
    let headroom = cap as f64 * LOCAL_FRACTION - estimate;
    if headroom <= 0.0 {
        return NEAR_PERIOD_MS;
    }
    if fleet_rate <= 0.0 {
        return FAR_PERIOD_MS;
    }
    ((headroom / fleet_rate / 2.0) as u64).clamp(NEAR_PERIOD_MS, FAR_PERIOD_MS)
}

/// A limit's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// `requests + burst`.
    pub cap: u64,
    pub window_ms: u64,
    /// The width of Redis's buckets, and how many make the window (20, fewer for windows
    /// under 20 ms).
    pub bucket_ms: u64,
    pub buckets: u64,
}

impl Shape {
    pub fn new(cap: u64, window_ms: u64) -> Self {
        let window_ms = window_ms.max(1);
        let bucket_ms = (window_ms / BUCKETS).max(1);
        Self {
            cap,
            window_ms,
            bucket_ms,
            buckets: (window_ms / bucket_ms).max(1),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct KeyState {
    /// The bucket (of the Redis clock) the fleet counts refer to.
    pub bucket: u64,
    /// Fleet counts from the last sync: the buckets wholly in the window, and the oldest
    /// one, partly in it.
    pub full: u64,
    pub oldest: u64,
    /// Local admits not yet synced, per Redis bucket: they are counted in Redis in the
    /// bucket they happened in, not the one they were synced in, or a window would hold
    /// admits from before its start.
    pub pending_buckets: Vec<(u64, u64)>,
    /// Tokens leased at `tokens_at`, counted in Redis already.
    pub tokens: u64,
    tokens_at: u64,
    /// When a lease was last asked for ahead of need.
    prefetch_at: u64,
    /// A lease to ask for without waiting, for the caller of [`KeyState::decide`] to take.
    pub prefetch: u64,
    /// A cached denial: nothing is admitted before this instant (Redis clock, ms).
    pub deny_until: u64,
    /// Local admits per 10 ms bucket: the current bucket and the one before.
    rate_bucket: u64,
    rate_curr: u32,
    rate_prev: u32,
    /// Last time the key was used, to evict idle keys.
    pub last_used: u64,
    /// Whether the key is on the sync task's list of keys with pending admits.
    pub queued: bool,
    /// When the key was last sent to Redis (Redis clock, ms).
    pub synced_at: u64,
    /// The Redis outage this key's failure-mode limiter was last seeded for.
    pub seeded_outage: u32,
    /// Admits made without Redis's answer (see [`KeyState::admit_unconfirmed`]), in
    /// `unconfirmed_window`.
    unconfirmed: u64,
    unconfirmed_window: u64,
    /// Admits made without Redis's answer whose leases are still out. Each is counted once:
    /// by a token of its late lease, or as a pending admit when that lease is refused or
    /// fails ([`KeyState::settle_gave_up`], [`KeyState::owed_to_pending`]). Counting it both
    /// ways refused a limit of 3 at its third request; counting it as pending while a token
    /// of its lease was kept too admitted a third request under a limit of 2.
    owed: u64,
}

/// What the local state decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    /// Admitted; `remaining` is the estimate of what is left in the window.
    Allow { remaining: u64 },
    /// Refused until `until` (Redis clock, ms).
    Deny { until: u64 },
    /// Close to the limit and out of tokens: ask Redis for `want` more.
    Lease { want: u64 },
}

impl KeyState {
    /// The fleet's count over the sliding window ending at `now`, as this gateway knows it.
    /// Between syncs it never undercounts: once the bucket of the last sync has passed,
    /// buckets that may have left the window still count until the next sync.
    pub(crate) fn estimate(&self, now: u64, shape: Shape) -> f64 {
        let k = now / shape.bucket_ms;
        let synced = if k == self.bucket {
            let left = ((k + 1) * shape.bucket_ms - now) as f64 / shape.bucket_ms as f64;
            self.full as f64 + self.oldest as f64 * left
        } else if k < self.bucket + shape.buckets {
            self.full as f64
        } else {
            0.0
        };
        synced + (self.pending() + self.owed) as f64
    }

    /// Leased tokens are used within a quarter window of their lease, or not at all: a
    /// token used later leaves Redis's window that much before its request does, and
    /// unused ones hold room other gateways could use.
    pub(crate) fn expire_tokens(&mut self, now: u64, shape: Shape) {
        if now > self.tokens_at + shape.window_ms / 4 {
            self.tokens = 0;
        }
    }

    fn note_admit(&mut self, now: u64) {
        let bucket = now / RATE_BUCKET_MS;
        if bucket != self.rate_bucket {
            self.rate_prev = if bucket == self.rate_bucket + 1 {
                self.rate_curr
            } else {
                0
            };
            self.rate_curr = 0;
            self.rate_bucket = bucket;
        }
        self.rate_curr += 1;
    }

    /// The fleet's admits per millisecond if every gateway saw this one's rate.
    pub(crate) fn fleet_rate(&self, now: u64, live: u32) -> f64 {
        self.rate(now) * f64::from(live.max(1))
    }

    /// Local admits per millisecond over the last 10–20 ms.
    fn rate(&self, now: u64) -> f64 {
        let bucket = now / RATE_BUCKET_MS;
        let (curr, prev) = match bucket.saturating_sub(self.rate_bucket) {
            0 => (self.rate_curr, self.rate_prev),
            1 => (0, self.rate_curr),
            _ => (0, 0),
        };
        let span = RATE_BUCKET_MS + now % RATE_BUCKET_MS;
        (curr + prev) as f64 / span.max(1) as f64
    }

    /// Decides one request at `now` (Redis clock, ms). `live` is the number of gateways
    /// sharing the limit.
    pub(crate) fn decide(&mut self, now: u64, shape: Shape, live: u32) -> Local {
        self.last_used = now;
        self.expire_tokens(now, shape);
        // Leased tokens are counted in Redis already: they admit even when a later lease
        // found the window full.
        if self.tokens > 0 {
            self.tokens -= 1;
            self.note_admit(now);
            // The tokens left would run out before a lease could come back: the next one
            // is asked for now, so that the requests after the last token do not wait.
            let ahead = (self.rate(now) * PREFETCH_AHEAD_MS).ceil() as u64;
            if self.tokens <= ahead && now >= self.prefetch_at + PREFETCH_EVERY_MS {
                self.prefetch_at = now;
                self.prefetch = lease_want(self.rate(now));
            }
            return Local::Allow {
                remaining: self.remaining(now, shape),
            };
        }
        if now < self.deny_until {
            return Local::Deny {
                until: self.deny_until,
            };
        }
        let est = self.estimate(now, shape);
        // Every gateway is assumed to see this gateway's rate: the fleet could add this much
        // before the next sync shows it.
        let fleet_rate = self.fleet_rate(now, live);
        let horizon_ms = sync_period_ms(est, shape.cap, fleet_rate) + ROUND_TRIP_MS;
        let projected = est + fleet_rate * horizon_ms as f64;
        if projected + 1.0 < shape.cap as f64 * LOCAL_FRACTION {
            self.add_pending(now, shape);
            self.note_admit(now);
            return Local::Allow {
                remaining: self.remaining(now, shape),
            };
        }
        Local::Lease {
            want: lease_want(self.rate(now)),
        }
    }

    /// A lease did not come back in time although Redis is not known to fail. The last known
    /// fleet count decides (it never undercounts what was synced), within an allowance per
    /// window of 1% of the limit shared by the live gateways (at least one each): what the
    /// fleet may admit this way stays within the over-admission goal whatever the count's
    /// age, and a slow round trip under the limit does not turn into a refusal.
    pub(crate) fn admit_unconfirmed(&mut self, now: u64, shape: Shape, live: u32) -> bool {
        let window = now / shape.window_ms;
        if self.unconfirmed_window != window {
            self.unconfirmed_window = window;
            self.unconfirmed = 0;
        }
        // With a fleet of one that Redis has confirmed (`live` is 0 until it has), the count
        // this gateway knows is the whole count and the decision is exact: no allowance, or
        // a small limit would refuse under it whenever two leases in a window came back late.
        let alone = live == 1;
        let live = u64::from(live.max(1));
        let allowance = (shape.cap / 100 / live).max(1);
        // Room for one such admit on every gateway at once.
        let ceiling = shape.cap.saturating_sub(live - 1) as f64;
        let est = self.estimate(now, shape);
        if (!alone && self.unconfirmed >= allowance) || est + 1.0 > ceiling {
            return false;
        }
        self.unconfirmed += 1;
        self.owed += 1;
        self.note_admit(now);
        true
    }

    /// Local admits not yet synced.
    pub(crate) fn pending(&self) -> u64 {
        self.pending_buckets.iter().map(|(_, n)| n).sum()
    }

    fn add_pending(&mut self, now: u64, shape: Shape) {
        let bucket = now / shape.bucket_ms;
        match self.pending_buckets.last_mut() {
            Some((b, n)) if *b == bucket => *n += 1,
            _ => self.pending_buckets.push((bucket, 1)),
        }
    }

    /// Whole requests left in the sliding window after what was admitted: leased tokens
    /// not yet used are counted in Redis already but are still this gateway's to admit.
    pub(crate) fn remaining(&self, now: u64, shape: Shape) -> u64 {
        let used = self.estimate(now, shape) - self.tokens as f64;
        (shape.cap as f64 - used).max(0.0).floor() as u64
    }

    /// Takes one of `granted` leased tokens for the request that asked, keeps the rest.
    pub(crate) fn take_lease(&mut self, now: u64, granted: u64, shape: Shape) {
        self.expire_tokens(now, shape);
        self.tokens += granted.saturating_sub(1);
        self.tokens_at = now;
        self.note_admit(now);
    }

    /// Settles the lease of a request that gave up waiting for it, with the `tokens` it
    /// brought (0 when refused): the first pays for an admit made without an answer, and the
    /// rest are kept for the next requests. Refused, that admit counts as pending instead.
    pub(crate) fn settle_gave_up(&mut self, now: u64, tokens: u64, shape: Shape) {
        self.expire_tokens(now, shape);
        let mut tokens = tokens;
        if self.owed > 0 {
            self.owed -= 1;
            if tokens > 0 {
                tokens -= 1;
            } else {
                self.add_pending(now, shape);
            }
        }
        self.tokens += tokens;
        self.tokens_at = now;
    }

    /// The leases of the admits made without an answer failed: they are counted as pending.
    pub(crate) fn owed_to_pending(&mut self, now: u64, shape: Shape) {
        for _ in 0..std::mem::take(&mut self.owed) {
            self.add_pending(now, shape);
        }
    }

    /// Applies what Redis reported (its clock at `now`). `synced` is what this sync added of
    /// the pending admits, per bucket.
    pub(crate) fn apply_sync(
        &mut self,
        now: u64,
        shape: Shape,
        full: u64,
        oldest: u64,
        synced: &[(u64, u64)],
    ) {
        for (bucket, n) in synced {
            if let Some(p) = self.pending_buckets.iter_mut().find(|(b, _)| b == bucket) {
                p.1 = p.1.saturating_sub(*n);
            }
        }
        self.pending_buckets.retain(|(_, n)| *n > 0);
        self.bucket = now / shape.bucket_ms;
        self.full = full;
        self.oldest = oldest;
    }
}

/// How many tokens to ask for: what this gateway would use, at `rate` per ms, until the
/// next lease could come (at least one). Redis grants at most a share of the window's room
/// per gateway (see the sync script), which shrinks leases toward one as the room runs out,
/// so that no gateway sits on tokens another one needs.
pub(crate) fn lease_want(rate: f64) -> u64 {
    ((rate * NEAR_PERIOD_MS as f64).ceil() as u64).clamp(1, 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 per second: buckets of 50 ms.
    const SHAPE: Shape = Shape {
        cap: 100,
        window_ms: 1000,
        bucket_ms: 50,
        buckets: 20,
    };

    #[test]
    fn shapes_have_twenty_buckets() {
        let s = Shape::new(10, 60_000);
        assert_eq!((s.bucket_ms, s.buckets), (3000, 20));
        let tiny = Shape::new(10, 5);
        assert_eq!((tiny.bucket_ms, tiny.buckets), (1, 5));
    }

    #[test]
    fn the_estimate_decays_the_oldest_bucket_and_never_undercounts() {
        let mut s = KeyState::default();
        s.apply_sync(5000, SHAPE, 60, 40, &[]);
        assert_eq!(s.bucket, 100);
        assert_eq!(
            s.estimate(5000, SHAPE),
            100.0,
            "the oldest bucket wholly in"
        );
        assert_eq!(s.estimate(5025, SHAPE), 80.0, "half of it");
        assert_eq!(
            s.estimate(5060, SHAPE),
            60.0,
            "a later bucket: the oldest is out, the rest kept"
        );
        assert_eq!(
            s.estimate(6100, SHAPE),
            0.0,
            "a window later nothing synced counts"
        );
        s.pending_buckets = vec![(100, 3)];
        assert_eq!(s.estimate(5025, SHAPE), 83.0);
    }

    #[test]
    fn far_below_the_limit_everything_is_local() {
        let mut s = KeyState::default();
        for i in 0..70 {
            // 70 requests spread over the window: about 0.07 per ms locally.
            match s.decide(10_000 + i * 14, SHAPE, 1) {
                Local::Allow { .. } => {}
                other => panic!("request {i}: {other:?}"),
            }
        }
        assert_eq!(s.pending(), 70);
        assert_eq!(s.remaining(10_990, SHAPE), 30);
    }

    #[test]
    fn near_the_limit_admits_need_leased_tokens() {
        let mut s = KeyState::default();
        s.apply_sync(10_100, SHAPE, 85, 0, &[]);
        assert!(matches!(
            s.decide(10_100, SHAPE, 4),
            Local::Lease { want: 1 }
        ));
        s.take_lease(10_100, 3, SHAPE);
        assert_eq!(s.tokens, 2);
        assert!(matches!(s.decide(10_101, SHAPE, 4), Local::Allow { .. }));
        assert!(matches!(s.decide(10_102, SHAPE, 4), Local::Allow { .. }));
        assert!(matches!(s.decide(10_103, SHAPE, 4), Local::Lease { .. }));
    }

    #[test]
    fn leased_tokens_do_not_outlive_a_quarter_window() {
        let mut s = KeyState::default();
        s.apply_sync(10_100, SHAPE, 85, 0, &[]);
        s.take_lease(10_100, 5, SHAPE);
        assert!(matches!(s.decide(10_340, SHAPE, 1), Local::Allow { .. }));
        assert!(
            matches!(s.decide(10_360, SHAPE, 1), Local::Lease { .. }),
            "260 ms on"
        );
        assert_eq!(s.tokens, 0);
    }

    #[test]
    fn a_fast_local_rate_switches_to_leases_before_the_threshold() {
        let mut s = KeyState::default();
        let mut local = 0;
        // 40 requests in 4 ms with 4 gateways: the fleet could add thousands before the next
        // sync, far over the limit, so leasing starts almost at once.
        for i in 0..40 {
            if let Local::Allow { .. } = s.decide(20_000 + i / 10, SHAPE, 4) {
                local += 1;
            }
        }
        assert!(local <= 5, "{local} admitted locally");
    }

    #[test]
    fn a_cached_denial_refuses_without_asking() {
        let mut s = KeyState {
            deny_until: 3511,
            ..KeyState::default()
        };
        assert_eq!(s.decide(3505, SHAPE, 1), Local::Deny { until: 3511 });
        assert!(
            matches!(s.decide(3511, SHAPE, 1), Local::Allow { .. }),
            "room again"
        );
    }

    #[test]
    fn admits_without_an_answer_stay_within_one_percent() {
        let shape = Shape::new(1000, 1000);
        let mut s = KeyState::default();
        let admitted = (0..50)
            .filter(|i| s.admit_unconfirmed(5000 + i, shape, 4))
            .count();
        assert_eq!(admitted, 2, "1% of 1000 shared by 4 gateways");
        assert!(
            s.admit_unconfirmed(6000, shape, 4),
            "a new window, a new allowance"
        );
        let mut near = KeyState::default();
        near.apply_sync(7100, shape, 950, 0, &[]);
        assert!(
            near.admit_unconfirmed(7100, shape, 1),
            "room left: admitted"
        );
        let mut full = KeyState::default();
        full.apply_sync(7100, shape, 1000, 0, &[]);
        assert!(
            !full.admit_unconfirmed(7100, shape, 1),
            "a full window refuses"
        );
        let mut small = KeyState::default();
        assert_eq!(
            (0..5)
                .filter(|i| small.admit_unconfirmed(i * 10, SHAPE, 4))
                .count(),
            1,
            "100 shared by 4: one per window"
        );
        let mut unknown = KeyState::default();
        assert_eq!(
            (0..5)
                .filter(|i| unknown.admit_unconfirmed(i * 10, SHAPE, 0))
                .count(),
            1,
            "a fleet not yet counted: the allowance of one gateway"
        );
        let small_cap = Shape::new(3, 10_000);
        let mut confirmed = KeyState::default();
        assert_eq!(
            (0..5)
                .filter(|i| confirmed.admit_unconfirmed(i * 10, small_cap, 1))
                .count(),
            3,
            "a confirmed fleet of one: exact, up to the limit and no further"
        );
        let mut alone = KeyState::default();
        alone.apply_sync(7100, SHAPE, 99, 0, &[]);
        assert!(
            alone.admit_unconfirmed(7100, SHAPE, 1),
            "one gateway: exact"
        );
        let mut shared = KeyState::default();
        shared.apply_sync(7100, SHAPE, 97, 0, &[]);
        assert!(
            !shared.admit_unconfirmed(7100, SHAPE, 4),
            "4 gateways: room for 4 needed"
        );
        // The lease it gave up on comes back late with two tokens: one pays for the admit,
        // which is not sent as pending, and one is the next request's.
        assert_eq!(alone.pending(), 0);
        alone.settle_gave_up(7101, 2, SHAPE);
        assert_eq!((alone.tokens, alone.pending()), (1, 0));
        // Refused, or failed: the admit is counted as pending, once.
        let mut refused = KeyState::default();
        assert!(refused.admit_unconfirmed(7100, SHAPE, 1));
        refused.settle_gave_up(7101, 0, SHAPE);
        assert_eq!((refused.tokens, refused.pending()), (0, 1));
        refused.settle_gave_up(7102, 1, SHAPE);
        assert_eq!(refused.tokens, 1, "nothing owed: a late token is kept");
        let mut failed = KeyState::default();
        assert!(failed.admit_unconfirmed(7100, SHAPE, 1));
        assert!(failed.admit_unconfirmed(7100, SHAPE, 1));
        assert_eq!(
            failed.estimate(7100, SHAPE),
            2.0,
            "owed admits count locally"
        );
        failed.owed_to_pending(7101, SHAPE);
        assert_eq!(failed.pending(), 2);
        assert_eq!(failed.estimate(7101, SHAPE), 2.0);
    }

    #[test]
    fn leases_are_renewed_before_the_tokens_run_out() {
        let mut s = KeyState::default();
        s.apply_sync(10_100, SHAPE, 50, 0, &[]);
        s.take_lease(10_100, 10, SHAPE);
        // One request per ms: the tokens left must last 5 ms.
        let mut asked_with = None;
        for i in 1..10 {
            s.decide(10_100 + i, SHAPE, 1);
            if s.prefetch > 0 && asked_with.is_none() {
                asked_with = Some(s.tokens);
                s.prefetch = 0;
            }
        }
        let left = asked_with.expect("a lease asked for ahead of need");
        assert!((1..=3).contains(&left), "asked with {left} tokens left");
        s.take_lease(10_110, 2, SHAPE);
        s.decide(10_111, SHAPE, 1);
        assert_eq!(s.prefetch, 0, "at most one lease ahead of need per 20 ms");
    }

    #[test]
    fn sync_periods_follow_the_headroom() {
        assert_eq!(sync_period_ms(0.0, 1000, 0.0), 500, "idle: rare syncs");
        assert_eq!(
            sync_period_ms(500.0, 10_000, 5.0),
            500,
            "7500 of headroom at 5 per ms"
        );
        assert_eq!(sync_period_ms(300.0, 1000, 3.0), 83);
        assert_eq!(sync_period_ms(790.0, 1000, 0.1), 50);
        assert_eq!(sync_period_ms(900.0, 1000, 0.1), 50);
    }

    #[test]
    fn leases_ask_for_what_the_next_50_ms_need() {
        assert_eq!(lease_want(0.0), 1);
        assert_eq!(lease_want(0.237), 12);
        assert_eq!(lease_want(1e6), 1000);
    }

    #[test]
    fn syncs_replace_the_fleet_counts_and_drain_pending() {
        let mut s = KeyState::default();
        for i in 0..10 {
            s.decide(50_000 + i * 50, SHAPE, 1);
        }
        assert_eq!(s.pending(), 10);
        assert_eq!(s.pending_buckets.len(), 10, "one admit per 50 ms bucket");
        let sent = s.pending_buckets.clone();
        s.decide(50_590, SHAPE, 1);
        s.apply_sync(50_600, SHAPE, 42, 30, &sent);
        assert_eq!(
            (s.pending(), s.full, s.oldest),
            (1, 42, 30),
            "the admit during the sync stays"
        );
        assert_eq!(s.pending_buckets, [(1011, 1)]);
        s.pending_buckets.clear();
        assert_eq!(s.estimate(50_600, SHAPE), 72.0);
    }
}
