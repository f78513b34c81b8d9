//! The runs and the goals table. Each contender (Weir's fleet, then the naive limiter) gets
//! the same runs against the same Redis and backend, one after the other:
//!
//! 1. steady overload: 2× the limit for 8 s; the worst 1 s window of admits after warm-up;
//! 2. a 10× jump: 30% of the limit for 3 s, then 300% for 4 s; the worst 1 s window;
//! 3. accuracy under the limit: 95% of it for 8 s; every 429 is a wrong denial;
//! 4. latency: alternating a limited host (10% of its limit) and a host with no policy;
//! 5. Redis calls per request: 50% of a 10,000/s limit (round trips, from the gateways'
//!    metrics; the naive limiter makes one per request by construction, counted by Redis);
//! 6. Redis killed at 3 s and restarted empty at 6 s, under 2× overload.

use super::load::{self, Phase, Sample, max_admitted_in_window, quantile};
use super::procs::{self, Gateway, Limits, Proc, Redis};
use anyhow::Result;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Options {
    pub gateways: usize,
    pub limit: u64,
    pub wide: u64,
    pub bin_dir: PathBuf,
    pub work_dir: PathBuf,
    pub skip_naive: bool,
}

/// What one contender measured.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub steady_excess: i64,
    pub jump_excess: i64,
    pub wrong_denials: f64,
    /// p99 with the policy minus p99 without, µs (negative: noise won).
    pub added_p99_us: i64,
    pub calls_per_request: f64,
    pub commands_per_request: f64,
    pub outage_errors: usize,
    pub outage_ratio: f64,
    pub outage_slowest: Duration,
    pub recovery: Option<Duration>,
    /// Time in the limiter (the gateways' histogram, so the bucket's upper bound).
    pub limiter_p99: Option<Duration>,
    pub limiter_max: Option<Duration>,
    /// What the gateways counted, per run, for reading the figures.
    pub details: Vec<String>,
}

enum Contender {
    Weir(Vec<Gateway>),
    Naive(Vec<(Proc, SocketAddr)>),
}

impl Contender {
    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Contender::Weir(g) => g.iter().map(|g| g.addr).collect(),
            Contender::Naive(n) => n.iter().map(|(_, a)| *a).collect(),
        }
    }

    /// Round trips to Redis so far: the gateways' own count, or the naive limiter's INCRs.
    fn round_trips(&self, redis: &Redis) -> f64 {
        match self {
            Contender::Weir(g) => g
                .iter()
                .map(|g| procs::metric(g, "weir_ratelimit_redis_calls_total"))
                .sum(),
            Contender::Naive(_) => redis
                .command("INFO commandstats")
                .map(|s| {
                    // redis-rs sends INCRBY; either counts as one round trip of the pipeline.
                    s.lines()
                        .filter(|l| {
                            l.starts_with("cmdstat_incr:") || l.starts_with("cmdstat_incrby:")
                        })
                        .filter_map(|l| {
                            l.split_once("calls=")?
                                .1
                                .split(',')
                                .next()?
                                .parse::<f64>()
                                .ok()
                        })
                        .sum()
                })
                .unwrap_or(0.0),
        }
    }

    /// The gateways' lease waits by outcome (granted, denied, timeout, unavailable).
    fn lease_waits(&self) -> [f64; 4] {
        let Contender::Weir(g) = self else {
            return [0.0; 4];
        };
        ["granted", "denied", "timeout", "unavailable"].map(|o| {
            let name = format!("weir_ratelimit_lease_waits_total{{outcome=\"{o}\"}}");
            g.iter().map(|g| procs::metric(g, &name)).sum()
        })
    }

    /// The gateways' limiter time histogram, summed: (upper bound in seconds, count).
    fn check_histogram(&self) -> Vec<(f64, f64)> {
        let Contender::Weir(g) = self else {
            return Vec::new();
        };
        let mut sum: Vec<(f64, f64)> = Vec::new();
        for gw in g {
            for (i, (le, n)) in procs::histogram(gw, "weir_ratelimit_check_duration_seconds")
                .into_iter()
                .enumerate()
            {
                match sum.get_mut(i) {
                    Some(s) => s.1 += n,
                    None => sum.push((le, n)),
                }
            }
        }
        sum
    }

    fn breakers_open(&self) -> f64 {
        match self {
            Contender::Weir(g) => g
                .iter()
                .map(|g| procs::metric(g, "weir_ratelimit_breaker_open"))
                .sum(),
            Contender::Naive(_) => 0.0,
        }
    }
}

