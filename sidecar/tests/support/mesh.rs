//! The mesh path, shared by the tests that need every hop: the fleet's SPIFFE ID, the
//! manifests of a mesh Gateway that routes to a `payments` Service in `pay` whose one
//! endpoint is a callee's sidecar, and [`MeshPath`], the processes themselves.

use super::{Echo, Pki, Sidecar, id};
use weir_loadtest::procs;

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

/// The whole mesh path, every hop a process: the app (`weir-echo`) behind sidecar B
/// (`pay/payments`, STRICT, admitting only the fleet), the fleet's mesh listener, and
/// sidecar A (`shop/front`) whose outbound listener the calling app uses.
pub struct MeshPath {
    pub pki: Pki,
    pub app: Echo,
    pub b: Sidecar,
    pub b_port: u16,
    pub gateway: procs::Gateway,
    gateway_dir: tempfile::TempDir,
    pub a: Sidecar,
    /// A's outbound listener: where the app's HTTP_PROXY points.
    pub out: u16,
}

impl MeshPath {
    pub fn start() -> MeshPath {
        Self::start_with(&[], &[], |_| String::new())
    }

    /// The path with `every` argument given to every hop (the fleet and both sidecars),
    /// `fleet` ones to the fleet only, and `more(app port)` manifests beside the mesh's.
    pub fn start_with(
        every: &[&str],
        fleet: &[&str],
        more: impl FnOnce(u16) -> String,
    ) -> MeshPath {
        let pki = Pki::new();
        let app = Echo::start();
        let gw = gateway_id();
        let mut b_args = vec!["--allow", &gw, "--identity-setter", &gw];
        b_args.extend_from_slice(every);
        let (b, b_port) =
            Sidecar::callee(&pki.svid("payments", "pay", "payments"), app.port, &b_args);
        let gateway_dir = tempfile::tempdir().unwrap();
        let bin = procs::gateway_bin().unwrap();
        let more = more(app.port);
        let gateway_args: Vec<&str> = every.iter().chain(fleet).copied().collect();
        let gateway = procs::Gateway::start(
            bin.parent().unwrap(),
            gateway_dir.path(),
            |port| manifests(&pki, b_port, port) + &more,
            &gateway_args,
            Some("info"),
        )
        .unwrap();
        let mut a_args = vec!["--allow", &gw];
        a_args.extend_from_slice(every);
        let (a, out) = Sidecar::caller(
            &pki.svid("front", "shop", "front"),
            &gateway.addr.to_string(),
            &gw,
            &a_args,
        );
        MeshPath {
            pki,
            app,
            b,
            b_port,
            gateway,
            gateway_dir,
            a,
            out,
        }
    }

    pub fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.gateway_dir.path().join("gateway.log")).unwrap_or_default()
    }
}
