//! Choosing where a request goes, and keeping that choice healthy: a backend by weight
//! (or by session pin or hash cohort), a zone by even-load affinity, then an endpoint by
//! least requests, skipping the ejected and the failing; plus the retry budget.

mod compile;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod schedule;
pub mod session;
pub mod state;
pub mod tries;
pub mod zones;

pub use compile::{BackendRt, Backends, compile};
pub use pool::{Locality, Pool};
pub use schedule::WeightedSchedule;
pub use state::{Outcome, Registry};

use crate::egress::{Egress, EgressMetrics};
use health::{Checker, Wanted};
use std::sync::Arc;

/// What the balancing parts keep across config swaps: learned endpoint state, the health
/// checker, and where this gateway runs.
#[derive(Debug)]
pub struct Balancer {
    pub registry: Registry,
    /// Swapped when the fleet's spread over zones changes (read from the cluster).
    pub locality: arc_swap::ArcSwap<Locality>,
    /// ExternalName backends' DNS names, refreshed across config swaps.
    pub egress: Egress,
    checker: Option<Checker>,
}

impl Balancer {
    /// Without health checks (unit tests, tools) and with the default DNS settings.
    pub fn new(locality: Locality) -> Arc<Self> {
        Self::with_egress(
            locality,
            None,
            Egress::new(None, EgressMetrics::unregistered()),
        )
    }

    /// With the gateway's DNS settings (`--resolver`) and metrics; health probes run on
    /// `checks` (the control runtime) when given.
    pub fn with_egress(
        locality: Locality,
        checks: Option<tokio::runtime::Handle>,
        egress: Egress,
    ) -> Arc<Self> {
        Arc::new(Self {
            registry: Registry::default(),
            locality: arc_swap::ArcSwap::from_pointee(locality),
            egress,
            checker: checks.map(Checker::start),
        })
    }

    /// Forgets what `config` no longer uses: the learned state of backends it dropped and
    /// the DNS names of ExternalName Services it no longer has. Called once a runtime
    /// compiled from `config` is live, so compiling itself changes nothing.
    pub fn forget_unused(&self, config: &weir_model::Config) {
        self.registry
            .retain(&|k: &weir_model::BackendKey| config.backends.contains_key(k));
        let names: std::collections::BTreeSet<&str> = config
            .backends
            .values()
            .filter_map(|b| b.external_name.as_deref())
            .collect();
        self.egress.keep_only(&names);
    }

    /// Runs exactly the health checks a new config asks for.
    pub fn set_checks(&self, wanted: Vec<Wanted>) {
        if let Some(c) = &self.checker {
            c.reconcile(wanted);
        }
    }
}
