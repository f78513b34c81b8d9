//! Weir's own CustomResourceDefinitions, API group `weir.dev`. The Rust types are the source
//! of truth: `weir-controller crds` prints the CRD YAML kept under `crds/`, and a test fails
//! when that copy is stale.

mod authz;
mod ratelimit;

pub use authz::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, From, JwksRef, JwtIssuer, Rule, To, When,
};
pub use ratelimit::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use kube::CustomResourceExt;

/// Every CRD of the `weir.dev` group, as multi-document YAML.
pub fn all_yaml() -> String {
    let crds = [RateLimitPolicy::crd(), AuthorizationPolicy::crd()];
    crds.iter()
        .map(|c| serde_yaml::to_string(c).expect("a CRD serialises"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The status of Weir's policies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PolicyStatus {
    /// `Accepted`, `Enforced`, and `ReviewDue` once the owner's review date has passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
