//! `weir-sidecar`: the command line over [`weir_sidecar`].
//!
//! Exit status: 2 for invalid arguments (nothing was started), 1 when a listener cannot
//! be bound or a runtime cannot start, 0 after SIGTERM or SIGINT and the drain that follows
//! (see [`weir_sidecar::drain`]). Logs go to stderr (`RUST_LOG`, default `info`).
//!
//! Threads: the data plane runs on the main thread (`--threads 1`, the default) or on a
//! multi-thread runtime of `--threads` workers; the admin listener on a one-thread runtime
//! of its own; identity polling on a plain thread (its file reads block, briefly, once a
//! second).

use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use clap::{CommandFactory as _, Parser as _};
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use tracing_subscriber::EnvFilter;
use weir_model::spiffe::Allow;
use weir_model::trace::Tracer;
use weir_sidecar::admin::Admin;
use weir_sidecar::authz::{self, Authz, AuthzReloader};
use weir_sidecar::cli::Cli;
use weir_sidecar::drain::Drain;
use weir_sidecar::inbound::Inbound;
use weir_sidecar::metrics::Metrics;
use weir_sidecar::outbound::Outbound;
use weir_sidecar::outbound::upstream::{Upstream, UpstreamTls};
use weir_sidecar::reload::{self, Reloader};
use weir_sidecar::tls::PortTls;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(msg) = cli.check() {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let provider = weir_sidecar::crypto_provider();
    let allow = Allow::new(cli.allow.iter().cloned());
    let setters = Allow::new(cli.identity_setter.iter().cloned());
    let identity = Arc::new(ArcSwapOption::empty());

    let ports: Vec<Arc<PortTls>> = cli
        .inbound
        .iter()
        .map(|spec| Arc::new(PortTls::new(spec.port, allow.clone(), &metrics)))
        .collect();
    // Outbound shares the reloader, so a rotation reaches inbound and outbound together.
    let upstream_tls = cli.outbound_addr().map(|_| {
        Arc::new(UpstreamTls::new(Allow::new(
            cli.upstream_id.iter().cloned(),
        )))
    });
    let mut reloader = Reloader::new(
        cli.identity_dir.clone(),
        identity.clone(),
        ports.clone(),
        metrics.clone(),
        provider,
    );
    if let Some(tls) = &upstream_tls {
        reloader = reloader.with_upstream(tls.clone());
    }
    // The first load happens before the listeners open, so that a pod whose identity is
    // already mounted never refuses mTLS for lack of one.
    reloader.poll();
    std::thread::Builder::new()
        .name("identity-reload".into())
        .spawn(move || reloader.run(reload::POLL))
        .context("starting the identity reload thread")?;

    let tracer = match &cli.otlp_endpoint {
        Some(endpoint) => {
            let t = Tracer::new(endpoint, cli.trace_sampling, "weir-sidecar")
                .map_err(anyhow::Error::msg)?;
            tracing::info!(
                endpoint,
                sampling = cli.trace_sampling,
                "request spans exported over OTLP/HTTP"
            );
            Some(Arc::new(t))
        }
        None => None,
    };
    let authz = match &cli.authz_file {
        Some(file) => {
            let authz = Arc::new(Authz::new(metrics.registry()));
            let mut reloader = AuthzReloader::new(
                file.clone(),
                cli.workload_labels.iter().cloned().collect(),
                cli.inbound.iter().map(|s| s.port).collect(),
                identity.clone(),
                authz.clone(),
            );
            // Loaded before the listeners open: no request passes unchecked.
            reloader.poll();
            std::thread::Builder::new()
                .name("authz-reload".into())
                .spawn(move || reloader.run(authz::POLL))
                .context("starting the authorization policy reload thread")?;
            Some(authz)
        }
        None => None,
    };
    let mut inbound = Vec::new();
    for (spec, tls) in cli.inbound.iter().zip(ports) {
        let listener = bind(SocketAddr::new(cli.bind, spec.port), "--inbound")?;
        let port = Inbound::new(*spec, tls, setters.clone(), &metrics, tracer.clone())
            .with_authz(authz.clone());
        inbound.push((Arc::new(port), listener));
    }

    let outbound = match (cli.outbound_addr(), cli.upstream.as_deref(), upstream_tls) {
        (Some(addr), Some(upstream), Some(tls)) => {
            let listener = bind(addr, "--outbound")?;
            let upstream = Upstream::new(upstream, tls, metrics.upstream());
            let outbound = Outbound::new(upstream, &metrics).with_tracer(tracer.clone());
            Some((Arc::new(outbound), listener))
        }
        _ => None,
    };

    // Every listener is bound, synchronously, before /healthz can answer: a taken port
    // fails the start with its address, and healthy implies listening.
    let admin_listener = bind(cli.admin, "--admin")?;
    let rt = data_plane(cli.threads).context("starting the data-plane runtime")?;
    // Signals are caught before /healthz can say healthy, so that a SIGTERM sent to a
    // healthy sidecar always drains it rather than killing it outright.
    let mut signals = {
        let _runtime = rt.enter();
        Signals::new().context("installing the SIGTERM and SIGINT handlers")?
    };
    let drain = Drain::new();
    let admin = Admin {
        identity,
        metrics: metrics.clone(),
        draining: drain.draining(),
    };
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "admin runtime failed to start"),
            };
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(admin_listener) {
                    Ok(l) => admin.serve(l).await,
                    Err(e) => tracing::error!(error = %e, "admin listener unusable"),
                }
            });
        })
        .context("starting the admin thread")?;
    tracing::info!(addr = %cli.admin, "admin listening");

    let drain_timeout = cli.drain_timeout;
    let drained = rt.block_on(async move {
        let mut accept_loops = tokio::task::JoinSet::new();
        for (port, listener) in inbound {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            accept_loops.spawn(port.serve(listener, drain.gate()));
        }
        if let Some((out, listener)) = outbound {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            accept_loops.spawn(out.serve(listener, drain.gate()));
        }
        signals.recv().await;
        tokio::select! {
            drained = drain.run(accept_loops, drain_timeout) => anyhow::Ok(drained),
            () = signals.recv() => {
                tracing::warn!("second signal: not waiting for the drain");
                Ok(false)
            }
        }
    })?;
    // Whatever is left after the drain timeout is cut here; idle pooled connections (to
    // the app, to the upstream) simply close.
    rt.shutdown_background();
    if !drained {
        tracing::warn!("exiting with connections still open");
    }
    Ok(())
}

/// One thread: a current-thread runtime on the main thread, where waking the task that
/// owns a socket costs no futex and no other core (the I/O driver and every task share
/// the thread). More: a multi-thread runtime of that many workers.
fn data_plane(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
    };
    builder.thread_name("weir-sidecar").enable_all().build()
}

fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("{flag}: cannot listen on {addr}"))?;
    // tokio requires non-blocking sockets.
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// SIGTERM and SIGINT, kept registered for the whole drain so that a second one (an
/// impatient Ctrl-C) cuts it short instead of being swallowed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
