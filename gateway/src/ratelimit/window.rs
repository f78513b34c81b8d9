//! The per-key sliding-window state and the local decision, as pure functions of time.
//!
//! Counts live in fixed windows (as in Redis); the estimate over the sliding window weighs
//! the previous window by how much of it still overlaps: `prev × (1 − f) + curr`, `f` being
//! the elapsed fraction of the current window. That removes the 2× burst a fixed window
//! lets through at its edge.
//!
//! A key far below its limit is decided locally and its admits are synced to Redis in
//! batches. A key close to it (by the fleet's projected rate) only admits with tokens leased
//! from Redis, which counts them for every gateway at once: this is what keeps the fleet's
//! over-admission near zero without a round trip per request.

/// Share of capacity under which keys are decided locally.
pub(crate) const LOCAL_FRACTION: f64 = 0.8;
/// Width of the buckets measuring a key's local admit rate.
const RATE_BUCKET_MS: u64 = 10;
/// The sync period of keys close to their limit.
pub(crate) const NEAR_PERIOD_MS: u64 = 50;
/// The sync period of keys under half their limit: their counts can be staler, and fewer
/// rounds mean fewer Redis calls per request.
const FAR_PERIOD_MS: u64 = 200;
/// Allowance for the round trip to Redis on top of the sync period.
const ROUND_TRIP_MS: u64 = 10;

/// How long a key's admits may stay unsynced: short near the limit, longer far below it.
pub(crate) fn sync_period_ms(estimate: f64, cap: u64) -> u64 {
    if estimate < cap as f64 * 0.5 {
        FAR_PERIOD_MS
    } else {
        NEAR_PERIOD_MS
    }
}

/// A limit's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// `requests + burst`.
    pub cap: u64,
    pub window_ms: u64,
}

#[derive(Debug, Default)]
pub(crate) struct KeyState {
    /// Window index (of the Redis clock) the counts refer to.
    pub window: u64,
    /// Fleet counts from the last sync, for `window - 1` and `window`.
    pub prev: u64,
    pub curr: u64,
    /// Local admits not yet synced, counted in `pending_window`.
    pub pending: u64,
    pub pending_window: u64,
    /// Tokens leased for `window`, counted in Redis already.
    pub tokens: u64,
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
    /// Moves the state to the window containing `now`. Leased tokens belong to the window
    /// they were counted in and are dropped with it (a few wasted tokens, never extra ones).
    pub(crate) fn roll(&mut self, now: u64, window_ms: u64) {
        let n = now / window_ms;
        if n == self.window {
            return;
        }
        if n == self.window + 1 {
            self.prev = self.curr;
        } else {
            self.prev = 0;
        }
        self.curr = 0;
        self.window = n;
        self.tokens = 0;
    }

    /// The fleet's count over the sliding window ending at `now`, as this gateway knows it.
    pub(crate) fn estimate(&self, now: u64, window_ms: u64) -> f64 {
        let f = (now % window_ms) as f64 / window_ms as f64;
        let (mut prev, mut curr) = (self.prev as f64, self.curr as f64);
        if self.pending > 0 {
            if self.pending_window == self.window {
                curr += self.pending as f64;
            } else if self.pending_window + 1 == self.window {
                prev += self.pending as f64;
            }
        }
        prev * (1.0 - f) + curr
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
        self.roll(now, shape.window_ms);
        // Leased tokens are counted in Redis already: they admit even when a later lease
        // found the window full.
        if self.tokens > 0 {
            self.tokens -= 1;
            self.note_admit(now);
            return Local::Allow {
                remaining: self.remaining(now, shape),
            };
        }
        if now < self.deny_until {
            return Local::Deny {
                until: self.deny_until,
            };
        }
        let est = self.estimate(now, shape.window_ms);
        // Every gateway is assumed to see this gateway's rate: the fleet could add this much
        // before the next sync shows it.
        let horizon_ms = sync_period_ms(est, shape.cap) + ROUND_TRIP_MS;
        let projected = est + self.rate(now) * f64::from(live.max(1)) * horizon_ms as f64;
        if projected + 1.0 < shape.cap as f64 * LOCAL_FRACTION {
            self.add_pending();
            self.note_admit(now);
            return Local::Allow {
                remaining: self.remaining(now, shape),
            };
        }
        Local::Lease {
            want: lease_size(shape.cap as f64 - est, live),
        }
    }

