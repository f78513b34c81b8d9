//! Choosing where a request goes: a backend by weight, then an endpoint of that backend.
//!
//! The weighted choice is a smooth weighted round-robin computed once per config into a
//! schedule, so picking is one atomic increment: exact shares over every cycle, no lock, and
//! the interleaving spreads a 90/10 split as 9 to 1 rather than 9 in a row.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use weir_controller::model::Endpoint;

/// Longest schedule kept; larger weight sums are scaled down to it (an error of at most
/// 1/MAX_SLOTS of traffic per backend).
const MAX_SLOTS: u64 = 10_000;

#[derive(Debug)]
pub struct WeightedSchedule {
    slots: Box<[u32]>,
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
        Some(Self {
            slots: slots.into_boxed_slice(),
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

/// The endpoints of one backend, by readiness. Ready endpoints take traffic; when none is
/// ready, serving-but-terminating ones do (as kube-proxy falls back), so a rollout's last
/// pods still answer.
#[derive(Debug)]
pub struct EndpointSet {
    ready: Box<[SocketAddr]>,
    fallback: Box<[SocketAddr]>,
    next: AtomicUsize,
}

impl EndpointSet {
    pub fn new(endpoints: &[Endpoint]) -> Self {
        let addr = |e: &Endpoint| SocketAddr::new(e.address, e.port);
        Self {
            ready: endpoints.iter().filter(|e| e.ready).map(addr).collect(),
            fallback: endpoints
                .iter()
                .filter(|e| !e.ready && e.serving && e.terminating)
                .map(addr)
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    fn usable(&self) -> &[SocketAddr] {
        if self.ready.is_empty() {
            &self.fallback
        } else {
            &self.ready
        }
    }

    /// Round-robin over the usable endpoints, skipping `avoid` (an endpoint that just failed)
    /// when there is another choice.
    pub fn pick(&self, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        let list = self.usable();
        if list.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let first = list[n % list.len()];
        if Some(first) == avoid && list.len() > 1 {
            return Some(list[(n + 1) % list.len()]);
        }
        Some(first)
    }

    pub fn is_empty(&self) -> bool {
        self.usable().is_empty()
    }
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
    fn huge_weights_are_scaled_within_a_hundredth_of_a_percent() {
        let c = shares(&[999_999, 1, 500_000], 10_000);
        assert!(c[1] >= 1, "a tiny weight still gets traffic");
        assert!((c[0] as i64 - 6666).abs() <= 2, "{c:?}");
        assert!((c[2] as i64 - 3333).abs() <= 2, "{c:?}");
    }

    #[test]
    fn endpoints_fall_back_to_terminating_and_avoid_failures() {
        let ep = |last: u8, ready, serving, terminating| Endpoint {
            address: format!("10.0.0.{last}").parse().unwrap(),
            port: 80,
            zone: None,
            ready,
            serving,
            terminating,
        };
        let set = EndpointSet::new(&[
            ep(1, true, true, false),
            ep(2, true, true, false),
            ep(3, false, true, true),
        ]);
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        for _ in 0..4 {
            assert_ne!(set.pick(Some(a)), Some(a));
        }
        let draining = EndpointSet::new(&[ep(3, false, true, true), ep(4, false, false, false)]);
        assert_eq!(draining.pick(None), Some("10.0.0.3:80".parse().unwrap()));
        assert!(
            EndpointSet::new(&[ep(4, false, false, false)])
                .pick(None)
                .is_none()
        );
    }
}
