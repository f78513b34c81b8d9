//! The weighted-split and failure scenarios: a 90/10 canary, a weight-0 backend while a
//! flaky endpoint forces retries, and one endpoint of six failing half its requests with
//! 503 (retries and passive ejection). No zone affinity here: these are about weights and
//! failures, whatever zone the endpoints are in.

use super::fleet::{EchoStats, Gateway};
use super::load::{Sample, Tally};
use super::manifests::{Route, Service};
use super::report::{Row, pct};
use super::run::{APP_PODS, CANARY_PODS, Ctx, W0_POD, metric};
use super::zones::warm_up;
use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The endpoint made flaky in the weight-0 and 503 scenarios.
const FLAKY_POD: &str = "b1";
const EJECTIONS: &str = "weir_endpoint_ejections_total";
/// The gateway's own retry count, beside the one the echoes' counters give.
const RETRIES: &str = "weir_retries_total";
const BUDGET_EXHAUSTED: &str = "weir_retry_budget_exhausted_total";

pub async fn canary(ctx: &mut Ctx) -> (Row, Result<()>) {
    let mut row = Row::new(
        &format!("canary 90/10 over {} requests", ctx.opts.requests),
        "error ≤ 0.05 pp",
    );
    let result = canary_into(ctx, &mut row).await;
    (row, result)
}

async fn canary_into(ctx: &mut Ctx, row: &mut Row) -> Result<()> {
    let services = [
        Service::new("stable", ctx.fleet.endpoints(&APP_PODS)),
        Service::new("canary", ctx.fleet.endpoints(&CANARY_PODS)),
    ];
    let route = Route {
        host: "canary.test",
        backends: vec![("stable", 90), ("canary", 10)],
        retry_503: false,
    };
    let gw = ctx.gateway("a", &services, &[route])?;
    let load = ctx.load(&gw, "canary.test");
    warm_up(&load).await;
    let t = Tally::of(&load.exactly(ctx.opts.requests).await, ctx.pods.len());
    let canary_pods: Vec<usize> = CANARY_PODS.iter().map(|p| ctx.index_of(p)).collect();
    let share = t.share(|i| canary_pods.contains(&i));
    let error_pp = (share - 0.10).abs() * 100.0;
    row.measured = format!(
        "canary {:.2}% ({} of {}), error {error_pp:.2} pp; {} failed",
        share * 100.0,
        (share * t.total as f64).round(),
        t.total,
        t.failed
    );
    row.pass = error_pp <= 0.05;
    Ok(())
}

fn stats(ctx: &Ctx, pods: &[&str]) -> Result<Vec<EchoStats>> {
    pods.iter().map(|p| ctx.fleet.get(p).stats()).collect()
}

/// Requests (attempts, retries included) and purposeful failures between two readings.
fn delta(before: &[EchoStats], after: &[EchoStats]) -> (u64, u64) {
    before.iter().zip(after).fold((0, 0), |(r, f), (b, a)| {
        (
            r + a.requests.saturating_sub(b.requests),
            f + a.failures.saturating_sub(b.failures),
        )
    })
}

pub async fn weight_zero(ctx: &mut Ctx) -> (Row, Result<()>) {
    let mut row = Row::new(
        "`weight: 0` backend",
        "0 requests, retries included (retries must happen)",
    );
    let result = weight_zero_into(ctx, &mut row).await;
    (row, result)
}

async fn weight_zero_into(ctx: &mut Ctx, row: &mut Row) -> Result<()> {
    let services = [
        Service::new("w0-stable", ctx.fleet.endpoints(&APP_PODS)),
        Service::new("w0-canary", ctx.fleet.endpoints(&[W0_POD])),
    ];
    let route = Route {
        host: "w0.test",
        backends: vec![("w0-stable", 100), ("w0-canary", 0)],
        retry_503: true,
    };
    let gw = ctx.gateway("a", &services, &[route])?;
    let load = ctx.load(&gw, "w0.test");
    warm_up(&load).await;
    ctx.fleet.get(FLAKY_POD).set_fail_ratio(0.5)?;
    let retries_before = metric(&gw, RETRIES).await;
    let (stable_before, canary_before) = (stats(ctx, &APP_PODS)?, stats(ctx, &[W0_POD])?);
    let samples = load.exactly(ctx.opts.requests).await;
    let (stable_after, canary_after) = (stats(ctx, &APP_PODS)?, stats(ctx, &[W0_POD])?);
    let retries_after = metric(&gw, RETRIES).await;
    ctx.fleet.get(FLAKY_POD).set_fail_ratio(0.0)?;

    let t = Tally::of(&samples, ctx.pods.len());
    let (canary_hits, _) = delta(&canary_before, &canary_after);
    let client_canary = t.by_pod[ctx.index_of(W0_POD)] as u64;
    let (stable_attempts, flaky_503s) = delta(&stable_before, &stable_after);
    let attempts = stable_attempts + canary_hits;
    let retries = attempts.saturating_sub(t.total as u64);
    // A counter with labels appears on /metrics only once counted: absent reads as 0.
    let gateway_retries = retries_after.unwrap_or(0.0) - retries_before.unwrap_or(0.0);
    row.measured = format!(
        "canary got {canary_hits} of {attempts} attempts ({client_canary} answers); retries {retries} (echo attempts − requests; {RETRIES}: {gateway_retries}); {FLAKY_POD} answered 503 {flaky_503s} times; {} of {} failed at the client",
        t.failed, t.total
    );
    row.pass = canary_hits == 0 && client_canary == 0 && retries > 0;
    if canary_hits == 0 && retries == 0 {
        row.note = Some("no retries happened, so 'retries included' is untested".into());
    }
    Ok(())
}

