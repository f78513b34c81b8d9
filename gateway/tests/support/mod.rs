//! Shared test support: real `weir-gateway` and `weir-echo` processes on loopback, manifests
//! written to a temporary directory, and HTTP clients. Every process is killed on drop.

#![allow(dead_code, unreachable_pub, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Proc {
    child: Child,
    name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.name;
    }
}

impl Proc {
    /// Starts `cmd`, to be killed when the returned value is dropped.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Proc {
            child,
            name: name.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait")
    }

    /// Sends SIGTERM without waiting, so a test can watch the drain as it happens.
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }
}

/// A free loopback port, below the ephemeral range so that nothing else takes it before
/// the process it is for binds it (see `weir_loadtest::procs::free_port`).
pub fn free_port() -> u16 {
    weir_loadtest::procs::free_port().unwrap()
}

/// The directory of the running test profile's binaries (`target/debug`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// `weir-echo`, built on demand when this crate's tests run alone (`cargo test
/// --workspace` has built it already).
pub fn echo_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let path = bin_dir().join("weir-echo");
    BUILD.call_once(|| {
        if path.exists() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "weir-loadtest", "--bin", "weir-echo"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building weir-echo failed");
    });
    assert!(path.exists(), "{} missing", path.display());
    path
}

pub struct Echo {
    _proc: Proc,
    pub addr: SocketAddr,
    pub service: String,
}

impl Echo {
    pub fn start(service: &str) -> Echo {
        Self::start_with(service, &[])
    }

    pub fn start_with(service: &str, extra: &[&str]) -> Echo {
        Self::start_on(service, 0, extra)
    }

    /// Starts on a given loopback port (0 for any): a restarted endpoint keeps its address.
    pub fn start_on(service: &str, port: u16, extra: &[&str]) -> Echo {
        let mut child = Command::new(echo_bin())
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--service",
                service,
                "--pod",
                &format!("{service}-pod"),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("weir-echo starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected weir-echo output {line:?}"))
            .parse()
            .unwrap();
        Echo {
            _proc: Proc {
                child,
                name: format!("echo {service}"),
            },
            addr,
            service: service.into(),
        }
    }
}

impl Echo {
    /// The echo's counters (`/__echo/stats`).
    pub fn stats(&self) -> serde_json::Value {
        let (_, body) = blocking_get(self.addr, "/__echo/stats").expect("/__echo/stats answers");
        serde_json::from_str(&body).unwrap()
    }

    /// Zeroes the echo's request, failure and body counters.
    pub fn reset(&self) {
        let (status, _) = blocking_post(self.addr, "/__echo/reset").expect("/__echo/reset answers");
        assert_eq!(status, 200);
    }

    /// One of [`Echo::stats`]'s counters.
    pub fn count(&self, name: &str) -> u64 {
        self.stats()[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }
}

/// An HTTP listener on `port` whose one route sends everything to `app`.
pub fn one_route(port: u16, app: &Echo) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("app", &[app]);
    m += &route("r", "  rules:\n  - backendRefs: [{name: app, port: 80}]\n");
    m
}

/// A process's resident memory, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// A Service named `name` whose endpoints are the given echoes (one hand-written
/// EndpointSlice each, since each listens on its own port).
pub fn service(name: &str, echoes: &[&Echo]) -> String {
    service_with(name, echoes, "")
}

/// Like [`service`], with extra Service port fields (e.g. `appProtocol: kubernetes.io/h2c`).
pub fn service_with(name: &str, echoes: &[&Echo], port_extra: &str) -> String {
    let mut out = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{name: http, port: 80{port_extra}}}]\n"
    );
    for (i, e) in echoes.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{i}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
            e.addr.port()
        ));
    }
    out
}

/// The manifests of `deploy/examples/{name}` (the listed files, in order) after the shared
/// GatewayClass.
pub fn example(name: &str, files: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut m = std::fs::read_to_string(dir.join("gatewayclass.yaml")).unwrap();
    for f in files {
        m += "\n---\n";
        m += &std::fs::read_to_string(dir.join(name).join(f)).unwrap();
    }
    m
}

