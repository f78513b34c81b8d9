//! Wiring for `weir-gateway`: the control runtime (config pipeline, admin listener, health
//! checks, Redis sync; see `control`), the proxy threads with their listener managers, and
//! a graceful stop on SIGTERM.
//!
//! Each proxy thread runs its own single-threaded runtime and binds its own SO_REUSEPORT
//! socket for every listener port, so the kernel spreads connections over threads and a
//! request never crosses a thread (as nginx's workers). Measured against one multi-thread
//! runtime, this cut the proxy's CPU time per request by about a sixth.

use crate::accesslog::{self, AccessLog};
use crate::admin;
use crate::balance::{Balancer, Locality};
use crate::control::Control;
use crate::egress::Egress;
use crate::listen::{ConnLimits, ListenerManager};
use crate::metrics::Metrics;
use crate::proxy::{BackendTimeouts, WeirProxy};
use crate::ratelimit::{Limiter, Target};
use crate::reload::{self, Live};
use crate::trace::Tracer;
use anyhow::{Context, Result};
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tracing::info;
use weir_controller::source::files;
use weir_controller::source::kube as kube_source;

/// Where the gateway's Kubernetes objects come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A manifest file or directory, watched.
    Files(PathBuf),
    /// The API server (in-cluster config, else the kubeconfig).
    Kube {
        /// Serve only this Gateway (namespace, name); otherwise every Gateway of Weir's.
        gateway: Option<(String, String)>,
        /// The Service whose endpoints are the gateway fleet (namespace, name).
        fleet_service: Option<(String, String)>,
        /// The Node this gateway runs on, whose zone label gives its zone.
        node: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    pub admin: SocketAddr,
    pub threads: usize,
    pub bind: IpAddr,
    /// Quiet time after a manifest change before it is applied.
    pub debounce: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain: Duration,
    /// Where the fleet shares rate limit counts; without it, limits are per replica.
    pub redis: Option<Target>,
    /// Keys a RateLimitPolicy tracks at most; the least recently used go first.
    pub rate_limit_max_keys: usize,
    /// This gateway's zone and the fleet's spread over zones, for zone affinity.
    pub locality: Locality,
    /// The DNS server for ExternalName backends (`--resolver`); default `/etc/resolv.conf`.
    pub resolver: Option<SocketAddr>,
    /// What a client connection may hold: timeouts and header limits.
    pub limits: ConnLimits,
    /// Per-read and per-write timeouts on backend connections.
    pub backend_timeouts: BackendTimeouts,
    /// Where each request's access log line goes; none when `None`.
    pub access_log: Option<accesslog::Target>,
    /// Who may read `/config` on the admin listener.
    pub config_access: admin::ConfigAccess,
    /// The OTLP/HTTP collector each request's span is exported to; none when `None`.
    pub otlp_endpoint: Option<String>,
    /// The share of the traces starting here that are sampled (a client's sampled flag
    /// decides for traces it started).
    pub trace_sampling: f64,
}

/// This replica's name among the live gateways counted in Redis: the pod name (or host
/// name) and the process id, unique even with several gateways on one host.
fn gateway_id() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}/{}", std::process::id())
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a proxy runtime")
}

