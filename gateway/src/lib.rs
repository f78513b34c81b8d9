//! Weir's data plane: serves the config model ([`weir_model::Config`]) with
//! Pingora.
//!
//! - [`runtime`] assembles the tables each module compiles from the IR ([`route`],
//!   [`balance`], [`ratelimit`], [`tls`]), swapped atomically on change; [`problems`] lists
//!   what did not compile;
//! - [`listen`] binds and unbinds listener ports as the config changes and runs TLS;
//! - [`proxy`] is the Pingora `ProxyHttp` implementation, a thin sequence of calls into
//!   [`route`] (matching, filters), [`balance`] (backends, endpoints) and [`metrics`];
//! - [`tls`] is TLS both ways: termination by SNI and TLS to backends (BackendTLSPolicy);
//!   [`egress`] resolves ExternalName Services by DNS;
//! - [`accesslog`] writes one JSON line per request, off the proxy threads; [`trace`]
//!   makes each request a span and exports it over OTLP;
//! - [`admin`] serves `/healthz`, `/readyz`, `/config` and `/metrics`;
//! - [`control`] is the one runtime for everything but requests (sources, reload, DNS,
//!   health checks, the Redis sync, admin);
//! - [`app`] wires it together for the `weir-gateway` binary and for tests.

pub mod accesslog;
pub mod admin;
pub mod app;
pub mod authz;
pub mod balance;
pub mod control;
pub mod egress;
pub mod kube;
pub mod listen;
pub mod metrics;
pub mod problems;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod route;
pub mod runtime;
pub mod tls;
pub mod trace;