pub const CLASS: &str = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weir}\nspec: {controllerName: weir.dev/gateway-controller}\n";

/// A Gateway named `gw` with the given listener list (YAML flow items, one per line).
pub fn gateway(listeners: &[String]) -> String {
    let mut out = format!(
        "{CLASS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  gatewayClassName: weir\n  listeners:\n"
    );
    for l in listeners {
        out.push_str(&format!("  - {l}\n"));
    }
    out
}

pub fn http_listener(name: &str, port: u16) -> String {
    format!("{{name: {name}, port: {port}, protocol: HTTP}}")
}

/// An HTTPRoute named `name` on Gateway `gw` with the given `spec` body (indented YAML that
/// follows `parentRefs`).
pub fn route(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{name: gw}}]\n{spec}"
    )
}

pub struct Gateway {
    proc: Proc,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    /// Starts `weir-gateway` on `manifests` and waits until it is ready.
    pub fn start(manifests: &str) -> Gateway {
        Self::start_with(manifests, &[])
    }

    pub fn start_with(manifests: &str, extra: &[&str]) -> Gateway {
        let gw = Self::spawn(manifests, extra);
        gw.wait_ready();
        gw
    }

    /// Starts with extra environment variables and waits until it is ready.
    pub fn start_with_env(manifests: &str, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        let gw = Self::spawn_env(manifests, extra, env);
        gw.wait_ready();
        gw
    }

    /// Starts without waiting for readiness.
    pub fn spawn(manifests: &str, extra: &[&str]) -> Gateway {
        Self::spawn_env(manifests, extra, &[])
    }

    fn spawn_env(manifests: &str, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifests.yaml"), manifests).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir-gateway"))
            .arg("--manifests")
            .arg(dir.path())
            .args([
                "--admin",
                &admin.to_string(),
                "--bind",
                "127.0.0.1",
                "--threads",
                "2",
            ])
            .args(extra)
            .env("RUST_LOG", "info,pingora_core=warn,pingora_proxy=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("weir-gateway starts");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Gateway {
            proc: Proc {
                child,
                name: "weir-gateway".into(),
            },
            admin,
            dir,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        blocking_get(self.admin, path)
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((200, _)) = self.admin_get("/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway not ready in 20s; log:\n{}", self.log());
    }

    /// The live config generation, from `/config`.
    pub fn generation(&self) -> u64 {
        self.config()["generation"].as_u64().unwrap_or(0)
    }

    pub fn config(&self) -> serde_json::Value {
        let (_, body) = self.admin_get("/config").expect("/config answers");
        serde_json::from_str(&body).unwrap()
    }

    /// Replaces the manifests atomically (write, then rename over), as `kubectl cp` or a
    /// ConfigMap update does.
    pub fn write(&self, manifests: &str) {
        let tmp = self.dir.path().join(".manifests.yaml.tmp");
        std::fs::write(&tmp, manifests).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("manifests.yaml")).unwrap();
    }

    /// Writes manifests and waits for the generation to move past `after`.
    pub fn write_and_wait(&self, manifests: &str) -> u64 {
        let before = self.generation();
        self.write(manifests);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let g = self.generation();
            if g > before {
                return g;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("config generation stayed at {before}; log:\n{}", self.log());
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The sum of the `/metrics` samples whose line starts with `sample` (a name, or a
    /// name with the start of its labels), 0 when there is none.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").expect("/metrics answers");
        body.lines()
            .filter(|l| l.starts_with(sample))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `metric(sample)` reaches `at_least`, and returns it.
    pub fn wait_metric(&self, sample: &str, at_least: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.metric(sample);
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} stayed at {v}, below {at_least}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls until `f` holds, returning how long it took; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// The process-wide rustls provider the test clients use (ring, as the gateway does).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A minimal blocking HTTP/1.1 GET, for the admin endpoints.
pub fn blocking_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    blocking_request(addr, "GET", path)
}

/// A minimal blocking HTTP/1.1 POST with an empty body, for control endpoints.
pub fn blocking_post(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    blocking_request(addr, "POST", path)
}

fn blocking_request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// An HTTP/1.1 client that goes to 127.0.0.1 whatever the URL's host.
pub fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The weir-echo JSON body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Which echo service answered.
    pub fn service(&self) -> &str {
        self.headers
            .get("x-echo-service")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The first value of a request header as the backend saw it.
    pub fn seen_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name][0].as_str().map(str::to_owned)
    }
}

