//! The graph's HTTP server: the page, its script and Cytoscape.js (all compiled into the
//! binary, so the page works with no internet), and the JSON it draws from.

use super::{GraphError, Options};
use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/graph.js");
/// Cytoscape.js 3.35.0 (MIT), `dist/cytoscape.min.js` of the npm package, unmodified.
const CYTOSCAPE: &str = include_str!("assets/cytoscape.min.js");

/// The window the page asks for when the URL names none.
const DEFAULT_WINDOW: &str = "5m";
/// Connections beyond this many at once wait in the listen queue: the page is for people,
/// and a few dozen browsers are plenty.
const MAX_CONNECTIONS: usize = 64;

pub(super) async fn serve(listener: TcpListener, opts: Arc<Options>) -> Result<()> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    // A client that never finishes its request head does not keep a connection forever.
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    http.http2().timer(TokioTimer::new());
    let http = Arc::new(http);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await?;
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let opts = opts.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let opts = opts.clone();
                async move { Ok::<_, Infallible>(handle(&opts, req).await) }
            });
            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
            drop(permit);
        });
    }
}

async fn handle(opts: &Options, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/" => page(INDEX, "text/html; charset=utf-8", false),
        "/graph.js" => page(SCRIPT, "text/javascript; charset=utf-8", false),
        "/cytoscape.min.js" => page(CYTOSCAPE, "text/javascript; charset=utf-8", true),
        "/api/config" => json(
            StatusCode::OK,
            &serde_json::json!({
                "refresh_ms": opts.refresh.as_millis() as u64,
                "default_window": DEFAULT_WINDOW,
            }),
        ),
        "/api/graph" => {
            let window = req
                .uri()
                .query()
                .and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "window")
                        .map(|(_, v)| v.into_owned())
                })
                .unwrap_or_else(|| DEFAULT_WINDOW.to_string());
            match opts.source.graph(&window).await {
                Ok(g) => json(StatusCode::OK, &g),
                Err(e) => {
                    // A bad window is the caller's; anything else, the source's.
                    let status = match e {
                        GraphError::Window(_) => StatusCode::BAD_REQUEST,
                        GraphError::Source(_) => StatusCode::BAD_GATEWAY,
                    };
                    json(status, &serde_json::json!({ "error": e.to_string() }))
                }
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn page(body: &'static str, content_type: &'static str, immutable: bool) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Only this server's own script runs: no inline script, nothing from elsewhere.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let cache = match immutable {
        true => "public, max-age=86400",
        false => "no-cache",
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body =
        serde_json::to_vec(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
