//! `weir-propagation-bench`: watch event → route live, at several route counts, and memory
//! per 1,000 routes against nginx with as many server blocks. Each size runs in fresh child
//! processes, so that its memory is its own.

#![allow(clippy::print_stdout)]

use clap::Parser;
use std::process::Command;
use std::time::Duration;
use weir_loadtest::propagation::{Figures, measure, nginx};

/// The gateway's allocator, so that time and memory are the gateway's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
struct Cli {
    /// Route counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1000, 5000])]
    routes: Vec<usize>,
    /// New routes added one by one at each size.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// The source's debounce, as `weir-gateway --debounce-ms` (default 10).
    #[arg(long, default_value_t = 10)]
    debounce_ms: u64,
    /// Internal: measure one size in this process and print its figures as JSON.
    #[arg(long, hide = true)]
    one: Option<usize>,
}

fn child(n: usize, events: usize, debounce_ms: u64, purge: bool) -> anyhow::Result<Figures> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--one", &n.to_string(), "--events", &events.to_string()]);
    cmd.args(["--debounce-ms", &debounce_ms.to_string()]);
    if purge {
        // jemalloc then returns freed pages at once: the memory figure is live data, not
        // what translation's garbage left resident.
        cmd.env("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0");
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "size {n}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.one {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let f = rt.block_on(measure(
            n,
            cli.events,
            Duration::from_millis(cli.debounce_ms),
        ))?;
        println!("{}", serde_json::to_string(&f)?);
        return Ok(());
    }
    println!(
        "debounce {} ms, {} events per size",
        cli.debounce_ms, cli.events
    );
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>10}",
        "routes", "p50 ms", "p99 ms", "max ms", "apply ms", "translate", "PSS MiB", "nginx MiB"
    );
    let mut mem = Vec::new();
    for &n in &cli.routes {
        let f = child(n, cli.events, cli.debounce_ms, false)?;
        let m = child(n, 0, cli.debounce_ms, true)?;
        let peer = nginx::pss_with(n)?;
        println!(
            "{:>7} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>10.1} {:>9.1} {:>10.1}",
            f.routes,
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            f.apply_p50_ms,
            f.translate_p50_ms,
            m.pss_kib as f64 / 1024.0,
            peer as f64 / 1024.0
        );
        mem.push((n, m.pss_kib as f64, peer as f64));
    }
    if let (Some(small), Some(large)) = (mem.first(), mem.last())
        && large.0 > small.0
    {
        let thousands = (large.0 - small.0) as f64 / 1000.0;
        let weir = (large.1 - small.1) / thousands / 1024.0;
        let peer = (large.2 - small.2) / thousands / 1024.0;
        println!(
            "memory per 1,000 routes ({} → {}): weir {weir:.1} MiB, nginx {peer:.1} MiB, ratio {:.2}",
            small.0,
            large.0,
            weir / peer
        );
    }
    Ok(())
}
