//! The admin listener: `/healthz`, `/readyz`, `/config` and `/metrics`.
//!
//! The probes and `/metrics` are for the kubelet and Prometheus, on the pod's address.
//! `/config` shows every route, endpoint, certificate chain and policy, so by default it
//! answers only connections over loopback ([`ConfigAccess::Loopback`]): a process in the
//! pod, or `kubectl port-forward`, which dials the pod's localhost; another pod gets 403.
//!
//! It runs on the control runtime (`crate::control`), as ztunnel's admin does, so that a
//! heavy `/metrics` scrape or a big `/config` dump never steals a proxy thread from live
//! traffic.

use crate::metrics::Metrics;
use crate::reload::Live;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

/// Who may read `/config` (`--config-access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConfigAccess {
    // Plain comments, not doc comments: clap would show them as a long list in --help.
    // Only connections from a loopback address.
    #[default]
    Loopback,
    // Any client that reaches the admin listener.
    Any,
}

/// Binds `addr` now (so a bad address fails at start-up) and serves on `control` (the
/// control runtime). Returns the bound address.
pub fn spawn(
    addr: SocketAddr,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    control: &tokio::runtime::Handle,
    config_access: ConfigAccess,
) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let listener = {
        let _entered = control.enter();
        tokio::net::TcpListener::from_std(std_listener)?
    };
    control.spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                // Out of file descriptors, say: retrying at once would spin the
                // control thread that the reload and the probes share.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let (live, metrics) = (live.clone(), metrics.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (live, metrics) = (live.clone(), metrics.clone());
                    let config = config_access == ConfigAccess::Any
                        || peer.ip().to_canonical().is_loopback();
                    async move { Ok::<_, Infallible>(handle(&req, &live, &metrics, config)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

/// `config`: whether this connection may read `/config`.
fn handle(
    req: &Request<Incoming>,
    live: &Live,
    metrics: &Metrics,
    config: bool,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match live.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        "/config" if !config => text(
            StatusCode::FORBIDDEN,
            "/config is served to loopback clients only: use kubectl port-forward, or start the gateway with --config-access any\n",
        ),
        "/config" => {
            let status = live.status.load();
            let rt = live.runtime.load();
            let body = json!({
                "generation": status.generation,
                "loadedAt": status.loaded_at,
                "error": status.error,
                "warnings": status.warnings,
                "compileErrors": status.compile_errors,
                "config": rt.config.redacted(),
            });
            let mut resp = Response::new(Full::new(Bytes::from(
                serde_json::to_vec_pretty(&body).unwrap_or_default(),
            )));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.render())));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /config, /metrics\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}
