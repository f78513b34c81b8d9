//! The keys each RateLimitPolicy tracks, bounded. A client picks its own key (a header
//! value, its address), so without a bound a flood of distinct keys would grow the
//! limiter's per-key state without end.
//!
//! A policy tracks at most `cap` keys, its limits together. When a new key would pass the
//! cap, the least recently used key is forgotten: its counts here, and its failure-mode
//! state, are dropped (its pending admits still reach Redis, see `Shared::forget`).
//! Recency, not age, decides, because age alone would forget a busy tenant's count in the
//! middle of its window whenever a flood of new keys arrived, letting it start over; a key
//! used while the flood passes keeps its count exact.
//!
//! Recency is kept as CLOCK (second chance) does, an approximation of LRU under which a
//! use costs one map lookup and at most one flag store, where exact LRU would take a lock
//! shared by every request to move the key to the front. Keys wait in a ring in the order
//! they came; a new key past the cap moves the hand: it takes the oldest, and one used
//! since the hand last passed it goes round again with its flag cleared, while one not used
//! is forgotten. Each step of the hand clears a flag that a request set or forgets a key
//! that a request added, so the cost per request is O(1) amortized, and a key used at least
//! once per `cap` new keys is never forgotten.

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use parking_lot::Mutex;
use prometheus::IntCounter;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Keys a policy tracks unless `--rate-limit-max-keys` says otherwise. A tracked key costs
/// about 1 KB with Redis (its sliding-window state) and about 0.1 KB without (measured by
/// `tests/ratelimit_keys.rs` with the cap lifted), so at most ~100 MB or ~10 MB per policy.
/// It is meant to sit well above the keys active at once, so that only a flood meets it.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The keys of one policy.
pub(crate) struct Tracked {
    slots: DashMap<u64, Slot>,
    /// Every tracked key once, oldest first: the hand is at the front.
    ring: Mutex<VecDeque<u64>>,
    cap: usize,
    evictions: IntCounter,
}

struct Slot {
    /// The limit the key counts for, whose failure-mode limiter holds its state.
    limit: u64,
    /// Used since the hand last passed it.
    used: AtomicBool,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("keys", &self.slots.len())
            .field("cap", &self.cap)
            .finish()
    }
}

impl Tracked {
    pub(crate) fn new(cap: usize, evictions: IntCounter) -> Self {
        Self {
            slots: DashMap::new(),
            ring: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            evictions,
        }
    }

    /// Notes a use of `key`, a key of limit `limit`. A new key that passes the cap first
    /// makes room: `forget(key, limit)` drops an old key's state and says whether it had
    /// any (only those count as evictions). It runs with the ring locked, so it must not
    /// call back here, and the caller must hold no lock that `forget` takes.
    pub(crate) fn touch(&self, key: u64, limit: u64, forget: impl FnMut(u64, u64) -> bool) {
        if let Some(slot) = self.slots.get(&key) {
            // Read first: a key in steady use does not write its cache line again.
            if !slot.used.load(Ordering::Relaxed) {
                slot.used.store(true, Ordering::Relaxed);
            }
            return;
        }
        self.add(key, limit, forget);
    }

    #[cold]
    fn add(&self, key: u64, limit: u64, mut forget: impl FnMut(u64, u64) -> bool) {
        match self.slots.entry(key) {
            // Another request added it meanwhile.
            Entry::Occupied(_) => return,
            Entry::Vacant(v) => {
                v.insert(Slot {
                    limit,
                    used: AtomicBool::new(false),
                });
            }
        }
        let mut ring = self.ring.lock();
        // Room is made before the new key joins, so that the hand never takes it: a key
        // forgotten before its first decision would leave state no ring holds.
        let mut chances = ring.len();
        while ring.len() >= self.cap {
            let Some(old) = ring.pop_front() else { break };
            // The guard ends with the statement: `remove` locks the same shard.
            let used = self
                .slots
                .get(&old)
                .is_some_and(|s| s.used.swap(false, Ordering::Relaxed));
            // One lap at most: requests setting flags meanwhile cannot keep the hand going.
            if used && chances > 0 {
                chances -= 1;
                ring.push_back(old);
            } else if let Some((_, slot)) = self.slots.remove(&old)
                && forget(old, slot.limit)
            {
                self.evictions.inc();
            }
        }
        ring.push_back(key);
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

/// The per-key state of a failure-mode limiter (governor's own store, shared), so that a
/// key can be forgotten: governor alone only drops keys whose state is back to fresh, which
/// for a long window is long after a flood.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyedStore(Arc<DashMapStateStore<u64>>);

impl KeyedStore {
    /// Drops a key's state; true when it had one.
    pub(crate) fn forget(&self, key: u64) -> bool {
        self.0.remove(&key).is_some()
    }
}

impl StateStore for KeyedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for KeyedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.0, drop_below);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(cap: usize) -> Tracked {
        Tracked::new(cap, IntCounter::new("evictions", "test").unwrap())
    }

    /// Touches `key`, returning the keys forgotten to make room.
    fn touch(t: &Tracked, key: u64) -> Vec<u64> {
        let mut gone = Vec::new();
        t.touch(key, 7, |k, limit| {
            assert_eq!(limit, 7);
            gone.push(k);
            true
        });
        gone
    }

    #[test]
    fn the_oldest_unused_keys_make_room() {
        let t = tracked(3);
        for k in 1..=3 {
            assert!(touch(&t, k).is_empty());
        }
        assert_eq!(touch(&t, 4), [1]);
        assert_eq!(touch(&t, 5), [2]);
        assert_eq!((t.len(), t.evictions.get()), (3, 2));
    }

    #[test]
    fn a_key_in_use_outlives_a_flood() {
        let t = tracked(4);
        touch(&t, 0);
        let mut gone = Vec::new();
        for k in 1..10_000 {
            gone.extend(touch(&t, k));
            // Used once per three new keys: within the cap of four.
            if k % 3 == 0 {
                assert!(touch(&t, 0).is_empty());
            }
        }
        assert!(!gone.contains(&0));
        assert_eq!(gone.len(), 10_000 - 4);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn when_every_key_is_in_use_the_oldest_goes_after_one_lap() {
        let t = tracked(3);
        for k in [1, 2, 3, 1, 2, 3] {
            touch(&t, k);
        }
        assert_eq!(touch(&t, 4), [1]);
        assert_eq!(touch(&t, 5), [2], "the flags were cleared by the lap");
    }

    #[test]
    fn only_keys_that_held_state_count_as_evictions() {
        let t = tracked(1);
        touch(&t, 1);
        t.touch(2, 7, |_, _| false);
        assert_eq!((t.len(), t.evictions.get()), (1, 0));
    }

    #[test]
    fn forgotten_keys_leave_the_failure_mode_store() {
        let f = super::super::local_limiter(1, 60_000);
        assert!(f.limiter.check_key(&1).is_ok());
        assert!(f.limiter.check_key(&1).is_err());
        assert!(f.store.forget(1));
        assert!(!f.store.forget(1));
        assert!(
            f.limiter.check_key(&1).is_ok(),
            "a forgotten key starts over"
        );
    }
}