/// Runs the gateway until SIGTERM or SIGINT. Set-up and every background task run on the
/// control runtime; this thread becomes proxy thread 0.
pub fn run(opts: Options) -> Result<()> {
    let control = Control::start()?;
    let handle = control.handle().clone();
    let started = handle.block_on(start(&opts, &handle))?;
    let Started {
        live,
        metrics,
        weir,
        proxy,
        watch,
        signals,
        access_log,
        tracer,
    } = started;
    let limits = Arc::new(opts.limits.clone());
    let threads = opts.threads.max(1);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let manager = |thread: usize| ListenerManager {
        thread,
        bind: opts.bind,
        proxy: proxy.clone(),
        weir: weir.clone(),
        runtime: live.runtime.clone(),
        metrics: metrics.clone(),
        limits: limits.clone(),
        shutdown: shutdown_rx.clone(),
        bound_generation: live.bound[thread].clone(),
    };
    let mut workers = Vec::new();
    for thread in 1..threads {
        let m = manager(thread);
        let (ports, metrics, drain) = (live.ports.subscribe(), metrics.clone(), opts.drain);
        let rt = current_thread_runtime()?;
        workers.push(
            std::thread::Builder::new()
                .name(format!("weir-proxy-{thread}"))
                .spawn(move || rt.block_on(run_thread(m, ports, metrics, drain)))
                .context("starting a proxy thread")?,
        );
    }
    let stopping = live.clone();
    handle.spawn(async move {
        signals.recv().await;
        info!("stopping: readiness off, listeners closing, draining in-flight requests");
        stopping.shutting_down.store(true, Ordering::SeqCst);
        let _ = shutdown_tx.send(true);
    });
    let ports = live.ports.subscribe();
    current_thread_runtime()?.block_on(run_thread(manager(0), ports, metrics.clone(), opts.drain));
    for w in workers {
        let _ = w.join();
    }
    // The drained requests' lines are written before the process exits.
    if let Some(log) = &access_log {
        log.close();
    }
    if let Some(tracer) = &tracer {
        tracer.flush();
    }
    drop(watch);
    info!("stopped");
    Ok(())
}

/// What set-up leaves for the proxy threads.
struct Started {
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    /// Weir's own HTTP/1 loop; `proxy` serves HTTP/2 and upgrades.
    weir: Arc<WeirProxy>,
    proxy: Arc<pingora::proxy::HttpProxy<WeirProxy>>,
    watch: Watch,
    signals: Signals,
    access_log: Option<Arc<AccessLog>>,
    tracer: Option<Arc<Tracer>>,
}

/// The source, the first config, the admin listener and the rate limiter, all on the
/// control runtime (`control`). Signal handlers are installed before `/readyz` can say
/// ready, so a SIGTERM to a ready gateway always drains it.
async fn start(opts: &Options, control: &tokio::runtime::Handle) -> Result<Started> {
    opts.limits.validate().map_err(anyhow::Error::msg)?;
    let signals = Signals::new()?;
    let threads = opts.threads.max(1);
    let metrics = Arc::new(Metrics::new());
    let (watch, locality, fleet_service) = start_source(opts).await?;
    let egress = Egress::new(opts.resolver, metrics.egress.clone());
    let balancer = Balancer::with_egress(locality, Some(control.clone()), egress);
    let live = Live::new(threads, balancer, fleet_service);
    reload::follow(watch.subscribe(), live.clone(), metrics.clone()).await;

    let admin = admin::spawn(
        opts.admin,
        live.clone(),
        metrics.clone(),
        control,
        opts.config_access,
    )
    .with_context(|| format!("binding the admin listener on {}", opts.admin))?;
    info!(%admin, "admin listening");

    let conf = Arc::new(ServerConf {
        threads,
        ..ServerConf::default()
    });
    if let Some(target) = &opts.redis {
        info!(redis = ?target, "rate limits are shared through Redis");
    }
    let limiter = Arc::new(Limiter::new(
        opts.redis.clone(),
        gateway_id(),
        metrics.clone(),
        opts.rate_limit_max_keys,
        control,
    ));
    let access_log = match &opts.access_log {
        Some(target) => {
            let log = Arc::new(
                AccessLog::start(target, metrics.access_log.clone())
                    .context("starting the access log")?,
            );
            let mut usr1 =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                    .context("installing the SIGUSR1 handler (access log reopen)")?;
            let reopening = log.clone();
            control.spawn(async move {
                while usr1.recv().await.is_some() {
                    reopening.reopen();
                }
            });
            info!(?target, "access log on; SIGUSR1 reopens it");
            Some(log)
        }
        None => None,
    };
    let tracer = match &opts.otlp_endpoint {
        Some(endpoint) => {
            let tracer = Tracer::new(endpoint, opts.trace_sampling, metrics.trace_spans.clone())?;
            info!(
                endpoint,
                sampling = opts.trace_sampling,
                "request spans exported over OTLP/HTTP"
            );
            Some(Arc::new(tracer))
        }
        None => None,
    };
    let weir = WeirProxy::new(
        live.runtime.clone(),
        metrics.clone(),
        limiter,
        opts.backend_timeouts,
    )
    .with_access_log(access_log.clone())
    .with_tracer(tracer.clone());
    let mut proxy = pingora::proxy::http_proxy(&conf, weir.clone());
    // Connections are Weir's own (listen::conn): Pingora's server options would only
    // matter to its `process_new`, which is not used.
    proxy.server_options = Some(HttpServerOptions::default());
    Ok(Started {
        live,
        metrics,
        weir: Arc::new(weir),
        proxy: Arc::new(proxy),
        watch,
        signals,
        access_log,
        tracer,
    })
}

