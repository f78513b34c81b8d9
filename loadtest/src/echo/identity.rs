//! Who this echo instance claims to be.
//!
//! Tests run several instances as different "backends" of one route and need to tell which
//! one answered; in a cluster the same values come from the downward API.

/// The names an instance reports in its echo document and `x-echo-*` headers.
///
/// Empty strings mean "unset" and are reported as such rather than omitted, so a test can
/// tell a missing value from a missing field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The Kubernetes Service (or test backend name) this instance stands for.
    pub service: String,
    /// The namespace of that Service.
    pub namespace: String,
    /// The pod (or test instance) name.
    pub pod: String,
    /// The topology zone, for zone-aware routing tests.
    pub zone: String,
}
