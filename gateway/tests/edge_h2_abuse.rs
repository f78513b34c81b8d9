//! HTTP/2 clients that abuse the protocol, as raw frames against the real `weir-gateway`:
//! a rapid-reset flood (CVE-2023-44487) and a client that opens more streams than
//! allowed. The abusing connection gets GOAWAY, another client's requests keep
//! succeeding throughout, and the gateway's memory stays bounded.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::raw::{self, h2};
use support::*;

/// A well-behaved client sending requests on its own connections until told to stop;
/// returns (ok, failed).
fn bystander(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = client();
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(Ordering::Relaxed) || ok == 0 {
                let r = client
                    .get(format!("http://127.0.0.1:{port}/"))
                    .header("host", "h")
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    })
}

#[test]
fn a_rapid_reset_flood_gets_goaway_while_others_are_served() {
    let app = Echo::start("app");
    let port = free_port();
    let mut gw = Gateway::start(&one_route(port, &app));
    let pid = gw.proc().pid();
    let before = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let others = bystander(port, stop.clone());

    // 10,000 HEADERS + RST_STREAM pairs, written in batches as fast as the socket takes
    // them, until the gateway sends GOAWAY and closes.
    let mut abuser = raw::connect(port);
    abuser
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut reader = abuser.try_clone().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let writer = std::thread::spawn(move || {
        abuser.write_all(&h2::hello()).unwrap();
        for batch in 0..100u32 {
            let mut bytes = Vec::new();
            for i in 0..100u32 {
                let stream = 1 + 2 * (batch * 100 + i);
                bytes.extend(h2::get(stream, "h", &[], true));
                bytes.extend(h2::rst(stream, h2::CANCEL));
            }
            if abuser.write_all(&bytes).is_err() {
                return;
            }
            counter.fetch_add(100, Ordering::Relaxed);
        }
    });
    let got = raw::read_until(&mut reader, |_| false);
    let frames = h2::parse(&got.bytes);
    assert_eq!(
        h2::goaway(&frames),
        Some(h2::ENHANCE_YOUR_CALM),
        "the flood got {frames:?}"
    );
    assert!(got.closed, "the abusing connection stayed open");
    writer.join().unwrap();
    gw.wait_metric("weir_downstream_closed_total{reason=\"h2_abuse\"}", 1.0);

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = others.join().unwrap();
    assert!(ok > 0 && failed == 0, "bystander: {ok} ok, {failed} failed");
    let after = rss_kib(pid);
    // The flood is cut off long before it could cost much: a few MiB at most.
    assert!(
        after < before + 32 * 1024,
        "RSS went from {before} KiB to {after} KiB"
    );
    // Far fewer than the 10,000 flooded streams reached the backend.
    let reached = app.count("requests");
    assert!(
        reached < ok + 1000,
        "{reached} requests reached the backend, {ok} of them the bystander's; sent {}",
        sent.load(Ordering::Relaxed)
    );
}

#[test]
fn a_client_opening_too_many_streams_is_refused_then_sent_away() {
    let app = Echo::start("app");
    let port = free_port();
    let gw = Gateway::start_with(&one_route(port, &app), &["--max-concurrent-streams", "10"]);
    let stop = Arc::new(AtomicBool::new(false));
    let others = bystander(port, stop.clone());

    // Streams that stay open (no END_STREAM), far past the limit of 10.
    let mut s = raw::connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut bytes = h2::hello();
    for i in 0..500u32 {
        bytes.extend(h2::get(1 + 2 * i, "h", &[], false));
    }
    let _ = s.write_all(&bytes);
    let got = raw::read_until(&mut s, |_| false);
    let frames = h2::parse(&got.bytes);
    let refused = frames.iter().filter(|f| f.0 == h2::RST_STREAM).count();
    assert!(refused > 0, "no stream was refused: {frames:?}");
    assert_eq!(
        h2::goaway(&frames),
        Some(h2::ENHANCE_YOUR_CALM),
        "{frames:?}"
    );
    assert!(got.closed);
    gw.wait_metric("weir_downstream_closed_total{reason=\"h2_abuse\"}", 1.0);

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = others.join().unwrap();
    assert!(ok > 0 && failed == 0, "bystander: {ok} ok, {failed} failed");
}