    /// A lease did not come back in time although Redis is not known to fail. Below the
    /// local threshold the last known fleet count decides, within an allowance per window
    /// of 1% of the limit shared by the live gateways (at least one each): what the fleet
    /// may admit this way stays within the over-admission goal whatever the count's age.
    /// Near the limit only Redis admits: a refusal costs one request, an admit the limit.
    pub(crate) fn admit_unconfirmed(&mut self, now: u64, shape: Shape, live: u32) -> bool {
        self.roll(now, shape.window_ms);
        if self.unconfirmed_window != self.window {
            self.unconfirmed_window = self.window;
            self.unconfirmed = 0;
        }
        let allowance = (shape.cap / 100 / u64::from(live.max(1))).max(1);
        let est = self.estimate(now, shape.window_ms);
        if self.unconfirmed >= allowance || est + 1.0 >= shape.cap as f64 * LOCAL_FRACTION {
            return false;
        }
        self.unconfirmed += 1;
        self.add_pending();
        self.note_admit(now);
        true
    }

    /// Whole requests left in the sliding window after what was admitted: leased tokens
    /// not yet used are counted in Redis already but are still this gateway's to admit.
    pub(crate) fn remaining(&self, now: u64, shape: Shape) -> u64 {
        let used = self.estimate(now, shape.window_ms) - self.tokens as f64;
        (shape.cap as f64 - used).max(0.0).floor() as u64
    }

    fn add_pending(&mut self) {
        if self.pending > 0 && self.pending_window != self.window {
            // Admits of an older window not yet synced: keep counting them where they
            // happened; the sync sends them with their window.
            return self.pending += 1;
        }
        self.pending_window = self.window;
        self.pending += 1;
    }

    /// Takes one of `granted` leased tokens for the request that asked, keeps the rest.
    pub(crate) fn take_lease(&mut self, now: u64, granted: u64, window_ms: u64) {
        self.roll(now, window_ms);
        self.tokens += granted.saturating_sub(1);
        self.note_admit(now);
    }

    /// Applies what Redis reported for `window` (its clock at `now`). `synced` is what this
    /// sync added of the pending admits.
    pub(crate) fn apply_sync(
        &mut self,
        now: u64,
        window_ms: u64,
        window: u64,
        prev: u64,
        curr: u64,
        synced: u64,
    ) {
        self.pending = self.pending.saturating_sub(synced);
        self.roll(now, window_ms);
        if window == self.window {
            self.prev = prev;
            self.curr = curr;
        } else if window + 1 == self.window {
            self.prev = curr;
        }
    }

    /// After Redis granted nothing: refuse locally until the sliding estimate has room for
    /// one more request, or until the window moves on.
    pub(crate) fn deny_until_room(&mut self, now: u64, shape: Shape) -> u64 {
        self.roll(now, shape.window_ms);
        let w = shape.window_ms as f64;
        let window_end = (self.window + 1) * shape.window_ms;
        let cap = shape.cap as f64;
        let until = if (self.curr as f64) + 1.0 <= cap && self.prev > 0 {
            // prev × (1 − f) + curr ≤ cap − 1  ⇔  f ≥ 1 − (cap − 1 − curr) / prev
            let f = 1.0 - (cap - 1.0 - self.curr as f64) / self.prev as f64;
            let at = self.window * shape.window_ms + (f.clamp(0.0, 1.0) * w).ceil() as u64;
            at.clamp(now + 1, window_end)
        } else {
            window_end
        };
        self.deny_until = until;
        until
    }
}

