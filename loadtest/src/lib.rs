//! Weir's test and benchmark tools.
//!
//! The binaries under `src/bin` are thin command lines over the modules here, so that
//! integration tests and harnesses can also embed a tool in-process when that is simpler
//! than starting a child process.

pub mod balance;
pub mod echo;
pub mod jwt;
pub mod otlp;
pub mod procs;
pub mod propagation;
pub mod ratelimit;
pub mod sidecar;
pub mod usage;
