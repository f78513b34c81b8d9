//! Status: what translation reports, written to the cluster by the lease-holding
//! `weir-controller` only (gateways never write).
//!
//! - [`plan`] compares the report with each object's observed status, purely;
//! - [`write`] applies the differences by server-side apply, as field manager
//!   `weir-controller`;
//! - [`sidecars`] writes each namespace's `weir-authz` ConfigMap, the AuthorizationPolicies
//!   its sidecars enforce;
//! - [`secret_access`] keeps the RoleBindings that let the gateways read Secrets in the
//!   namespaces their Gateways use, and nowhere else;
//! - [`run`] drives rounds while this replica leads;
//! - [`lease`] elects the one writer;
//! - [`features`] is the GatewayClass's `supportedFeatures`.

mod ancestors;
pub mod features;
pub mod lease;
pub mod plan;
pub mod run;
pub mod secret_access;
pub mod sidecars;
pub mod write;

pub use plan::{StatusPatch, Target, gateway_addresses, plan};
pub use write::{FIELD_MANAGER, Written};
