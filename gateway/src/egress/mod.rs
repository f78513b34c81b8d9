//! Egress: ExternalName Services, resolved by DNS off the hot path.
//!
//! Each DNS name in the config has one background task that looks it up, swaps the answer
//! into an [`ArcSwap`], and sleeps for the record's TTL (within [`dns::MIN_REFRESH`] and
//! [`dns::MAX_REFRESH`]). A failed lookup keeps the last good addresses. The request path
//! reads the addresses with one atomic load and takes them round robin; the endpoint port
//! is the Service port, as kube-proxy does for ExternalName.

mod dns;
pub mod metrics;

pub use metrics::EgressMetrics;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// The DNS names the live config uses, each refreshed by its own task.
#[derive(Debug)]
pub struct Egress {
    /// `--resolver`: this name server instead of `/etc/resolv.conf`'s.
    nameserver: Option<SocketAddr>,
    resolver: Mutex<Option<dns::Resolver>>,
    names: Mutex<HashMap<String, (Arc<Resolved>, AbortHandle)>>,
    /// The backends (`ns/name:port`) each name serves, as published in `backend_info`.
    backends: Mutex<HashMap<String, BTreeSet<Arc<str>>>>,
    metrics: EgressMetrics,
}

impl Egress {
    pub fn new(nameserver: Option<SocketAddr>, metrics: EgressMetrics) -> Self {
        Self {
            nameserver,
            resolver: Mutex::new(None),
            names: Mutex::new(HashMap::new()),
            backends: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The addresses of `name`, refreshed in the background from now on. `None` outside a
    /// tokio runtime or without a usable resolver configuration (logged): the backend then
    /// has no endpoints and answers 503.
    pub fn track(&self, name: &str) -> Option<Arc<Resolved>> {
        let mut names = self.names.lock();
        if let Some((r, _)) = names.get(name) {
            return Some(r.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let resolver = {
            let mut slot = self.resolver.lock();
            if slot.is_none() {
                match dns::Resolver::new(self.nameserver) {
                    Ok(r) => *slot = Some(r),
                    Err(e) => {
                        tracing::error!(error = %e, "no DNS resolver: ExternalName backends have no endpoints");
                        return None;
                    }
                }
            }
            slot.clone()?
        };
        let resolved = Arc::new(Resolved::new(name));
        let task = runtime.spawn(dns::refresh(
            resolver,
            resolved.clone(),
            self.metrics.clone(),
        ));
        names.insert(name.to_string(), (resolved.clone(), task.abort_handle()));
        Some(resolved)
    }

    /// Publishes that `backend` reaches `name` (`weir_egress_backend_info`).
    pub fn describe(&self, backend: &Arc<str>, name: &str) {
        let fresh = self
            .backends
            .lock()
            .entry(name.to_string())
            .or_default()
            .insert(backend.clone());
        if fresh {
            self.metrics
                .backend_info
                .with_label_values(&[&**backend, name])
                .set(1);
        }
    }

    /// Stops refreshing the names a new config no longer uses. Runtimes still draining keep
    /// the last addresses of theirs.
    pub fn keep_only(&self, used: &BTreeSet<&str>) {
        self.names.lock().retain(|name, (_, task)| {
            let keep = used.contains(name.as_str());
            if !keep {
                task.abort();
                let _ = self.metrics.dns_addresses.remove_label_values(&[name]);
            }
            keep
        });
        self.backends.lock().retain(|name, backends| {
            let keep = used.contains(name.as_str());
            if !keep {
                for b in backends.iter() {
                    let _ = self.metrics.backend_info.remove_label_values(&[&**b, name]);
                }
            }
            keep
        });
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        for (_, task) in self.names.lock().values() {
            task.abort();
        }
    }
}

/// One DNS name's current addresses.
#[derive(Debug)]
pub struct Resolved {
    pub name: Arc<str>,
    addrs: ArcSwap<Vec<IpAddr>>,
    /// True once the first lookup finished, answered or not.
    settled: watch::Sender<bool>,
    next: AtomicUsize,
}

impl Resolved {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            addrs: ArcSwap::from_pointee(Vec::new()),
            settled: watch::Sender::new(false),
            next: AtomicUsize::new(0),
        }
    }

    fn addresses(&self) -> arc_swap::Guard<Arc<Vec<IpAddr>>> {
        self.addrs.load()
    }

    fn store(&self, addrs: Vec<IpAddr>) {
        self.addrs.store(Arc::new(addrs));
    }

    fn settle(&self) {
        self.settled.send_replace(true);
    }
}

/// An ExternalName backend: a name and the Service port.
#[derive(Debug, Clone)]
pub struct External {
    pub resolved: Arc<Resolved>,
    pub port: u16,
}

impl External {
    /// Waits, at most `limit`, for the name's first lookup: a config that just named it
    /// should not answer 503 for the milliseconds a lookup takes.
    pub async fn settled(&self, limit: Duration) {
        let mut rx = self.resolved.settled.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| *s)).await;
    }

    pub fn is_settled(&self) -> bool {
        *self.resolved.settled.borrow()
    }

    /// The next address round robin, skipping those tried by this request (`tried` holds
    /// indexes into the answer) while another one exists.
    pub fn pick(&self, tried: &[u32]) -> Option<(u32, SocketAddr)> {
        let addrs = self.resolved.addrs.load();
        let n = addrs.len();
        if n == 0 {
            return None;
        }
        let start = self.resolved.next.fetch_add(1, Ordering::Relaxed);
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|i| !tried.contains(&(*i as u32)))
            .unwrap_or(start % n);
        Some((i as u32, SocketAddr::new(addrs[i], self.port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_round_robin_and_avoids_tried_addresses() {
        let r = Arc::new(Resolved::new("api.example.test"));
        let ext = External {
            resolved: r.clone(),
            port: 443,
        };
        assert!(ext.pick(&[]).is_none());
        r.store(vec![
            "127.0.0.1".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
        ]);
        let a = ext.pick(&[]).unwrap();
        let b = ext.pick(&[]).unwrap();
        assert_ne!(a.1, b.1);
        assert_eq!(a.1.port(), 443);
        for _ in 0..4 {
            assert_eq!(ext.pick(&[0]).unwrap().0, 1);
        }
        // All tried: one of them again, rather than nothing.
        assert!(ext.pick(&[0, 1]).is_some());
    }
}
