//! The command line. Every flag has an environment variable too, since the sidecar is
//! usually configured by a pod template (`env:`) rather than by `args:`.
//!
//! Single values are checked by clap value parsers; rules spanning several flags are
//! checked by [`Cli::check`]. Either way a mistake exits with status 2 and says which value
//! is wrong and why, before anything is bound or read.

mod outbound;
mod pattern;

pub use outbound::{DEFAULT_OUTBOUND, OutboundAddr, parse_host_port};
pub use pattern::parse_pattern;

use clap::Parser;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Weir's mini sidecar: terminates inbound mTLS for a meshed pod with its SPIFFE SVID and
/// forwards HTTP to the app on 127.0.0.1; with --upstream, carries the app's outbound HTTP
/// over mTLS to the mesh.
#[derive(Debug, Parser)]
#[command(name = "weir-sidecar", version)]
pub struct Cli {
    /// Directory holding the SVID in the csi-driver-spiffe layout: `tls.crt`, `tls.key`
    /// and the trust bundle `ca.crt`. Polled every second; a rotation is picked up by new
    /// handshakes without dropping open connections.
    #[arg(long, env = "WEIR_SIDECAR_IDENTITY_DIR", value_name = "DIR")]
    pub identity_dir: PathBuf,

    /// An inbound port: listen on PORT and forward to the app on 127.0.0.1:APP_PORT. MODE
    /// is `strict` (default: mTLS only) or `permissive` (plaintext is forwarded too).
    /// Repeatable; the environment variable takes a space-separated list.
    #[arg(
        long = "inbound",
        env = "WEIR_SIDECAR_INBOUND",
        value_name = "PORT=APP_PORT[,MODE]",
        value_delimiter = ' ',
        required = true
    )]
    pub inbound: Vec<InboundSpec>,

    /// SPIFFE IDs allowed to connect over mTLS: exact, or a prefix ending in `*`
    /// (`spiffe://cluster.local/ns/shop/*`). Repeatable, or comma-separated.
    #[arg(long = "allow", env = "WEIR_SIDECAR_ALLOW", value_name = "SPIFFE_ID",
          value_delimiter = ',', value_parser = parse_pattern)]
    pub allow: Vec<String>,

    /// Peers trusted to set `x-weir-caller-identity` themselves (the gateway fleet, which
    /// forwards the original caller's identity). Any other peer gets its own ID written
    /// there. Setters must be allowed by --allow too. Same syntax as --allow.
    #[arg(long = "identity-setter", env = "WEIR_SIDECAR_IDENTITY_SETTER", value_name = "SPIFFE_ID",
          value_delimiter = ',', value_parser = parse_pattern)]
    pub identity_setter: Vec<String>,

    /// The outbound listener: the app sends plain HTTP/1.1 here (origin-form with Host,
    /// or absolute-form as an HTTP_PROXY client) and the sidecar carries it over mTLS to
    /// --upstream. Default 127.0.0.1:15001 when --upstream is set; `none` disables it.
    #[arg(long, env = "WEIR_SIDECAR_OUTBOUND", value_name = "ADDR|none")]
    pub outbound: Option<OutboundAddr>,

    /// The fleet's mesh listener outbound requests go to, over mTLS and HTTP/2
    /// (e.g. weir-gateway-internal.weir-system:15443). Without it, outbound is off.
    #[arg(long, env = "WEIR_SIDECAR_UPSTREAM", value_name = "HOST:PORT",
          value_parser = parse_host_port)]
    pub upstream: Option<String>,

    /// SPIFFE IDs the upstream may present; required with --upstream. Same syntax as
    /// --allow.
    #[arg(long = "upstream-id", env = "WEIR_SIDECAR_UPSTREAM_ID", value_name = "SPIFFE_ID",
          value_delimiter = ',', value_parser = parse_pattern)]
    pub upstream_id: Vec<String>,

    /// Address of the admin listener (`/healthz`, `/metrics`).
    #[arg(
        long,
        env = "WEIR_SIDECAR_ADMIN",
        value_name = "ADDR",
        default_value = "127.0.0.1:15020"
    )]
    pub admin: SocketAddr,

    /// Address the inbound ports listen on.
    #[arg(
        long,
        env = "WEIR_SIDECAR_BIND",
        value_name = "IP",
        default_value = "0.0.0.0"
    )]
    pub bind: IpAddr,

    /// On SIGTERM or SIGINT, how long open connections may take to finish their requests
    /// before the sidecar exits anyway (a Gateway API duration: `10s`, `500ms`, `1m30s`).
    /// It exits sooner once they have. Keep it under the pod's termination grace period.
    #[arg(long, env = "WEIR_SIDECAR_DRAIN_TIMEOUT", value_name = "DURATION",
          default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Threads of the data plane. A sidecar shares its pod's CPU with the app: 1 (the
    /// default) runs everything on one thread, which also wakes fewer threads per request
    /// than a pool would; more is for pods that send or take thousands of requests a second.
    #[arg(long, env = "WEIR_SIDECAR_THREADS", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// Export a span per request, inbound and outbound, over OTLP/HTTP to this collector
    /// (http://otel-collector:4318; `/v1/traces` is added unless the URL ends with it).
    /// Each span is the next hop's parent in the `traceparent` it gets.
    #[arg(long, env = "WEIR_SIDECAR_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// The share of traces starting at this sidecar that are sampled, 0 to 1; a caller's
    /// `traceparent` decides for the traces it started.
    #[arg(
        long,
        env = "WEIR_SIDECAR_TRACE_SAMPLING",
        value_name = "RATIO",
        default_value_t = 1.0
    )]
    pub trace_sampling: f64,

    /// AuthorizationPolicies for requests that do not cross the fleet: the JSON the
    /// controller writes for the pod's namespace (ConfigMap `weir-authz`, key
    /// `policies.json`). Polled every second; a missing file means no policy.
    #[arg(long, env = "WEIR_SIDECAR_AUTHZ_FILE", value_name = "PATH")]
    pub authz_file: Option<PathBuf>,

    /// The pod's labels, `key=value` comma-separated: the sidecar enforces the policies of
    /// the Services whose selector they match. `weir-controller inject` sets them from the
    /// pod template.
    #[arg(long, env = "WEIR_SIDECAR_WORKLOAD_LABELS", value_name = "KEY=VALUE",
          value_delimiter = ',', value_parser = parse_label)]
    pub workload_labels: Vec<(String, String)>,
}

