//! The config pipeline: a source's snapshots → `translate` → `compile` → one atomic swap.
//! Translation and compilation run off the proxy's threads; the swap is one pointer store,
//! and requests in flight keep the runtime they started with.

use crate::balance::Balancer;
use crate::listen::PortSet;
use crate::metrics::Metrics;
use crate::runtime::{Runtime, compile};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::{info, warn};
use weir_controller::source::Snapshot;
use weir_controller::source::SourceState;
use weir_controller::translate;

/// What `/config` reports besides the config itself.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    pub generation: u64,
    /// Unix time the live config was swapped in.
    pub loaded_at: Option<f64>,
    /// Why the newest change is not live, while the previous config keeps serving.
    pub error: Option<String>,
    /// Objects that are not Accepted, as `weir-controller check` words it.
    pub warnings: Vec<String>,
    /// Objects that translated but did not compile in the gateway, with what serves
    /// instead. The rest of the config is live.
    pub compile_errors: Vec<String>,
}

/// The state the proxy, the listener manager and the admin server share.
#[derive(Debug)]
pub struct Live {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub status: ArcSwap<ConfigStatus>,
    /// The ports of each new generation, for the listener manager.
    pub ports: watch::Sender<(u64, PortSet)>,
    /// Per proxy thread, the newest generation whose ports that thread has all bound.
    pub bound: Vec<Arc<AtomicU64>>,
    pub shutting_down: AtomicBool,
    /// Endpoint state, health checks and locality, kept across swaps.
    pub balancer: Arc<Balancer>,
    /// The Service (namespace, name) whose endpoints are the gateway fleet: each snapshot's
    /// EndpointSlices of it give the fleet's spread over zones.
    pub fleet_service: Option<(String, String)>,
}

impl Live {
    pub fn new(
        threads: usize,
        balancer: Arc<Balancer>,
        fleet_service: Option<(String, String)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime: Arc::new(ArcSwap::from_pointee(Runtime::empty())),
            status: ArcSwap::from_pointee(ConfigStatus::default()),
            ports: watch::channel((0, PortSet::new())).0,
            bound: (0..threads.max(1))
                .map(|_| Arc::new(AtomicU64::new(0)))
                .collect(),
            shutting_down: AtomicBool::new(false),
            balancer,
            fleet_service,
        })
    }

    /// Ready once the first config is live with its ports bound by every proxy thread,
    /// until shutdown begins.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Err("shutting down")
        } else if self.bound.iter().any(|b| b.load(Ordering::SeqCst) == 0) {
            Err("no config is live yet")
        } else {
            Ok(())
        }
    }

    /// Translates, compiles and swaps in `snapshot`. An object that does not compile is
    /// left out on its own (see [`crate::problems`]) and reported; it does not hold
    /// back the rest.
    pub fn apply(&self, snapshot: &Snapshot, metrics: &Metrics) -> u64 {
        let (config, report) = translate(snapshot);
        self.follow_fleet(snapshot);
        let generation = self.runtime.load().generation + 1;
        let runtime = compile(Arc::new(config), generation, &self.balancer);
        let compile_errors: Vec<String> = runtime.problems.iter().map(|p| p.to_string()).collect();
        let problems = compile_errors.len();
        let ports = runtime.port_set();
        let checks = runtime.checks.clone();
        let (listeners, rules) = (runtime.config.listeners.len(), runtime.rules.len());
        let config = runtime.config.clone();
        self.runtime.store(Arc::new(runtime));
        // What goes with the new runtime, now that it is live: its listeners, its health
        // checks, and forgetting the backend state and DNS names it no longer uses.
        self.ports.send_replace((generation, ports));
        self.balancer.set_checks(checks);
        self.balancer.forget_unused(&config);
        let warnings = report.warnings();
        for w in &warnings {
            warn!("{w}");
        }
        for e in &compile_errors {
            warn!("does not compile, the rest of the config is live: {e}");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.status.store(Arc::new(ConfigStatus {
            generation,
            loaded_at: Some(now),
            error: None,
            warnings,
            compile_errors,
        }));
        metrics.config_generation.set(generation as i64);
        metrics.config_last_reload.set(now);
        metrics.config_compile_problems.set(problems as i64);
        info!(generation, listeners, rules, "config live");
        generation
    }

    /// Takes the fleet's spread over zones from the snapshot, when this gateway follows a
    /// fleet Service and that Service has zoned endpoints.
    fn follow_fleet(&self, snapshot: &Snapshot) {
        let Some((ns, name)) = &self.fleet_service else {
            return;
        };
        let fleet = crate::kube::fleet_from_slices(snapshot, ns, name);
        let current = self.balancer.locality.load();
        if fleet.is_some() && current.fleet != fleet {
            info!(?fleet, "gateway fleet spread over zones");
            let mut next = (**current).clone();
            next.fleet = fleet;
            self.balancer.locality.store(Arc::new(next));
        }
    }

    /// Forgets the last rejection: the source is healthy and the live config current.
    pub fn clear_error(&self) {
        if self.status.load().error.is_some() {
            let mut status = (**self.status.load()).clone();
            status.error = None;
            self.status.store(Arc::new(status));
        }
    }

    /// Records a change that could not be applied; the live config stays.
    pub fn reject(&self, why: String, metrics: &Metrics) {
        warn!("config change rejected, the last good config keeps serving: {why}");
        metrics.config_reload_errors.inc();
        let mut status = (**self.status.load()).clone();
        status.error = Some(why);
        self.status.store(Arc::new(status));
    }
}

