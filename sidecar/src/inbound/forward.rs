//! HTTP forwarding to the app: each request that arrived on an inbound connection goes to
//! 127.0.0.1:APP_PORT over pooled HTTP/1.1 connections ([`AppPool`]), with the caller's
//! identity in `x-weir-caller-identity`.
//!
//! The identity header is the app's whole view of mTLS, so it is only ever written by
//! the sidecar: an mTLS peer gets its own SPIFFE ID written over whatever it sent, unless
//! it is an identity setter (the gateway fleet, relaying its own caller's identity);
//! plaintext requests carry none, since nothing vouches for them.

use super::pool::{AppBody, AppPool};
use crate::trace::Traced;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntCounter;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use weir_model::trace::{Kind, Tracer};

pub const CALLER_IDENTITY: HeaderName = HeaderName::from_static("x-weir-caller-identity");

/// What the sidecar knows of the peer of one inbound connection.
#[derive(Debug, Clone)]
pub enum Peer {
    /// Plaintext (permissive ports): no identity.
    Plaintext,
    /// An mTLS peer the allow-list admitted.
    Mesh {
        /// Its SPIFFE ID, ready to be a header value.
        id: HeaderValue,
        /// Whether it may set `x-weir-caller-identity` itself.
        setter: bool,
    },
}

/// Applies the identity rule of the module header to a request's headers.
pub fn set_caller_identity(headers: &mut HeaderMap, peer: &Peer) {
    match peer {
        Peer::Plaintext => {
            headers.remove(CALLER_IDENTITY);
        }
        Peer::Mesh { setter: true, .. } => {}
        Peer::Mesh { id, setter: false } => {
            headers.insert(CALLER_IDENTITY, id.clone());
        }
    }
}

/// The answer to a request AuthorizationPolicies refuse: 403, or 401 for a token that did
/// not verify; for gRPC, the PERMISSION_DENIED or UNAUTHENTICATED status gRPC clients
/// read. It names no policy.
pub fn refused(why: crate::authz::Refusal, grpc: bool) -> Response<InboundBody> {
    let (status, text, grpc_status) = match why {
        crate::authz::Refusal::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "7"),
        crate::authz::Refusal::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthorized", "16"),
    };
    let body = if grpc {
        String::new()
    } else {
        format!("{text}\n")
    };
    let mut resp = Response::new(Either::Right(Full::from(body)));
    let h = resp.headers_mut();
    if grpc {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static(grpc_status));
        h.insert("grpc-message", HeaderValue::from_static(text));
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: the token the request carried is what was refused.
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="weir", error="invalid_token""#),
            );
        }
        *resp.status_mut() = status;
    }
    resp
}

/// The hop-by-hop headers of RFC 9110 §7.6.1 (and the older ones proxies still meet).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is one of [`HOP_BY_HOP`]: a match on the (lower-case) text, which
/// compiles to a switch on its length, where comparing `HeaderName`s is a call each.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): they describe the connection they came
/// on, not the message, and the hop to the app is a different connection.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Each message passes here twice per sidecar and almost never carries one. A look at
    // its few names costs less than the nine hashed removals, which were a twentieth of a
    // sidecar's instructions per request.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request's path and query, or `/` when the target has none (`http://host`): what
/// each hop keeps of the target when it rewrites the rest.
pub fn path_of(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// What the inbound side answers with: the app's response, or the sidecar's own.
pub type InboundBody = Either<AppBody, Full<Bytes>>;

/// Whether a request is gRPC (`application/grpc`, `+proto` and the like): gRPC needs
/// HTTP/2 end to end, for its trailers.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether the request asks for `te: trailers`: gRPC needs it, and it is the one TE value
/// HTTP/2 allows (RFC 9113 §8.2.2), so it is put back after the hop-by-hop strip.
pub fn wants_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    })
}

/// Dials the app, whatever authority the request names: the HTTP/2 client then sends the
/// caller's own `:authority`, where HTTP/1.1 carries it in `Host`.
#[derive(Debug, Clone)]
struct ToApp {
    connector: HttpConnector,
    app: Uri,
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for ToApp {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.connector.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _: Uri) -> Connecting {
        let connecting = self.connector.call(self.app.clone());
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// Forwards to one app port. Cloning shares the connection pools.
///
/// Requests go to the app over HTTP/1.1, as most apps speak it, except gRPC, which goes
/// over HTTP/2 with prior knowledge (h2c): gRPC servers speak it, and its trailers
/// (`grpc-status`) cannot cross HTTP/1.1. The caller's protocol does not decide, since the
/// fleet and the sidecars speak HTTP/2 to each other for every request.
#[derive(Debug, Clone)]
pub struct Forwarder {
    http1: AppPool,
    h2c: Client<ToApp, Incoming>,
    app: http::uri::Authority,
    tracer: Option<Arc<Tracer>>,
}

impl Forwarder {
    pub fn new(app_port: u16) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let app: http::uri::Authority = format!("127.0.0.1:{app_port}")
            .parse()
            .expect("valid authority");
        let http1 = AppPool::new(SocketAddr::from((Ipv4Addr::LOCALHOST, app_port)));
        let h2c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(true)
            .build(ToApp {
                connector,
                app: format!("http://{app}").parse().expect("valid URI"),
            });
        Self {
            http1,
            h2c,
            app,
            tracer: None,
        }
    }

    /// Each request is also a span, the app's parent (`--otlp-endpoint`).
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Forwards one request from `peer`, counting it on `requests`. Failures to reach the
    /// app become a 502 for this request; the inbound connection stays open.
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: &Peer,
        requests: &IntCounter,
    ) -> Result<Response<InboundBody>, Infallible> {
        requests.inc();
        let span = Traced::start(self.tracer.as_ref(), &mut req, "inbound");
        let resp = self.send(req, peer).await;
        if let Some(span) = span {
            let peer = match peer {
                Peer::Mesh { id, .. } => id.to_str().unwrap_or("").to_string(),
                Peer::Plaintext => String::new(),
            };
            span.end(resp.status(), Kind::Server, &[("weir.peer", peer)]);
        }
        Ok(resp)
    }