/// A running source; dropping it stops the watch.
#[derive(Debug)]
enum Watch {
    Files(files::FileWatch),
    Kube(kube_source::KubeWatch),
}

impl Watch {
    fn subscribe(&self) -> watch::Receiver<weir_controller::source::SourceState> {
        match self {
            Watch::Files(w) => w.subscribe(),
            Watch::Kube(w) => w.subscribe(),
        }
    }
}

/// Starts the source, and settles this gateway's locality: `--zone` wins, else (in a
/// cluster) its Node's zone label.
async fn start_source(opts: &Options) -> Result<(Watch, Locality, Option<(String, String)>)> {
    let mut locality = opts.locality.clone();
    let (watch, fleet_service) = match &opts.source {
        Source::Files(path) => {
            let w = files::watch(path, opts.debounce)
                .with_context(|| format!("reading manifests from {}", path.display()))?;
            (Watch::Files(w), None)
        }
        Source::Kube {
            gateway,
            fleet_service,
            node,
        } => {
            let client = ::kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
            if let (None, Some(node)) = (&locality.zone, node) {
                // Bounded: a slow API server must not hold back the admin port and probes.
                let zone = crate::kube::node_zone(client.clone(), node);
                locality.zone = tokio::time::timeout(Duration::from_secs(10), zone)
                    .await
                    .unwrap_or_else(|_| {
                        tracing::warn!(node, "reading the node timed out: zone affinity is off");
                        None
                    });
            }
            let options = kube_source::Options {
                scope: kube_source::Scope {
                    gateway: gateway.clone(),
                },
                debounce: opts.debounce,
                // Secrets only of the namespaces its Gateways take certificates from: its
                // RBAC grants no more (deploy/base/rbac.yaml).
                secrets: kube_source::SecretScope::Referenced,
                ..Default::default()
            };
            info!(gateway = ?gateway, "watching the Kubernetes API");
            // `--fleet-zones` is an explicit spread; only without it does the cluster's count.
            let follow = fleet_service.clone().filter(|_| locality.fleet.is_none());
            (Watch::Kube(kube_source::watch(client, options)), follow)
        }
    };
    match &locality.zone {
        Some(zone) => info!(zone, fleet = ?locality.fleet, "zone affinity: this gateway's zone"),
        None => {
            info!("no zone known (--zone, WEIR_ZONE, or the node's label): zone affinity is off")
        }
    }
    Ok((watch, locality, fleet_service))
}

/// One proxy thread: its listeners until shutdown, then its in-flight requests until they
/// finish or the drain time is up.
async fn run_thread(
    manager: ListenerManager,
    ports: watch::Receiver<(u64, crate::listen::PortSet)>,
    metrics: Arc<Metrics>,
    drain: Duration,
) {
    let proxy = manager.proxy.clone();
    manager.run(ports).await;
    // Idle connections have closed on the shutdown signal (listen::h1, listen::h2); this
    // raises Pingora's own flag, which requests in flight read to end their keep-alive.
    pingora::apps::ServerApp::cleanup(&*proxy).await;
    let deadline = tokio::time::Instant::now() + drain;
    while metrics.downstream_connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM and SIGINT, registered at start-up.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
