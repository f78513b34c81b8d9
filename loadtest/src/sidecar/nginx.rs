//! The peer: a pair of nginx proxies in the sidecars' places, each with one worker. nginx A
//! takes the client's plain HTTP and proxies it over mTLS (TLS 1.3, A's SVID, pooled
//! keep-alive connections) to nginx B, which requires a client certificate from the run's
//! CA and proxies to the same `weir-echo` over pooled keep-alive connections.
//!
//! nginx cannot check a SPIFFE ID, and SVIDs carry no DNS name for its host check, so
//! nginx A does not verify B's certificate at all and B checks only the chain: less work
//! than the sidecars do, which favours the peer.

use crate::procs::{Proc, free_port};
use anyhow::{Context, Result, bail};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The two nginx masters (each with its worker).
#[derive(Debug)]
pub struct NginxPair {
    a: Proc,
    b: Proc,
    /// Where the client sends: nginx A's plain listener.
    pub addr: SocketAddr,
}

impl NginxPair {
    /// The masters' pids; memory figures add their workers (PSS of the process tree).
    pub fn pids(&self) -> [u32; 2] {
        [self.a.id(), self.b.id()]
    }
}

impl Drop for NginxPair {
    fn drop(&mut self) {
        self.a.terminate(Duration::from_secs(5));
        self.b.terminate(Duration::from_secs(5));
    }
}

const HEAD: &str = "worker_processes 1;\ndaemon off;\nevents {}\nhttp {\n  access_log off;\n";

/// The proxy settings both hops share: HTTP/1.1 upstream keep-alive, as BENCHMARKS.md
/// configures every nginx.
const KEEPALIVE: &str =
    "proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off;";

fn config_b(dir: &Path, port: u16, echo: SocketAddr, svid: &Path) -> String {
    let s = svid.display();
    format!(
        "pid {d}/b.pid;\n{HEAD}  upstream app {{ server {echo}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.3;\n    ssl_certificate {s}/tls.crt; ssl_certificate_key {s}/tls.key;\n    ssl_client_certificate {s}/ca.crt; ssl_verify_client on;\n    location / {{ proxy_pass http://app; {KEEPALIVE}\n      proxy_set_header x-weir-caller-identity $ssl_client_s_dn; }}\n  }}\n}}\n",
        d = dir.display()
    )
}

fn config_a(dir: &Path, port: u16, b: u16, svid: &Path) -> String {
    let s = svid.display();
    format!(
        "pid {d}/a.pid;\n{HEAD}  upstream b {{ server 127.0.0.1:{b}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass https://b; {KEEPALIVE}\n      proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;\n      proxy_ssl_certificate {s}/tls.crt; proxy_ssl_certificate_key {s}/tls.key; }}\n  }}\n}}\n",
        d = dir.display()
    )
}

fn nginx(dir: &Path, name: &str, config: String, port: u16) -> Result<Proc> {
    let conf = dir.join(format!("nginx-{name}.conf"));
    std::fs::write(&conf, config)?;
    let log = dir.join(format!("nginx-{name}-error.log"));
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install nginx-light)")?;
    let mut proc = Proc::new(child);
    let began = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if began.elapsed() > Duration::from_secs(10) || proc.wait_timeout(Duration::ZERO)?.is_some()
        {
            bail!("nginx {name} did not start; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proc)
}

/// Starts nginx B in front of `echo` with `b_svid`, then nginx A with `a_svid`.
pub fn start(dir: &Path, echo: SocketAddr, a_svid: &Path, b_svid: &Path) -> Result<NginxPair> {
    std::fs::create_dir_all(dir)?;
    let (a_port, b_port) = (free_port()?, free_port()?);
    let b = nginx(dir, "b", config_b(dir, b_port, echo, b_svid), b_port)?;
    let a = nginx(dir, "a", config_a(dir, a_port, b_port, a_svid), a_port)?;
    Ok(NginxPair {
        a,
        b,
        addr: format!("127.0.0.1:{a_port}").parse()?,
    })
}
