//! `weir-controller ca`: a trust-domain CA and SVIDs in the csi-driver-spiffe layout, used
//! in a real mTLS handshake where each side checks the other's SPIFFE ID.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_model::spiffe::{Allow, ServerVerifier, id_of};

fn controller(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir-controller"))
        .args(args)
        .output()
        .unwrap()
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn roots(dir: &Path) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&dir.join("ca.crt")) {
        roots.add(c).unwrap();
    }
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server that requires a client SVID from the bundle, and a client that requires the
/// server's SPIFFE ID to match `server_allow`. Returns the client ID the server saw, or the
/// handshake error.
async fn handshake(server: &Path, client: &Path, server_allow: &str) -> Result<String, String> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(server), provider())
            .build()
            .unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&server.join("tls.crt")),
            PrivateKeyDer::from_pem_file(server.join("tls.key")).unwrap(),
        )
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            ServerVerifier::new(roots(client), Allow::new([server_allow])).unwrap(),
        ))
        .with_client_auth_cert(
            certs(&client.join("tls.crt")),
            PrivateKeyDer::from_pem_file(client.join("tls.key")).unwrap(),
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| id_of(&c[0]))
            .unwrap_or_default();
        tls.write_all(b"hi").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.ok();
        Ok::<_, String>(peer)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("ignored.invalid").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    assert_eq!(buf, b"hi");
    server_task.await.unwrap()
}

#[tokio::test]
async fn svids_from_the_cli_authenticate_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().unwrap();
    let out = controller(&["ca", "init", "--dir", ca_s, "--trust-domain", "weir.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second init must not replace the CA every SVID chains to.
    assert!(!controller(&["ca", "init", "--dir", ca_s]).status.success());

    for (ns, sa) in [("shop", "web"), ("payments", "api")] {
        let to = dir.path().join(sa);
        let out = controller(&[
            "ca",
            "issue",
            "--ca-dir",
            ca_s,
            "--ns",
            ns,
            "--sa",
            sa,
            "--out",
            to.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("spiffe://weir.test/ns/{ns}/sa/{sa}"))
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(to.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is owner-only");
    }
    let (web, api) = (dir.path().join("web"), dir.path().join("api"));
    let seen = handshake(&api, &web, "spiffe://weir.test/ns/payments/*")
        .await
        .unwrap();
    assert_eq!(seen, "spiffe://weir.test/ns/shop/sa/web");

    // The client refuses a server whose identity is not the one it expects.
    let err = handshake(&api, &web, "spiffe://weir.test/ns/shop/*")
        .await
        .unwrap_err();
    assert!(
        err.contains("spiffe://weir.test/ns/payments/sa/api is not allowed"),
        "{err}"
    );

    // An SVID from another trust domain's CA does not chain to this bundle.
    let other = dir.path().join("other-ca");
    controller(&[
        "ca",
        "init",
        "--dir",
        other.to_str().unwrap(),
        "--trust-domain",
        "weir.test",
    ]);
    let stranger = dir.path().join("stranger");
    controller(&[
        "ca",
        "issue",
        "--ca-dir",
        other.to_str().unwrap(),
        "--ns",
        "shop",
        "--sa",
        "web",
        "--out",
        stranger.to_str().unwrap(),
    ]);
    assert!(
        handshake(&api, &stranger, "spiffe://weir.test/*")
            .await
            .is_err()
    );

    // Bad names are refused with the reason.
    let out = controller(&[
        "ca", "issue", "--ca-dir", ca_s, "--ns", "Shop", "--sa", "web", "--out", "/tmp/x",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid namespace \"Shop\""));
}

/// `ca manifests` prints what a Gateway references, ready for `kubectl apply -f -`: the SVID
/// as a kubernetes.io/tls Secret and the CA as the trust bundle ConfigMap.
#[test]
fn manifests_print_the_svid_secret_and_the_trust_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = ca_dir.to_str().unwrap();
    assert!(controller(&["ca", "init", "--dir", ca]).status.success());
    let out = controller(&[
        "ca",
        "manifests",
        "--ca-dir",
        ca,
        "--ns",
        "weir-system",
        "--sa",
        "weir-gateway",
        "--secret",
        "weir-gateway-svid",
        "--hours",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{text}");
    let (secret, bundle) = (&docs[0], &docs[1]);
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["name"], "weir-gateway-svid");
    assert_eq!(secret["metadata"]["namespace"], "weir-system");
    let crt = secret["stringData"]["tls.crt"].as_str().unwrap();
    let der = CertificateDer::from_pem_slice(crt.as_bytes()).unwrap();
    assert_eq!(
        id_of(&der).as_deref(),
        Some("spiffe://cluster.local/ns/weir-system/sa/weir-gateway")
    );
    assert!(
        secret["stringData"]["tls.key"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert_eq!(bundle["kind"], "ConfigMap");
    assert_eq!(bundle["metadata"]["name"], "weir-mesh-ca");
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap();
    assert_eq!(
        bundle["data"]["ca.crt"].as_str().unwrap().trim(),
        ca_pem.trim()
    );
}
