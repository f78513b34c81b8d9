//! The run's tables: latency per path, then the goals (the rows of the balance harness's
//! [`crate::balance::report`]).

use super::phases::{Memory, PathFigures};
use super::{DIRECT, Options, Report, SIDECARS};
use crate::balance::report::Row;
use std::time::Duration;

/// The peer pairs a run may measure: path name, and the short name the goals table uses.
const PEERS: [(&str, &str); 2] = [(super::NGINX, "nginx"), (super::ENVOY, "envoy")];

/// Per-sidecar goals.
const P50_GOAL: Duration = Duration::from_micros(100);
const P99_GOAL: Duration = Duration::from_micros(500);
const IDLE_GOAL_KIB: u64 = 8 * 1024;
const LOADED_GOAL_KIB: u64 = 15 * 1024;

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Picks one quantile of a path's figures.
type Quantile = fn(&PathFigures) -> Duration;

/// Latency a two-proxy path adds over the direct one, per proxy, in ms (signed: noise can
/// put a quantile of the longer path under the direct one's).
fn added(path: &PathFigures, direct: &PathFigures, q: Quantile) -> f64 {
    (q(path).as_secs_f64() - q(direct).as_secs_f64()) * 1e3 / 2.0
}

/// The per-path table.
pub fn paths(report: &Report) -> String {
    let mut out = String::from(
        "| path | requests | failed | p50 ms | p99 ms | added per proxy, p50 ms | added per proxy, p99 ms | CPU per request per proxy, µs |\n|---|---|---|---|---|---|---|---|\n",
    );
    let direct = report.paths.iter().find(|p| p.name == DIRECT);
    for p in &report.paths {
        let (a50, a99) = match direct {
            Some(d) if p.name != DIRECT => (
                format!("{:.3}", added(p, d, |p| p.p50)),
                format!("{:.3}", added(p, d, |p| p.p99)),
            ),
            _ => ("-".into(), "-".into()),
        };
        let cpu = p.cpu_us.map_or("-".into(), |us| format!("{us:.0}"));
        out += &format!(
            "| {} | {} | {} | {} | {} | {a50} | {a99} | {cpu} |\n",
            p.name,
            p.requests,
            p.failed,
            ms(p.p50),
            ms(p.p99)
        );
    }
    out
}

fn memory_pair(m: &[Memory; 2]) -> String {
    format!(
        "A {} MiB, B {} MiB (PSS {}, {})",
        mib(m[0].rss),
        mib(m[1].rss),
        mib(m[0].pss),
        mib(m[1].pss)
    )
}

/// The goals, one row each.
pub fn rows(report: &Report, opts: &Options) -> Vec<Row> {
    let (rate, memory_rate, rotation_rate) = (opts.rate, opts.memory_rate, opts.rotation_rate);
    let find = |name: &str| report.paths.iter().find(|p| p.name == name);
    let mut rows = Vec::new();
    let quantiles: [(&str, Quantile, Duration); 2] =
        [("p50", |p| p.p50, P50_GOAL), ("p99", |p| p.p99, P99_GOAL)];
    for (label, q, goal) in quantiles {
        let mut row = Row::new(
            &format!("latency added per sidecar, {label}, at {rate} requests/s"),
            &format!("≤ {} ms", ms(goal)),
        );
        if let (Some(direct), Some(weir)) = (find(DIRECT), find(SIDECARS)) {
            let weir_added = added(weir, direct, q);
            row.measured = format!(
                "{weir_added:.3} ms (pair {} ms, direct {} ms)",
                ms(q(weir)),
                ms(q(direct))
            );
            for (name, label) in PEERS {
                if let Some(peer) = find(name) {
                    let peer_added = added(peer, direct, q);
                    row.measured += &format!(
                        "; {label} {peer_added:.3} ms per proxy (pair {} ms), weir/{label} {:.2}",
                        ms(q(peer)),
                        weir_added / peer_added
                    );
                }
            }
            if label == "p50" {
                let cpu = |p: &PathFigures| p.cpu_us.map_or("-".into(), |us| format!("{us:.0} µs"));
                row.measured += &format!("; CPU per request per proxy: weir {}", cpu(weir));
                for (name, label) in PEERS {
                    if let Some(peer) = find(name) {
                        row.measured += &format!(", {label} {}", cpu(peer));
                    }
                }
            }
            row.pass = weir_added <= goal.as_secs_f64() * 1e3 && weir.failed == 0;
        }
        rows.push(row);
    }

    let threads = match report.sidecar_threads {
        Some(n) => format!("--threads {n}"),
        None => "default threads".into(),
    };
    let mut idle = Row::new(
        &format!("sidecar RSS idle after start ({threads})"),
        &format!("≤ {} MiB each", mib(IDLE_GOAL_KIB)),
    );
    idle.measured = memory_pair(&report.idle);
    idle.pass = report.idle.iter().all(|m| m.rss <= IDLE_GOAL_KIB);
    rows.push(idle);

    let l = &report.loaded;
    let mut loaded = Row::new(
        &format!("sidecar RSS at {memory_rate} requests/s ({threads})"),
        &format!("≤ {} MiB each", mib(LOADED_GOAL_KIB)),
    );
    loaded.measured = format!(
        "peak {}; idle after: {}; {} of {} requests failed",
        memory_pair(&l.peak),
        memory_pair(&l.after),
        l.failed,
        l.requests
    );
    if let Some(pss) = report.nginx_pss {
        loaded.measured += &format!(
            "; nginx pair after its latency run: {} MiB PSS for both masters and workers",
            mib(pss)
        );
    }
    if let Some(pss) = report.envoy_pss {
        loaded.measured += &format!(
            "; Envoy pair after its latency run: {} MiB PSS for both",
            mib(pss)
        );
    }
    loaded.pass = l.peak.iter().all(|m| m.rss <= LOADED_GOAL_KIB) && l.failed == 0;
    rows.push(loaded);

    let r = &report.rotation;
    let mut rotation = Row::new(
        &format!("both SVIDs rotated every second at {rotation_rate} requests/s"),
        "0 failed requests, 0 handshake errors",
    );
    rotation.measured = format!(
        "{} of {} failed, {} handshake errors, {} refused reloads; {} rotations, {} new upstream connections",
        r.failed, r.requests, r.handshake_errors, r.reload_errors, r.rotations, r.reconnects
    );
    rotation.pass = r.failed == 0 && r.handshake_errors == 0.0 && r.reload_errors == 0.0;
    rows.push(rotation);
    rows
}
