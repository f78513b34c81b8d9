//! The zone affinity scenarios. A gateway in zone a serves `app` (two endpoints in each of
//! zones a, b and c, `trafficDistribution: PreferClose`, active health checks every
//! 500 ms); endpoints are lost by SIGKILL and come back on the same port.

use super::fleet::Gateway;
use super::load::{Load, Sample, Tally};
use super::manifests::{Route, Service};
use super::report::{Row, pct};
use super::run::{APP_PODS, CANARY_PODS, Ctx, settle};
use anyhow::Result;
use std::time::{Duration, Instant};

const APP_HOST: &str = "app.test";
const WARM_UP: usize = 200;
/// Requests per window while waiting for the in-zone share to come back.
const WINDOW: usize = 100;
/// How long the recovery is watched before it is reported as not reached.
const RECOVERY_CAP: Duration = Duration::from_secs(5);
const NO_ZONE_FLAG: &str = "weir-gateway has no --zone flag";

fn app_service(ctx: &Ctx) -> Service {
    let mut s = Service::new("app", ctx.fleet.endpoints(&APP_PODS));
    s.zone_affinity = true;
    s.health_check = true;
    s
}

fn app_route() -> Route {
    Route {
        host: APP_HOST,
        backends: vec![("app", 1)],
        retry_503: false,
    }
}

pub(crate) async fn warm_up(load: &Load) {
    load.exactly(WARM_UP).await;
}

/// What the gateway itself counted as local and cross-zone, when it exports it.
async fn gateway_localities(gw: &Gateway) -> Option<(f64, f64)> {
    let at = |locality: &'static str| {
        let admin = gw.admin;
        tokio::task::spawn_blocking(move || {
            let (_, body) = crate::procs::http_get(admin, "/metrics")?;
            crate::procs::metric_with(&body, "weir_zone_requests_total", &[("locality", locality)])
        })
    };
    let local = at("local").await.ok().flatten();
    let cross = at("cross").await.ok().flatten();
    match (local, cross) {
        (None, None) => None,
        (l, c) => Some((l.unwrap_or(0.0), c.unwrap_or(0.0))),
    }
}

pub async fn balanced(ctx: &mut Ctx) -> (Row, Result<()>) {
    let mut row = Row::new(
        "in-zone share, balanced deployment (3 zones × 2 endpoints)",
        "≥ 99%",
    );
    let result = balanced_into(ctx, &mut row).await;
    (row, result)
}

async fn balanced_into(ctx: &mut Ctx, row: &mut Row) -> Result<()> {
    let gw = ctx.gateway("a", &[app_service(ctx)], &[app_route()])?;
    let load = ctx.load(&gw, APP_HOST);
    warm_up(&load).await;
    let before = gateway_localities(&gw).await;
    let samples = load.exactly(ctx.opts.requests).await;
    let after = gateway_localities(&gw).await;
    let t = Tally::of(&samples, ctx.pods.len());
    let local = t.share(ctx.in_zone("a"));
    row.measured = format!(
        "{} in zone a (b {}, c {}; {} requests, {} failed)",
        pct(local),
        pct(t.share(ctx.in_zone("b"))),
        pct(t.share(ctx.in_zone("c"))),
        t.total,
        t.failed
    );
    if let (Some((l0, c0)), Some((l1, c1))) = (before, after) {
        let (l, c) = (l1 - l0, c1 - c0);
        row.measured += &format!("; the gateway counted {} local", pct(l / (l + c).max(1.0)));
    }
    row.pass = local >= 0.99;
    if !row.pass && !ctx.zone_flag {
        row.note = Some(NO_ZONE_FLAG.into());
    }
    Ok(())
}

/// A zone-a gateway under load while `victims` are SIGKILLed: what it served once settled.
struct Lost {
    gw: Gateway,
    load: Load,
    /// Requests sent after the gateway settled.
    after: Tally,
    /// Failed requests that ended after the kill.
    failed: usize,
    /// What those failures were and when, for reading a failed row.
    failures: String,
    /// Requests that ended after the kill.
    since_kill: usize,
    settled: String,
}

