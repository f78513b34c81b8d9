//! The counters behind `GET /__echo/stats` and `POST /__echo/reset`.
//!
//! Tests use them to see whether a request that produced no visible response (a mirrored
//! one, say) reached this backend, and how many connections a proxy opened to it (pooling).
//! They are relaxed atomics because they only have to be eventually right and must not
//! cost the benchmark hot path a lock.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    connections: AtomicU64,
    // Requests answered with the failure status on purpose (`--fail-ratio`): a harness
    // compares them with what its clients saw to count the gateway's retries.
    failures: AtomicU64,
    // Request bodies read to their end, the bytes they held, and bodies that broke off:
    // a test of request framing (smuggling) asks exactly what a backend was handed.
    complete_bodies: AtomicU64,
    body_bytes: AtomicU64,
    broken_bodies: AtomicU64,
    // Requests that carried `x-weir-caller-identity`, whatever its value: at the edge a
    // gateway must never forward one.
    with_caller_identity: AtomicU64,
}

impl Stats {
    pub(crate) fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted connection and returns its 1-based number, which names it.
    pub(crate) fn record_connection(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn record_body(&self, result: Result<u64, ()>) {
        match result {
            Ok(bytes) => {
                self.complete_bodies.fetch_add(1, Ordering::Relaxed);
                self.body_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(()) => {
                self.broken_bodies.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn record_caller_identity(&self) {
        self.with_caller_identity.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn with_caller_identity(&self) -> u64 {
        self.with_caller_identity.load(Ordering::Relaxed)
    }

    /// Complete bodies, their bytes, and broken bodies.
    pub(crate) fn bodies(&self) -> (u64, u64, u64) {
        (
            self.complete_bodies.load(Ordering::Relaxed),
            self.body_bytes.load(Ordering::Relaxed),
            self.broken_bodies.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Zeroes the request, failure and body counters and returns the requests it held, so a
    /// caller can see what it discarded.
    pub(crate) fn reset(&self) -> u64 {
        self.failures.store(0, Ordering::Relaxed);
        for c in [
            &self.complete_bodies,
            &self.body_bytes,
            &self.broken_bodies,
            &self.with_caller_identity,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.requests.swap(0, Ordering::Relaxed)
    }
}
