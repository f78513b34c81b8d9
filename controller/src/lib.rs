//! Weir's control plane library.
//!
//! - [`source`] reads Kubernetes objects (a directory of manifests, or the API server) into
//!   [`source::Snapshot`]s;
//! - [`translate`] turns a snapshot into the gateway IR ([`model::Config`]) and the status
//!   every object would get ([`translate::StatusReport`]), purely;
//! - [`model`] is that IR, the only thing the data plane depends on;
//! - [`check`] and [`certs`] serve the `weir-controller` command line.

pub mod ca;
pub mod certs;
pub mod check;
pub mod crd;
pub mod inject;
pub mod model;
pub mod source;
pub mod spiffe;
pub mod status;
pub mod translate;

pub use translate::{CONTROLLER_NAME, translate};
