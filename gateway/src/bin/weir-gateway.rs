//! `weir-gateway`: serves Gateway API manifests with Pingora.

use clap::Parser;

/// A proxy allocates and frees headers and buffers for every request: under load glibc's
/// malloc and free took about an eighth of the CPU; jemalloc's thread caches take less.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Weir's gateway: serves the Gateways, HTTPRoutes and GRPCRoutes of a cluster (`--kube`)
/// or of a directory of Kubernetes manifests, and applies every change without a restart.
#[derive(Parser, Debug)]
#[command(name = "weir-gateway", version)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["manifests", "kube"]))]
struct Cli {
    /// A YAML file or a directory of them (read recursively), watched for changes. An
    /// invalid change keeps the last good config serving and is reported in the log and
    /// in /config.
    #[arg(long, value_name = "PATH", env = "WEIR_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API instead (the in-cluster config, else the kubeconfig). While
    /// the API server cannot be reached, the last good config keeps serving.
    #[arg(long, env = "WEIR_KUBE")]
    kube: bool,
    /// With --kube, serve only this Gateway, NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME", env = "WEIR_GATEWAY", requires = "kube", value_parser = ns_name)]
    gateway: Option<(String, String)>,
    /// With --kube, the Service whose endpoints are the gateway fleet: their zones give the
    /// fleet's spread for zone affinity. Defaults to weir-gateway-internal in POD_NAMESPACE.
    #[arg(long, value_name = "NS/NAME", env = "WEIR_FLEET_SERVICE", requires = "kube", value_parser = ns_name)]
    fleet_service: Option<(String, String)>,
    /// With --kube, this gateway's Node (the downward API's spec.nodeName): its
    /// topology.kubernetes.io/zone label is the zone, unless --zone is given.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node: Option<String>,
    /// Address of the admin listener (/healthz, /readyz, /config, /metrics).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9901",
        env = "WEIR_ADMIN"
    )]
    admin: SocketAddr,
    /// Who may read /config (every route, endpoint, certificate chain and policy):
    /// `loopback` (a process in the pod, or kubectl port-forward) or `any`.
    #[arg(
        long,
        value_name = "WHO",
        value_enum,
        default_value = "loopback",
        env = "WEIR_CONFIG_ACCESS"
    )]
    config_access: weir_gateway::admin::ConfigAccess,
    /// Proxy worker threads.
    #[arg(long, value_name = "N", default_value_t = default_threads(), env = "WEIR_THREADS")]
    threads: usize,
    /// Write one JSON line per request to `stdout` or to this file. The file is appended
    /// to, and SIGUSR1 reopens it after log rotation renamed it. Off by default.
    #[arg(long, value_name = "stdout|PATH", env = "WEIR_ACCESS_LOG")]
    access_log: Option<weir_gateway::accesslog::Target>,
    /// Export a span per request over OTLP/HTTP (protobuf) to this collector, such as
    /// http://otel-collector:4318 (`/v1/traces` is added unless the URL ends with it).
    #[arg(long, value_name = "URL", env = "WEIR_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The share of traces starting at the gateway that are sampled, 0 to 1. A client's
    /// `traceparent` decides for the traces it started (parent-based sampling).
    #[arg(
        long,
        value_name = "RATIO",
        default_value_t = 1.0,
        env = "WEIR_TRACE_SAMPLING"
    )]
    trace_sampling: f64,
    /// Address the Gateway listener ports are bound on.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0", env = "WEIR_BIND")]
    bind: IpAddr,
    /// Quiet time after a manifest change before it is applied, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 10,
        env = "WEIR_DEBOUNCE_MS"
    )]
    debounce_ms: u64,
    /// On SIGTERM, how long in-flight requests may take to finish, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        env = "WEIR_DRAIN_SECONDS"
    )]
    drain_seconds: u64,
    /// Redis holding the rate limit counts shared by the fleet: `redis://HOST:PORT[/DB]` for
    /// one node, `redis+cluster://HOST:PORT,HOST:PORT` for a cluster, `rediss://` and
    /// `rediss+cluster://` for TLS. Without it each replica enforces RateLimitPolicies alone.
    /// It is logged without its password.
    #[arg(long, value_name = "URL", env = "WEIR_REDIS")]
    redis: Option<String>,
    /// Redis's password, read from this file (a mounted Secret) rather than the URL.
    #[arg(long, value_name = "PATH", env = "WEIR_REDIS_PASSWORD_FILE")]
    redis_password_file: Option<PathBuf>,
    /// The CA certificates (PEM) that sign Redis's TLS certificate, for `rediss://`;
    /// default: the system's roots.
    #[arg(long, value_name = "PATH", env = "WEIR_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,

    /// This gateway's availability zone. Backends with zone affinity
    /// (`trafficDistribution: PreferClose` or `PreferSameZone`, or `weir.dev/zone-affinity`)
    /// then keep the share of traffic that holds per-endpoint load even across the fleet
    /// inside this zone.
    #[arg(long, value_name = "ZONE", env = "WEIR_ZONE")]
    zone: Option<String>,

    /// Gateway replicas per zone, `a=1,b=1,c=1`. By default the fleet is assumed to be
    /// spread evenly over each upstream's zones.
    #[arg(long, value_name = "ZONE=N,...", env = "WEIR_FLEET_ZONES", value_parser = weir_gateway::balance::pool::parse_fleet)]
    fleet_zones: Option<Vec<(String, f64)>>,

    /// The DNS server that resolves ExternalName Services, IP:PORT (as nginx's `resolver`).
    /// By default the servers of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT", env = "WEIR_RESOLVER")]
    resolver: Option<SocketAddr>,

    #[command(flatten)]
    limits: Limits,
}

