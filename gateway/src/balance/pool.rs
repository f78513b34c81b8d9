//! One backend's endpoints as the proxy sees them: which are usable now, how they split
//! over zones, and the choice of one for a request.
//!
//! The usable set and the zone shares change only when an endpoint's health does, so they
//! live in a cached [`Plan`] rebuilt when the backend's health epoch moves or an ejection
//! runs out. A pick is then a schedule step and two random probes, with no lock.

use super::schedule::WeightedSchedule;
use super::state::{BackendState, EndpointState};
use super::zones;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use weir_model::{Endpoint, LoadBalancer};

/// Average requests in flight per local endpoint above which a gateway spills to other
/// zones on top of the even-load share, and below which it comes back (hysteresis, so it
/// does not flap at the edge). Like Linkerd's HAZL, load is measured, not assumed.
const SPILL_HIGH: u32 = 8;
const SPILL_LOW: u32 = 4;

#[derive(Debug)]
pub struct Member {
    pub state: Arc<EndpointState>,
    /// Index into the pool's zones.
    zone: usize,
    /// Stable across replicas and restarts: session tokens name endpoints by it.
    pub hash: u32,
}

/// Where the gateway itself runs and how the fleet spreads over zones.
#[derive(Debug, Clone, Default)]
pub struct Locality {
    pub zone: Option<String>,
    /// Gateway replicas per zone (`--fleet-zones`); `None` assumes an even spread over
    /// each upstream's zones.
    pub fleet: Option<Vec<(String, f64)>>,
}

#[derive(Debug)]
pub struct Pool {
    state: Arc<BackendState>,
    members: Box<[Member]>,
    /// Ready endpoints; when none is ready, the serving-but-terminating ones (as kube-proxy
    /// falls back, so a rollout's last pods still answer).
    usable: Box<[u32]>,
    /// Zone names; `""` collects endpoints without a zone.
    zones: Box<[Arc<str>]>,
    /// The gateway's zone, when zone affinity is on for this backend and the zone is known.
    local: Option<usize>,
    /// The gateway's zone among `zones`, affinity or not (for the locality metrics).
    home: Option<usize>,
    gateway_zone_known: bool,
    /// Gateway replicas per zone, plus one last entry for zones the upstream does not use.
    fleet: Box<[f64]>,
    lb: LoadBalancer,
    plan: ArcSwap<Plan>,
    refreshing: AtomicBool,
    rr: AtomicUsize,
    zone_inflight: Box<[AtomicU32]>,
    spilling: AtomicBool,
}

#[derive(Debug)]
struct Plan {
    epoch: u64,
    /// Clock time the earliest current ejection ends: the plan is stale from then.
    expires_ms: u64,
    all: Box<[u32]>,
    by_zone: Box<[Box<[u32]>]>,
    /// Zone choice for this gateway; `None` without affinity or a local zone.
    zone_pick: Option<WeightedSchedule>,
}

impl Pool {
    pub fn new(
        state: Arc<BackendState>,
        endpoints: &[Endpoint],
        states: Vec<Arc<EndpointState>>,
        affinity: bool,
        lb: LoadBalancer,
        locality: &Locality,
    ) -> Self {
        let mut zones: Vec<Arc<str>> = Vec::new();
        let mut members = Vec::with_capacity(endpoints.len());
        for (e, st) in endpoints.iter().zip(states) {
            let name = e.zone.as_deref().unwrap_or("");
            let zone = match zones.iter().position(|z| &**z == name) {
                Some(z) => z,
                None => {
                    zones.push(name.into());
                    zones.len() - 1
                }
            };
            members.push(Member {
                hash: endpoint_hash(st.addr),
                state: st,
                zone,
            });
        }
        let pick = |f: &dyn Fn(&Endpoint) -> bool| -> Box<[u32]> {
            (0..endpoints.len() as u32)
                .filter(|&i| f(&endpoints[i as usize]))
                .collect()
        };
        let ready = pick(&|e| e.ready);
        let usable = if ready.is_empty() {
            pick(&|e| !e.ready && e.serving && e.terminating)
        } else {
            ready
        };
        let home = locality
            .zone
            .as_deref()
            .and_then(|z| zones.iter().position(|n| &**n == z));
        let local = home.filter(|_| affinity);
        let mut fleet: Vec<f64> = match &locality.fleet {
            Some(list) => zones
                .iter()
                .map(|z| list.iter().find(|(n, _)| **n == **z).map_or(0.0, |f| f.1))
                .collect(),
            None => zones
                .iter()
                .map(|z| if z.is_empty() { 0.0 } else { 1.0 })
                .collect(),
        };
        let elsewhere = locality.fleet.as_ref().map_or(0.0, |list| {
            list.iter()
                .filter(|(n, _)| !zones.iter().any(|z| **z == **n))
                .map(|f| f.1)
                .sum()
        });
        fleet.push(elsewhere);
        let pool = Self {
            zone_inflight: zones.iter().map(|_| AtomicU32::new(0)).collect(),
            members: members.into_boxed_slice(),
            usable,
            zones: zones.into_boxed_slice(),
            local,
            home,
            gateway_zone_known: locality.zone.is_some(),
            fleet: fleet.into_boxed_slice(),
            lb,
            plan: ArcSwap::from_pointee(Plan {
                epoch: u64::MAX,
                expires_ms: 0,
                all: Box::new([]),
                by_zone: Box::new([]),
                zone_pick: None,
            }),
            refreshing: AtomicBool::new(false),
            rr: AtomicUsize::new(0),
            spilling: AtomicBool::new(false),
            state,
        };
        pool.plan.store(Arc::new(pool.build_plan()));
        pool
    }

