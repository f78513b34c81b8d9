//! The run: options, which scenarios, the echo fleet they share, and a fresh gateway per
//! scenario (so one scenario's ejections and health state cannot leak into the next).

use super::fleet::{Fleet, Gateway, Logs, gateway_has_flag};
use super::load::Load;
use super::manifests::{self, Route, Service};
use super::report::Row;
use super::{splits, zones};
use crate::procs::require_binaries;
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The six endpoints of the main Service: two per zone.
pub const APP_PODS: [&str; 6] = ["a1", "a2", "b1", "b2", "c1", "c2"];
/// The canary Service's endpoints, also two per zone.
pub const CANARY_PODS: [&str; 6] = [
    "canary-a1",
    "canary-a2",
    "canary-b1",
    "canary-b2",
    "canary-c1",
    "canary-c2",
];
/// The weight-0 backend's only endpoint, serving nothing else, so its request count is
/// exactly what the gateway sent it.
pub const W0_POD: &str = "w0-canary";

/// The scenarios, in the order they run and are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Balanced,
    LoseOne,
    LoseAll,
    Canary,
    WeightZero,
    Flaky,
    CanaryZones,
    FleetEven,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Balanced,
        Scenario::LoseOne,
        Scenario::LoseAll,
        Scenario::Canary,
        Scenario::WeightZero,
        Scenario::Flaky,
        Scenario::CanaryZones,
        Scenario::FleetEven,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Balanced => "balanced",
            Scenario::LoseOne => "lose-one",
            Scenario::LoseAll => "lose-all",
            Scenario::Canary => "canary",
            Scenario::WeightZero => "weight-zero",
            Scenario::Flaky => "flaky",
            Scenario::CanaryZones => "canary-zones",
            Scenario::FleetEven => "fleet-even",
        }
    }

    pub fn parse(name: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown row {name:?}: expected one of {}", names.join(", "))
            })
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Requests per measurement (the flaky row sends twice as many).
    pub requests: usize,
    pub concurrency: usize,
    pub scenarios: Vec<Scenario>,
    pub bin_dir: PathBuf,
    pub work_dir: PathBuf,
    pub keep_logs: bool,
}

/// What the scenarios share.
#[derive(Debug)]
pub struct Ctx {
    pub opts: Options,
    pub fleet: Fleet,
    /// Pod names and zones by the index samples carry.
    pub pods: Vec<String>,
    pub zones: Vec<String>,
    /// Time zero of every sample.
    pub epoch: Instant,
    /// Whether weir-gateway takes `--zone` (older builds do not).
    pub zone_flag: bool,
    logs: Logs,
    gateways: usize,
}

impl Ctx {
    /// A fresh gateway in `zone` serving `services` and `routes`.
    pub fn gateway(
        &mut self,
        zone: &str,
        services: &[Service],
        routes: &[Route],
    ) -> Result<Gateway> {
        self.gateways += 1;
        let dir = self
            .opts
            .work_dir
            .join(format!("gw{}-zone-{zone}", self.gateways));
        super::fleet::gateway(
            &self.opts.bin_dir,
            &dir,
            self.zone_flag.then_some(zone),
            |port| manifests::render(port, services, routes),
            &self.logs,
        )
    }

    pub fn load(&self, gw: &Gateway, host: &str) -> Load {
        Load::new(gw.addr, host, &self.pods, self.epoch, self.opts.concurrency)
    }

    /// The pod indices in `zone`.
    pub fn in_zone(&self, zone: &str) -> impl Fn(usize) -> bool + '_ {
        let zone = zone.to_owned();
        move |i| self.zones.get(i).is_some_and(|z| *z == zone)
    }

    pub fn index_of(&self, pod: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p == pod)
            .expect("a pod of the fleet")
    }

    /// Brings back any echo a scenario killed and did not restart (it failed midway).
    fn restore(&mut self) -> Result<()> {
        for echo in &mut self.fleet.echoes {
            if !echo.is_running() {
                echo.restart()?;
            }
            echo.set_fail_ratio(0.0)?;
        }
        Ok(())
    }
}

