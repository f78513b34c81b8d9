//! Active HTTP health checks (`weir.dev/health-check`): a `GET` to each endpoint of a
//! checked backend on an interval; 2xx and 3xx pass. A backend with a BackendTLSPolicy is
//! checked over TLS, verified and authenticated as its requests are
//! ([`crate::tls::upstream::probe`]).
//!
//! Probes run on a thread and runtime of their own, so a slow or hanging endpoint never
//! costs a proxy thread anything (ztunnel keeps control work off its data plane for the
//! same reason). Tasks are keyed by backend and endpoint and survive config swaps; a swap
//! starts the new ones, stops the removed ones and restarts those whose settings changed.

use super::state::{BackendState, EndpointState};
use crate::tls::upstream::probe::ProbeTls;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::AbortHandle;
use weir_model::{BackendKey, HealthCheck};

/// One endpoint to check, as the config asks.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub backend: BackendKey,
    pub state: Arc<BackendState>,
    pub endpoint: Arc<EndpointState>,
    pub check: HealthCheck,
    /// Set for a backend reached over TLS.
    pub tls: Option<ProbeTls>,
}

/// What a running probe was started with: a change to either restarts it.
type Settings = (HealthCheck, Option<ProbeTls>);

#[derive(Debug)]
pub struct Checker {
    handle: tokio::runtime::Handle,
    running: Mutex<HashMap<(BackendKey, SocketAddr), (Settings, AbortHandle)>>,
}

impl Checker {
    /// Probes run as tasks on `control` (the control runtime, see `crate::control`).
    pub fn start(control: tokio::runtime::Handle) -> Self {
        Self {
            handle: control,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the running checks exactly `wanted`.
    pub fn reconcile(&self, wanted: Vec<Wanted>) {
        let mut running = self.running.lock();
        let mut keep = HashMap::with_capacity(wanted.len());
        for w in wanted {
            let key = (w.backend.clone(), w.endpoint.addr);
            let settings = (w.check.clone(), w.tls.clone());
            match running.remove(&key) {
                Some((was, task)) if was == settings => {
                    keep.insert(key, (was, task));
                }
                old => {
                    if let Some((_, task)) = old {
                        task.abort();
                    }
                    let task = self.handle.spawn(probe_loop(w)).abort_handle();
                    keep.insert(key, (settings, task));
                }
            }
        }
        for (_, (_, task)) in running.drain() {
            task.abort();
        }
        *running = keep;
    }

    pub fn running(&self) -> usize {
        self.running.lock().len()
    }
}

async fn probe_loop(w: Wanted) {
    let interval = Duration::from_millis(w.check.interval_ms.max(1));
    let timeout = Duration::from_millis(w.check.timeout_ms.max(1));
    let (mut fails, mut passes) = (0u32, 0u32);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = matches!(
            tokio::time::timeout(timeout, probe(w.endpoint.addr, &w.check.path, w.tls.as_ref())).await,
            Ok(Ok(status)) if (200..400).contains(&status)
        );
        if ok {
            passes += 1;
            fails = 0;
            if passes >= w.check.healthy_threshold {
                w.state.set_check(&w.endpoint, true);
            }
        } else {
            fails += 1;
            passes = 0;
            if fails >= w.check.unhealthy_threshold {
                w.state.set_check(&w.endpoint, false);
            }
        }
    }
}

/// One `GET`, on a fresh connection: a check must see what a new connection would.
async fn probe(addr: SocketAddr, path: &str, tls: Option<&ProbeTls>) -> anyhow::Result<u16> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    match tls {
        None => get(TokioIo::new(tcp), addr, path).await,
        Some(tls) => {
            let config = tls.config.clone().map_err(|why| anyhow::anyhow!("{why}"))?;
            let stream = pingora::tls::TlsConnector::from(config)
                .connect(tls.sni.clone(), tcp)
                .await?;
            get(TokioIo::new(stream), addr, path).await
        }
    }
}

async fn get<IO>(io: IO, addr: SocketAddr, path: &str) -> anyhow::Result<u16>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "weir-health-check")
        .body(Empty::<bytes::Bytes>::new())?;
    Ok(sender.send_request(req).await?.status().as_u16())
}
