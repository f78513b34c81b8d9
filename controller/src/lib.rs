//! Weir's control plane library.
//!
//! - [`source`] reads Kubernetes objects (a directory of manifests, or the API server) into
//!   [`source::Snapshot`]s;
//! - [`translate`] turns a snapshot into the gateway IR ([`weir_model::Config`], in the
//!   `weir-model` crate: the only thing the data plane and the sidecar depend on) and the
//!   status every object would get ([`translate::StatusReport`]), purely;
//! - [`cli`] holds what the `weir-controller` command line offers beyond the controller:
//!   a local CA, demo certificates, `check` and `inject`;
//! - [`graph`] serves the live service graph (`weir-controller graph`).

pub mod cli;
pub mod crd;
pub mod graph;
pub mod source;
pub mod status;
pub mod translate;

pub use translate::{CONTROLLER_NAME, translate};
