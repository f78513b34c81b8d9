//! Wiring for `weir-gateway`: the proxy runtime, the config pipeline, the listener manager,
//! the admin listener, and a graceful stop on SIGTERM.

use crate::admin;
use crate::listen::ListenerManager;
use crate::metrics::Metrics;
use crate::proxy::WeirProxy;
use crate::reload::{self, Live};
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

#[derive(Debug, Clone)]
pub struct Options {
    pub manifests: PathBuf,
    pub admin: SocketAddr,
    pub threads: usize,
    pub bind: IpAddr,
    /// Quiet time after a manifest change before it is applied.
    pub debounce: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain: Duration,
}

/// Runs the gateway until SIGTERM or SIGINT.
pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .thread_name("weir-proxy")
        .enable_all()
        .build()
        .context("starting the proxy runtime")?;
    rt.block_on(serve(opts))
}

async fn serve(opts: Options) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let live = Live::new();

    let watch = files::watch(&opts.manifests, opts.debounce)
        .with_context(|| format!("reading manifests from {}", opts.manifests.display()))?;
    reload::follow(watch.subscribe(), live.clone(), metrics.clone()).await;

    let admin = admin::spawn(opts.admin, live.clone(), metrics.clone())
        .with_context(|| format!("binding the admin listener on {}", opts.admin))?;
    info!(%admin, "admin listening");

    let conf = Arc::new(ServerConf {
        threads: opts.threads.max(1),
        ..ServerConf::default()
    });
    let mut proxy =
        pingora::proxy::http_proxy(&conf, WeirProxy::new(live.runtime.clone(), metrics.clone()));
    let mut server_options = HttpServerOptions::default();
    // Cleartext HTTP/2 with prior knowledge (gRPC without TLS) on HTTP listeners.
    server_options.h2c = true;
    proxy.server_options = Some(server_options);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let manager = ListenerManager {
        bind: opts.bind,
        proxy: Arc::new(proxy),
        runtime: live.runtime.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown_rx,
        bound_generation: live.bound_generation.clone(),
    };
    let listeners = tokio::spawn(manager.run(live.ports.subscribe()));

    wait_for_signal().await;
    info!("stopping: readiness off, listeners closing, draining in-flight requests");
    live.shutting_down.store(true, Ordering::SeqCst);
    let _ = shutdown_tx.send(true);
    let _ = listeners.await;
    let deadline = tokio::time::Instant::now() + opts.drain;
    while metrics.downstream_connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(watch);
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers there is nothing to wait for but the process end.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