/// One `key=value` label.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let (k, v) = (k.trim(), v.trim());
    if k.is_empty() {
        return Err(format!("{text:?} has no label key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Whether an inbound port also accepts plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// mTLS only: plaintext connections are closed. The default, and the mesh's goal.
    Strict,
    /// mTLS or plaintext, for migrating a workload whose callers are not all meshed yet.
    Permissive,
}

/// One `--inbound PORT=APP_PORT[,MODE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundSpec {
    pub port: u16,
    pub app_port: u16,
    pub mode: Mode,
}

impl FromStr for InboundSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        const FORMAT: &str = "expected PORT=APP_PORT[,MODE], e.g. 15006=8080,strict";
        let (ports, mode) = match text.split_once(',') {
            Some((ports, mode)) => (ports, Some(mode)),
            None => (text, None),
        };
        let (port, app_port) = ports.split_once('=').ok_or(FORMAT)?;
        let port_number = |what: &str, p: &str| match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{what} {p:?} is not a port (1-65535); {FORMAT}")),
        };
        let mode = match mode.map(str::trim) {
            None | Some("strict") => Mode::Strict,
            Some("permissive") => Mode::Permissive,
            Some(other) => {
                return Err(format!("mode {other:?} is neither strict nor permissive"));
            }
        };
        Ok(Self {
            port: port_number("PORT", port)?,
            app_port: port_number("APP_PORT", app_port)?,
            mode,
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Strict => "strict",
            Mode::Permissive => "permissive",
        })
    }
}

/// A GEP-2257 duration, as Gateway API resources write them (`10s`, `1m30s`, `500ms`), so
/// that the sidecar's flags read like the routes' timeouts.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    weir_model::duration::parse(text).map_err(|e| e.to_string())
}

impl Cli {
    /// Rules that span several flags. The message names the flag to fix.
    pub fn check(&self) -> Result<(), String> {
        let mut ports = std::collections::BTreeSet::new();
        for spec in &self.inbound {
            if !ports.insert(spec.port) {
                return Err(format!("--inbound port {} is given twice", spec.port));
            }
            if spec.port == spec.app_port {
                return Err(format!(
                    "--inbound {}={}: the sidecar cannot forward a port to itself",
                    spec.port, spec.app_port
                ));
            }
            if spec.port == self.admin.port() {
                return Err(format!("--inbound port {} is the --admin port", spec.port));
            }
        }
        if self.allow.is_empty() {
            return Err(
                "--allow is required: with no allowed SPIFFE IDs every mTLS peer \
                        would be refused"
                    .into(),
            );
        }
        if !self.workload_labels.is_empty() && self.authz_file.is_none() {
            return Err(
                "--workload-labels only chooses policies from --authz-file, which is not set"
                    .into(),
            );
        }
        self.check_outbound()?;
        if !self.identity_dir.is_dir() {
            return Err(format!(
                "--identity-dir {} is not a directory",
                self.identity_dir.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_specs_parse_with_a_strict_default() {
        let spec: InboundSpec = "15006=8080".parse().unwrap();
        assert_eq!(
            (spec.port, spec.app_port, spec.mode),
            (15006, 8080, Mode::Strict)
        );
        let spec: InboundSpec = "15006=8080,permissive".parse().unwrap();
        assert_eq!(spec.mode, Mode::Permissive);
        for bad in ["15006", "0=80", "15006=x", "70000=80", "1=2,lenient", "=80"] {
            assert!(bad.parse::<InboundSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_read_like_gateway_api_timeouts() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["10", "ten", "1.5s", "-1s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    fn cli(args: &[&str]) -> Cli {
        let dir = std::env::temp_dir();
        let mut argv = vec!["weir-sidecar", "--identity-dir", dir.to_str().unwrap()];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn cross_flag_rules_are_checked() {
        let ok = cli(&["--inbound", "1=2", "--allow", "spiffe://td/*"]);
        assert_eq!(ok.check(), Ok(()));
        let twice = cli(&[
            "--inbound",
            "1=2",
            "--inbound",
            "1=3",
            "--allow",
            "spiffe://*",
        ]);
        assert!(twice.check().unwrap_err().contains("twice"));
        let itself = cli(&["--inbound", "5=5", "--allow", "spiffe://*"]);
        assert!(itself.check().unwrap_err().contains("itself"));
        let no_allow = cli(&["--inbound", "1=2"]);
        assert!(no_allow.check().unwrap_err().contains("--allow"));
        let listed = cli(&[
            "--inbound",
            "1=2 3=4,permissive",
            "--allow",
            "spiffe://a/*,spiffe://b/x",
        ]);
        assert_eq!(listed.inbound.len(), 2);
        assert_eq!(listed.allow.len(), 2);
    }
}
