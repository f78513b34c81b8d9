//! Which namespaces' Secrets the gateways need (`translate::secret_namespaces`): their
//! Gateways' own, and those a ReferenceGrant opens to them, and no other; and which
//! single Secrets hold a policy's JWKS (`translate::jwks_secrets`).

use weir_controller::source::files;
use weir_controller::translate::{jwks_secrets, secret_namespaces};

const MANIFESTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: weir}
spec: {controllerName: weir.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: edge}
spec:
  gatewayClassName: weir
  tls:
    backend: {clientCertificateRef: {name: fleet-svid, namespace: mesh-certs}}
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    tls:
      certificateRefs:
      - {name: shop, namespace: certs}         # granted below
      - {name: blog, namespace: secrets-vault} # not granted: not needed
      - {name: own}                            # the Gateway's own namespace
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: edge-certs, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: edge}]
  to: [{group: "", kind: Secret}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: fleet-svid, namespace: mesh-certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: edge}]
  to: [{group: "", kind: Secret, name: fleet-svid}]
---
# Another controller's Gateway: its Secrets are none of Weir's business.
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: theirs, namespace: elsewhere}
spec:
  gatewayClassName: other
  listeners: [{name: http, port: 80, protocol: HTTP}]
"#;

#[test]
fn gateways_need_their_own_namespace_and_granted_ones_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    std::fs::write(&path, MANIFESTS).unwrap();
    let loaded = files::load(&path).unwrap();
    let got: Vec<String> = secret_namespaces(&loaded.snapshot).into_iter().collect();
    assert_eq!(got, ["certs", "edge", "mesh-certs"]);
}

#[test]
fn only_the_secrets_policies_take_a_jwks_from_are_needed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    std::fs::write(
        &path,
        r#"
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: a, namespace: payments}
spec:
  targetRefs: [{kind: Service, name: payments}]
  jwt:
  - {issuer: https://idp.test, jwksRef: {kind: Secret, name: idp-jwks}}
  - {issuer: https://other.test, jwksRef: {name: other-jwks}}   # a ConfigMap
---
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: b, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: web}]
  jwt: [{issuer: https://idp.test, jwksRef: {kind: Secret, name: idp-jwks}}]
"#,
    )
    .unwrap();
    let loaded = files::load(&path).unwrap();
    let got: Vec<(String, String)> = jwks_secrets(&loaded.snapshot).into_iter().collect();
    let want = [("payments", "idp-jwks"), ("shop", "idp-jwks")].map(|(a, b)| (a.into(), b.into()));
    assert_eq!(got, want);
    assert!(secret_namespaces(&loaded.snapshot).is_empty());
}
