//! Inbound ports: accept, tell mTLS from plaintext by the first byte, apply the port's
//! mode, and serve HTTP/1.1 or HTTP/2 to the [`forward`]er.
//!
//! One port carries both protocols because the pod's callers migrate to the mesh one at a
//! time: a TLS record starts with the handshake content type 0x16, which no HTTP/1.x method
//! or HTTP/2 preface does, so one peeked byte (left in the socket) decides.

pub mod forward;
pub mod pool;

use crate::authz::Authz;
use crate::cli::{InboundSpec, Mode};
use crate::drain::{Draining, Gate};
use crate::metrics::{Metrics, Refusal};
use crate::tls::{self, PortTls};
use forward::{Forwarder, Peer};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use prometheus::IntCounter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use weir_model::spiffe::{Allow, id_of};
use weir_model::trace::Tracer;

/// The first byte of a TLS record carrying a handshake (the ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// Time allowed for a new connection's first byte and TLS handshake: a slow or idle peer
/// must not hold a socket and a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One inbound port.
#[derive(Debug)]
pub struct Inbound {
    spec: InboundSpec,
    port_label: String,
    tls: Arc<PortTls>,
    setters: Allow,
    forwarder: Forwarder,
    http: auto::Builder<TokioExecutor>,
    metrics: Metrics,
    /// Counts plaintext connections: refusals on a strict port, admissions on a
    /// permissive one (each port has only the series its mode can move).
    plaintext: IntCounter,
    refused_handshake: IntCounter,
    refused_no_identity: IntCounter,
    refused_policy: IntCounter,
    connections: IntCounter,
    /// AuthorizationPolicies for peers that are not identity setters.
    authz: Option<Arc<Authz>>,
}

impl Inbound {
    pub fn new(
        spec: InboundSpec,
        tls: Arc<PortTls>,
        setters: Allow,
        metrics: &Metrics,
        tracer: Option<Arc<Tracer>>,
    ) -> Self {
        let port = spec.port;
        let mut http = auto::Builder::new(TokioExecutor::new());
        // The timer bounds how long HTTP/1 waits for request headers (hyper's default
        // header_read_timeout) and drives HTTP/2 keep-alive.
        http.http1().timer(TokioTimer::new());
        http.http2().timer(TokioTimer::new());
        Self {
            spec,
            port_label: port.to_string(),
            tls,
            setters,
            forwarder: Forwarder::new(spec.app_port).with_tracer(tracer),
            http,
            metrics: metrics.clone(),
            plaintext: match spec.mode {
                Mode::Strict => metrics.refused(port, Refusal::Plaintext),
                Mode::Permissive => metrics.plaintext(port),
            },
            refused_handshake: metrics.refused(port, Refusal::Handshake),
            refused_no_identity: metrics.refused(port, Refusal::NoIdentity),
            refused_policy: metrics.refused(port, Refusal::Policy),
            connections: metrics.inbound_connections(port),
            authz: None,
        }
    }

    /// Requests that do not come through an identity setter are authorized by `authz`.
    pub fn with_authz(mut self, authz: Option<Arc<Authz>>) -> Self {
        self.authz = authz;
        self
    }

    /// Whether a connection from this peer may go on: a setter (the fleet) always, since
    /// its requests were decided there; anyone else if some request of theirs could be
    /// allowed.
    fn admit(&self, peer: &Peer, remote: SocketAddr) -> bool {
        let principal = match peer {
            Peer::Mesh { setter: true, .. } => return true,
            Peer::Mesh { id, .. } => id.to_str().ok(),
            Peer::Plaintext => None,
        };
        let admitted = self
            .authz
            .as_ref()
            .is_none_or(|a| a.admit(principal, remote.ip()));
        if !admitted {
            self.refused_policy.inc();
        }
        admitted
    }

