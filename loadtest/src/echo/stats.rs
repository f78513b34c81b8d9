//! The request counter behind `GET /__echo/stats` and `POST /__echo/reset`.
//!
//! Tests use it to see whether a request that produced no visible response (a mirrored
//! one, say) reached this backend. It is one relaxed atomic because it only has to be
//! eventually right and must not cost the benchmark hot path a lock.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
}

impl Stats {
    pub(crate) fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Zeroes the counter and returns what it held, so a caller can see what it discarded.
    pub(crate) fn reset(&self) -> u64 {
        self.requests.swap(0, Ordering::Relaxed)
    }
}
