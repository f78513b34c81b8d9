//! The admin listener: `/healthz` (200 once an identity is loaded: before that the pod
//! cannot take mesh traffic; 503 again from the start of the drain, so that the kubelet
//! stops routing to a pod on its way out) and `/metrics` (Prometheus text).
//!
//! It runs on a runtime of its own (see the binary), as ztunnel's admin does, so that a
//! slow scrape never shares worker threads with forwarded requests.

use crate::drain::Draining;
use crate::identity::Identity;
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What the admin endpoints report on.
#[derive(Debug, Clone)]
pub struct Admin {
    pub identity: Arc<ArcSwapOption<Identity>>,
    pub metrics: Metrics,
    pub draining: Draining,
}

impl Admin {
    /// Serves forever on `listener`.
    pub async fn serve(self, listener: TcpListener) {
        let admin = Arc::new(self);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(&req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin connection failed");
                }
            });
        }
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
            "/healthz" if self.draining.is_draining() => {
                reply(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            }
            "/healthz" => match self.identity.load().as_deref() {
                Some(id) => reply(StatusCode::OK, format!("ok {}\n", id.spiffe_id)),
                None => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no identity loaded yet\n".into(),
                ),
            },
            "/metrics" => {
                let mut resp = reply(StatusCode::OK, self.metrics.render());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            _ => reply(StatusCode::NOT_FOUND, "try /healthz or /metrics\n".into()),
        }
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::from(body));
    *resp.status_mut() = status;
    resp
}
