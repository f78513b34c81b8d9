//! The processes of a run: `weir-echo` instances named after pods (each can be SIGKILLed
//! and restarted on the same port) and `weir-gateway`s, each with its own manifests
//! directory, listener port and admin port.

use super::manifests::Endpoint;
use crate::procs::{Proc, http, http_get, listening_on};
use anyhow::{Context, Result, bail};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the processes' logs go, when kept (`--keep-logs`).
#[derive(Debug, Clone)]
pub struct Logs(pub Option<PathBuf>);

impl Logs {
    /// A log file to append to (restarts add to the same file), or nothing.
    fn stderr(&self, name: &str) -> Result<Stdio> {
        Ok(match &self.0 {
            Some(dir) => Stdio::from(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(name))?,
            ),
            None => Stdio::null(),
        })
    }
}

/// One echo instance standing for a pod in a zone.
#[derive(Debug)]
pub struct Echo {
    pub pod: String,
    pub zone: String,
    pub addr: SocketAddr,
    proc: Option<Proc>,
    bin: PathBuf,
    logs: Logs,
}

/// What `GET /__echo/stats` counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoStats {
    pub requests: u64,
    pub failures: u64,
}

impl Echo {
    pub fn start(bin_dir: &Path, pod: &str, zone: &str, logs: &Logs) -> Result<Echo> {
        let mut echo = Echo {
            pod: pod.to_owned(),
            zone: zone.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            proc: None,
            bin: bin_dir.join("weir-echo"),
            logs: logs.clone(),
        };
        let (proc, addr) = echo.spawn()?;
        echo.proc = Some(proc);
        echo.addr = addr;
        Ok(echo)
    }

    fn spawn(&self) -> Result<(Proc, SocketAddr)> {
        let mut child = Command::new(&self.bin)
            .args(["--listen", &self.addr.to_string(), "--threads", "1"])
            .args(["--pod", &self.pod, "--zone", &self.zone])
            .args(["--service", "bench"])
            .env("RUST_LOG", "warn")
            .env_remove("WEIR_ECHO_FAIL_RATIO")
            .stdout(Stdio::piped())
            .stderr(self.logs.stderr(&format!("echo-{}.log", self.pod))?)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let addr = listening_on(&mut child);
        let proc = Proc::new(child);
        Ok((proc, addr?))
    }

    /// SIGKILL: no drain, the gateway sees resets and refused connections.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// Starts the instance again on the same port. Binding can fail for a moment after a
    /// kill, so it is retried briefly.
    pub fn restart(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Ok((proc, _)) => {
                    self.proc = Some(proc);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("restarting {} on {}", self.pod, self.addr)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            pod: self.pod.clone(),
            zone: self.zone.clone(),
            addr: self.addr,
        }
    }

    pub fn stats(&self) -> Result<EchoStats> {
        let (_, body) = http_get(self.addr, "/__echo/stats")
            .with_context(|| format!("reading {}'s stats", self.pod))?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let count = |f: &str| v[f].as_u64().unwrap_or(0);
        Ok(EchoStats {
            requests: count("requests"),
            failures: count("failures"),
        })
    }

    /// `POST /__echo/fail?ratio=R`.
    pub fn set_fail_ratio(&self, ratio: f64) -> Result<()> {
        match http("POST", self.addr, &format!("/__echo/fail?ratio={ratio}")) {
            Some((200, _)) => Ok(()),
            other => bail!("setting {}'s fail ratio: {other:?}", self.pod),
        }
    }
}

/// The echo instances of a run, found by pod name.
#[derive(Debug)]
pub struct Fleet {
    pub echoes: Vec<Echo>,
}

impl Fleet {
    pub fn start(bin_dir: &Path, pods: &[(&str, &str)], logs: &Logs) -> Result<Fleet> {
        let echoes = pods
            .iter()
            .map(|(pod, zone)| Echo::start(bin_dir, pod, zone, logs))
            .collect::<Result<_>>()?;
        Ok(Fleet { echoes })
    }

    pub fn get(&self, pod: &str) -> &Echo {
        self.echoes
            .iter()
            .find(|e| e.pod == pod)
            .expect("a pod of the fleet")
    }

    pub fn get_mut(&mut self, pod: &str) -> &mut Echo {
        self.echoes
            .iter_mut()
            .find(|e| e.pod == pod)
            .expect("a pod of the fleet")
    }

    pub fn pods(&self) -> Vec<String> {
        self.echoes.iter().map(|e| e.pod.clone()).collect()
    }

    /// The zone of the pod at `index` in [`Fleet::pods`].
    pub fn zones(&self) -> Vec<String> {
        self.echoes.iter().map(|e| e.zone.clone()).collect()
    }

    /// The endpoints of the named pods.
    pub fn endpoints(&self, pods: &[&str]) -> Vec<Endpoint> {
        pods.iter().map(|p| self.get(p).endpoint()).collect()
    }
}

pub use crate::procs::Gateway;

/// A gateway in `zone` (when the binary has a `--zone` flag) serving `manifests`, with its
/// log kept when the run keeps logs.
pub fn gateway(
    bin_dir: &Path,
    dir: &Path,
    zone: Option<&str>,
    manifests: impl FnOnce(u16) -> String,
    logs: &Logs,
) -> Result<Gateway> {
    let zone_args = zone.map(|z| ["--zone", z]);
    let extra: &[&str] = zone_args.as_ref().map_or(&[], |a| a.as_slice());
    Gateway::start(
        bin_dir,
        dir,
        manifests,
        extra,
        logs.0.as_ref().map(|_| "info"),
    )
}

/// Whether this `weir-gateway` has a flag: the zone flags are new, and a run against an
/// older gateway should still measure what it can.
pub fn gateway_has_flag(bin_dir: &Path, flag: &str) -> bool {
    Command::new(bin_dir.join("weir-gateway"))
        .arg("--help")
        .output()
        .is_ok_and(|o| {
            // Whole words, so `--zone` is not found inside `--zone-weights`.
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|word| word.trim_end_matches(',') == flag)
        })
}
