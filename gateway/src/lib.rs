//! Weir's data plane: serves the config model ([`weir_model::Config`]) with
//! Pingora.
//!
//! - [`runtime`] compiles the IR into lookup structures, swapped atomically on change;
//! - [`listen`] binds and unbinds listener ports as the config changes and runs TLS;
//! - [`proxy`] is the Pingora `ProxyHttp` implementation, a thin sequence of calls into
//!   [`route`] (matching, filters), [`balance`] (backends, endpoints) and [`metrics`];
//! - [`backend_tls`] is TLS to backends (BackendTLSPolicy) and [`egress`] resolves
//!   ExternalName Services by DNS;
//! - [`admin`] serves `/healthz`, `/readyz`, `/config` and `/metrics`;
//! - [`app`] wires it together for the `weir-gateway` binary and for tests.

pub mod admin;
pub mod app;
pub mod backend_tls;
pub mod balance;
pub mod egress;
pub mod kube;
pub mod listen;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod route;
pub mod runtime;
pub mod tls;
