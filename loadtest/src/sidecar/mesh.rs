//! The processes of one run: `weir-echo` (the app), sidecar B in front of it (inbound,
//! STRICT mTLS) and sidecar A (outbound) carrying the client's plain HTTP to B, or to a
//! middle hop ([`Via`]) that routes it on to B. SVIDs come from a trust domain CA made
//! (or loaded) for the run, with the same code as `weir-controller ca init|issue`.

use crate::procs::{self, Proc, free_port, metric_sum, wait_ok};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use weir_controller::cli::ca::{Ca, spiffe_id};

/// The trust domain of a run's own CA (a `--ca-dir` CA brings its own).
pub const TRUST_DOMAIN: &str = "weir.bench";
/// The client's pod (sidecar A) and the app's (sidecar B), as `(namespace, service account)`.
pub const CLIENT: (&str, &str) = ("bench", "client");
pub const APP: (&str, &str) = ("bench", "echo");

/// The hook for a middle hop (the gateway fleet's mesh listener): A's `--upstream` goes
/// there instead of to B, and B admits the hop and trusts it to relay A's identity. The
/// hop must route the requests' authority to B's inbound port (`--sidecar-in-port` fixes
/// it) and trust the run's CA (`--ca-dir`).
#[derive(Debug, Clone)]
pub struct Via {
    /// `HOST:PORT` of the hop's mTLS HTTP/2 listener.
    pub addr: String,
    /// The SPIFFE ID the hop presents.
    pub spiffe_id: String,
}

/// How the mesh is started.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    pub bin_dir: PathBuf,
    pub work_dir: PathBuf,
    /// An existing CA directory (`ca.crt`, `ca.key`) instead of a fresh CA.
    pub ca_dir: Option<PathBuf>,
    /// `--threads` for both sidecars; their default when `None`.
    pub sidecar_threads: Option<u16>,
    /// B's inbound port; a free one when `None`.
    pub sidecar_in_port: Option<u16>,
    pub via: Option<Via>,
    /// Sidecar and echo logs into `work_dir` (else nowhere).
    pub keep_logs: bool,
}

/// One running `weir-sidecar`.
#[derive(Debug)]
pub struct Sidecar {
    proc: Proc,
    /// The listener the traffic enters by: outbound for A, inbound for B.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Sidecar {
    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// The sum of a metric's samples (any labels, or exactly the `{...}` selector given);
    /// 0 when it is not exported or the admin listener does not answer.
    pub fn metric(&self, name: &str) -> f64 {
        procs::http_get(self.admin, "/metrics")
            .and_then(|(_, text)| metric_sum(&text, name))
            .unwrap_or(0.0)
    }
}

/// The app and both sidecars.
#[derive(Debug)]
pub struct Mesh {
    _echo: Proc,
    pub echo: SocketAddr,
    pub a: Sidecar,
    pub b: Sidecar,
    pub svids: Svids,
}

/// The sidecars' SVID directories and the CA that issues them.
#[derive(Debug, Clone)]
pub struct Svids {
    ca: Ca,
    /// Sidecar A's (the client's pod).
    pub a: PathBuf,
    /// Sidecar B's (the app's pod).
    pub b: PathBuf,
}

fn id(ca: &Ca, (ns, sa): (&str, &str)) -> String {
    spiffe_id(&ca.trust_domain, ns, sa)
}