    async fn send(&self, mut req: Request<Incoming>, peer: &Peer) -> Response<InboundBody> {
        let grpc = is_grpc(req.headers());
        let headers = req.headers_mut();
        let trailers = grpc && wants_trailers(headers);
        strip_hop_by_hop(headers);
        set_caller_identity(headers, peer);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let sent = match grpc {
            true => {
                // :authority is the caller's; a Host beside it could only disagree.
                let authority = req.uri().authority().cloned().or_else(|| {
                    req.headers()
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok()?.parse().ok())
                });
                req.headers_mut().remove(header::HOST);
                self.target(&mut req, authority, Version::HTTP_2);
                let sent = self.h2c.request(req).await;
                sent.map(|resp| resp.map(AppBody::unpooled))
                    .map_err(|e| e.to_string())
            }
            false => {
                // HTTP/2 carries the host in :authority; HTTP/1.1 apps expect Host.
                if !req.headers().contains_key(header::HOST)
                    && let Some(host) = req.uri().authority().and_then(|a| a.as_str().parse().ok())
                {
                    req.headers_mut().insert(header::HOST, host);
                }
                // Origin-form: the connection already goes to the app.
                *req.uri_mut() = Uri::from(path_of(req.uri()));
                *req.version_mut() = Version::HTTP_11;
                self.http1.send(req).await.map_err(|e| e.to_string())
            }
        };
        match sent {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(e) => {
                tracing::warn!(app = %self.app, error = %e, "app unreachable");
                let mut resp = Response::new(Either::Right(Full::from("app unreachable\n")));
                *resp.status_mut() = StatusCode::BAD_GATEWAY;
                resp
            }
        }
    }

    /// Points `req` at `authority` (the app's own by default) over a connection to the
    /// app, keeping its path.
    fn target(
        &self,
        req: &mut Request<Incoming>,
        authority: Option<http::uri::Authority>,
        version: Version,
    ) {
        let mut target = http::uri::Parts::default();
        target.scheme = Some(http::uri::Scheme::HTTP);
        target.authority = Some(authority.unwrap_or_else(|| self.app.clone()));
        target.path_and_query = Some(path_of(req.uri()));
        *req.uri_mut() = Uri::from_parts(target).expect("scheme, authority and path");
        *req.version_mut() = version;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn only_setters_choose_the_caller_identity() {
        let me = HeaderValue::from_static("spiffe://td/ns/a/sa/me");
        let spoof = [("x-weir-caller-identity", "spiffe://td/ns/x/sa/admin")];

        let mut h = headers(&spoof);
        set_caller_identity(
            &mut h,
            &Peer::Mesh {
                id: me.clone(),
                setter: false,
            },
        );
        assert_eq!(h.get(CALLER_IDENTITY), Some(&me));
        assert_eq!(h.get_all(CALLER_IDENTITY).iter().count(), 1);

        let mut h = headers(&spoof);
        set_caller_identity(
            &mut h,
            &Peer::Mesh {
                id: me.clone(),
                setter: true,
            },
        );
        assert_eq!(h.get(CALLER_IDENTITY).unwrap(), spoof[0].1);

        let mut h = headers(&[]);
        set_caller_identity(
            &mut h,
            &Peer::Mesh {
                id: me,
                setter: true,
            },
        );
        assert!(h.get(CALLER_IDENTITY).is_none());

        let mut h = headers(&spoof);
        set_caller_identity(&mut h, &Peer::Plaintext);
        assert!(h.get(CALLER_IDENTITY).is_none());
    }

    #[test]
    fn te_trailers_is_recognised_among_other_values() {
        let te = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::TE, header::HeaderValue::from_static(v));
            wants_trailers(&h)
        };
        assert!(te("trailers"));
        assert!(te("gzip, Trailers"));
        assert!(!te("gzip"));
        assert!(!wants_trailers(&http::HeaderMap::new()));
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(!is_grpc(&headers(&[("content-type", "application/json")])));
        assert!(!is_grpc(&headers(&[])));
    }

    #[test]
    fn hop_by_hop_headers_stop_here() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        // Each of them alone is noticed, whatever its case on the wire.
        for name in [
            "Keep-Alive",
            "proxy-connection",
            "TE",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = headers(&[("x-kept", "1"), (name, "x")]);
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name} was kept");
        }
        assert!(HOP_BY_HOP.iter().all(is_hop_by_hop));
        let mut h = headers(&[("x-kept", "1"), ("x-other", "2")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }
}