    /// Adds a request's share to the backend's retry budget.
    pub fn deposit_retry_budget(&self, percent: u32) {
        self.state.budget().deposit(percent);
    }

    /// Takes one retry from the backend's budget, if it has one left.
    pub fn withdraw_retry(&self) -> bool {
        self.state.budget().withdraw()
    }

    /// Feeds one try's outcome at endpoint `i` to outlier detection. True when it ejected
    /// the endpoint.
    pub fn record(&self, i: u32, outcome: super::Outcome) -> bool {
        self.state.record(&self.member(i).state, outcome)
    }

    pub fn member(&self, i: u32) -> &Member {
        &self.members[i as usize]
    }

    pub fn addr(&self, i: u32) -> SocketAddr {
        self.members[i as usize].state.addr
    }

    /// Endpoint `i`'s zone, when its EndpointSlice names one.
    pub fn zone_of(&self, i: u32) -> Option<&str> {
        let zone = &self.zones[self.members.get(i as usize)?.zone];
        (!zone.is_empty()).then_some(&**zone)
    }

    pub fn is_empty(&self) -> bool {
        self.usable.is_empty()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether endpoint `i` is in the gateway's own zone; `None` when either zone is unknown.
    pub fn is_local(&self, i: u32) -> Option<bool> {
        let zone = self.members[i as usize].zone;
        if !self.gateway_zone_known || self.zones[zone].is_empty() {
            return None;
        }
        Some(self.home == Some(zone))
    }

    fn build_plan(&self) -> Plan {
        let now = self.state.clock.now_ms();
        let healthy: Box<[u32]> = self
            .usable
            .iter()
            .copied()
            .filter(|&i| self.members[i as usize].state.healthy(now))
            .collect();
        // Nothing healthy: try them all rather than fail every request (Envoy's panic mode).
        let all = if healthy.is_empty() {
            self.usable.clone()
        } else {
            healthy
        };
        let expires_ms = self
            .usable
            .iter()
            .map(|&i| self.members[i as usize].state.ejected_until())
            .filter(|&t| t > now)
            .min()
            .unwrap_or(u64::MAX);
        let mut by_zone: Vec<Vec<u32>> = vec![Vec::new(); self.zones.len()];
        for &i in all.iter() {
            by_zone[self.members[i as usize].zone].push(i);
        }
        // Without a local zone among the endpoints' there is nothing to prefer: the plain
        // least-request choice over all of them spreads by endpoint already.
        let zone_pick = self.local.map(|_| {
            let mut counts: Vec<usize> = by_zone.iter().map(Vec::len).collect();
            counts.push(0);
            let mut parts = zones::shares(&counts, &self.fleet, self.local);
            parts.pop();
            WeightedSchedule::new(&parts)
        });
        Plan {
            epoch: self.state.epoch(),
            expires_ms,
            all,
            by_zone: by_zone.into_iter().map(Vec::into_boxed_slice).collect(),
            zone_pick: zone_pick.flatten(),
        }
    }

    fn plan(&self) -> arc_swap::Guard<Arc<Plan>> {
        let plan = self.plan.load();
        // The clock is read only while an ejection is due to end: with none, the plan
        // cannot go stale by time, and most requests read no clock here.
        let stale = plan.epoch != self.state.epoch()
            || (plan.expires_ms != u64::MAX && self.state.clock.now_ms() >= plan.expires_ms);
        // One request rebuilds; the others keep using the previous plan meanwhile.
        if stale && !self.refreshing.swap(true, Ordering::AcqRel) {
            self.plan.store(Arc::new(self.build_plan()));
            self.refreshing.store(false, Ordering::Release);
            return self.plan.load();
        }
        plan
    }

    /// Picks an endpoint for a request, avoiding those in `avoid` (tried already) while
    /// another usable one exists. `None` only when the backend has no usable endpoint.
    pub fn pick(&self, avoid: &[u32]) -> Option<u32> {
        let plan = self.plan();
        if plan.all.is_empty() {
            return None;
        }
        let list: &[u32] = match &plan.zone_pick {
            Some(schedule) => {
                let z = schedule.pick();
                if Some(z) == self.local && self.saturated(&plan, z) {
                    &plan.all
                } else {
                    &plan.by_zone[z]
                }
            }
            None => &plan.all,
        };
        self.choose(list, avoid)
            .or_else(|| self.choose(&plan.all, avoid))
            .or_else(|| self.choose(&plan.all, &[]))
    }

    /// Whether endpoint `i` may serve a pinned session now.
    pub fn usable_now(&self, i: u32) -> bool {
        self.plan().all.contains(&i)
    }

    pub fn find(&self, hash: u32) -> Option<u32> {
        self.members
            .iter()
            .position(|m| m.hash == hash)
            .map(|i| i as u32)
    }

    fn choose(&self, list: &[u32], avoid: &[u32]) -> Option<u32> {
        let n = list.len();
        if n == 0 {
            return None;
        }
        let ok = |c: &u32| !avoid.contains(c);
        match self.lb {
            LoadBalancer::RoundRobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| list[(start + k) % n]).find(ok)
            }
            LoadBalancer::LeastRequest => {
                let a = fastrand::usize(..n);
                let b = if n > 1 {
                    (a + 1 + fastrand::usize(..n - 1)) % n
                } else {
                    a
                };
                let load = |i: u32| self.members[i as usize].state.inflight();
                match (ok(&list[a]), ok(&list[b])) {
                    (true, true) if load(list[b]) < load(list[a]) => Some(list[b]),
                    (true, _) => Some(list[a]),
                    (false, true) => Some(list[b]),
                    (false, false) => (0..n).map(|k| list[(a + k) % n]).find(ok),
                }
            }
        }
    }

    /// The local zone is loaded beyond the high-water mark and the others are less loaded.
    fn saturated(&self, plan: &Plan, local: usize) -> bool {
        let load = |z: usize| {
            let n = plan.by_zone[z].len() as u32;
            (n > 0).then(|| self.zone_inflight[z].load(Ordering::Relaxed) / n)
        };
        let Some(here) = load(local) else {
            return false;
        };
        let spilling = self.spilling.load(Ordering::Relaxed);
        let now = if spilling {
            here > SPILL_LOW
        } else {
            here >= SPILL_HIGH
                && (0..self.zones.len())
                    .filter(|&z| z != local)
                    .filter_map(load)
                    .any(|there| there < here)
        };
        if now != spilling {
            self.spilling.store(now, Ordering::Relaxed);
        }
        now
    }

    /// Counts a request on endpoint `i` until [`Self::finish`].
    pub fn start(&self, i: u32) {
        let m = &self.members[i as usize];
        m.state.start();
        self.zone_inflight[m.zone].fetch_add(1, Ordering::Relaxed);
    }

    pub fn finish(&self, i: u32) {
        let m = &self.members[i as usize];
        m.state.finish();
        let _ =
            self.zone_inflight[m.zone]
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// `a=1,b=2`: gateway replicas per zone.
pub fn parse_fleet(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (zone, n) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected ZONE=N"))?;
        let n: f64 = n
            .trim()
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| format!("{item:?}: N must be a number of replicas, 0 or more"))?;
        let zone = zone.trim();
        if zone.is_empty() || out.iter().any(|(z, _)| z == zone) {
            return Err(format!("{item:?}: empty or repeated zone"));
        }
        out.push((zone.to_owned(), n));
    }
    if out.iter().all(|(_, n)| *n == 0.0) {
        return Err("at least one zone needs replicas".into());
    }
    Ok(out)
}