/// Applies every snapshot a source publishes. Returns after applying the current one, then
/// keeps following in a background task.
pub async fn follow(
    mut source: watch::Receiver<SourceState>,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
) {
    let mut applied = 0;
    let mut step = move |state: SourceState, live: Arc<Live>, metrics: Arc<Metrics>| {
        let fresh = state.generation != applied;
        applied = state.generation;
        async move {
            if fresh {
                let (l, m, s) = (live.clone(), metrics.clone(), state.snapshot.clone());
                if let Err(e) = tokio::task::spawn_blocking(move || l.apply(&s, &m)).await {
                    live.reject(format!("config task failed: {e}"), &metrics);
                }
            }
            match state.error {
                Some(e) => live.reject(e.to_string(), &metrics),
                // The source recovered without a new snapshot (a watch reconnected and
                // nothing had changed): the live config is current again.
                None if !fresh => live.clear_error(),
                None => {}
            }
        }
    };
    let first = source.borrow_and_update().clone();
    step(first, live.clone(), metrics.clone()).await;
    tokio::spawn(async move {
        while source.changed().await.is_ok() {
            let state = source.borrow_and_update().clone();
            step(state, live.clone(), metrics.clone()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Locality;

    #[tokio::test]
    async fn a_source_error_shows_until_the_source_recovers_even_without_a_new_snapshot() {
        let state = |error: Option<&str>| SourceState {
            snapshot: Arc::new(Snapshot::default()),
            error: error.map(Into::into),
            generation: 1,
        };
        let (tx, rx) = watch::channel(state(None));
        let live = Live::new(1, Balancer::new(Locality::default()), None);
        follow(rx, live.clone(), Arc::new(Metrics::new())).await;
        assert_eq!(live.status.load().generation, 1);

        let settled = || async { tokio::time::sleep(std::time::Duration::from_millis(50)).await };
        tx.send_replace(state(Some("watching HTTPRoute: connection refused")));
        settled().await;
        let error = live.status.load().error.clone();
        assert_eq!(
            error.as_deref(),
            Some("watching HTTPRoute: connection refused")
        );

        tx.send_replace(state(None));
        settled().await;
        assert_eq!(live.status.load().error, None);
        assert_eq!(live.status.load().generation, 1, "nothing was recompiled");
    }
}