impl Mesh {
    pub fn start(opts: &MeshOptions) -> Result<Mesh> {
        std::fs::create_dir_all(&opts.work_dir)?;
        let ca = match &opts.ca_dir {
            Some(dir) => Ca::load(dir).with_context(|| format!("--ca-dir {}", dir.display()))?,
            None => Ca::init(TRUST_DOMAIN, 1)?,
        };
        let (a_svid, b_svid) = (opts.work_dir.join("svid-a"), opts.work_dir.join("svid-b"));
        issue(&ca, &a_svid, CLIENT)?;
        issue(&ca, &b_svid, APP)?;
        let log = |name: &str| -> Result<Stdio> {
            Ok(match opts.keep_logs {
                true => Stdio::from(std::fs::File::create(opts.work_dir.join(name))?),
                false => Stdio::null(),
            })
        };

        let mut echo = Command::new(opts.bin_dir.join("weir-echo"))
            .args(["--listen", "127.0.0.1:0", "--service", "echo"])
            .stdout(Stdio::piped())
            .stderr(log("echo.log")?)
            .spawn()
            .context("starting weir-echo")?;
        let echo_addr = procs::listening_on(&mut echo)?;
        let echo = Proc::new(echo);

        let b_port = match opts.sidecar_in_port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut b_args = vec![
            "--inbound".to_owned(),
            format!("{b_port}={},strict", echo_addr.port()),
            "--allow".to_owned(),
            id(&ca, CLIENT),
        ];
        if let Some(via) = &opts.via {
            b_args.extend(["--allow".into(), via.spiffe_id.clone()]);
            b_args.extend(["--identity-setter".into(), via.spiffe_id.clone()]);
        }
        let b_addr = format!("127.0.0.1:{b_port}").parse()?;
        let b = sidecar(opts, &b_svid, b_addr, &b_args, log("sidecar-b.log")?)?;

        let out: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let (upstream, upstream_id) = match &opts.via {
            Some(via) => (via.addr.clone(), via.spiffe_id.clone()),
            None => (b_addr.to_string(), id(&ca, APP)),
        };
        let a_args = [
            // Inbound is required; A's is never called in this run.
            "--inbound".to_owned(),
            format!("{}=1", free_port()?),
            "--allow".to_owned(),
            id(&ca, APP),
            "--outbound".to_owned(),
            out.to_string(),
            "--upstream".to_owned(),
            upstream,
            "--upstream-id".to_owned(),
            upstream_id,
        ];
        let a = sidecar(opts, &a_svid, out, &a_args, log("sidecar-a.log")?)?;
        Ok(Mesh {
            _echo: echo,
            echo: echo_addr,
            a,
            b,
            svids: Svids {
                ca,
                a: a_svid,
                b: b_svid,
            },
        })
    }
}

impl Svids {
    /// Re-issues both SVIDs into their directories, as csi-driver-spiffe renews them.
    pub fn rotate(&self) -> Result<()> {
        issue(&self.ca, &self.a, CLIENT)?;
        issue(&self.ca, &self.b, APP)
    }

    /// Issues SVIDs for the client's and the app's pods into other directories (for the
    /// peer proxies); returns them as `(client, app)`.
    pub fn issue_pair(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let (a, b) = (dir.join("svid-a"), dir.join("svid-b"));
        issue(&self.ca, &a, CLIENT)?;
        issue(&self.ca, &b, APP)?;
        Ok((a, b))
    }
}

fn issue(ca: &Ca, dir: &Path, (ns, sa): (&str, &str)) -> Result<()> {
    ca.issue(ns, sa, 1)?.write(dir, ca)?;
    Ok(())
}

/// Starts a sidecar and waits until it is healthy (which implies listening).
fn sidecar(
    opts: &MeshOptions,
    svid: &Path,
    addr: SocketAddr,
    args: &[String],
    log: Stdio,
) -> Result<Sidecar> {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = Command::new(opts.bin_dir.join("weir-sidecar"));
    cmd.arg("--identity-dir")
        .arg(svid)
        .args(["--admin", &admin.to_string(), "--bind", "127.0.0.1"])
        .args(args);
    if let Some(threads) = opts.sidecar_threads {
        cmd.args(["--threads", &threads.to_string()]);
    }
    let child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting weir-sidecar")?;
    let sidecar = Sidecar {
        proc: Proc::new(child),
        addr,
        admin,
    };
    wait_ok(admin, "/healthz", Duration::from_secs(20))
        .with_context(|| format!("weir-sidecar for {addr}"))?;
    Ok(sidecar)
}
