//! The circuit breaker in front of Redis. It opens on the third failure in a row, or at once
//! when a call took the whole timeout (100 ms): a slow Redis must not become the outage. While
//! open, the limiter applies the policy's failure mode without calling Redis, and the sync
//! task probes Redis every 200 ms, so its return is noticed well within a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(crate) const FAILURES_TO_OPEN: u32 = 3;
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub(crate) struct Breaker {
    /// Read on the request path; written only by the sync task.
    open: Arc<AtomicBool>,
    failures: u32,
    last_probe: Option<Instant>,
}

/// What a failure did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tripped {
    Opened,
    StillClosed,
    AlreadyOpen,
}

impl Breaker {
    pub(crate) fn new(open: Arc<AtomicBool>) -> Self {
        Self {
            open,
            failures: 0,
            last_probe: None,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// A call failed; `timed_out` if it used up the whole timeout.
    pub(crate) fn failure(&mut self, timed_out: bool) -> Tripped {
        if self.is_open() {
            return Tripped::AlreadyOpen;
        }
        self.failures += 1;
        if timed_out || self.failures >= FAILURES_TO_OPEN {
            self.open.store(true, Ordering::Relaxed);
            self.last_probe = Some(Instant::now());
            Tripped::Opened
        } else {
            Tripped::StillClosed
        }
    }

    /// A call succeeded: the breaker closes. Returns whether it was open.
    pub(crate) fn success(&mut self) -> bool {
        self.failures = 0;
        self.open.swap(false, Ordering::Relaxed)
    }

    /// Whether it is time to probe an open breaker.
    pub(crate) fn probe_due(&mut self, now: Instant) -> bool {
        if !self.is_open() {
            return false;
        }
        match self.last_probe {
            Some(t) if now.duration_since(t) < PROBE_EVERY => false,
            _ => {
                self.last_probe = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_three_failures_or_one_timeout_and_closes_on_success() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut b = Breaker::new(flag.clone());
        assert_eq!(b.failure(false), Tripped::StillClosed);
        assert_eq!(b.failure(false), Tripped::StillClosed);
        assert!(!b.success(), "was closed");
        assert_eq!(
            b.failure(false),
            Tripped::StillClosed,
            "successes reset the count"
        );
        assert_eq!(b.failure(false), Tripped::StillClosed);
        assert_eq!(b.failure(false), Tripped::Opened);
        assert!(flag.load(Ordering::Relaxed));
        assert_eq!(b.failure(false), Tripped::AlreadyOpen);
        assert!(b.success());
        assert!(!flag.load(Ordering::Relaxed));
        assert_eq!(b.failure(true), Tripped::Opened, "a timeout opens at once");
    }

    #[test]
    fn probes_are_spaced() {
        let mut b = Breaker::new(Arc::new(AtomicBool::new(false)));
        let t0 = Instant::now();
        assert!(!b.probe_due(t0), "closed: no probing");
        b.failure(true);
        assert!(!b.probe_due(t0 + Duration::from_millis(50)));
        assert!(b.probe_due(t0 + Duration::from_millis(250)));
        assert!(!b.probe_due(t0 + Duration::from_millis(300)));
    }
}