/// How many tokens to ask for with `room` left in the window: a share of the room per
/// gateway, shrinking toward one as the room runs out, so that no gateway sits on tokens
/// another one needs.
pub(crate) fn lease_size(room: f64, live: u32) -> u64 {
    let share = room / (2.0 * f64::from(live.max(1)));
    (share.floor() as u64).clamp(1, 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        cap: 100,
        window_ms: 1000,
    };

    #[test]
    fn the_sliding_estimate_weighs_the_previous_window() {
        let mut s = KeyState {
            window: 5,
            prev: 100,
            curr: 20,
            ..KeyState::default()
        };
        assert_eq!(s.estimate(5000, 1000), 120.0);
        assert_eq!(s.estimate(5250, 1000), 95.0);
        assert_eq!(s.estimate(5999, 1000), 20.0 + 0.1);
        s.roll(6100, 1000);
        assert_eq!((s.window, s.prev, s.curr), (6, 20, 0));
        s.roll(9000, 1000);
        assert_eq!((s.prev, s.curr), (0, 0));
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
        assert_eq!(s.pending, 70);
        assert_eq!(s.pending_window, 10);
        assert_eq!(s.remaining(10_990, SHAPE), 30);
    }

    #[test]
    fn near_the_limit_admits_need_leased_tokens() {
        let mut s = KeyState {
            window: 10,
            curr: 85,
            ..KeyState::default()
        };
        assert!(matches!(
            s.decide(10_100, SHAPE, 4),
            Local::Lease { want: 1 }
        ));
        s.take_lease(10_100, 3, 1000);
        assert_eq!(s.tokens, 2);
        assert!(matches!(s.decide(10_101, SHAPE, 4), Local::Allow { .. }));
        assert!(matches!(s.decide(10_102, SHAPE, 4), Local::Allow { .. }));
        assert!(matches!(s.decide(10_103, SHAPE, 4), Local::Lease { .. }));
    }

    #[test]
    fn a_fast_local_rate_switches_to_leases_before_the_threshold() {
        let mut s = KeyState::default();
        let mut local = 0;
        // 40 requests in 4 ms with 4 gateways: the fleet could add ~2000 before the next
        // sync, far over the limit, so leasing starts almost at once.
        for i in 0..40 {
            if let Local::Allow { .. } = s.decide(20_000 + i / 10, SHAPE, 4) {
                local += 1;
            }
        }
        assert!(local < 5, "{local} admitted locally");
    }

    #[test]
    fn denials_last_until_there_is_room() {
        let mut s = KeyState {
            window: 3,
            prev: 100,
            curr: 50,
            ..KeyState::default()
        };
        // At f = 0.5 the estimate is 100: room for one more once f ≥ 0.51.
        let until = s.deny_until_room(3500, SHAPE);
        assert_eq!(until, 3510);
        assert!(matches!(
            s.decide(3505, SHAPE, 1),
            Local::Deny { until: 3510 }
        ));
        // A full current window: refused until it ends.
        let mut full = KeyState {
            window: 3,
            curr: 100,
            ..KeyState::default()
        };
        assert_eq!(full.deny_until_room(3200, SHAPE), 4000);
    }

    #[test]
    fn admits_without_an_answer_stay_within_one_percent() {
        let shape = Shape {
            cap: 1000,
            window_ms: 1000,
        };
        let mut s = KeyState::default();
        let admitted = (0..50)
            .filter(|i| s.admit_unconfirmed(5000 + i, shape, 4))
            .count();
        assert_eq!(admitted, 2, "1% of 1000 shared by 4 gateways");
        assert!(
            s.admit_unconfirmed(6000, shape, 4),
            "a new window, a new allowance"
        );
        let mut near = KeyState {
            window: 7,
            curr: 800,
            ..KeyState::default()
        };
        assert!(
            !near.admit_unconfirmed(7100, shape, 1),
            "near the limit only Redis admits"
        );
        let mut small = KeyState::default();
        assert_eq!(
            (0..5)
                .filter(|i| small.admit_unconfirmed(i * 10, SHAPE, 4))
                .count(),
            1
        );
    }

    #[test]
    fn leases_shrink_toward_one() {
        assert_eq!(lease_size(80.0, 4), 10);
        assert_eq!(lease_size(7.0, 4), 1);
        assert_eq!(lease_size(0.5, 1), 1);
        assert_eq!(lease_size(1e9, 1), 1000);
    }

    #[test]
    fn syncs_replace_the_fleet_counts_and_drain_pending() {
        let mut s = KeyState::default();
        for i in 0..10 {
            s.decide(50_000 + i * 50, SHAPE, 1);
        }
        assert_eq!(s.pending, 10);
        s.apply_sync(50_600, 1000, 50, 30, 42, 10);
        assert_eq!((s.pending, s.prev, s.curr), (0, 30, 42));
        assert_eq!(s.estimate(50_600, 1000), 30.0 * 0.4 + 42.0);
    }
}
