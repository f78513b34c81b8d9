//! The `weir-echo` backend: an HTTP server that answers every request with a JSON
//! description of what it received.
//!
//! Integration tests put it behind the gateway to check what the gateway forwarded (path,
//! host, headers, which backend answered), and benchmarks use it as a backend cheap enough
//! that the proxy, not the backend, is what gets measured. That second use is why nothing
//! here logs per request and the hot path avoids needless allocation.
//!
//! Layout:
//! - [`server`]: the accept loop, HTTP/1.1 + h2c negotiation and graceful shutdown.
//! - `handler`: chooses what one request gets (control endpoint, upgrade, gRPC, echo).
//! - `document`: the JSON echo document.
//! - `delay`, `directives`: the per-request knobs (`?delay=`, `/status/NNN`,
//!   `X-Echo-Set-Header`).
//! - `upgrade`, `grpc`: the two protocols that need more than a JSON body.
//! - `body`: the one response body type every response uses.
//! - `stats`: the request counter behind `/__echo/stats`.
//! - `fail`: failing on purpose (`--fail-ratio`, `POST /__echo/fail?ratio=R`).

mod body;
mod delay;
mod directives;
mod document;
mod fail;
mod grpc;
mod handler;
mod identity;
mod server;
mod stats;
mod upgrade;

pub use fail::{Failure, parse_ratio};
pub use identity::Identity;
pub use server::serve;
