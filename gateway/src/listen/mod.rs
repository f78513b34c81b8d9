//! The listener manager. Pingora's `Server` binds its listeners once, at start; Weir's
//! Gateways gain and lose listener ports at any time, so this module binds and unbinds
//! ports as the config changes, runs the TLS handshake with Weir's SNI resolver, and drives
//! each accepted connection ([`conn`]: HTTP/1 in [`h1`], HTTP/2 in [`h2`]), handing each
//! request to the Pingora HTTP app (`HttpProxy::process_new_http`). The connection's waits
//! and limits ([`limits`]) are Weir's, so no client holds a connection open for free.
//!
//! Ports are bound with SO_REUSEPORT, so a port whose protocol changes gets its new socket
//! before the old one closes; connections already accepted run to completion either way.

mod conn;
mod h1;
mod h2;
pub mod head;
pub mod limits;
pub mod metrics;
mod stop;

pub use limits::ConnLimits;

use crate::metrics::Metrics;
use crate::proxy::WeirProxy;
use crate::runtime::Runtime;
use crate::tls::{PortClientVerifier, RecordSni, SniResolver};
use arc_swap::ArcSwap;
use conn::Conn;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};
use weir_model::Protocol;

/// How often ports that failed to bind are retried.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// The set of ports the config asks for.
pub type PortSet = BTreeMap<u16, Protocol>;

pub struct ListenerManager {
    /// Which proxy thread this manager serves; thread 0 speaks for all in the log.
    pub thread: usize,
    pub bind: IpAddr,
    pub proxy: Arc<HttpProxy<WeirProxy>>,
    /// Weir's own HTTP/1 request loop.
    pub weir: Arc<WeirProxy>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<ConnLimits>,
    pub shutdown: ShutdownWatch,
    /// The generation whose ports are all bound, for readiness.
    pub bound_generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for ListenerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerManager")
            .field("thread", &self.thread)
            .field("bind", &self.bind)
            .finish_non_exhaustive()
    }
}

struct Active {
    protocol: Protocol,
    stop: watch::Sender<bool>,
}

impl ListenerManager {
    /// Applies every port set published on `ports` (tagged with its config generation) until
    /// shutdown, then closes every port.
    pub async fn run(self, mut ports: watch::Receiver<(u64, PortSet)>) {
        let mut active: BTreeMap<u16, Active> = BTreeMap::new();
        let mut shutdown = self.shutdown.clone();
        loop {
            let (generation, wanted) = ports.borrow_and_update().clone();
            let all_bound = self.apply(&mut active, &wanted);
            if all_bound {
                self.bound_generation
                    .fetch_max(generation, Ordering::SeqCst);
            }
            tokio::select! {
                changed = ports.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => if *shutdown.borrow() { break },
                _ = tokio::time::sleep(BIND_RETRY), if !all_bound => {}
            }
        }
        for (port, a) in active {
            let _ = a.stop.send(true);
            if self.thread == 0 {
                info!(port, "listener closed");
            }
        }
    }

    /// Returns whether every wanted port is bound.
    fn apply(&self, active: &mut BTreeMap<u16, Active>, wanted: &PortSet) -> bool {
        let stale: Vec<u16> = active
            .iter()
            .filter(|(p, a)| wanted.get(p) != Some(&a.protocol))
            .map(|(p, _)| *p)
            .collect();
        let mut all_bound = true;
        for (&port, &protocol) in wanted {
            if active.get(&port).is_some_and(|a| a.protocol == protocol) {
                continue;
            }
            match self.start(port, protocol) {
                Ok(stop) => {
                    // The new socket is up (SO_REUSEPORT); now the old one may go.
                    if let Some(old) = active.insert(port, Active { protocol, stop }) {
                        let _ = old.stop.send(true);
                    }
                    if self.thread == 0 {
                        info!(port, %protocol, "listening");
                    }
                }
                Err(e) => {
                    all_bound = false;
                    error!(port, %protocol, thread = self.thread, error = %e, "cannot listen; will retry");
                }
            }
        }
        for port in stale {
            if !wanted.contains_key(&port)
                && let Some(old) = active.remove(&port)
            {
                let _ = old.stop.send(true);
                if self.thread == 0 {
                    info!(
                        port,
                        "listener closed: no Gateway listener uses this port any more"
                    );
                }
            }
        }
        all_bound
    }

    fn start(&self, port: u16, protocol: Protocol) -> std::io::Result<watch::Sender<bool>> {
        let listener = bind(SocketAddr::new(self.bind, port))?;
        let acceptor = match protocol {
            Protocol::Http => None,
            Protocol::Https => Some(Arc::new(self.tls_acceptor(port)?)),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let conn = Conn {
            proxy: self.proxy.clone(),
            weir: self.weir.clone(),
            acceptor,
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
            limits: self.limits.clone(),
        };
        tokio::spawn(accept_loop(listener, conn, stop_rx));
        Ok(stop_tx)
    }

    fn tls_acceptor(&self, port: u16) -> std::io::Result<Acceptor> {
        let mut settings = TlsSettings::with_callbacks(Box::new(RecordSni))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        settings.set_cert_resolver(Arc::new(SniResolver {
            runtime: self.runtime.clone(),
            port,
        }));
        settings.set_client_cert_verifier(Arc::new(PortClientVerifier::new(
            self.runtime.clone(),
            port,
        )));
        // ALPN h2 and http/1.1; the settings allow TLS 1.2 and 1.3 only.
        settings.enable_h2();
        Ok(settings.build())
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(65535)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(listener: TcpListener, conn: Conn, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    tokio::spawn(conn.clone().serve(tcp));
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