/// Client connection limits and backend timeouts: what a client, or a backend, can hold.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Limits and timeouts")]
struct Limits {
    /// A request header must be complete this long after the connection opens (TLS
    /// handshake included) or after a later request's first byte; else 408 and close.
    /// HTTP/2: the first request must arrive in this time.
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "WEIR_HEADER_TIMEOUT", value_parser = duration)]
    header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long
    /// (HTTP/2: GOAWAY).
    #[arg(long, value_name = "DURATION", default_value = "60s", env = "WEIR_IDLE_TIMEOUT", value_parser = duration)]
    idle_timeout: Duration,
    /// Each read of a request body from a client must come within this time.
    #[arg(long, value_name = "DURATION", default_value = "60s", env = "WEIR_CLIENT_BODY_TIMEOUT", value_parser = duration)]
    client_body_timeout: Duration,
    /// Each write to a client must make progress within this time.
    #[arg(long, value_name = "DURATION", default_value = "60s", env = "WEIR_CLIENT_WRITE_TIMEOUT", value_parser = duration)]
    client_write_timeout: Duration,
    /// Bytes of a request head (request line and header fields); over it: 431, or 414
    /// when the request line alone is longer.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024, env = "WEIR_MAX_HEADER_BYTES")]
    max_header_bytes: usize,
    /// Header fields in a request (at most 256); over it: 431.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        env = "WEIR_MAX_HEADERS"
    )]
    max_headers: usize,
    /// Concurrent streams per HTTP/2 client connection.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        env = "WEIR_MAX_CONCURRENT_STREAMS"
    )]
    max_concurrent_streams: u32,
    /// Each read from a backend must come within this time, unless the route's timeouts
    /// are shorter; else 504.
    #[arg(long, value_name = "DURATION", default_value = "300s", env = "WEIR_BACKEND_READ_TIMEOUT", value_parser = duration)]
    backend_read_timeout: Duration,
    /// Each write to a backend (a request head or body chunk) must make progress within
    /// this time; else 504.
    #[arg(long, value_name = "DURATION", default_value = "60s", env = "WEIR_BACKEND_WRITE_TIMEOUT", value_parser = duration)]
    backend_write_timeout: Duration,
    /// Rate limit keys (a header value, a client address) each RateLimitPolicy tracks at
    /// most. A new key past it makes the policy forget the key it used least recently,
    /// which starts over if it comes back (counted in
    /// weir_ratelimit_key_evictions_total).
    #[arg(long, value_name = "N", default_value_t = weir_gateway::ratelimit::DEFAULT_MAX_KEYS, env = "WEIR_RATE_LIMIT_MAX_KEYS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rate_limit_max_keys: usize,
}

/// A duration such as `10s`, `500ms` or `1m30s`.
fn duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

fn ns_name(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.into(), name.into()))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {text:?}")),
    }
}

/// `--redis` with the password and CA files applied; those need a `--redis` to apply to.
fn redis_target(cli: &Cli) -> Result<Option<weir_gateway::ratelimit::Target>, String> {
    // Parsed here, not by clap, whose error would quote the URL, password and all.
    let Some(url) = &cli.redis else {
        return match (&cli.redis_password_file, &cli.redis_ca_file) {
            (None, None) => Ok(None),
            _ => Err("--redis-password-file and --redis-ca-file need --redis".into()),
        };
    };
    let mut target: weir_gateway::ratelimit::Target =
        url.parse().map_err(|e| format!("--redis {e}"))?;
    if let Some(path) = &cli.redis_password_file {
        target = target.with_password_file(path)?;
    }
    if let Some(path) = &cli.redis_ca_file {
        target = target.with_ca_file(path)?;
    }
    Ok(Some(target))
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora_core=warn,pingora_proxy=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let redis = match redis_target(&cli) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let opts = weir_gateway::app::Options {
        source: match cli.manifests {
            Some(path) => weir_gateway::app::Source::Files(path),
            None => weir_gateway::app::Source::Kube {
                gateway: cli.gateway,
                fleet_service: cli.fleet_service.or_else(|| {
                    let ns = std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|n| !n.is_empty())?;
                    Some((ns, "weir-gateway-internal".into()))
                }),
                node: cli.node.filter(|n| !n.is_empty()),
            },
        },
        admin: cli.admin,
        config_access: cli.config_access,
        threads: cli.threads,
        bind: cli.bind,
        debounce: Duration::from_millis(cli.debounce_ms),
        drain: Duration::from_secs(cli.drain_seconds),
        redis,
        rate_limit_max_keys: cli.limits.rate_limit_max_keys,
        locality: weir_gateway::balance::Locality {
            zone: cli.zone.filter(|z| !z.is_empty()),
            fleet: cli.fleet_zones,
        },
        resolver: cli.resolver,
        limits: weir_gateway::listen::ConnLimits {
            header_timeout: cli.limits.header_timeout,
            idle_timeout: cli.limits.idle_timeout,
            client_body_timeout: cli.limits.client_body_timeout,
            client_write_timeout: cli.limits.client_write_timeout,
            max_header_bytes: cli.limits.max_header_bytes,
            max_headers: cli.limits.max_headers,
            max_concurrent_streams: cli.limits.max_concurrent_streams,
        },
        backend_timeouts: weir_gateway::proxy::BackendTimeouts {
            read: cli.limits.backend_read_timeout,
            write: cli.limits.backend_write_timeout,
        },
        access_log: cli.access_log,
        otlp_endpoint: cli.otlp_endpoint,
        trace_sampling: cli.trace_sampling,
    };
    match weir_gateway::app::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