async fn lose(ctx: &mut Ctx, victims: &[&str]) -> Result<Lost> {
    let gw = ctx.gateway("a", &[app_service(ctx)], &[app_route()])?;
    let load = ctx.load(&gw, APP_HOST);
    warm_up(&load).await;
    let running = load.start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = ctx.epoch.elapsed();
    for victim in victims {
        ctx.fleet.get_mut(victim).kill();
    }
    let (settled_at, settled) = settle(ctx, &gw, killed_at).await;
    let wanted = running.completed() + ctx.opts.requests / 2;
    running.wait_for(wanted, Duration::from_secs(60)).await;
    let samples = running.stop().await;
    let ended_after_kill = || samples.iter().filter(|s| s.done >= killed_at);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent >= settled_at).collect();
    let failures: Vec<String> = ended_after_kill()
        .filter(|s| !s.ok())
        .take(5)
        .map(|s| {
            let status = match s.status {
                0 => "no response".to_owned(),
                code => code.to_string(),
            };
            let after_ms = s.done.saturating_sub(killed_at).as_millis();
            format!("{status} at +{after_ms} ms")
        })
        .collect();
    Ok(Lost {
        failures: failures.join(", "),
        after: Tally::of(after, ctx.pods.len()),
        failed: ended_after_kill().filter(|s| !s.ok()).count(),
        since_kill: ended_after_kill().count(),
        settled,
        gw,
        load,
    })
}

pub async fn lose_one(ctx: &mut Ctx) -> (Row, Result<()>) {
    let mut row = Row::new(
        "zone a loses 1 of 2 endpoints (default even fleet)",
        "60% ± 5 pp local; the rest split between b and c (each 40–60% of it); 0 failed requests",
    );
    let result = lose_one_into(ctx, &mut row).await;
    (row, result)
}

/// "N failed of M from the kill on", with the first failures when there are any.
fn failed_since_kill(lost: &Lost) -> String {
    let mut out = format!(
        "{} failed of {} from the kill on",
        lost.failed, lost.since_kill
    );
    if lost.failed > 0 {
        out += &format!(" ({})", lost.failures);
    }
    out
}

async fn lose_one_into(ctx: &mut Ctx, row: &mut Row) -> Result<()> {
    let lost = lose(ctx, &["a1"]).await?;
    ctx.fleet.get_mut("a1").restart()?;
    let t = &lost.after;
    let (a, b, c) = (
        t.share(ctx.in_zone("a")),
        t.share(ctx.in_zone("b")),
        t.share(ctx.in_zone("c")),
    );
    let b_of_rest = b / (b + c).max(f64::MIN_POSITIVE);
    row.measured = format!(
        "a {}, b {}, c {} of {} requests after settling ({}); {}",
        pct(a),
        pct(b),
        pct(c),
        t.total,
        lost.settled,
        failed_since_kill(&lost)
    );
    row.pass = (a - 0.60).abs() <= 0.05
        && (0.4..=0.6).contains(&b_of_rest)
        && lost.failed == 0
        && t.failed == 0;
    if !row.pass && !ctx.zone_flag {
        row.note = Some(NO_ZONE_FLAG.into());
    }
    drop(lost.gw);
    Ok(())
}

pub async fn lose_all(ctx: &mut Ctx) -> (Row, Result<()>) {
    let mut row = Row::new(
        "zone a loses all endpoints",
        "100% served by b and c; 0 failed requests; ≥ 99% in-zone within 2 s of recovery",
    );
    let result = lose_all_into(ctx, &mut row).await;
    (row, result)
}

async fn lose_all_into(ctx: &mut Ctx, row: &mut Row) -> Result<()> {
    let victims = ["a1", "a2"];
    let lost = lose(ctx, &victims).await?;
    let t = &lost.after;
    // Every pod outside zone a is in b or c.
    let served_bc: usize = {
        let in_a = ctx.in_zone("a");
        (0..t.by_pod.len())
            .filter(|&i| !in_a(i))
            .map(|i| t.by_pod[i])
            .sum()
    };

    for victim in victims {
        ctx.fleet.get_mut(victim).restart()?;
    }
    let restarted = Instant::now();
    let (mut back_after, mut last, mut recovery_failed) = (None, 0.0, 0);
    while restarted.elapsed() < RECOVERY_CAP {
        let window = Tally::of(&lost.load.exactly(WINDOW).await, ctx.pods.len());
        recovery_failed += window.failed;
        last = window.share(ctx.in_zone("a"));
        if last >= 0.99 {
            back_after = Some(restarted.elapsed());
            break;
        }
    }
    let recovery = match back_after {
        Some(d) => format!(
            "back to ≥ 99% in-zone {:.2} s after the restart",
            d.as_secs_f64()
        ),
        None => format!(
            "not back to ≥ 99% in-zone within {} s (last window of {WINDOW}: {})",
            RECOVERY_CAP.as_secs(),
            pct(last)
        ),
    };
    row.measured = format!(
        "{served_bc} of {} requests after settling served by b and c ({}); {}; {recovery} ({recovery_failed} failed meanwhile)",
        t.total,
        lost.settled,
        failed_since_kill(&lost)
    );
    row.pass = served_bc == t.total
        && lost.failed == 0
        && back_after.is_some_and(|d| d <= Duration::from_secs(2));
    if !row.pass && !ctx.zone_flag {
        row.note = Some(NO_ZONE_FLAG.into());
    }
    drop(lost.gw);
    Ok(())
}

