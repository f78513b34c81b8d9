//! `weir-ratelimit-bench`: the distributed rate limit harness (see
//! [`weir_loadtest::ratelimit`]); `naive` runs the naive INCR limiter it compares against.

// Its output is the report (stdout) and its errors (stderr).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use weir_loadtest::ratelimit::{naive, scenarios};

#[derive(Debug, Parser)]
#[command(name = "weir-ratelimit-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Gateway replicas (and naive proxies).
    #[arg(long, default_value_t = 4)]
    gateways: usize,
    /// The limit of the accuracy, jump and outage runs, requests per second.
    #[arg(long, default_value_t = 1000)]
    limit: u64,
    /// The limit of the Redis-calls and latency runs, requests per second.
    #[arg(long, default_value_t = 10_000)]
    wide: u64,
    /// Where weir-gateway and weir-echo are (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Only measure Weir.
    #[arg(long)]
    skip_naive: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The naive limiter: a proxy making one Redis INCR per limited request.
    Naive {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        redis: String,
        #[arg(long)]
        backend: SocketAddr,
        #[arg(long)]
        limited: u64,
        #[arg(long)]
        wide: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Some(Command::Naive {
        listen,
        redis,
        backend,
        limited,
        wide,
    }) = cli.command
    {
        let config = naive::NaiveConfig {
            listen,
            redis,
            backend,
            limits: vec![("limited".into(), limited), ("wide".into(), wide)],
            window_ms: 1000,
        };
        // The contract with the harness: one `listening on ADDR` line once bound.
        let bound = |addr| println!("listening on {addr}");
        return match runtime.block_on(naive::serve(config, bound)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("naive proxy: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let bin_dir = cli.bin_dir.unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("own path");
        exe.parent().expect("a directory").to_path_buf()
    });
    let options = scenarios::Options {
        gateways: cli.gateways,
        limit: cli.limit,
        wide: cli.wide,
        bin_dir,
        work_dir: std::env::temp_dir().join(format!("weir-ratelimit-bench-{}", std::process::id())),
        skip_naive: cli.skip_naive,
    };
    let result = runtime.block_on(scenarios::run(options.clone()));
    if std::env::var_os("WEIR_BENCH_LOG").is_none() {
        let _ = std::fs::remove_dir_all(&options.work_dir);
    } else {
        eprintln!("gateway logs kept in {}", options.work_dir.display());
    }
    match result {
        Ok((weir, naive)) => {
            let (table, all) = scenarios::table(&options, &weir, naive.as_ref());
            println!("{table}");
            for line in &weir.details {
                println!("weir: {line}");
            }
            for line in naive.iter().flat_map(|n| &n.details) {
                println!("naive: {line}");
            }
            if all {
                ExitCode::SUCCESS
            } else {
                println!("Some goals are not met.");
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("weir-ratelimit-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