    /// Accepts connections, each in a task of its own, until the drain starts; then the
    /// listener closes and the connections finish under the [`Gate`]'s watch.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut gate: Gate) {
        tracing::info!(
            port = self.spec.port,
            app_port = self.spec.app_port,
            mode = %self.spec.mode,
            "inbound port listening"
        );
        while let Some((tcp, remote, watcher)) = gate.accept(&listener).await {
            self.connections.inc();
            tokio::spawn(
                self.clone()
                    .connection(tcp, remote, watcher, gate.draining()),
            );
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        remote: SocketAddr,
        watcher: Watcher,
        mut draining: Draining,
    ) {
        let port = self.spec.port;
        let mut first = [0u8; 1];
        let peek = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first));
        tokio::select! {
            biased;
            peeked = peek => match peeked {
                Ok(Ok(1..)) => {}
                Ok(Ok(_)) | Ok(Err(_)) => return, // closed before a byte, or reset
                Err(_) => {
                    tracing::debug!(port, %remote, "no data before the handshake timeout");
                    self.refused_handshake.inc();
                    return;
                }
            },
            // Nothing sent yet, so nothing is lost: the peer reconnects elsewhere.
            () = draining.started() => return,
        }
        if first[0] == TLS_HANDSHAKE {
            self.mtls(tcp, remote, watcher).await;
            return;
        }
        match self.spec.mode {
            Mode::Strict => {
                tracing::debug!(port, %remote, "plaintext refused on a strict port");
                self.plaintext.inc();
            }
            Mode::Permissive => {
                self.plaintext.inc();
                if !self.admit(&Peer::Plaintext, remote) {
                    return;
                }
                let requests = self.metrics.requests(&self.port_label, "plaintext");
                self.serve_http(tcp, Peer::Plaintext, requests, remote, watcher)
                    .await;
            }
        }
    }

    async fn mtls(&self, tcp: TcpStream, remote: SocketAddr, watcher: Watcher) {
        let port = self.spec.port;
        let Some(config) = self.tls.current() else {
            tracing::debug!(port, %remote, "TLS refused: no identity loaded yet");
            self.refused_no_identity.inc();
            return;
        };
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if tls::is_refusal(&e) => return, // logged and counted by the verifier
            Ok(Err(e)) => {
                tracing::debug!(port, %remote, error = %e, "TLS handshake failed");
                self.refused_handshake.inc();
                return;
            }
            Err(_) => {
                tracing::debug!(port, %remote, "TLS handshake timed out");
                self.refused_handshake.inc();
                return;
            }
        };
        // The verifier admitted this certificate, so it has an allowed SPIFFE ID.
        let id = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(id_of);
        let Some(id) = id else {
            tracing::error!(port, %remote, "admitted peer without a SPIFFE ID; closing");
            return;
        };
        let Ok(header) = http::HeaderValue::from_str(&id) else {
            tracing::error!(port, %remote, peer = %id, "SPIFFE ID is not a valid header value");
            return;
        };
        let peer = Peer::Mesh {
            id: header,
            setter: self.setters.permits(&id),
        };
        if !self.admit(&peer, remote) {
            tracing::debug!(port, %remote, peer = %id, "connection refused by authorization policy");
            return;
        }
        // Resolved once per connection; the label set is bounded by the allow-list.
        let requests = self.metrics.requests(&self.port_label, &id);
        self.serve_http(stream, peer, requests, remote, watcher)
            .await;
    }

    async fn serve_http<S>(
        &self,
        stream: S,
        peer: Peer,
        requests: IntCounter,
        remote: SocketAddr,
        watcher: Watcher,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Requests relayed by a setter were authorized at the fleet.
        let authz = match &peer {
            Peer::Mesh { setter: true, .. } => None,
            _ => self.authz.clone(),
        };
        // Refusals are counted by peer, so that the service graph can put them on the edge
        // from that caller.
        let denied = authz.as_ref().map(|_| {
            let label = match &peer {
                Peer::Mesh { id, .. } => id.to_str().unwrap_or("invalid"),
                Peer::Plaintext => "plaintext",
            };
            self.metrics.denied(&self.port_label, label)
        });
        let conn = Arc::new(Conn {
            forwarder: self.forwarder.clone(),
            peer,
            requests,
            denied,
            remote,
            port: self.spec.port,
            authz,
        });
        let service = hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move { conn.serve(req).await }
        });
        let conn = self.http.serve_connection(TokioIo::new(stream), service);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(port = self.spec.port, error = %e, "inbound connection ended");
        }
    }
}

/// One connection's state, behind one `Arc` so that a request costs one reference count.
struct Conn {
    forwarder: Forwarder,
    peer: Peer,
    requests: IntCounter,
    /// Set when `authz` is.
    denied: Option<IntCounter>,
    remote: SocketAddr,
    port: u16,
    authz: Option<Arc<Authz>>,
}

impl Conn {
    async fn serve(
        &self,
        mut req: http::Request<hyper::body::Incoming>,
    ) -> Result<http::Response<forward::InboundBody>, std::convert::Infallible> {
        if let Some(authz) = &self.authz {
            let principal = match &self.peer {
                Peer::Mesh { id, .. } => id.to_str().ok(),
                Peer::Plaintext => None,
            };
            if let Err(refusal) = authz.check(self.port, principal, self.remote.ip(), &mut req) {
                if let Some(denied) = &self.denied {
                    denied.inc();
                }
                return Ok(forward::refused(refusal, forward::is_grpc(req.headers())));
            }
        }
        self.forwarder
            .forward(req, &self.peer, &self.requests)
            .await
    }
}
