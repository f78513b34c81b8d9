//! The sidecar harness behind `weir-sidecar-bench`: client → sidecar A (outbound) →
//! [optional middle hop] → sidecar B (inbound, STRICT mTLS) → `weir-echo`, all real
//! processes on loopback, started in this process's tree and sharing its cores.
//!
//! One run measures, against a direct plaintext call to the same echo in the same run
//! (and, optionally, an nginx pair and an Envoy pair in the sidecars' places): the latency
//! two sidecars add,
//! their memory idle and under load, and what rotating both SVIDs every second costs.
//!
//! - [`mesh`]: the processes, SVIDs and the [`mesh::Via`] hook for a gateway hop;
//! - [`nginx`] and [`envoy`]: the peer pairs; [`phases`]: the measurements; [`report`]:
//!   the goals table.

pub mod envoy;
pub mod mesh;
pub mod nginx;
pub mod phases;
pub mod report;

use crate::procs::{Proc, free_port};
use anyhow::Result;
use mesh::{Mesh, MeshOptions};
use phases::{Loaded, Memory, Path, PathFigures, Rotation};
use std::time::Duration;

/// A peer's two proxies in the sidecars' places, stopped with SIGTERM when dropped (so an
/// nginx master ends its worker rather than orphan it).
#[derive(Debug)]
pub struct PeerPair {
    a: Proc,
    b: Proc,
    /// Where the client sends: proxy A's plain listener.
    pub addr: std::net::SocketAddr,
}

impl PeerPair {
    /// Starts proxy B on a free port (`b(port)`), then A on another (`a(port, b's port)`).
    fn start(
        dir: &std::path::Path,
        b: impl FnOnce(u16) -> Result<Proc>,
        a: impl FnOnce(u16, u16) -> Result<Proc>,
    ) -> Result<PeerPair> {
        std::fs::create_dir_all(dir)?;
        let (a_port, b_port) = (free_port()?, free_port()?);
        let b = b(b_port)?;
        let a = a(a_port, b_port)?;
        Ok(PeerPair {
            a,
            b,
            addr: format!("127.0.0.1:{a_port}").parse()?,
        })
    }

    /// The two processes' pids (nginx: the masters; memory figures add their workers).
    pub fn pids(&self) -> [u32; 2] {
        [self.a.id(), self.b.id()]
    }
}

impl Drop for PeerPair {
    fn drop(&mut self) {
        self.a.terminate(Duration::from_secs(5));
        self.b.terminate(Duration::from_secs(5));
    }
}

/// What to run, and how hard.
#[derive(Debug, Clone)]
pub struct Options {
    pub mesh: MeshOptions,
    /// Latency: requests/s down each path, and for how long.
    pub rate: f64,
    pub secs: f64,
    /// Memory under load: requests/s through the sidecars, and for how long.
    pub memory_rate: f64,
    pub memory_secs: f64,
    /// Rotation: requests/s through the sidecars, for how long, and how often both SVIDs
    /// are re-issued.
    pub rotation_rate: f64,
    pub rotation_secs: f64,
    pub rotate_every: Duration,
    /// Measure an nginx pair too.
    pub nginx: bool,
    /// Measure an Envoy pair too (HTTP/2 and SPIFFE checks between them, as weir's pair).
    pub envoy: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Direct first, then the sidecars, then the peers (when measured).
    pub paths: Vec<PathFigures>,
    /// A and B right after start, before any request.
    pub idle: [Memory; 2],
    pub loaded: Loaded,
    /// The nginx pair's memory (both masters and workers, PSS) after the latency run.
    pub nginx_pss: Option<u64>,
    /// The Envoy pair's memory (PSS) after the latency run.
    pub envoy_pss: Option<u64>,
    pub rotation: Rotation,
    pub sidecar_threads: Option<u16>,
}

impl Report {
    /// Failed requests over every phase.
    pub fn failed(&self) -> usize {
        self.paths.iter().map(|p| p.failed).sum::<usize>()
            + self.loaded.failed
            + self.rotation.failed
    }
}

pub const DIRECT: &str = "direct (client → echo)";
pub const SIDECARS: &str = "weir-sidecar pair";
pub const NGINX: &str = "nginx pair";
pub const ENVOY: &str = "Envoy pair";

/// Runs every phase, printing progress lines through `print`.
pub async fn run(opts: &Options, print: impl Fn(&str)) -> Result<Report> {
    crate::procs::require_binaries(&opts.mesh.bin_dir, &["weir-sidecar", "weir-echo"])?;
    let mesh = Mesh::start(&opts.mesh)?;
    // Let the sidecars finish starting (allocator, runtime threads) before reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = [Memory::of(mesh.a.pid()), Memory::of(mesh.b.pid())];
    print(&format!(
        "started: echo {}, sidecar A outbound {} (pid {}), sidecar B inbound {} (pid {}){}",
        mesh.echo,
        mesh.a.addr,
        mesh.a.pid(),
        mesh.b.addr,
        mesh.b.pid(),
        match &opts.mesh.via {
            Some(via) => format!(", via {} ({})", via.addr, via.spiffe_id),
            None => String::new(),
        }
    ));

    let pair = match opts.nginx {
        true => {
            let (a, b) = mesh.svids.issue_pair(&opts.mesh.work_dir.join("nginx"))?;
            Some(nginx::start(
                &opts.mesh.work_dir.join("nginx"),
                mesh.echo,
                &a,
                &b,
            )?)
        }
        false => None,
    };
    let envoys = match opts.envoy {
        true => {
            let dir = opts.mesh.work_dir.join("envoy");
            let (a, b) = mesh.svids.issue_pair(&dir)?;
            Some(envoy::start(&dir, mesh.echo, &a, &b)?)
        }
        false => None,
    };
    let path = |name: &str, addr, proxies: &[u32]| Path {
        name: name.to_owned(),
        addr,
        proxies: proxies.to_vec(),
    };
    let mut paths = vec![
        path(DIRECT, mesh.echo, &[]),
        path(SIDECARS, mesh.a.addr, &[mesh.a.pid(), mesh.b.pid()]),
    ];
    if let Some(pair) = &pair {
        paths.push(path(NGINX, pair.addr, &pair.pids()));
    }
    if let Some(pair) = &envoys {
        paths.push(path(ENVOY, pair.addr, &pair.pids()));
    }
    print(&format!(
        "latency: {} requests/s down each of {} paths, interleaved, for {} s",
        opts.rate,
        paths.len(),
        opts.secs
    ));
    let paths = phases::latency(&paths, opts.rate, opts.secs).await;
    let pss = |pids: [u32; 2]| pids.iter().map(|pid| Memory::of(*pid).pss).sum();
    let nginx_pss = pair.map(|p| pss(p.pids()));
    let envoy_pss = envoys.map(|p| pss(p.pids()));

    print(&format!(
        "memory: {} requests/s through the sidecars for {} s",
        opts.memory_rate, opts.memory_secs
    ));
    let loaded = phases::memory(&mesh, opts.memory_rate, opts.memory_secs).await;

    print(&format!(
        "rotation: {} requests/s for {} s, both SVIDs re-issued every {:?}",
        opts.rotation_rate, opts.rotation_secs, opts.rotate_every
    ));
    let rotation = phases::rotation(
        &mesh,
        opts.rotation_rate,
        opts.rotation_secs,
        opts.rotate_every,
    )
    .await?;
    Ok(Report {
        paths,
        idle,
        loaded,
        nginx_pss,
        envoy_pss,
        rotation,
        sidecar_threads: opts.mesh.sidecar_threads,
    })
}
