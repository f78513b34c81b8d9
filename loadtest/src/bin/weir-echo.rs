//! `weir-echo`: the command line over [`weir_loadtest::echo`].
//!
//! Contract with whoever starts it (integration tests, benchmark scripts, pods): exactly
//! one line, `listening on <addr>`, on stdout once the socket is bound, so a caller that
//! asked for port 0 learns the real port; logs go to stderr; SIGTERM or SIGINT drains and
//! exits 0.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use weir_loadtest::echo::{self, Identity};

/// HTTP echo backend for Weir's integration tests and benchmarks.
///
/// Answers every request with a JSON description of it (path, host, method, protocol,
/// headers, body size and this instance's identity) over HTTP/1.1 and h2c on one port.
/// Per request: `?delay=100ms` waits before answering, `/status/NNN` sets the status,
/// `X-Echo-Set-Header: Name:value,...` adds response headers, `Connection: upgrade`
/// switches protocols and echoes raw bytes, `content-type: application/grpc` gets a gRPC
/// answer. `GET /__echo/stats` counts requests served; `POST /__echo/reset` zeroes it.
/// `--fail-ratio` fails that share of requests on purpose; `POST /__echo/fail?ratio=R`
/// changes it at runtime.
#[derive(Debug, Parser)]
#[command(name = "weir-echo", version)]
struct Cli {
    /// Address to listen on, as IP:PORT or :PORT (all IPv4 interfaces). Port 0 picks a
    /// free port; the one chosen is printed on stdout as `listening on <addr>`.
    #[arg(long, env = "WEIR_ECHO_LISTEN", value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    listen: SocketAddr,

    /// Number of runtime worker threads.
    #[arg(long, env = "WEIR_ECHO_THREADS", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,

    /// Service name reported in the echo document and the x-echo-service header.
    #[arg(
        long,
        env = "WEIR_ECHO_SERVICE",
        value_name = "NAME",
        default_value = ""
    )]
    service: String,

    /// Namespace reported in the echo document.
    #[arg(
        long,
        env = "WEIR_ECHO_NAMESPACE",
        value_name = "NS",
        default_value = ""
    )]
    namespace: String,

    /// Pod name reported in the echo document and the x-echo-pod header.
    #[arg(long, env = "WEIR_ECHO_POD", value_name = "NAME", default_value = "")]
    pod: String,

    /// Topology zone reported in the echo document.
    #[arg(long, env = "WEIR_ECHO_ZONE", value_name = "ZONE", default_value = "")]
    zone: String,

    /// Share of requests (0.0..=1.0), each drawn independently, answered with
    /// --fail-status instead of the echo. `/__echo/*` control requests never fail.
    // Negative numbers are parsed, so `--fail-ratio -0.1` gets the range error, not a
    // puzzling "unexpected argument".
    #[arg(long, env = "WEIR_ECHO_FAIL_RATIO", value_name = "R", default_value_t = 0.0, value_parser = echo::parse_ratio, allow_negative_numbers = true)]
    fail_ratio: f64,

    /// Status of the requests failed by --fail-ratio.
    #[arg(long, env = "WEIR_ECHO_FAIL_STATUS", value_name = "N", default_value_t = 503, value_parser = clap::value_parser!(u16).range(200..=599))]
    fail_status: u16,
}

/// `:8080` is the Go-style "every interface" shorthand that manifests tend to use.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_owned(),
    };
    full.parse()
        .map_err(|error| format!("expected IP:PORT or :PORT: {error}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes would only clutter logs captured by tests and pods.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.threads))
        .thread_name("weir-echo")
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Register the handlers before announcing the port, so a caller that signals as soon
    // as it reads the line cannot kill us with the default disposition.
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    };

    // Before binding: a caller must never see `listening on` from a misconfigured echo.
    let failure = echo::Failure::new(cli.fail_ratio, cli.fail_status)
        .map_err(|message| anyhow::anyhow!(message))?;
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    announce(addr)?;
    tracing::info!(%addr, threads = cli.threads, fail_ratio = cli.fail_ratio, "weir-echo serving");

    let identity = Identity {
        service: cli.service,
        namespace: cli.namespace,
        pod: cli.pod,
        zone: cli.zone,
    };
    echo::serve(listener, identity, failure, shutdown).await
}

/// The one stdout line callers wait for; flushed because stdout is a pipe there, and a
/// buffered line would leave them waiting forever.
fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}").context("writing to stdout")?;
    stdout.flush().context("flushing stdout")
}