/// A stable 32-bit name for an endpoint address (the same on every replica).
pub fn endpoint_hash(addr: SocketAddr) -> u32 {
    xxhash_rust::xxh3::xxh3_64(addr.to_string().as_bytes()) as u32
}

#[cfg(test)]
mod tests {
    use super::super::state::{CONSECUTIVE_FAILURES, Outcome, Registry};
    use super::*;
    use weir_model::BackendKey;

    fn ep(i: u8, zone: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: [10, 0, 0, i].into(),
            port: 80,
            zone: Some(zone.into()),
            ready,
            serving: ready,
            terminating: false,
        }
    }

    fn pool(reg: &Registry, eps: &[Endpoint], zone: Option<&str>, lb: LoadBalancer) -> Pool {
        let addrs: Vec<SocketAddr> = eps
            .iter()
            .map(|e| SocketAddr::new(e.address, e.port))
            .collect();
        let (state, states) = reg.backend(&BackendKey("ns/s:80".into()), &addrs);
        let locality = Locality {
            zone: zone.map(str::to_owned),
            fleet: None,
        };
        Pool::new(state, eps, states, true, lb, &locality)
    }

    fn by_zone(p: &Pool, n: usize) -> [usize; 3] {
        let mut c = [0; 3];
        for _ in 0..n {
            let i = p.pick(&[]).unwrap();
            c[p.member(i).zone] += 1;
        }
        c
    }

    fn six(a2_ready: bool) -> Vec<Endpoint> {
        vec![
            ep(1, "a", true),
            ep(2, "a", a2_ready),
            ep(3, "b", true),
            ep(4, "b", true),
            ep(5, "c", true),
            ep(6, "c", true),
        ]
    }

    #[test]
    fn affinity_keeps_local_and_spills_evenly() {
        let reg = Registry::default();
        let p = pool(&reg, &six(true), Some("a"), LoadBalancer::LeastRequest);
        assert_eq!(by_zone(&p, 1000), [1000, 0, 0]);
        let p = pool(&reg, &six(false), Some("a"), LoadBalancer::LeastRequest);
        assert_eq!(by_zone(&p, 1000), [600, 200, 200]);
    }

    #[test]
    fn ejection_changes_the_plan_at_once() {
        let reg = Registry::default();
        let p = pool(&reg, &six(true), Some("a"), LoadBalancer::RoundRobin);
        for _ in 0..CONSECUTIVE_FAILURES {
            p.state.record(&p.member(1).state, Outcome::Failure);
        }
        assert_eq!(by_zone(&p, 1000), [600, 200, 200]);
        for _ in 0..100 {
            assert_ne!(p.pick(&[]), Some(1), "the ejected endpoint gets nothing");
        }
        p.state.set_check(&p.member(1).state, false);
        p.state.set_check(&p.member(1).state, true);
        assert_eq!(by_zone(&p, 1000), [1000, 0, 0]);
    }

    #[test]
    fn failed_checks_everywhere_fall_back_to_trying_all() {
        let reg = Registry::default();
        let p = pool(&reg, &six(true), Some("a"), LoadBalancer::RoundRobin);
        for m in p.members() {
            p.state.set_check(&m.state, false);
        }
        assert!(
            p.pick(&[]).is_some(),
            "panic mode: never fail while endpoints exist"
        );
    }

    #[test]
    fn retries_avoid_tried_endpoints_even_across_zones() {
        let reg = Registry::default();
        let p = pool(&reg, &six(true), Some("a"), LoadBalancer::LeastRequest);
        for _ in 0..100 {
            let third = p.pick(&[0, 1]).unwrap();
            assert!(
                third >= 2,
                "left the zone rather than retry a tried endpoint"
            );
        }
        assert!(p.pick(&[0, 1, 2, 3, 4, 5]).is_some());
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let reg = Registry::default();
        let eps = [ep(1, "a", true), ep(2, "a", true)];
        let p = pool(&reg, &eps, None, LoadBalancer::LeastRequest);
        for _ in 0..5 {
            p.start(0);
        }
        assert!((0..100).all(|_| p.pick(&[]) == Some(1)));
    }

    #[test]
    fn terminating_endpoints_drain_and_serve_only_when_nothing_is_ready() {
        let reg = Registry::default();
        let draining = Endpoint {
            terminating: true,
            serving: true,
            ..ep(3, "a", false)
        };
        let p = pool(
            &reg,
            &[ep(1, "a", true), draining.clone(), ep(4, "a", false)],
            None,
            LoadBalancer::RoundRobin,
        );
        assert!(
            (0..20).all(|_| p.pick(&[]) == Some(0)),
            "new requests skip it"
        );
        let p = pool(
            &reg,
            &[draining, ep(4, "a", false)],
            None,
            LoadBalancer::RoundRobin,
        );
        assert_eq!(p.pick(&[]), Some(0), "the last serving pod still answers");
        let p = pool(&reg, &[ep(4, "a", false)], None, LoadBalancer::RoundRobin);
        assert!(p.is_empty() && p.pick(&[]).is_none());
    }

    #[test]
    fn fleet_zones_parse_strictly() {
        assert_eq!(
            parse_fleet("a=1, b=2").unwrap(),
            [("a".to_string(), 1.0), ("b".to_string(), 2.0)]
        );
        for bad in ["a", "a=x", "a=1,a=2", "=1", "a=0", "a=-1"] {
            assert!(parse_fleet(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_saturated_zone_spills_and_comes_back() {
        let reg = Registry::default();
        let p = pool(&reg, &six(true), Some("a"), LoadBalancer::LeastRequest);
        for _ in 0..2 * SPILL_HIGH {
            p.start(0);
        }
        let spilled = by_zone(&p, 1000);
        assert!(spilled[1] + spilled[2] > 500, "{spilled:?}");
        for _ in 0..2 * SPILL_HIGH {
            p.finish(0);
        }
        assert_eq!(by_zone(&p, 1000), [1000, 0, 0]);
    }
}
