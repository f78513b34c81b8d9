//! The weighted choice of a backend (and of a zone, when a gateway spills across zones).
//!
//! The choice is a smooth weighted round-robin computed once per config into a
//! schedule, so picking is one atomic increment: exact shares over every cycle, no lock, and
//! the interleaving spreads a 90/10 split as 9 to 1 rather than 9 in a row.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest schedule kept; larger weight sums are scaled down to it (an error of at most
/// 1/MAX_SLOTS of traffic per backend).
const MAX_SLOTS: u64 = 10_000;

#[derive(Debug)]
pub struct WeightedSchedule {
    slots: Box<[u32]>,
    /// Running sums of the scaled weights, for [`Self::pick_hashed`].
    cumulative: Box<[u64]>,
    next: AtomicUsize,
}

impl WeightedSchedule {
    /// `None` when every weight is zero: nothing may be chosen.
    pub fn new(weights: &[u32]) -> Option<Self> {
        let weights = scaled(weights)?;
        let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut slots = Vec::with_capacity(total as usize);
        for _ in 0..total {
            // Smooth WRR (as nginx): everyone gains its weight, the leader pays the total.
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += i64::from(*w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            slots.push(best as u32);
        }
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, w| {
                *sum += u64::from(*w);
                Some(*sum)
            })
            .collect();
        Some(Self {
            slots: slots.into_boxed_slice(),
            cumulative,
            next: AtomicUsize::new(0),
        })
    }

    pub fn pick(&self) -> usize {
        if self.slots.len() == 1 {
            return self.slots[0] as usize;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.slots[n % self.slots.len()] as usize
    }

    /// The choice for a hashed request key: the key's point on the weight line, with the
    /// choices laid out in order. Raising one weight and lowering another only moves the
    /// points on the boundary between them, so a cohort moves one way only (stable →
    /// canary as the canary grows) and a user never flips back and forth.
    pub fn pick_hashed(&self, hash: u64) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1);
        // Multiply-shift maps the hash onto [0, total) without modulo bias.
        let point = ((u128::from(hash) * u128::from(total)) >> 64) as u64;
        self.cumulative.partition_point(|&c| c <= point)
    }

    pub fn cycle_len(&self) -> usize {
        self.slots.len()
    }
}

/// Weights divided by their gcd, then scaled to at most MAX_SLOTS with largest remainders.
fn scaled(weights: &[u32]) -> Option<Vec<u32>> {
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w));
    if g == 0 {
        return None;
    }
    let reduced: Vec<u64> = weights.iter().map(|w| u64::from(w / g)).collect();
    let total: u64 = reduced.iter().sum();
    if total <= MAX_SLOTS {
        return Some(reduced.iter().map(|w| *w as u32).collect());
    }
    let mut out: Vec<u32> = reduced
        .iter()
        .map(|w| (w * MAX_SLOTS / total) as u32)
        .collect();
    let mut rest: Vec<(u64, usize)> = reduced
        .iter()
        .enumerate()
        .map(|(i, w)| (w * MAX_SLOTS % total, i))
        .collect();
    rest.sort_by(|a, b| b.cmp(a));
    let short = MAX_SLOTS - out.iter().map(|w| u64::from(*w)).sum::<u64>();
    for (_, i) in rest.into_iter().take(short as usize) {
        out[i] += 1;
    }
    // A tiny non-zero weight must not vanish.
    for (o, w) in out.iter_mut().zip(&reduced) {
        if *w > 0 && *o == 0 {
            *o = 1;
        }
    }
    Some(out)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u32], n: usize) -> Vec<usize> {
        let s = WeightedSchedule::new(weights).unwrap();
        let mut counts = vec![0; weights.len()];
        for _ in 0..n {
            counts[s.pick()] += 1;
        }
        counts
    }

    #[test]
    fn shares_are_exact_over_a_cycle_and_smooth() {
        assert_eq!(shares(&[90, 10], 10_000), [9000, 1000]);
        assert_eq!(shares(&[1, 0, 1], 10), [5, 0, 5]);
        assert_eq!(shares(&[3], 7), [7]);
        let s = WeightedSchedule::new(&[90, 10]).unwrap();
        assert_eq!(s.cycle_len(), 10, "reduced by the gcd");
        let first: Vec<usize> = (0..10).map(|_| s.pick()).collect();
        assert_eq!(first.iter().filter(|&&i| i == 1).count(), 1);
        assert!(WeightedSchedule::new(&[0, 0]).is_none());
    }

    #[test]
    fn hashed_picks_follow_weights_and_only_move_towards_the_grown_choice() {
        let keys: Vec<u64> = (0..20_000u64)
            .map(|k| xxhash_rust::xxh3::xxh3_64(&k.to_le_bytes()))
            .collect();
        let assign = |w: &[u32]| -> Vec<usize> {
            let s = WeightedSchedule::new(w).unwrap();
            keys.iter().map(|&h| s.pick_hashed(h)).collect()
        };
        let before = assign(&[90, 10]);
        let canary = before.iter().filter(|&&c| c == 1).count();
        assert!((canary as i64 - 2000).abs() < 150, "{canary}");
        let after = assign(&[70, 30]);
        for (b, a) in before.iter().zip(&after) {
            assert!(!(*b == 1 && *a == 0), "a canary user went back to stable");
        }
        let canary = after.iter().filter(|&&c| c == 1).count();
        assert!((canary as i64 - 6000).abs() < 250, "{canary}");
        assert!(
            assign(&[1, 0]).iter().all(|&c| c == 0),
            "weight 0 gets no key"
        );
        assert!(assign(&[0, 5, 0]).iter().all(|&c| c == 1));
    }

    #[test]
    fn huge_weights_are_scaled_within_a_hundredth_of_a_percent() {
        let c = shares(&[999_999, 1, 500_000], 10_000);
        assert!(c[1] >= 1, "a tiny weight still gets traffic");
        assert!((c[0] as i64 - 6666).abs() <= 2, "{c:?}");
        assert!((c[2] as i64 - 3333).abs() <= 2, "{c:?}");
    }
}
