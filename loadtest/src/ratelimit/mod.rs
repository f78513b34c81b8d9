//! The rate limit harness behind `weir-ratelimit-bench`: N real `weir-gateway` processes
//! sharing a real `redis-server`, driven at fixed rates, against the naive limiter that
//! Weir's design is measured against (one Redis `INCR` per request over a fixed window, as
//! envoyproxy/ratelimit does).
//!
//! - [`procs`]: the processes (Redis, the echo backend, gateways, naive proxies);
//! - [`load`]: an open-loop load generator recording every response;
//! - [`naive`]: the naive limiter, a small proxy;
//! - [`scenarios`]: the runs and the goals table.

pub mod load;
pub mod naive;
pub mod procs;
pub mod scenarios;