/// The upper bound of the histogram bucket holding the `q` quantile (cumulative counts).
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<Duration> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let (le, _) = buckets.iter().find(|(_, n)| *n >= total * q)?;
    le.is_finite().then(|| Duration::from_secs_f64(*le))
}

fn admitted(samples: &[Sample], from: f64, to: f64) -> usize {
    samples
        .iter()
        .filter(|s| (200..300).contains(&s.status) && s.t >= from && s.t < to)
        .count()
}

const PAUSE: Duration = Duration::from_millis(2200);

async fn measure(c: &Contender, redis: &Arc<Mutex<Redis>>, o: &Options) -> Result<Figures> {
    let addrs = c.addrs();
    let l = o.limit as f64;
    let mut f = Figures::default();
    // Connections open, scripts loaded, live gateways counted.
    load::run(
        &addrs,
        &["free"],
        &[Phase {
            rate: 200.0,
            secs: 1.5,
        }],
    )
    .await;
    tokio::time::sleep(PAUSE).await;

    let s = load::run(
        &addrs,
        &["limited"],
        &[Phase {
            rate: 2.0 * l,
            secs: 8.0,
        }],
    )
    .await;
    f.steady_excess = max_admitted_in_window(&s, 1.0, 2.0, 8.0) as i64 - o.limit as i64;
    tokio::time::sleep(PAUSE).await;

    let s = load::run(
        &addrs,
        &["limited"],
        &[
            Phase {
                rate: 0.3 * l,
                secs: 3.0,
            },
            Phase {
                rate: 3.0 * l,
                secs: 4.0,
            },
        ],
    )
    .await;
    f.jump_excess = max_admitted_in_window(&s, 1.0, 0.0, 7.0) as i64 - o.limit as i64;
    tokio::time::sleep(PAUSE).await;

    let before = c.lease_waits();
    let s = load::run(
        &addrs,
        &["limited"],
        &[Phase {
            rate: 0.95 * l,
            secs: 8.0,
        }],
    )
    .await;
    let counted: Vec<&Sample> = s.iter().filter(|s| s.t >= 1.0).collect();
    let denied = counted.iter().filter(|s| s.status == 429).count();
    f.wrong_denials = denied as f64 / counted.len().max(1) as f64;
    let mut by_half_second = std::collections::BTreeMap::new();
    for r in counted.iter().filter(|s| s.status == 429) {
        *by_half_second.entry((r.t * 2.0) as u32).or_insert(0) += 1;
    }
    f.details.push(format!(
        "95% run: refusals by half second from the start: {by_half_second:?}"
    ));
    let d: Vec<f64> = c
        .lease_waits()
        .iter()
        .zip(before)
        .map(|(a, b)| a - b)
        .collect();
    f.details.push(format!(
        "95% run: {} requests, {denied} refused after the first second; lease waits: {} granted, {} denied, {} timed out, {} unavailable",
        s.len(),
        d[0],
        d[1],
        d[2],
        d[3]
    ));
    tokio::time::sleep(PAUSE).await;

    let histogram_before = c.check_histogram();
    let s = load::run(
        &addrs,
        &["wide", "free"],
        &[Phase {
            rate: 0.1 * o.wide as f64,
            secs: 6.0,
        }],
    )
    .await;
    let p99 = |host: u8| {
        let of: Vec<&Sample> = s.iter().filter(|s| s.host == host && s.t >= 1.0).collect();
        quantile(&of, 0.99)
    };
    f.added_p99_us = p99(0).as_micros() as i64 - p99(1).as_micros() as i64;
    let histogram: Vec<(f64, f64)> = c
        .check_histogram()
        .iter()
        .zip(&histogram_before)
        .map(|((le, after), (_, before))| (*le, after - before))
        .collect();
    f.limiter_p99 = bucket_quantile(&histogram, 0.99);
    f.limiter_max = bucket_quantile(&histogram, 1.0);
    f.details.push(format!(
        "latency run: p99 {:?} with the policy, {:?} without",
        p99(0),
        p99(1)
    ));
    tokio::time::sleep(PAUSE).await;

    let (trips, commands) = {
        let r = redis.lock().expect("not poisoned");
        (
            c.round_trips(&r),
            r.info_number("stats", "total_commands_processed"),
        )
    };
    let s = load::run(
        &addrs,
        &["wide"],
        &[Phase {
            rate: 0.5 * o.wide as f64,
            secs: 6.0,
        }],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let r = redis.lock().expect("not poisoned");
        let n = s.len().max(1) as f64;
        f.calls_per_request = (c.round_trips(&r) - trips) / n;
        // Heartbeats and this harness's own INFO calls are in here too.
        f.commands_per_request =
            (r.info_number("stats", "total_commands_processed") - commands) / n;
    }
    tokio::time::sleep(PAUSE).await;

    // Redis is killed at 3 s and restarted, empty, at 6 s.
    let chaos = {
        let redis = redis.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            redis.lock().expect("not poisoned").kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            redis.lock().expect("not poisoned").restart()?;
            Ok::<Instant, anyhow::Error>(Instant::now())
        })
    };
    let overload = [Phase {
        rate: 2.0 * l,
        secs: 9.0,
    }];
    let run = load::run(&addrs, &["limited"], &overload);
    let watch = async {
        // The breakers' closing, watched from the restart on.
        let mut closed_at = None;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(9) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let open = c.breakers_open();
            if start.elapsed() > Duration::from_secs(6) && open == 0.0 && closed_at.is_none() {
                closed_at = Some(Instant::now());
            }
        }
        closed_at
    };
    let (s, closed_at) = tokio::join!(run, watch);
    let restarted = chaos.await??;
    if let Contender::Weir(_) = c {
        f.recovery = closed_at.map(|t| t.saturating_duration_since(restarted));
    }
    f.outage_errors = s
        .iter()
        .filter(|s| s.status == 0 || s.status >= 500)
        .count();
    f.outage_ratio = admitted(&s, 3.0, 6.0) as f64 / (3.0 * l);
    let during: Vec<&Sample> = s.iter().filter(|s| s.t >= 3.0 && s.t < 6.0).collect();
    f.outage_slowest = quantile(&during, 1.0);
    Ok(f)
}