/// GET `http://{host}:{port}{path}` (connecting to 127.0.0.1) with extra headers.
pub async fn get(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(&client(), reqwest::Method::GET, port, host, path, headers).await
}

pub async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let url = format!("http://127.0.0.1:{port}{path}");
    send_url(client, method, &url, host, headers).await
}

/// As [`send`], to any URL (`https://` with a TLS client).
pub async fn send_url(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = client.request(method, url).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request completes");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

/// A throwaway CA issuing leaf certificates, and TLS clients that trust it.
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weir test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        Pki { ca }
    }

    /// A leaf certificate for `names`, as (chain PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf certificate with DNS names and URI SANs (SPIFFE IDs), as (chain PEM, key PEM).
    pub fn leaf_with_uris(&self, names: &[&str], uris: &[&str]) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("weir"),
        );
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A ConfigMap holding this CA as `ca.crt`, as BackendTLSPolicies reference it.
    pub fn ca_config_map(&self, name: &str) -> String {
        let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
        format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata:\n  ca.crt: |\n{}",
            indent(&self.ca_pem())
        )
    }

    /// A `kubernetes.io/tls` Secret holding a fresh leaf for `names`.
    pub fn secret(&self, name: &str, names: &[&str]) -> String {
        let (cert, key) = self.leaf(names);
        tls_secret(name, &cert, &key)
    }

    pub fn ca_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A rustls client config trusting this CA, offering `alpn`, limited to `versions`.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        install_crypto();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        cfg
    }

    /// An HTTPS client trusting this CA that connects every name to 127.0.0.1.
    pub fn client(&self, names: &[&str], port: u16, http2: bool) -> reqwest::Client {
        let alpn: &[&[u8]] = if http2 {
            &[b"h2", b"http/1.1"]
        } else {
            &[b"http/1.1"]
        };
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .tls_info(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .tls_backend_preconfigured(self.client_config(alpn, rustls::ALL_VERSIONS));
        if !http2 {
            b = b.http1_only();
        }
        for n in names {
            b = b.resolve(n, SocketAddr::from(([127, 0, 0, 1], port)));
        }
        b.build().unwrap()
    }
}

pub fn tls_secret(name: &str, cert: &str, key: &str) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

/// Trusts exactly one certificate (pinning), for self-signed server certificates such as
/// the examples' demo certificate. Signatures are still verified.
#[derive(Debug)]
pub struct Pinned {
    der: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Pinned {
    pub fn client_config(cert_pem: &str) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        install_crypto();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let verifier = Pinned {
            der: der.to_vec(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        };
        let mut cfg = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg
    }
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_slice() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
pub mod mesh;
pub mod origin;
pub mod raw;
pub mod redis;

/// An echo backend `app` whose one endpoint is in `zone-a`, routes `shop` (to app) and
/// `quota` (to app, one request a minute), on a fresh listener port.
pub fn site() -> (Echo, u16, String) {
    let app = Echo::start("app");
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: app}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-0, labels: {{kubernetes.io/service-name: app}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"], zone: zone-a}}]\n",
        app.addr.port()
    );
    for host in ["shop", "quota"] {
        m += &route(
            host,
            &format!(
                "  hostnames: [{host}]\n  rules:\n  - backendRefs: [{{name: app, port: 80}}]\n"
            ),
        );
    }
    m += "---\napiVersion: weir.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: quota}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: quota}]\n  limits:\n  - {name: l, requests: 1, window: 60s}\n";
    (app, port, m)
}

/// Starts `weir-gateway` on a one-listener config with `args`, which must stop the start:
/// returns what it said (stderr, then stdout).
pub fn start_refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.yaml"),
        gateway(&[http_listener("http", free_port())]),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir-gateway"))
        .arg("--manifests")
        .arg(dir.path())
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} started");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}
