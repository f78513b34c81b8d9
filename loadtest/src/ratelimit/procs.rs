//! The harness's processes, each killed when dropped: `redis-server` (persistence off),
//! `weir-echo`, `weir-gateway` replicas with their own manifests and listener port, and
//! naive proxies (this binary's `naive` subcommand).

pub use crate::procs::{Proc, free_port, http_get};
use crate::procs::{listening_on, metric_sum};
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Redis {
    proc: Option<Proc>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    pub fn start(dir: &Path) -> Result<Redis> {
        let mut r = Redis {
            proc: None,
            port: free_port()?,
            dir: dir.to_path_buf(),
        };
        r.restart()?;
        Ok(r)
    }

    /// Starts (again) on the same port with no data.
    pub fn restart(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian package redis-server)")?;
        self.proc = Some(Proc::new(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("PING").is_none_or(|r| !r.starts_with("+PONG")) {
            if Instant::now() > deadline {
                bail!("redis-server did not start on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn kill(&mut self) {
        self.proc = None;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One inline command; the raw reply.
    pub fn command(&self, line: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// A field of `INFO` as a number (0 when missing).
    pub fn info_number(&self, section: &str, field: &str) -> f64 {
        self.command(&format!("INFO {section}"))
            .and_then(|info| {
                info.lines().find_map(|l| {
                    l.strip_prefix(field)?
                        .strip_prefix(':')?
                        .trim()
                        .parse()
                        .ok()
                })
            })
            .unwrap_or(0.0)
    }
}

pub fn echo(bin_dir: &Path) -> Result<(Proc, SocketAddr)> {
    let mut child = Command::new(bin_dir.join("weir-echo"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--service",
            "app",
            "--pod",
            "app-0",
            "--threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting weir-echo")?;
    let addr = listening_on(&mut child)?;
    Ok((Proc::new(child), addr))
}

/// The limits every gateway serves: `limited` (the steady-overload, jump, accuracy and
/// outage runs), `wide` (the Redis-calls run) and `free` (no policy, the latency baseline).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub limited: u64,
    pub wide: u64,
}

fn manifests(port: u16, backend: SocketAddr, limits: Limits) -> String {
    let mut m = crate::procs::gateway_yaml("default", "gw", port);
    m += &format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: app-0, namespace: default, labels: {{kubernetes.io/service-name: app}}}}
addressType: IPv4
ports: [{{name: http, port: {}}}]
endpoints: [{{addresses: [\"{}\"]}}]
",
        backend.port(),
        backend.ip()
    );
    for (host, limit) in [
        ("limited", Some(limits.limited)),
        ("wide", Some(limits.wide)),
        ("free", None),
    ] {
        m += &format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {host}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{host}]
  rules: [{{backendRefs: [{{name: app, port: 80}}]}}]
"
        );
        if let Some(limit) = limit {
            m += &format!(
                "---
apiVersion: weir.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: {host}, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {host}}}]
  failureMode: Local
  limits: [{{name: all, requests: {limit}, window: 1s}}]
"
            );
        }
    }
    m
}

pub use crate::procs::Gateway;

/// A gateway sharing limits through `redis`, in front of `backend`. `WEIR_BENCH_LOG=filter`
/// keeps each gateway's log in its directory, for reading a run.
pub fn gateway(
    bin_dir: &Path,
    dir: &Path,
    redis: &str,
    backend: SocketAddr,
    limits: Limits,
) -> Result<Gateway> {
    let log = std::env::var("WEIR_BENCH_LOG").ok();
    Gateway::start(
        bin_dir,
        dir,
        |port| manifests(port, backend, limits),
        &["--redis", redis],
        log.as_deref(),
    )
}

/// A metric's sum, 0 when not exported yet, NaN when /metrics does not answer.
pub fn metric(gw: &Gateway, name: &str) -> f64 {
    match http_get(gw.admin, "/metrics") {
        Some((_, body)) => metric_sum(&body, name).unwrap_or(0.0),
        None => f64::NAN,
    }
}

/// A histogram's cumulative buckets on /metrics: (upper bound in seconds, count).
pub fn histogram(gw: &Gateway, name: &str) -> Vec<(f64, f64)> {
    let Some((_, body)) = http_get(gw.admin, "/metrics") else {
        return Vec::new();
    };
    let prefix = format!("{name}_bucket{{le=\"");
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// A naive proxy: this binary run as `naive`.
pub fn naive(redis: &str, backend: SocketAddr, limits: Limits) -> Result<(Proc, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["naive", "--redis", redis, "--backend", &backend.to_string()])
        .args([
            "--limited",
            &limits.limited.to_string(),
            "--wide",
            &limits.wide.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the naive proxy")?;
    let addr = listening_on(&mut child)?;
    Ok((Proc::new(child), addr))
}
