//! `weir-balance-bench`: the load-balancing harness (see [`weir_loadtest::balance`]).

// Its output is the report (stdout) and its errors (stderr).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the report is the output"
)]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use weir_loadtest::balance::report;
use weir_loadtest::balance::run::{self, Options, Scenario};

/// Zone affinity, weighted splits, retries and ejection, measured through a real
/// weir-gateway in front of weir-echo endpoints in zones a, b and c.
#[derive(Debug, Parser)]
#[command(name = "weir-balance-bench", version)]
struct Cli {
    /// Requests per measurement (the 503 row sends twice as many, the per-zone canary row
    /// half as many per zone).
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Concurrent keep-alive clients. Keep it under 16: from about 8 requests in flight per
    /// local endpoint the gateway's load-aware spill sends traffic to other zones by design,
    /// which the in-zone rows would then measure instead of zone affinity.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Only these rows (comma-separated or repeated): balanced, lose-one, lose-all, canary,
    /// weight-zero, flaky, canary-zones, fleet-even.
    #[arg(long, value_delimiter = ',', value_parser = Scenario::parse)]
    only: Vec<Scenario>,
    /// Keep the manifests and the gateways' and echoes' logs (their directory is printed).
    #[arg(long)]
    keep_logs: bool,
    /// Where weir-gateway and weir-echo are (default: beside this binary).
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
    let options = Options {
        requests: cli.requests,
        concurrency: cli.concurrency,
        scenarios: if cli.only.is_empty() {
            Scenario::ALL.to_vec()
        } else {
            cli.only
        },
        bin_dir,
        work_dir: std::env::temp_dir().join(format!("weir-balance-bench-{}", std::process::id())),
        keep_logs: cli.keep_logs,
    };
    // One worker: the gateway under test and the echoes need the machine's other core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let result = runtime.block_on(run::run(options.clone(), |line| println!("{line}")));
    if options.keep_logs {
        eprintln!("manifests and logs kept in {}", options.work_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&options.work_dir);
    }
    match result {
        Ok(rows) => {
            println!("\n{}", report::table(&rows));
            if rows.iter().all(|r| r.pass) {
                ExitCode::SUCCESS
            } else {
                println!("Some goals are not met.");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("weir-balance-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