pub async fn run(o: Options) -> Result<(Figures, Option<Figures>)> {
    std::fs::create_dir_all(&o.work_dir)?;
    let redis = Arc::new(Mutex::new(Redis::start(&o.work_dir)?));
    let url = redis.lock().expect("not poisoned").url();
    let (_echo, backend) = procs::echo(&o.bin_dir)?;
    let limits = Limits {
        limited: o.limit,
        wide: o.wide,
    };

    let gateways = (0..o.gateways)
        .map(|i| {
            procs::gateway(
                &o.bin_dir,
                &o.work_dir.join(format!("gw{i}")),
                &url,
                backend,
                limits,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let weir = Contender::Weir(gateways);
    tracing::info!("weir: {} gateways", o.gateways);
    let weir_figures = measure(&weir, &redis, &o).await?;
    drop(weir);

    let naive_figures = if o.skip_naive {
        None
    } else {
        let naive = (0..o.gateways)
            .map(|_| procs::naive(&url, backend, limits))
            .collect::<Result<Vec<_>>>()?;
        tracing::info!("naive INCR limiter: {} proxies", o.gateways);
        Some(measure(&Contender::Naive(naive), &redis, &o).await?)
    };
    Ok((weir_figures, naive_figures))
}

/// One row: the goal, each contender's figure, and whether Weir meets the goal.
struct Row {
    what: &'static str,
    goal: String,
    weir: String,
    naive: String,
    met: bool,
}

pub fn table(o: &Options, weir: &Figures, naive: Option<&Figures>) -> (String, bool) {
    let l = o.limit as f64;
    let allowance = (0.01 * l).max(o.gateways as f64);
    let pct = |x: f64| format!("{:.3}%", x * 100.0);
    let us = |d: Duration| format!("{} µs", d.as_micros());
    let n = |f: &dyn Fn(&Figures) -> String| naive.map_or("-".into(), f);
    let rows = [
        Row {
            what: "over-admission, steady 2× overload (worst 1 s window)",
            goal: format!("≤ {allowance:.0} requests"),
            weir: format!("{:+}", weir.steady_excess),
            naive: n(&|f| format!("{:+}", f.steady_excess)),
            met: weir.steady_excess as f64 <= allowance,
        },
        Row {
            what: "over-admission, 10× traffic jump (worst 1 s window)",
            goal: "≤ 5%".into(),
            weir: pct(weir.jump_excess as f64 / l),
            naive: n(&|f| pct(f.jump_excess as f64 / l)),
            met: weir.jump_excess as f64 <= 0.05 * l,
        },
        Row {
            what: "wrong denials at 95% of the limit",
            goal: "≤ 0.01%".into(),
            weir: pct(weir.wrong_denials),
            naive: n(&|f| pct(f.wrong_denials)),
            met: weir.wrong_denials <= 0.0001,
        },
        Row {
            what: "added p99 latency, policy on vs off (same run)",
            goal: "≤ 100 µs".into(),
            weir: format!("{:+} µs", weir.added_p99_us),
            naive: n(&|f| format!("{:+} µs", f.added_p99_us)),
            met: weir.added_p99_us <= 100,
        },
        Row {
            what: "time in the limiter per request, p99 / slowest (gateways' histogram)",
            goal: "≤ 100 µs / ≤ 2 ms".into(),
            weir: format!(
                "≤ {} / ≤ {}",
                weir.limiter_p99.map_or("?".into(), us),
                weir.limiter_max.map_or("> 5 ms".into(), us)
            ),
            naive: "-".into(),
            met: weir
                .limiter_p99
                .is_some_and(|d| d <= Duration::from_micros(100))
                && weir
                    .limiter_max
                    .is_some_and(|d| d <= Duration::from_millis(2)),
        },
        Row {
            what: "Redis round trips per request, 50% of the limit",
            goal: "≤ 0.01".into(),
            weir: format!(
                "{:.4} ({:.3} commands)",
                weir.calls_per_request, weir.commands_per_request
            ),
            naive: n(&|f| {
                format!(
                    "{:.4} ({:.3} commands)",
                    f.calls_per_request, f.commands_per_request
                )
            }),
            met: weir.calls_per_request <= 0.01,
        },
        Row {
            what: "Redis killed: errors caused by the limiter",
            goal: "0".into(),
            weir: weir.outage_errors.to_string(),
            naive: n(&|f| f.outage_errors.to_string()),
            met: weir.outage_errors == 0,
        },
        Row {
            what: "Redis killed: fleet admits vs the limit (failureMode Local)",
            goal: "≤ 1.1×".into(),
            weir: format!("{:.3}×", weir.outage_ratio),
            naive: n(&|f| format!("{:.3}× (fails open)", f.outage_ratio)),
            met: weir.outage_ratio <= 1.1,
        },
        Row {
            what: "Redis killed: slowest request during the outage",
            goal: "no stall".into(),
            weir: format!("{} ms", weir.outage_slowest.as_millis()),
            naive: n(&|f| format!("{} ms", f.outage_slowest.as_millis())),
            met: true,
        },
        Row {
            what: "Redis back: every breaker closed after",
            goal: "≤ 1 s".into(),
            weir: weir
                .recovery
                .map_or("never".into(), |d| format!("{} ms", d.as_millis())),
            naive: n(&|_| "no breaker".into()),
            met: weir.recovery.is_some_and(|d| d <= Duration::from_secs(1)),
        },
    ];
    let mut out = format!(
        "{} gateways, limit {}/s (Redis-calls run: {}/s), one redis-server, same machine\n\n| what | goal | weir | naive INCR | weir meets goal |\n|---|---|---|---|---|\n",
        o.gateways, o.limit, o.wide
    );
    let mut all = true;
    for r in &rows {
        all &= r.met;
        out += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what,
            r.goal,
            r.weir,
            r.naive,
            if r.met { "yes" } else { "NO" }
        );
    }
    (out, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_cumulative_buckets() {
        let h = [
            (0.000_01, 90.0),
            (0.000_1, 99.0),
            (0.001, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(bucket_quantile(&h, 0.5), Some(Duration::from_micros(10)));
        assert_eq!(bucket_quantile(&h, 0.99), Some(Duration::from_micros(100)));
        assert_eq!(bucket_quantile(&h, 1.0), Some(Duration::from_millis(1)));
        assert_eq!(bucket_quantile(&[(f64::INFINITY, 0.0)], 0.99), None);
    }
}