/// Runs the selected scenarios, printing each row as it ends (`print`); every row.
pub async fn run(opts: Options, print: impl Fn(&str)) -> Result<Vec<Row>> {
    require_binaries(&opts.bin_dir, &["weir-gateway", "weir-echo"])?;
    if opts.concurrency == 0 || opts.requests < 100 {
        bail!("--concurrency must be at least 1 and --requests at least 100");
    }
    std::fs::create_dir_all(&opts.work_dir)?;
    let logs = Logs(opts.keep_logs.then(|| opts.work_dir.clone()));
    let pods: Vec<(&str, &str)> = APP_PODS
        .iter()
        .chain(&CANARY_PODS)
        .map(|p| (*p, zone_of(p)))
        .chain([(W0_POD, "a")])
        .collect();
    let fleet = Fleet::start(&opts.bin_dir, &pods, &logs)?;
    let zone_flag = gateway_has_flag(&opts.bin_dir, "--zone");
    if !zone_flag {
        print(
            "note: this weir-gateway has no --zone flag; gateways run without a zone, so zone affinity cannot apply",
        );
    }
    print(&format!(
        "{} weir-echo endpoints, a fresh weir-gateway (--threads 1) per row; {} requests per measurement, {} keep-alive clients",
        pods.len(),
        opts.requests,
        opts.concurrency
    ));
    let mut ctx = Ctx {
        pods: fleet.pods(),
        zones: fleet.zones(),
        fleet,
        opts: opts.clone(),
        epoch: Instant::now(),
        zone_flag,
        logs,
        gateways: 0,
    };
    let mut rows = Vec::new();
    for scenario in Scenario::ALL {
        if !opts.scenarios.contains(&scenario) {
            continue;
        }
        let started = Instant::now();
        let (mut row, result) = match scenario {
            Scenario::Balanced => zones::balanced(&mut ctx).await,
            Scenario::LoseOne => zones::lose_one(&mut ctx).await,
            Scenario::LoseAll => zones::lose_all(&mut ctx).await,
            Scenario::Canary => splits::canary(&mut ctx).await,
            Scenario::WeightZero => splits::weight_zero(&mut ctx).await,
            Scenario::Flaky => splits::flaky(&mut ctx).await,
            Scenario::CanaryZones => zones::canary_zones(&mut ctx).await,
            Scenario::FleetEven => zones::fleet_even(&mut ctx).await,
        };
        if let Err(e) = result {
            row.pass = false;
            row.note = Some(format!("error: {e:#}"));
        }
        print(&format!(
            "[{} {:.1} s] {}",
            scenario.name(),
            started.elapsed().as_secs_f64(),
            row.line()
        ));
        rows.push(row);
        ctx.restore()?;
    }
    Ok(rows)
}

/// `a1` → `a`, `canary-b2` → `b`.
fn zone_of(pod: &str) -> &'static str {
    match pod.trim_start_matches("canary-").as_bytes().first() {
        Some(b'a') => "a",
        Some(b'b') => "b",
        _ => "c",
    }
}

/// Waits after a kill until the gateway has settled: at least two seconds, and its connect
/// error count unchanged for the last second (at most five seconds after the kill). The
/// counter appears only once an error is counted, so absent reads as zero. Returns when,
/// from the epoch, and what it saw.
pub async fn settle(ctx: &Ctx, gw: &Gateway, killed_at: Duration) -> (Duration, String) {
    const METRIC: &str = "weir_upstream_connect_errors_total";
    let (least, quiet, cap) = (
        Duration::from_secs(2),
        Duration::from_secs(1),
        Duration::from_secs(5),
    );
    let mut last: Option<(f64, Duration)> = None;
    loop {
        let now = ctx.epoch.elapsed();
        let since_kill = now.saturating_sub(killed_at);
        let value = metric(gw, METRIC).await.unwrap_or(0.0);
        match last {
            Some((v, changed)) if v == value => {
                if now - changed >= quiet && since_kill >= least {
                    return (
                        now,
                        format!(
                            "settled {:.1} s after the kill, {value} connect errors",
                            since_kill.as_secs_f64()
                        ),
                    );
                }
            }
            _ => last = Some((value, now)),
        }
        if since_kill >= cap {
            return (
                now,
                format!(
                    "connect errors still rising {} s after the kill",
                    cap.as_secs()
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gateway metric read off the runtime's threads (the admin client blocks).
pub async fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let (admin, name) = (gw.admin, name.to_owned());
    tokio::task::spawn_blocking(move || Gateway::metric_at(admin, &name))
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_map_to_zones_and_rows_to_names() {
        assert_eq!(zone_of("a2"), "a");
        assert_eq!(zone_of("canary-b1"), "b");
        assert_eq!(zone_of("c1"), "c");
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Ok(s));
        }
        assert!(Scenario::parse("nope").is_err());
    }
}