pub async fn flaky(ctx: &mut Ctx) -> (Row, Result<()>) {
    let mut row = Row::new(
        "one backend endpoint returning 503 half the time",
        "ejected; client-visible error rate ≤ 0.1% with retries",
    );
    let result = flaky_into(ctx, &mut row).await;
    (row, result)
}

/// Polls the ejection counter until stopped; when (from the epoch) it first rose.
fn watch_ejections(
    ctx: &Ctx,
    gw: &Gateway,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Option<Duration>> {
    let (admin, epoch) = (gw.admin, ctx.epoch);
    tokio::task::spawn_blocking(move || {
        while !stop.load(Ordering::Relaxed) {
            if Gateway::metric_at(admin, EJECTIONS).is_some_and(|n| n > 0.0) {
                return Some(epoch.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
}

async fn flaky_into(ctx: &mut Ctx, row: &mut Row) -> Result<()> {
    let route = Route {
        host: "flaky.test",
        backends: vec![("flaky", 1)],
        retry_503: true,
    };
    let services = [Service::new("flaky", ctx.fleet.endpoints(&APP_PODS))];
    let gw = ctx.gateway("a", &services, &[route])?;
    let load = ctx.load(&gw, "flaky.test");
    warm_up(&load).await;
    let before = stats(ctx, &APP_PODS)?;
    ctx.fleet.get(FLAKY_POD).set_fail_ratio(0.5)?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_ejections(ctx, &gw, stop.clone());
    let samples = load.exactly(2 * ctx.opts.requests).await;
    stop.store(true, Ordering::Relaxed);
    let first_ejection = watcher.await.ok().flatten();
    ctx.fleet.get(FLAKY_POD).set_fail_ratio(0.0)?;
    let after = stats(ctx, &APP_PODS)?;
    let ejections = metric(&gw, EJECTIONS).await;

    let t = Tally::of(&samples, ctx.pods.len());
    let error_rate = t.failed as f64 / t.total.max(1) as f64;
    let flaky = ctx.index_of(FLAKY_POD) as u8;
    let i = APP_PODS
        .iter()
        .position(|p| *p == FLAKY_POD)
        .expect("an app pod");
    let flaky_attempts = after[i].requests - before[i].requests;
    let (attempts, _) = delta(&before, &after);
    let ejected = match (ejections, first_ejection) {
        (Some(n), Some(at)) if n > 0.0 => {
            let later: Vec<&Sample> = samples.iter().filter(|s| s.sent >= at).collect();
            let served = later.iter().filter(|s| s.pod == flaky).count();
            format!(
                "ejected ({n} ejections); after the first, {FLAKY_POD} answered {} of {} requests",
                pct(served as f64 / later.len().max(1) as f64),
                later.len()
            )
        }
        (n, _) => format!("not ejected ({EJECTIONS} = {})", n.unwrap_or(0.0)),
    };
    let retries = metric(&gw, RETRIES).await.unwrap_or(0.0);
    let refused = metric(&gw, BUDGET_EXHAUSTED).await.unwrap_or(0.0);
    row.measured = format!(
        "{:.3}% failed at the client ({} of {}); {ejected}; {FLAKY_POD} got {flaky_attempts} of {attempts} attempts; gateway retries {retries}, {refused} refused by the budget",
        error_rate * 100.0,
        t.failed,
        t.total,
    );
    row.pass = error_rate <= 0.001 && ejections.is_some_and(|n| n > 0.0);
    Ok(())
}
