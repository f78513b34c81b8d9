//! The peer: a pair of nginx proxies in the sidecars' places, each with one worker. nginx A
//! takes the client's plain HTTP and proxies it over mTLS (TLS 1.3, A's SVID, pooled
//! keep-alive connections) to nginx B, which requires a client certificate from the run's
//! CA and proxies to the same `weir-echo` over pooled keep-alive connections.
//!
//! nginx cannot check a SPIFFE ID, and SVIDs carry no DNS name for its host check, so
//! nginx A does not verify B's certificate at all and B checks only the chain: less work
//! than the sidecars do, which favours the peer.

use super::PeerPair;
use crate::procs::{Proc, spawn_listening};
use anyhow::Result;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

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
    let mut cmd = Command::new("nginx");
    cmd.arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let what = format!("nginx {name} (apt-get install nginx-light)");
    spawn_listening(&mut cmd, port, Duration::from_secs(10), &what, &log)
}

/// Starts nginx B in front of `echo` with `b_svid`, then nginx A with `a_svid`.
pub fn start(dir: &Path, echo: SocketAddr, a_svid: &Path, b_svid: &Path) -> Result<PeerPair> {
    PeerPair::start(
        dir,
        |b| nginx(dir, "b", config_b(dir, b, echo, b_svid), b),
        |a, b| nginx(dir, "a", config_a(dir, a, b, a_svid), a),
    )
}
