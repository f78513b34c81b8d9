//! The mesh path's shared parts: the fleet's SPIFFE ID and the manifests of a mesh Gateway
//! that routes to a `payments` Service in `pay` whose one endpoint is a callee's sidecar.

use super::{Pki, id};

pub fn gateway_id() -> String {
    id("weir-system", "weir-gateway")
}

pub fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// The mesh Gateway, the `payments` Service in `pay` whose endpoint is B, and the policy
/// that makes the fleet reach B over mTLS.
pub fn manifests(pki: &Pki, b_port: u16, listener: u16) -> String {
    let gw = pki.ca.issue("weir-system", "weir-gateway", 1).unwrap();
    let ca = indent(&pki.ca.cert_pem);
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: weir}}
spec: {{controllerName: weir.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: mesh, namespace: weir-system, annotations: {{weir.dev/mesh: "true"}}}}
spec:
  gatewayClassName: weir
  tls:
    frontend:
      default:
        validation: {{caCertificateRefs: [{{group: "", kind: ConfigMap, name: mesh-ca}}]}}
    backend:
      clientCertificateRef: {{name: gateway-svid}}
  listeners:
  - name: mesh
    port: {listener}
    protocol: HTTPS
    tls: {{certificateRefs: [{{name: gateway-svid}}]}}
    allowedRoutes: {{namespaces: {{from: All}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: gateway-svid, namespace: weir-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{crt}  tls.key: |
{key}---
apiVersion: v1
kind: ConfigMap
metadata: {{name: mesh-ca, namespace: weir-system}}
data:
  ca.crt: |
{ca}---
apiVersion: v1
kind: ConfigMap
metadata: {{name: mesh-ca, namespace: pay}}
data:
  ca.crt: |
{ca}---
apiVersion: v1
kind: Service
metadata: {{name: payments, namespace: pay}}
spec:
  ports:
  - {{name: http, port: 8080}}
  # gRPC needs HTTP/2 on every hop: the appProtocol asks the fleet for it (ALPN h2).
  - {{name: grpc, port: 9090, appProtocol: kubernetes.io/h2c}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: payments-0, namespace: pay, labels: {{kubernetes.io/service-name: payments}}}}
addressType: IPv4
ports: [{{name: http, port: {b_port}}}, {{name: grpc, port: {b_port}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: payments, namespace: pay}}
spec:
  targetRefs: [{{group: "", kind: Service, name: payments}}]
  validation:
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: mesh-ca}}]
    hostname: payments.pay.svc
    subjectAltNames: [{{type: URI, uri: "{b_id}"}}]
"#,
        crt = indent(&gw.cert_pem),
        key = indent(&gw.key_pem),
        b_id = id("pay", "payments"),
    )
}
