//! DNS lookups for [`super::Egress`], with hickory-resolver: the system configuration
//! (`/etc/resolv.conf`), or one name server given with `--resolver`.

use super::{EgressMetrics, Resolved};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A TTL below this is refreshed this often anyway: a zero TTL must not become a busy loop.
pub(super) const MIN_REFRESH: Duration = Duration::from_secs(1);
/// A long TTL is refreshed at least this often, so a changed record shows within minutes.
pub(super) const MAX_REFRESH: Duration = Duration::from_secs(300);
/// Retries after a failed lookup back off up to this.
const MAX_RETRY: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(super) struct Resolver(Arc<TokioResolver>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    pub(super) fn new(nameserver: Option<SocketAddr>) -> Result<Self, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match nameserver {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut server.connections {
                    c.port = addr.port();
                }
                let config = ResolverConfig::from_name_servers(vec![server]);
                TokioResolver::builder_with_config(config, provider)
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| format!("reading the system DNS configuration: {e}"))?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        // Names are fully qualified (see `fqdn`), so search domains never apply; answers
        // live only as long as their TTL says, which is what the refresh follows.
        opts.positive_min_ttl = None;
        opts.cache_size = 256;
        // A background refresh can afford to give up sooner than a client would: the last
        // good addresses serve meanwhile, and the next try comes soon.
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        builder
            .build()
            .map(|r| Self(Arc::new(r)))
            .map_err(|e| format!("building the DNS resolver: {e}"))
    }
}

/// An ExternalName is absolute, as the cluster DNS's CNAME to it is: without the final dot
/// a resolver with `ndots:5` (every pod's) would try the search domains first.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') || name.parse::<IpAddr>().is_ok() {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// Looks `target`'s name up for as long as the task lives (it is aborted when no config
/// uses the name any more), sleeping for the answer's TTL between lookups.
pub(super) async fn refresh(resolver: Resolver, target: Arc<Resolved>, metrics: EgressMetrics) {
    let name = fqdn(&target.name);
    let mut failures: u32 = 0;
    loop {
        let wait = match resolver.0.lookup_ip(name.as_str()).await {
            Ok(answer) => {
                let mut addrs: Vec<IpAddr> = answer.iter().collect();
                addrs.sort_unstable();
                addrs.dedup();
                if addrs.is_empty() {
                    Err("the answer holds no address".to_string())
                } else {
                    let ttl = answer
                        .valid_until()
                        .saturating_duration_since(Instant::now());
                    if **target.addresses() != addrs {
                        tracing::info!(name = %target.name, addresses = ?addrs, ttl_s = ttl.as_secs(), "ExternalName resolved");
                    }
                    metrics
                        .dns_addresses
                        .with_label_values(&[&*target.name])
                        .set(addrs.len() as i64);
                    target.store(addrs);
                    failures = 0;
                    Ok(ttl.clamp(MIN_REFRESH, MAX_REFRESH))
                }
            }
            Err(e) => Err(e.to_string()),
        };
        target.settle();
        let wait = wait.unwrap_or_else(|e| {
            failures = failures.saturating_add(1);
            metrics
                .dns_failures
                .with_label_values(&[&*target.name])
                .inc();
            let kept = target.addresses().len();
            tracing::warn!(name = %target.name, error = %e, kept, "DNS lookup failed; the last good addresses keep serving");
            MIN_REFRESH
                .saturating_mul(2u32.saturating_pow(failures - 1))
                .min(MAX_RETRY)
        });
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::fqdn;

    #[test]
    fn names_become_absolute() {
        assert_eq!(fqdn("api.example.com"), "api.example.com.");
        assert_eq!(fqdn("api.example.com."), "api.example.com.");
        assert_eq!(fqdn("10.0.0.1"), "10.0.0.1");
    }
}
