//! Choosing where a request goes, and keeping that choice healthy: a backend by weight
//! (or by session pin or hash cohort), a zone by even-load affinity, then an endpoint by
//! least requests, skipping the ejected and the failing; plus the retry budget.

pub mod health;
pub mod metrics;
pub mod pool;
pub mod schedule;
pub mod session;
pub mod state;
pub mod zones;

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
    /// With `checks` false no health-check thread starts (unit tests, tools).
    pub fn new(locality: Locality, checks: bool) -> anyhow::Result<Arc<Self>> {
        Self::with_egress(
            locality,
            checks,
            Egress::new(None, EgressMetrics::unregistered()),
        )
    }

    /// With the gateway's DNS settings (`--resolver`) and metrics.
    pub fn with_egress(
        locality: Locality,
        checks: bool,
        egress: Egress,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            registry: Registry::default(),
            locality: arc_swap::ArcSwap::from_pointee(locality),
            egress,
            checker: if checks {
                Some(Checker::start()?)
            } else {
                None
            },
        }))
    }

    /// Runs exactly the health checks a new config asks for.
    pub fn set_checks(&self, wanted: Vec<Wanted>) {
        if let Some(c) = &self.checker {
            c.reconcile(wanted);
        }
    }
}
