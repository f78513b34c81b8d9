//! The outbound listener: the app sends plain HTTP to 127.0.0.1:15001, and each request
//! is carried over mTLS and HTTP/2 to the fleet's mesh listener (`--upstream`), which routes
//! it by `:authority`.
//!
//! Requests come in origin-form (`GET /path` + `Host`) or absolute-form (`GET
//! http://payments.payments:8080/path`, as `HTTP_PROXY` clients send); both leave as
//! `:authority` = the destination and `:path` = the path. Apps may also speak HTTP/2 with
//! prior knowledge (h2c, as gRPC clients do); the listener tells the two apart by the
//! preface. CONNECT is refused with 405 and the reason: a tunnel would hide the request
//! from the fleet, which routes, limits and originates TLS on the app's behalf.

pub mod stream;
pub mod upstream;

use crate::drain::Gate;
use crate::inbound::forward::{CALLER_IDENTITY, path_of, strip_hop_by_hop, wants_trailers};
use crate::metrics::Metrics;
use crate::trace::Traced;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntCounter;
use std::convert::Infallible;
use std::sync::Arc;
use stream::UpstreamBody;
use tokio::net::TcpListener;
use upstream::Upstream;
use weir_model::trace::{Kind, Tracer};

/// What the outbound side answers with: the upstream's response, or the sidecar's own.
type Body = Either<UpstreamBody, Full<Bytes>>;

/// The outbound listener and what it forwards to.
#[derive(Debug)]
pub struct Outbound {
    upstream: Upstream,
    http: auto::Builder<TokioExecutor>,
    /// Requests by status class, indexed by `status / 100 - 1` (1xx..5xx).
    requests: [IntCounter; 5],
    upstream_errors: IntCounter,
    tracer: Option<Arc<Tracer>>,
}

impl Outbound {
    pub fn new(upstream: Upstream, metrics: &Metrics) -> Self {
        // HTTP/1.1 as most apps send it, and HTTP/2 with prior knowledge as gRPC clients
        // do, told apart by the connection preface. The timers bound how long HTTP/1
        // request headers may take and drive HTTP/2 keep-alive.
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1().timer(TokioTimer::new());
        http.http2().timer(TokioTimer::new());
        Self {
            upstream,
            http,
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| metrics.outbound_requests(c)),
            upstream_errors: metrics.outbound_upstream_errors(),
            tracer: None,
        }
    }

    /// Each request is also a span, the fleet's parent (`--otlp-endpoint`).
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Accepts app connections, each in a task of its own, until the drain starts; then
    /// the listener closes and the connections finish under the [`Gate`]'s watch.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut gate: Gate) {
        tracing::info!(upstream = %self.upstream.addr(), "outbound listening");
        while let Some((tcp, _, watcher)) = gate.accept(&listener).await {
            let this = self.clone();
            let service = hyper::service::service_fn(move |req| {
                let this = this.clone();
                async move { Ok::<_, Infallible>(this.handle(req).await) }
            });
            let conn = self
                .http
                .serve_connection(TokioIo::new(tcp), service)
                .into_owned();
            tokio::spawn(async move {
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, "outbound app connection ended");
                }
            });
        }
    }

    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let span = Traced::start(self.tracer.as_ref(), &mut req, "outbound");
        let resp = self.route(req).await;
        let class = usize::from(resp.status().as_u16() / 100).clamp(1, 5);
        self.requests[class - 1].inc();
        if let Some(span) = span {
            span.end(resp.status(), Kind::Client, &[]);
        }
        resp
    }

    async fn route(&self, mut req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::CONNECT {
            return reply(StatusCode::METHOD_NOT_ALLOWED, CONNECT_REFUSED);
        }
        let version = req.version();
        let authority = match destination(&req) {
            Ok(a) => a,
            Err(why) => return reply(StatusCode::BAD_REQUEST, why),
        };
        let headers = req.headers_mut();
        let trailers = wants_trailers(headers);
        strip_hop_by_hop(headers);
        if trailers {
            headers.insert(header::TE, header::HeaderValue::from_static("trailers"));
        }
        // Only the sidecar speaks for the pod's identity: the upstream reads it from mTLS.
        headers.remove(CALLER_IDENTITY);
        // HTTP/2 carries the destination in :authority; a Host beside it would be a second,
        // possibly different, answer to the same question.
        headers.remove(header::HOST);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query = Some(path_of(req.uri()));
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path");
        *req.version_mut() = Version::HTTP_2;

        match self.upstream.send(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.version = version;
                Response::from_parts(parts, Either::Left(body))
            }
            Err(why) => {
                tracing::warn!(upstream = %self.upstream.addr(), error = %why, "upstream failed");
                self.upstream_errors.inc();
                reply(StatusCode::BAD_GATEWAY, "upstream unavailable\n")
            }
        }
    }
}

/// Why CONNECT is refused, for the app's developer reading the 405.
const CONNECT_REFUSED: &str = "CONNECT is refused: a tunnel would carry the app's own TLS past \
the mesh, bypassing the fleet's routing, rate limits and TLS origination. Send plain http:// \
to this sidecar and let the fleet originate TLS to the destination (BackendTLSPolicy).\n";

/// Where the app wants to go: the authority of an absolute-form target (which overrides
/// Host, RFC 9112 §3.2.2), else the Host header.
fn destination<B>(req: &Request<B>) -> Result<Authority, &'static str> {
    let uri = req.uri();
    if let Some(authority) = uri.authority() {
        // An https:// target would need TLS to the app's destination, which is the mesh's
        // job here; the app should send http:// and let the sidecar encrypt.
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err("only http:// targets are proxied; the mesh provides the TLS\n");
        }
        return Ok(authority.clone());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
        .filter(|a| !a.host().is_empty())
        .ok_or("a Host header (or an absolute-form target) is required\n")
}

fn reply(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::get(target);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn destinations_come_from_absolute_targets_then_host() {
        let d = |t, h| destination(&req(t, h)).map(|a| a.to_string());
        assert_eq!(d("/x", Some("pay.pay:8080")).as_deref(), Ok("pay.pay:8080"));
        assert_eq!(
            d("http://pay.pay:8080/x", Some("other")).as_deref(),
            Ok("pay.pay:8080")
        );
        assert!(d("/x", None).is_err());
        assert!(d("https://pay.pay/x", None).is_err());
    }
}
