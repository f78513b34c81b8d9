//! The measurements, each over the mesh of [`super::mesh`] with the open-loop generator of
//! the rate limit harness ([`crate::ratelimit::load`]).

use super::mesh::{Mesh, Sidecar, Svids};
use crate::ratelimit::load::{self, Phase, Sample, quantile_of};
use crate::usage::{cpu_ms, pss_kib, rss_kib};
use anyhow::Result;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The authority every request carries: sidecar A sends it on as `:authority` (a middle hop
/// would route on it); the echo ignores it.
pub const AUTHORITY: &str = "echo.bench:8080";

/// Load before the measured part, so that every path's connections are open and warm.
const WARMUP_SECS: f64 = 1.0;

/// A way from the client to the echo.
#[derive(Debug, Clone)]
pub struct Path {
    pub name: String,
    /// Where the client sends.
    pub addr: SocketAddr,
    /// The proxies on the way (their process trees), for CPU time: none when direct.
    pub proxies: Vec<u32>,
}

/// One path's latency.
#[derive(Debug, Clone)]
pub struct PathFigures {
    pub name: String,
    pub requests: usize,
    /// Failed requests: no response, or not a 2xx.
    pub failed: usize,
    pub p50: Duration,
    pub p99: Duration,
    /// CPU time per request per proxy (user + system, warm-up included), in µs.
    pub cpu_us: Option<f64>,
}

/// Sends `rate` requests/s down each path in `paths` for `secs` (after a warm-up), one
/// path after the other request by request, so that every path sees the same machine.
pub async fn latency(paths: &[Path], rate: f64, secs: f64) -> Vec<PathFigures> {
    let targets: Vec<SocketAddr> = paths.iter().map(|p| p.addr).collect();
    let total = rate * targets.len() as f64;
    let phases = [
        Phase {
            rate: total,
            secs: WARMUP_SECS,
        },
        Phase { rate: total, secs },
    ];
    let cpu = |p: &Path| p.proxies.iter().map(|pid| cpu_ms(*pid)).sum::<u64>();
    let before: Vec<u64> = paths.iter().map(cpu).collect();
    let samples = load::run(&targets, &[AUTHORITY], &phases).await;
    paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let all = samples.iter().filter(|s| usize::from(s.target) == i);
            let sent = all.clone().count();
            let of: Vec<&Sample> = all.filter(|s| s.t >= WARMUP_SECS).collect();
            let used_ms = cpu(path).saturating_sub(before[i]) as f64;
            PathFigures {
                name: path.name.clone(),
                requests: of.len(),
                failed: of.iter().filter(|s| !ok(s)).count(),
                p50: service(&of, 0.5),
                p99: service(&of, 0.99),
                cpu_us: (!path.proxies.is_empty() && sent > 0)
                    .then(|| used_ms * 1e3 / sent as f64 / path.proxies.len() as f64),
            }
        })
        .collect()
}

/// A quantile of the time from each request's actual send to its whole response: the
/// generator's lag behind its schedule is its own, the same on every path, and about ten
/// times the difference being measured. The load stays open-loop (every request is sent
/// on schedule whatever the others take), so a stalled path still shows.
fn service(samples: &[&Sample], q: f64) -> Duration {
    quantile_of(samples.iter().map(|s| s.service).collect(), q)
}

fn ok(s: &Sample) -> bool {
    (200..300).contains(&s.status)
}

/// One sidecar's memory, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: u64,
    pub pss: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Memory {
        Memory {
            rss: rss_kib(pid),
            pss: pss_kib(pid),
        }
    }
}

/// Memory of A and B under load.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The highest RSS seen (sampled every 250 ms) and the PSS at the end, A then B.
    pub peak: [Memory; 2],
    /// Once the load has stopped.
    pub after: [Memory; 2],
    pub requests: usize,
    pub failed: usize,
}

/// `rate` requests/s through the mesh for `secs`, sampling both sidecars' RSS meanwhile.
pub async fn memory(mesh: &Mesh, rate: f64, secs: f64) -> Loaded {
    let stop = Arc::new(AtomicBool::new(false));
    let pids = [mesh.a.pid(), mesh.b.pid()];
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = [0u64; 2];
            while !stop.load(Ordering::Relaxed) {
                for (p, pid) in peak.iter_mut().zip(pids) {
                    *p = (*p).max(rss_kib(pid));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            peak
        })
    };
    let phases = [Phase { rate, secs }];
    let samples = load::run(&[mesh.a.addr], &[AUTHORITY], &phases).await;
    let pss = pids.map(pss_kib);
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(500)).await;
    Loaded {
        peak: [0, 1].map(|i| Memory {
            rss: peak[i],
            pss: pss[i],
        }),
        after: pids.map(Memory::of),
        requests: samples.len(),
        failed: samples.iter().filter(|s| !ok(s)).count(),
    }
}

/// What rotating the SVIDs under load cost.
#[derive(Debug, Clone, Default)]
pub struct Rotation {
    pub rotations: usize,
    pub requests: usize,
    pub failed: usize,
    /// Handshakes B refused (any reason) and upstream failures A answered 502 for.
    pub handshake_errors: f64,
    /// Identity updates either sidecar refused (a rotation it could not load).
    pub reload_errors: f64,
    /// New upstream connections A opened: one per rotation it picked up, ideally.
    pub reconnects: f64,
}

/// The counters [`Rotation`] is computed from, read before and after.
fn counters(a: &Sidecar, b: &Sidecar) -> [f64; 3] {
    let errors = b.metric("weir_sidecar_inbound_refused_total")
        + a.metric("weir_sidecar_outbound_upstream_errors_total");
    let reload = "weir_sidecar_identity_reloads_total{result=\"error\"}";
    [
        errors,
        a.metric(reload) + b.metric(reload),
        a.metric("weir_sidecar_outbound_upstream_connections_total"),
    ]
}

/// `rate` requests/s through the mesh for `secs`, re-issuing both SVIDs every `every`.
pub async fn rotation(mesh: &Mesh, rate: f64, secs: f64, every: Duration) -> Result<Rotation> {
    let before = counters(&mesh.a, &mesh.b);
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = {
        let (stop, svids): (_, Svids) = (stop.clone(), mesh.svids.clone());
        tokio::spawn(async move {
            let mut rotations = 0;
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    return anyhow::Ok(rotations);
                }
                // Key generation blocks for a moment: off the load generator's thread.
                let svids = svids.clone();
                tokio::task::spawn_blocking(move || svids.rotate()).await??;
                rotations += 1;
            }
        })
    };
    let samples = load::run(&[mesh.a.addr], &[AUTHORITY], &[Phase { rate, secs }]).await;
    stop.store(true, Ordering::Relaxed);
    let rotations = rotator.await??;
    // The last rotation's reload and reconnection land within a poll.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = counters(&mesh.a, &mesh.b);
    Ok(Rotation {
        rotations,
        requests: samples.len(),
        failed: samples.iter().filter(|s| !ok(s)).count(),
        handshake_errors: after[0] - before[0],
        reload_errors: after[1] - before[1],
        reconnects: after[2] - before[2],
    })
}
