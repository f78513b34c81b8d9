//! Shared test support: real `weir-sidecar` and `weir-echo` processes on loopback, SVIDs
//! from `weir_controller::cli::ca` in a temporary directory. Every process is killed on drop.
//! Processes, ports and admin GETs come from `weir_loadtest::procs`, as in the harnesses.

#![allow(dead_code, unreachable_pub)]

pub mod client;
pub mod mesh;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_controller::cli::ca::Ca;
use weir_loadtest::procs::{self, Proc};

/// A free loopback port (bound and released; the tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    procs::free_port().unwrap()
}

/// The app: a `weir-echo` on a loopback port, answering with the request it saw as JSON.
pub struct Echo {
    _proc: Proc,
    pub port: u16,
}

impl Echo {
    pub fn start() -> Echo {
        Self::start_on(0)
    }

    /// An app on `port` (0: a free one), as when a restarted app binds its port again.
    pub fn start_on(port: u16) -> Echo {
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(procs::echo_bin().unwrap())
            .args(["--listen", &listen, "--service", "app"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("weir-echo starts");
        let addr = procs::listening_on(&mut child).unwrap();
        Echo {
            _proc: Proc::new(child),
            port: addr.port(),
        }
    }
}

/// A trust domain CA and SVID directories in a temporary directory.
pub struct Pki {
    pub ca: Ca,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            ca: Ca::init("weir.test", 1).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Issues an SVID for `ns/sa` into `<tmp>/<name>` and returns that directory.
    pub fn svid(&self, name: &str, ns: &str, sa: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        self.ca
            .issue(ns, sa, 1)
            .unwrap()
            .write(&dir, &self.ca)
            .unwrap();
        dir
    }
}

pub fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://weir.test/ns/{ns}/sa/{sa}")
}

/// A running `weir-sidecar` with its stderr captured.
pub struct Sidecar {
    proc: Proc,
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Sidecar {
    /// Starts the sidecar on `identity` with `args`, and waits for `/healthz`.
    pub fn start(identity: &Path, args: &[&str]) -> Sidecar {
        let sidecar = Self::spawn(identity, args);
        sidecar.wait_healthy(Duration::from_secs(20));
        sidecar
    }

    /// A callee's sidecar: STRICT mTLS on a free port in front of the app on `app_port`,
    /// with `args` (who it admits, and the like). Returns it and its inbound port.
    pub fn callee(identity: &Path, app_port: u16, args: &[&str]) -> (Sidecar, u16) {
        let port = free_port();
        let inbound = format!("{port}={app_port},strict");
        let mut all = vec!["--inbound", inbound.as_str()];
        all.extend_from_slice(args);
        (Self::start(identity, &all), port)
    }

    /// A caller's sidecar: outbound on a free port to `upstream`, which must present
    /// `upstream_id`, with `args` (who its idle inbound side admits, and the like). Its own
    /// app is never called. Returns it and its outbound port.
    pub fn caller(
        identity: &Path,
        upstream: &str,
        upstream_id: &str,
        args: &[&str],
    ) -> (Sidecar, u16) {
        let out = free_port();
        let inbound = format!("{}=1", free_port());
        let outbound = format!("127.0.0.1:{out}");
        let mut all = vec![
            "--inbound",
            inbound.as_str(),
            "--outbound",
            outbound.as_str(),
            "--upstream",
            upstream,
            "--upstream-id",
            upstream_id,
        ];
        all.extend_from_slice(args);
        (Self::start(identity, &all), out)
    }

    /// Starts the sidecar without waiting.
    pub fn spawn(identity: &Path, args: &[&str]) -> Sidecar {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir-sidecar"))
            .arg("--identity-dir")
            .arg(identity)
            .args(["--admin", &admin.to_string(), "--bind", "127.0.0.1"])
            .args(args)
            .env("RUST_LOG", "info,weir_sidecar=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("weir-sidecar starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (mut stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Sidecar {
            proc: Proc::new(child),
            admin,
            log,
        }
    }

    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.admin_get("/healthz").map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "not healthy; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM: the drain starts.
    pub fn sigterm(&self) {
        self.proc.sigterm().unwrap();
    }

    /// The exit status, if the process exits within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.proc.wait_timeout(within).unwrap()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        procs::http_get(self.admin, path)
    }

    /// The value of the series `name` whose labels include every `labels` pair.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = self.admin_get("/metrics").expect("/metrics answers");
        text.lines()
            // Labelled series (`name{...} v`) and unlabelled ones (`name v`).
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .find(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Waits up to `within` for `check` to hold (effects observed through another process,
/// such as a metric, land shortly after the client sees them).
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