pub async fn canary_zones(ctx: &mut Ctx) -> (Row, Result<()>) {
    let mut row = Row::new(
        "context: canary 90/10 with zone affinity, per-zone canary share (a gateway per zone)",
        "each zone within ±1 pp of 10%, served ≥ 99% in-zone",
    );
    let result = canary_zones_into(ctx, &mut row).await;
    (row, result)
}

async fn canary_zones_into(ctx: &mut Ctx, row: &mut Row) -> Result<()> {
    let mut services = [
        Service::new("stable-z", ctx.fleet.endpoints(&APP_PODS)),
        Service::new("canary-z", ctx.fleet.endpoints(&CANARY_PODS)),
    ];
    for s in &mut services {
        s.zone_affinity = true;
    }
    let route = Route {
        host: "canary-z.test",
        backends: vec![("stable-z", 90), ("canary-z", 10)],
        retry_503: false,
    };
    let canary_pods: Vec<usize> = CANARY_PODS.iter().map(|p| ctx.index_of(p)).collect();
    let (mut shares, mut local, mut ok) = (Vec::new(), Vec::new(), true);
    let mut failed = 0;
    for zone in ["a", "b", "c"] {
        let gw = ctx.gateway(zone, &services, std::slice::from_ref(&route))?;
        let load = ctx.load(&gw, route.host);
        warm_up(&load).await;
        let t = Tally::of(&load.exactly(ctx.opts.requests / 2).await, ctx.pods.len());
        let share = t.share(|i| canary_pods.contains(&i));
        let in_zone = t.share(ctx.in_zone(zone));
        ok &= (share - 0.10).abs() <= 0.01 && in_zone >= 0.99;
        failed += t.failed;
        shares.push(format!("{zone} {}", pct(share)));
        local.push(pct(in_zone));
    }
    row.measured = format!(
        "canary {} (in-zone {}; {} requests per zone, {failed} failed)",
        shares.join(", "),
        local.join(", "),
        ctx.opts.requests / 2
    );
    row.pass = ok && ctx.zone_flag;
    if !row.pass && !ctx.zone_flag {
        row.note = Some(NO_ZONE_FLAG.into());
    }
    Ok(())
}

pub async fn fleet_even(ctx: &mut Ctx) -> (Row, Result<()>) {
    let mut row = Row::new(
        "context: a gateway per zone, zone a down to 1 of 2 endpoints: load per endpoint across the fleet",
        "every endpoint within ±10% of the mean (PreferClose alone: a1 at 1.67× the mean, twice its peers)",
    );
    let result = fleet_even_into(ctx, &mut row).await;
    (row, result)
}

async fn fleet_even_into(ctx: &mut Ctx, row: &mut Row) -> Result<()> {
    // The lost endpoint is gone from the EndpointSlices, as after a pod deletion.
    let pods: Vec<&str> = APP_PODS.iter().copied().filter(|p| *p != "a2").collect();
    let mut service = Service::new("app", ctx.fleet.endpoints(&pods));
    service.zone_affinity = true;
    let mut samples = Vec::new();
    let mut local_a = 0.0;
    for zone in ["a", "b", "c"] {
        let gw = ctx.gateway(zone, std::slice::from_ref(&service), &[app_route()])?;
        let load = ctx.load(&gw, APP_HOST);
        warm_up(&load).await;
        let got = load.exactly(ctx.opts.requests / 2).await;
        if zone == "a" {
            local_a = Tally::of(&got, ctx.pods.len()).share(ctx.in_zone("a"));
        }
        samples.extend(got);
    }
    let t = Tally::of(&samples, ctx.pods.len());
    let shares: Vec<(&str, f64)> = pods
        .iter()
        .map(|p| (*p, t.share(|i| i == ctx.index_of(p))))
        .collect();
    let mean = 1.0 / pods.len() as f64;
    let worst = shares.iter().map(|(_, s)| s / mean).fold(1.0f64, |w, r| {
        if (r - 1.0).abs() > (w - 1.0).abs() {
            r
        } else {
            w
        }
    });
    row.measured = format!(
        "{}; the furthest from the mean at {worst:.2}×; the gateway in a kept {} local; {} requests, {} failed",
        shares
            .iter()
            .map(|(p, s)| format!("{p} {}", pct(*s)))
            .collect::<Vec<_>>()
            .join(", "),
        pct(local_a),
        t.total,
        t.failed
    );
    row.pass = (worst - 1.0).abs() <= 0.10 && t.failed == 0 && ctx.zone_flag;
    Ok(())
}
