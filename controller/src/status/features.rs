//! The Gateway API features a `weir` GatewayClass advertises in `status.supportedFeatures`.
//!
//! The upstream conformance suite needs a cluster, so it does not run here. Each feature
//! therefore names the test of Weir's own that shows it end to end, and a unit test fails
//! when that evidence is gone: a feature cannot be listed without a test behind it.

use gateway_api::experimental::gatewayclasses::GatewayClassStatusSupportedFeatures;

/// (feature, file under the repository root, text that file must contain).
pub const FEATURES: &[(&str, &str, &str)] = &[
    (
        "BackendTLSPolicy",
        "gateway/tests/upstream_tls.rs",
        "kind: BackendTLSPolicy",
    ),
    (
        "BackendTLSPolicySANValidation",
        "gateway/tests/upstream_tls.rs",
        "type: URI",
    ),
    ("GRPCRoute", "gateway/tests/hygiene.rs", "GRPCRoute"),
    ("Gateway", "gateway/tests/routing.rs", "Gateway::start"),
    (
        "GatewayBackendClientCertificate",
        "gateway/tests/upstream_tls.rs",
        "clientCertificateRef",
    ),
    ("HTTPRoute", "gateway/tests/routing.rs", "backendRefs"),
    (
        "HTTPRouteBackendProtocolH2C",
        "gateway/tests/hygiene.rs",
        "kubernetes.io/h2c",
    ),
    (
        "HTTPRouteBackendTimeout",
        "gateway/tests/routing.rs",
        "backendRequest",
    ),
    (
        "HTTPRouteHostRewrite",
        "gateway/tests/filters.rs",
        "URLRewrite",
    ),
    (
        "HTTPRouteMethodMatching",
        "gateway/tests/routing.rs",
        "method:",
    ),
    (
        "HTTPRouteParentRefPort",
        "controller/tests/fixtures/route-parent-section-and-port.yaml",
        "port:",
    ),
    (
        "HTTPRoutePathRedirect",
        "gateway/tests/filters.rs",
        "ReplaceFullPath",
    ),
    (
        "HTTPRoutePathRewrite",
        "gateway/tests/filters.rs",
        "ReplacePrefixMatch",
    ),
    (
        "HTTPRoutePortRedirect",
        "gateway/tests/filters.rs",
        "port: 8443",
    ),
    (
        "HTTPRouteQueryParamMatching",
        "gateway/tests/routing.rs",
        "queryParams",
    ),
    (
        "HTTPRouteRequestMirror",
        "gateway/tests/filters.rs",
        "RequestMirror",
    ),
    (
        "HTTPRouteRequestMultipleMirrors",
        "controller/tests/fixtures/filters.yaml",
        "fraction:",
    ),
    (
        "HTTPRouteRequestPercentageMirror",
        "controller/tests/fixtures/filters.yaml",
        "percent: 25",
    ),
    (
        "HTTPRouteRequestTimeout",
        "gateway/tests/routing.rs",
        "request:",
    ),
    (
        "HTTPRouteResponseHeaderModification",
        "gateway/tests/filters.rs",
        "ResponseHeaderModifier",
    ),
    (
        "HTTPRouteSchemeRedirect",
        "gateway/tests/filters.rs",
        "scheme: https",
    ),
    ("Mesh", "gateway/tests/mesh.rs", "kind: Service"),
    (
        "MeshConsumerRoute",
        "gateway/tests/mesh_tls.rs",
        "fn consumer_routes_apply_to_callers_from_their_namespace",
    ),
    (
        "MeshHTTPRouteRedirectPath",
        "gateway/tests/mesh.rs",
        "ReplacePrefixMatch",
    ),
    (
        "ReferenceGrant",
        "controller/tests/fixtures/backend-ref-not-permitted.yaml",
        "ReferenceGrant",
    ),
];

/// The list as the GatewayClass status carries it, sorted (the API asks for that order).
pub fn supported_features() -> Vec<GatewayClassStatusSupportedFeatures> {
    FEATURES
        .iter()
        .map(|(name, _, _)| GatewayClassStatusSupportedFeatures {
            name: (*name).into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_has_its_test_and_the_list_is_sorted() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        for (name, file, needle) in FEATURES {
            let text = std::fs::read_to_string(format!("{root}/{file}"))
                .unwrap_or_else(|e| panic!("{name}: evidence {file} unreadable: {e}"));
            assert!(
                text.contains(needle),
                "{name}: {file} no longer shows {needle:?}"
            );
        }
        let names: Vec<_> = FEATURES.iter().map(|f| f.0).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }
}
