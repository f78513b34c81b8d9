//! Weir's own CustomResourceDefinitions, API group `weir.dev`. The Rust types are the source
//! of truth: `weir-controller crds` prints the CRD YAML kept under `crds/`, and a test fails
//! when that copy is stale.

mod ratelimit;

pub use ratelimit::*;

use kube::CustomResourceExt;

/// Every CRD of the `weir.dev` group, as multi-document YAML.
pub fn all_yaml() -> String {
    let crds = [RateLimitPolicy::crd()];
    crds.iter()
        .map(|c| serde_yaml::to_string(c).expect("a CRD serialises"))
        .collect::<Vec<_>>()
        .join("---\n")
}
