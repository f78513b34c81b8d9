//! Identity rotation: a new SVID written into the identity directory is presented by new
//! handshakes within seconds, connections opened before keep working, a broken update
//! keeps the last good identity, and a sidecar started before its SVID waits for it.

mod support;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::time::{Duration, Instant};
use support::client::{self, Proto};
use support::{Echo, Pki, Sidecar, free_port, id};

fn leaf(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("tls.crt")).unwrap()
}

fn args(port: u16, app: &Echo) -> Vec<String> {
    vec![
        "--inbound".into(),
        format!("{port}={}", app.port),
        "--allow".into(),
        "spiffe://weir.test/ns/shop/*".into(),
    ]
}

#[tokio::test]
async fn new_handshakes_get_the_new_svid_and_old_connections_live_on() {
    let pki = Pki::new();
    let server = pki.svid("web", "shop", "web");
    let front = pki.svid("front", "shop", "front");
    let me = id("shop", "web");
    let app = Echo::start();
    let port = free_port();
    let args = args(port, &app);
    let sidecar = Sidecar::start(
        &server,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let first = leaf(&server);
    let mut old = client::mtls(port, &front, &me, Proto::H1).await.unwrap();
    assert_eq!(old.server_cert.as_ref(), Some(&first));
    assert_eq!(old.get("/", &[]).await.unwrap().status, 200);

    // Rotate: a new certificate with a new key, as csi-driver-spiffe renews.
    pki.svid("web", "shop", "web");
    let second = leaf(&server);
    assert_ne!(first, second);
    let rotated = Instant::now();
    loop {
        let conn = client::mtls(port, &front, &me, Proto::H1).await.unwrap();
        if conn.server_cert.as_ref() == Some(&second) {
            break;
        }
        assert_eq!(
            conn.server_cert.as_ref(),
            Some(&first),
            "an unknown certificate"
        );
        assert!(
            rotated.elapsed() < Duration::from_secs(5),
            "still the old certificate after 5 s; log:\n{}",
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut new = client::mtls(port, &front, &me, Proto::H1).await.unwrap();
    assert_eq!(new.get("/", &[]).await.unwrap().status, 200);
    let reply = old
        .get("/", &[])
        .await
        .expect("the old connection keeps working");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.seen("x-weir-caller-identity"), [id("shop", "front")]);

    // A broken update (a certificate whose key is elsewhere) keeps the last good identity.
    let other = pki.ca.issue("shop", "web", 1).unwrap();
    std::fs::write(server.join("tls.crt"), &other.cert_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sidecar.log().contains("keeping the last good identity") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conn = client::mtls(port, &front, &me, Proto::H1).await.unwrap();
    assert_eq!(conn.server_cert.as_ref(), Some(&second));
    let ok = [("result", "ok")];
    assert_eq!(
        sidecar.metric("weir_sidecar_identity_reloads_total", &ok),
        2.0
    );
}

#[tokio::test]
async fn a_sidecar_started_before_its_svid_waits_for_it() {
    let pki = Pki::new();
    let server = pki.dir.path().join("web");
    std::fs::create_dir_all(&server).unwrap();
    let front = pki.svid("front", "shop", "front");
    let app = Echo::start();
    let port = free_port();
    let args = args(port, &app);
    let sidecar = Sidecar::spawn(
        &server,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while sidecar.admin_get("/healthz").map(|r| r.0) != Some(503) {
        assert!(Instant::now() < deadline, "no 503; log:\n{}", sidecar.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = client::mtls_get(port, &front, &id("shop", "web"), &[]).await;
    assert!(result.is_err(), "served without an identity: {result:?}");

    pki.svid("web", "shop", "web");
    sidecar.wait_healthy(Duration::from_secs(5));
    let reply = client::mtls_get(port, &front, &id("shop", "web"), &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
}
