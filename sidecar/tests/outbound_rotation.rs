//! Rotation under load, end to end: an app streams requests through sidecar A (outbound)
//! to sidecar B (inbound, strict) while both SVIDs are re-issued into their directories
//! several times. No request may fail, and after each round A's upstream connection must
//! have been handshaken again with A's new certificate, against B's new one, as A's
//! `weir_sidecar_outbound_upstream_tls_info{serial, peer_serial}` reports.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{Echo, Pki, Sidecar, eventually, id};
use weir_sidecar::identity::{Files, Identity};

const ROUNDS: usize = 4;
/// Concurrent app connections, each sending requests back to back.
const CLIENTS: usize = 4;

/// The serial the sidecar reports for the SVID now in `dir`.
fn serial(dir: &Path) -> String {
    let files = Files::read(dir).unwrap();
    Identity::parse(&files, &weir_sidecar::crypto_provider())
        .unwrap()
        .serial
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    stop: AtomicBool,
}

/// Keep-alive clients sending to the outbound listener until told to stop.
fn stream(out: u16, tally: Arc<Tally>) -> Vec<tokio::task::JoinHandle<Option<String>>> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    (0..CLIENTS)
        .map(|_| {
            let (client, tally) = (client.clone(), tally.clone());
            tokio::spawn(async move {
                let mut first_failure = None;
                while !tally.stop.load(Ordering::Relaxed) {
                    let req = http::Request::get(format!("http://127.0.0.1:{out}/"))
                        .header("host", "payments.pay:8080")
                        .body(Empty::new())
                        .unwrap();
                    let outcome = match client.request(req).await {
                        Ok(resp) if resp.status() == 200 => resp
                            .into_body()
                            .collect()
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        Ok(resp) => Err(format!("status {}", resp.status())),
                        Err(e) => Err(format!("{e:?}")),
                    };
                    match outcome {
                        Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            first_failure.get_or_insert(e);
                            tally.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                first_failure
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_rotate_under_load_without_a_failed_request() {
    let pki = Pki::new();
    let app = Echo::start();
    let (a_dir, b_dir) = (
        pki.svid("front", "shop", "front"),
        pki.svid("payments", "pay", "payments"),
    );
    let (b, b_port) = Sidecar::callee(&b_dir, app.port, &["--allow", &id("shop", "front")]);
    let (a, out) = Sidecar::caller(
        &a_dir,
        &format!("127.0.0.1:{b_port}"),
        &id("pay", "payments"),
        &["--allow", "spiffe://weir.test/*"],
    );
    let tally = Arc::new(Tally::default());
    let clients = stream(out, tally.clone());
    let on = |serial: &str, peer: &str| {
        a.metric(
            "weir_sidecar_outbound_upstream_tls_info",
            &[("serial", serial), ("peer_serial", peer)],
        ) == 1.0
    };
    assert!(
        eventually(Duration::from_secs(5), || on(
            &serial(&a_dir),
            &serial(&b_dir)
        )),
        "{}",
        a.log()
    );

    for round in 1..=ROUNDS {
        // B first, and loaded, so that A's reconnection meets B's new certificate too.
        pki.svid("payments", "pay", "payments");
        let b_new = serial(&b_dir);
        let loaded = |s: &Sidecar, serial: &str| {
            s.metric("weir_sidecar_identity_info", &[("serial", serial)]) == 1.0
        };
        assert!(
            eventually(Duration::from_secs(5), || loaded(&b, &b_new)),
            "round {round}: B did not load its new SVID\n{}",
            b.log()
        );
        pki.svid("front", "shop", "front");
        let a_new = serial(&a_dir);
        assert!(
            eventually(Duration::from_secs(5), || on(&a_new, &b_new)),
            "round {round}: A's upstream connection is not on the new certificates\n{}",
            a.log()
        );
    }

    let before = tally.ok.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(5), || tally
        .ok
        .load(Ordering::Relaxed)
        > before + 10));
    tally.stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} failed: {failures:?}",
        ok + failed
    );
    // One connection per identity of A's: the first and one per round, no more.
    assert_eq!(
        a.metric("weir_sidecar_outbound_upstream_connections_total", &[]),
        (ROUNDS + 1) as f64
    );
    let b_port = b_port.to_string();
    assert_eq!(
        b.metric(
            "weir_sidecar_inbound_connections_total",
            &[("port", &b_port)]
        ),
        (ROUNDS + 1) as f64
    );
}
