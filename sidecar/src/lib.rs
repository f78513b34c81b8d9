//! `weir-sidecar`: the mini sidecar that gives a meshed pod its mTLS identity.
//!
//! It owns the pod's SPIFFE X.509 SVID (the files csi-driver-spiffe mounts, reloaded when
//! they rotate) and the inbound side of the mesh: each inbound port terminates mTLS,
//! admits only the peers an allow-list names, and forwards HTTP to the app on loopback with
//! the caller's identity in `x-weir-caller-identity`. The outbound side carries the app's
//! plain HTTP over mTLS and HTTP/2 to the fleet's mesh listener.
//!
//! - [`cli`]: the command line and its validation.
//! - [`identity`]: reading and checking the SVID files; [`reload`] polls them.
//! - [`tls`]: per-port rustls server configs and the allow-list client verifier.
//! - [`inbound`]: listeners, plaintext/TLS detection, HTTP forwarding to the app.
//! - [`outbound`]: the app-facing listener and the pooled mTLS HTTP/2 upstream.
//! - [`admin`] and [`metrics`]: `/healthz` and `/metrics`.
//! - [`authz`]: AuthorizationPolicy for requests that do not cross the fleet.
//! - [`drain`]: SIGTERM's graceful drain of every listener and connection.
//! - [`trace`]: each request's span, inbound and outbound (`--otlp-endpoint`).

pub mod admin;
pub mod authz;
pub mod cli;
pub mod drain;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod reload;
pub mod tls;
pub mod trace;

/// The rustls provider of the whole workspace: ring, chosen explicitly rather than through
/// a process-wide default so that linking another provider cannot change it.
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
