//! A mesh Gateway over mTLS, and callers with SVIDs of its CA: what a fleet looks like to
//! the sidecars calling it.

use super::*;
use rustls_pki_types::pem::PemObject;
use weir_controller::cli::ca::{Ca, Svid};
use weir_model::spiffe::{Allow, ServerVerifier};

pub const GATEWAY_ID: &str = "spiffe://cluster.local/ns/weir-system/sa/weir-gateway";

pub struct Mesh {
    pub ca: Ca,
    pub port: u16,
    pub manifests: String,
}

/// A mesh Gateway on an HTTPS port whose server certificate is the gateway's SVID and whose
/// clients must present SVIDs of the same trust domain; `echo` and `canary` Services.
pub fn mesh(echo: &Echo, canary: &Echo) -> Mesh {
    let ca = Ca::init("cluster.local", 1).unwrap();
    let gw = ca.issue("weir-system", "weir-gateway", 1).unwrap();
    let port = free_port();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let mut m = format!(
        "{CLASS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: mesh, annotations: {{weir.dev/mesh: \"true\"}}}}\nspec:\n  gatewayClassName: weir\n  tls:\n    frontend:\n      default:\n        validation: {{caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: mesh-ca}}]}}\n  listeners:\n  - {{name: mesh, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: gateway-svid}}]}}, allowedRoutes: {{namespaces: {{from: All}}}}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: mesh-ca}}\ndata:\n  ca.crt: |\n{}",
        indent(&ca.cert_pem)
    );
    m += &tls_secret("gateway-svid", &gw.cert_pem, &gw.key_pem);
    m += &service("echo", &[echo]);
    m += &service("canary", &[canary]);
    Mesh {
        ca,
        port,
        manifests: m,
    }
}

/// An HTTP/1.1 client presenting `svid` (if any) that accepts only the gateway's SPIFFE ID.
pub fn client(ca: &Ca, svid: Option<&Svid>) -> reqwest::Client {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
    roots.add(ca_der).unwrap();
    let verifier = ServerVerifier::new(Arc::new(roots), Allow::new([GATEWAY_ID])).unwrap();
    let builder = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match svid {
        Some(s) => {
            let chain = rustls_pki_types::CertificateDer::pem_slice_iter(s.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(s.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap()
}
