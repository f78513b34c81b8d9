//! What every harness needs to run real processes on loopback: a child killed on drop, a
//! free port, the `listening on ADDR` handshake, and a tiny blocking HTTP client for
//! admin and control endpoints (Prometheus text included).

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed (SIGKILL) and reaped on drop, so a failed run leaks nothing.
#[derive(Debug)]
pub struct Proc(Child);

impl Proc {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGTERM (through `kill(1)`: the workspace forbids `unsafe`) without waiting,
    /// so that a caller can watch the drain as it happens.
    pub fn sigterm(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.0.id());
        Ok(())
    }

    /// Asks the process to exit (SIGTERM) and waits up to `grace` for it; drop kills it if
    /// it is still running. For a parent with children of its own, such as an nginx master,
    /// SIGKILL alone would orphan them: on SIGTERM the master ends its workers first.
    pub fn terminate(&mut self, grace: Duration) {
        if self.sigterm().is_ok() {
            let _ = self.wait_timeout(grace);
        }
    }

    /// The exit status once the process has exited, waiting at most `timeout`; `None` if
    /// it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits up to `within` until it accepts connections on 127.0.0.1:`port`;
/// an error names `what` and its `log` if it exits or never listens.
pub fn spawn_listening(
    cmd: &mut Command,
    port: u16,
    within: Duration,
    what: &str,
    log: &Path,
) -> Result<Proc> {
    let mut proc = Proc::new(cmd.spawn().with_context(|| format!("starting {what}"))?);
    let began = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if began.elapsed() > within || proc.wait_timeout(Duration::ZERO)?.is_some() {
            bail!("{what} did not start; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proc)
}

/// A port free right now on 127.0.0.1, for a process the caller starts next.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by
/// default): a port from `bind(0)` is released before the child binds it, and in that gap
/// any listener on port 0 or any outgoing connection's source port could take it, which
/// made tests fail now and then with "connection refused". Below the range only another
/// such caller competes: each process walks its own stretch (by its pid), and each port is
/// checked by binding it.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000; // up to 31,999
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `weir-echo` beside the running test binary (`target/debug`), built on demand when a
/// crate's tests run alone (`cargo test --workspace` has built it already).
pub fn echo_bin() -> Result<std::path::PathBuf> {
    static BUILD: std::sync::Once = std::sync::Once::new();
    test_bin(&BUILD, "weir-loadtest", "weir-echo")
}

/// `weir-sidecar` beside the running test binary, built on demand like [`echo_bin`]: the
/// loadtest crate cannot depend on the sidecar (the sidecar's tests depend on it).
pub fn sidecar_bin() -> Result<std::path::PathBuf> {
    static BUILD: std::sync::Once = std::sync::Once::new();
    test_bin(&BUILD, "weir-sidecar", "weir-sidecar")
}

/// `weir-gateway` beside the running test binary, built on demand like [`echo_bin`], for
/// tests of other crates that need the whole path (the mesh path test of the sidecar).
pub fn gateway_bin() -> Result<std::path::PathBuf> {
    static BUILD: std::sync::Once = std::sync::Once::new();
    test_bin(&BUILD, "weir-gateway", "weir-gateway")
}

/// `weir-controller` beside the running test binary, built on demand like [`echo_bin`], for
/// the service graph's test (it runs with the mesh path of the sidecar's tests).
pub fn controller_bin() -> Result<std::path::PathBuf> {
    static BUILD: std::sync::Once = std::sync::Once::new();
    test_bin(&BUILD, "weir-controller", "weir-controller")
}

fn test_bin(once: &std::sync::Once, package: &str, bin: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary directory")?;
    let path = dir.join(bin);
    once.call_once(|| {
        if path.exists() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let _ = Command::new(cargo)
            .args(["build", "-q", "-p", package, "--bin", bin])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
    });
    anyhow::ensure!(
        path.exists(),
        "{} missing and could not be built",
        path.display()
    );
    Ok(path)
}

/// Reads the `listening on ADDR` line a child prints once bound.
pub fn listening_on(child: &mut Child) -> Result<SocketAddr> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout piped")?).read_line(&mut line)?;
    line.trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .parse()
        .context("address")
}

/// A blocking HTTP/1.0 request without a body: status and body.
pub fn http(method: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: admin\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

/// A blocking HTTP/1.0 GET: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http("GET", addr, path)
}

/// Polls `GET path` on `addr` until it answers 200, for at most `timeout`.
pub fn wait_ok(addr: SocketAddr, path: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while http_get(addr, path).is_none_or(|(code, _)| code != 200) {
        if Instant::now() > deadline {
            bail!("{addr}{path} did not answer 200 within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The sum of every sample of `name` (any labels, or exactly the labels when `name`
/// carries a `{...}` selector) in Prometheus text; `None` when no sample has that name,
/// so a caller can tell "0" from "not exported".
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(name.ends_with('}') || rest.starts_with([' ', '{'])) {
            continue;
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// The sum of the samples of `name` whose labels include every `(label, value)` pair;
/// `None` when no sample matches.
pub fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((set, value)) = rest.split_once("} ") else {
            continue;
        };
        let has = |(k, v): &(&str, &str)| {
            let pair = format!("{k}=\"{v}\"");
            set.split(',').any(|p| p.trim() == pair)
        };
        if labels.iter().all(has)
            && let Ok(value) = value.trim().parse::<f64>()
        {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// The binaries a harness starts, with a message naming the build command when missing.
pub fn require_binaries(bin_dir: &Path, names: &[&str]) -> Result<()> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !bin_dir.join(n).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found in {}: build them first with `cargo build --release -p weir-gateway -p weir-loadtest` (or pass --bin-dir)",
            missing.join(" and "),
            bin_dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_tell_zero_from_missing() {
        let text =
            "# HELP x\nweir_a_total{k=\"1\"} 2\nweir_a_total{k=\"2\"} 3\nweir_ab 7\nweir_b 0\n";
        assert_eq!(metric_sum(text, "weir_a_total"), Some(5.0));
        assert_eq!(metric_sum(text, "weir_a_total{k=\"2\"}"), Some(3.0));
        assert_eq!(metric_sum(text, "weir_b"), Some(0.0));
        assert_eq!(metric_sum(text, "weir_a"), None);
        assert_eq!(metric_sum(text, "weir_c"), None);
    }

    #[test]
    fn metric_labels_match_whole_pairs_in_any_order() {
        let text = "weir_z_total{locality=\"local\",service=\"default/app:80\"} 4\n\
                    weir_z_total{service=\"default/app:80\",locality=\"cross\"} 1\n\
                    weir_z_total{locality=\"localish\",service=\"x\"} 9\n";
        let local = [("locality", "local")];
        assert_eq!(metric_with(text, "weir_z_total", &local), Some(4.0));
        let cross = [("service", "default/app:80"), ("locality", "cross")];
        assert_eq!(metric_with(text, "weir_z_total", &cross), Some(1.0));
        assert_eq!(metric_with(text, "weir_z_total", &[("service", "y")]), None);
    }
}

/// The `weir` GatewayClass and Gateway `namespace/name` with one HTTP listener on `port`:
/// the head of every harness's manifests.
pub fn gateway_yaml(namespace: &str, name: &str, port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: weir}}
spec: {{controllerName: weir.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  gatewayClassName: weir
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
"
    )
}

/// One `weir-gateway` with a manifests directory of its own, one proxy thread (the machine
/// has two cores, shared with the backends and the clients), bound to loopback.
#[derive(Debug)]
pub struct Gateway {
    _proc: Proc,
    /// The listener port the manifests were written for.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Gateway {
    /// Writes `manifests(listener port)` into `dir` and starts a gateway on it with `extra`
    /// arguments, logging at `log` into `dir/gateway.log` (or nowhere); returns once it is
    /// ready and its listener accepts connections.
    pub fn start(
        bin_dir: &Path,
        dir: &Path,
        manifests: impl FnOnce(u16) -> String,
        extra: &[&str],
        log: Option<&str>,
    ) -> Result<Gateway> {
        let port = free_port()?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("manifests.yaml"), manifests(port))?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let (filter, stderr) = match log {
            Some(filter) => (
                filter,
                Stdio::from(std::fs::File::create(dir.join("gateway.log"))?),
            ),
            None => ("warn", Stdio::null()),
        };
        let child = Command::new(bin_dir.join("weir-gateway"))
            .arg("--manifests")
            .arg(dir)
            .args(["--admin", &admin.to_string(), "--bind", "127.0.0.1"])
            .args(["--threads", "1"])
            .args(extra)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting weir-gateway")?;
        let gw = Gateway {
            _proc: Proc::new(child),
            addr: format!("127.0.0.1:{port}").parse()?,
            admin,
        };
        wait_ok(gw.admin, "/readyz", Duration::from_secs(20))
            .with_context(|| format!("weir-gateway for {} did not become ready", gw.addr))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&gw.addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("weir-gateway is ready but its listener {} is not", gw.addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(gw)
    }

    /// The sum of a metric's samples (any labels); `None` if it is not exported (yet).
    pub fn metric(&self, name: &str) -> Option<f64> {
        Self::metric_at(self.admin, name)
    }

    /// [`Gateway::metric`] by admin address, for callers that read it on another thread.
    pub fn metric_at(admin: SocketAddr, name: &str) -> Option<f64> {
        let (_, body) = http_get(admin, "/metrics")?;
        metric_sum(&body, name)
    }
}

/// Debian's `prometheus` on a free loopback port, scraping `targets` (`host:port`, path
/// `/metrics`) every second, with its data in `dir`. For the tests of what reads Prometheus
/// (the dashboards, the service graph).
#[derive(Debug)]
pub struct Prometheus {
    _proc: Proc,
    pub port: u16,
}

impl Prometheus {
    pub fn start(dir: &Path, targets: &[String]) -> Result<Prometheus> {
        let found = Command::new("prometheus")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        anyhow::ensure!(
            found,
            "prometheus is not installed; `script/setup test` installs it (Debian package prometheus)"
        );
        std::fs::create_dir_all(dir)?;
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: weir\n  static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            ),
        )?;
        let port = free_port()?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus")?;
        Ok(Prometheus {
            _proc: Proc::new(child),
            port,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Every panel query of the dashboards `files` in `dir` (`deploy/dashboards`), with
/// Grafana's variables filled in as Grafana would for "All" and a short window:
/// `(dashboard, panel, expr)`.
pub fn panel_queries(dir: &Path, files: &[&str]) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(dir.join(file)).with_context(|| file.to_string())?;
        let d: serde_json::Value = serde_json::from_str(&text).with_context(|| file.to_string())?;
        for p in d["panels"].as_array().context("panels")? {
            for t in p["targets"].as_array().context("targets")? {
                let expr = t["expr"]
                    .as_str()
                    .context("expr")?
                    .replace("$__rate_interval", "1m")
                    .replace("$gateway", ".*");
                out.push((
                    d["title"].as_str().unwrap_or(file).to_string(),
                    p["title"].as_str().unwrap_or("").to_string(),
                    expr,
                ));
            }
        }
    }
    Ok(out)
}

impl Prometheus {
    /// An instant query's result vector; `None` while Prometheus does not answer, `Err`
    /// with its message when the query does not run.
    pub fn query(&self, expr: &str) -> Option<std::result::Result<Vec<serde_json::Value>, String>> {
        let encoded: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().ok()?;
        let (_, body) = http_get(addr, &format!("/api/v1/query?query={encoded}"))?;
        let resp: serde_json::Value = serde_json::from_str(&body).ok()?;
        if resp["status"] != "success" {
            return Some(Err(resp.to_string()));
        }
        Some(Ok(resp["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()))
    }

    /// Waits until `targets` were each scraped ten times (rates need several scrapes).
    pub fn wait_scraped(&self, targets: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let up = self.query(r#"count_over_time(up{job="weir"}[1m]) >= 10"#);
            if matches!(up, Some(Ok(r)) if r.len() >= targets) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{targets} targets were not scraped ten times within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs each `(dashboard, panel, expr)` until it returns a finite number, within one
    /// deadline for all; returns the panels that never did. A query that does not run is
    /// one of them at once.
    pub fn panels_without_data(
        &self,
        queries: &[(String, String, String)],
        within: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut empty = Vec::new();
        for (dashboard, panel, expr) in queries {
            loop {
                let result = match self.query(expr) {
                    Some(Ok(result)) => result,
                    Some(Err(e)) => {
                        empty.push(format!(
                            "{dashboard} / {panel}: the query does not run: {expr}: {e}"
                        ));
                        break;
                    }
                    None => Vec::new(),
                };
                let numbers = result.iter().any(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                });
                if numbers {
                    break;
                }
                if Instant::now() > deadline {
                    empty.push(format!("{dashboard} / {panel}: {expr} -> {result:?}"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        empty
    }
}
