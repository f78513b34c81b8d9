//! The upstream side of outbound: the mTLS client config (rebuilt from each new identity,
//! like the inbound server configs) and one long-lived HTTP/2 connection to `--upstream`
//! that every outbound request is multiplexed onto.
//!
//! One connection rather than a pool of HTTP/1.1 ones: the upstream is always the same
//! mesh listener, HTTP/2 multiplexes freely, and each new connection costs an mTLS
//! handshake on both ends. A closed connection (GOAWAY, reset, failed keep-alive ping) is
//! replaced by the next request, and so is one made before the last identity rotation:
//! the new connection presents the new certificate, the old one finishes its requests and
//! closes. A request that finds the connection closing before it is sent goes out on a
//! new one.

use super::stream::{UpstreamBody, pump};
use crate::identity::{Identity, IdentityError};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use h2::client::SendRequest;
use hyper::body::{Body as _, Incoming};
use prometheus::{IntCounter, IntGaugeVec};
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio::task::AbortHandle;
use weir_model::spiffe::{Allow, ServerVerifier};

/// Time allowed to connect and complete the mTLS handshake with the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed connect on a new identity, how long the previous connection is used
/// before the next attempt.
const RETRY: Duration = Duration::from_secs(1);

/// How often the upstream connection is pinged, so that a silently dead one (a gateway
/// pod gone without a FIN) is noticed before a request is queued on it.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before the connection counts as dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Flow-control windows: HTTP/2's default of 64 KiB would throttle a large body to one
/// window per round trip; these are hyper's defaults, which the sidecar used before.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const SEND_BUFFER: usize = 1024 * 1024;

/// The client TLS config for the upstream, swapped on each identity reload.
#[derive(Debug)]
pub struct UpstreamTls {
    allow: Allow,
    current: ArcSwapOption<(Arc<ClientConfig>, String)>,
}

impl UpstreamTls {
    /// `allow`: the SPIFFE IDs the upstream may present (`--upstream-id`).
    pub fn new(allow: Allow) -> Self {
        Self {
            allow,
            current: ArcSwapOption::empty(),
        }
    }

    /// The config for new connections and the serial of the certificate it presents, or
    /// `None` before the first identity is loaded.
    pub fn current(&self) -> Option<(Arc<ClientConfig>, String)> {
        self.current.load().as_deref().cloned()
    }

    /// Whether `config` is the one new connections get.
    pub fn is_current(&self, config: &Arc<ClientConfig>) -> bool {
        self.current
            .load()
            .as_deref()
            .is_some_and(|(c, _)| Arc::ptr_eq(c, config))
    }

    pub fn install(&self, config: Arc<ClientConfig>, serial: &str) {
        self.current
            .store(Some(Arc::new((config, serial.to_owned()))));
    }

    /// A client config presenting `identity` and admitting only an upstream whose SVID
    /// chains to the bundle and names an allowed ID (SVIDs carry no DNS names to check).
    pub fn build(
        &self,
        identity: &Identity,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ClientConfig, IdentityError> {
        let tls = |e: &dyn std::fmt::Display| IdentityError::Tls(e.to_string());
        let verifier =
            ServerVerifier::new(identity.roots.clone(), self.allow.clone()).map_err(|e| tls(&e))?;
        // TLS 1.3 only, as inbound: it encrypts the client certificate.
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.key.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// One live connection and the client config its handshake used.
#[derive(Debug)]
struct Live {
    sender: SendRequest<Bytes>,
    config: Arc<ClientConfig>,
    /// Set when the connection's task ends, a ping goes unanswered, or a request finds
    /// it refusing new streams (GOAWAY).
    closed: Arc<AtomicBool>,
}

impl Live {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// The shared HTTP/2 connection to the upstream.
#[derive(Debug)]
pub struct Upstream {
    addr: String,
    name: ServerName<'static>,
    tls: Arc<UpstreamTls>,
    /// The live connection: requests read it without a lock.
    live: ArcSwapOption<Live>,
    /// Held across a connect, so that a burst of requests on a cold sidecar opens one
    /// connection rather than one each; never waited for while a usable connection is up.
    /// It holds when the last connect after a rotation failed (see `sender`).
    connecting: Mutex<Option<Instant>>,
    metrics: UpstreamMetrics,
}

/// What the upstream side reports.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    /// Connections opened.
    pub connections: IntCounter,
    /// `{serial, peer_serial}` of the live connection's handshake: which certificates the
    /// requests ride on right now, ours and the upstream's.
    pub tls: IntGaugeVec,
}

impl Upstream {
    /// `addr` is `HOST:PORT` as checked by the command line.
    pub fn new(addr: &str, tls: Arc<UpstreamTls>, metrics: UpstreamMetrics) -> Self {
        // The server name is only SNI: the verifier checks the SPIFFE ID, not a name.
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .unwrap_or_else(|_| ServerName::try_from("weir-upstream.invalid").expect("valid"));
        Self {
            addr: addr.to_owned(),
            name,
            tls,
            live: ArcSwapOption::empty(),
            connecting: Mutex::new(None),
            metrics,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `req` (absolute URI, no Host header) on the shared connection, opening it
    /// first if needed. The error is a short reason for logs and the 502 body.
    pub async fn send(
        &self,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<UpstreamBody>, String> {
        let (head, body) = req.into_parts();
        let end_of_stream = body.is_end_stream();
        let failed = |e: h2::Error| format!("upstream request failed: {e}");
        let live = self.live().await?;
        // A request without a body can be sent again as long as the upstream cannot have
        // acted on it: the connection died under it (closed before our frames were read:
        // the socket of a restarted upstream, seen by the request before the connection's
        // own task saw it) or refused the stream (GOAWAY). A request with a body has
        // handed it to the pump and goes once.
        let resend = end_of_stream.then(|| copy_head(&head));
        let response = match self.try_send(&live, head, end_of_stream).await {
            Ok((response, stream)) => {
                if let Some(stream) = stream {
                    tokio::spawn(pump(body, stream));
                }
                response.await
            }
            Err(e) => Err(e),
        };
        let response = match (response, resend) {
            (Ok(response), _) => response,
            (Err(e), Some(head)) if unprocessed(&e, &head.method) => {
                tracing::debug!(upstream = %self.addr, error = %e, "request not processed; resending on a new connection");
                live.closed.store(true, Ordering::Relaxed);
                let live = self.live().await?;
                let (response, _) = self.try_send(&live, head, true).await.map_err(failed)?;
                response.await.map_err(failed)?
            }
            (Err(e), _) => return Err(failed(e)),
        };
        let (parts, recv) = response.into_parts();
        let body = UpstreamBody::new(recv, &parts.headers);
        Ok(http::Response::from_parts(parts, body))
    }

    /// Opens the request's stream on `live`, or on a new connection if `live` refuses new
    /// streams (the upstream's GOAWAY as it drains: it has not seen this request).
    async fn try_send(
        &self,
        live: &Arc<Live>,
        head: http::request::Parts,
        end_of_stream: bool,
    ) -> Result<(h2::client::ResponseFuture, Option<h2::SendStream<Bytes>>), h2::Error> {
        let mut sender = match live.sender.clone().ready().await {
            Ok(sender) => sender,
            Err(why) => {
                tracing::debug!(upstream = %self.addr, error = %why, "connection closing; resending");
                live.closed.store(true, Ordering::Relaxed);
                match self.live().await {
                    Ok(next) => next.sender.clone().ready().await?,
                    Err(_) => return Err(why),
                }
            }
        };
        let (response, stream) =
            sender.send_request(http::Request::from_parts(head, ()), end_of_stream)?;
        Ok((response, (!end_of_stream).then_some(stream)))
    }

    async fn live(&self) -> Result<Arc<Live>, String> {
        // Up, and on the current identity. A rotation replaces the connection (below), so
        // that new handshakes present the new certificate and none outlives its own.
        let usable = |current: bool| {
            self.live
                .load_full()
                .filter(|l| !l.is_closed() && (!current || self.tls.is_current(&l.config)))
        };
        if let Some(live) = usable(true) {
            return Ok(live);
        }
        let mut failed_at = match self.connecting.try_lock() {
            Ok(guard) => guard,
            // Another request is connecting. After a rotation the previous connection
            // serves meanwhile rather than make this request wait for a handshake.
            Err(_) => match usable(false) {
                Some(previous) => return Ok(previous),
                None => self.connecting.lock().await,
            },
        };
        // Another request may have connected while this one waited.
        if let Some(live) = usable(true) {
            return Ok(live);
        }
        // Make before break: after a rotation, the connection on the previous identity
        // keeps serving until a new one can be made, tried at most once a RETRY.
        let previous = usable(false);
        if let (Some(live), Some(at)) = (&previous, *failed_at)
            && at.elapsed() < RETRY
        {
            return Ok(live.clone());
        }
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| "upstream connect timed out".to_string())
            .and_then(|r| r);
        match connected {
            Ok(live) => {
                *failed_at = None;
                let live = Arc::new(live);
                // The old connection, if any, closes once its last request is answered.
                self.live.store(Some(live.clone()));
                Ok(live)
            }
            Err(why) => match previous {
                Some(live) => {
                    tracing::warn!(upstream = %self.addr, error = %why,
                        "no connection on the new identity yet; keeping the previous one");
                    *failed_at = Some(Instant::now());
                    Ok(live)
                }
                None => Err(why),
            },
        }
    }

    async fn connect(&self) -> Result<Live, String> {
        let (config, serial) = self.tls.current().ok_or("no identity loaded yet")?;
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("cannot connect to upstream: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| format!("upstream TLS handshake failed: {e}"))?;
        let session = tls.get_ref().1;
        if session.alpn_protocol() != Some(b"h2") {
            return Err("upstream did not negotiate h2".into());
        }
        let peer_serial = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
            .map(|(_, cert)| cert.raw_serial_as_string())
            .unwrap_or_default();
        let (sender, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| format!("upstream HTTP/2 handshake failed: {e}"))?;
        let closed = Arc::new(AtomicBool::new(false));
        let pings = conn.ping_pong();
        let (addr, ended) = (self.addr.clone(), closed.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
            }
            ended.store(true, Ordering::Relaxed);
        });
        if let Some(pings) = pings {
            tokio::spawn(keep_alive(pings, closed.clone(), task.abort_handle()));
        }
        self.metrics.connections.inc();
        self.metrics.tls.reset();
        self.metrics
            .tls
            .with_label_values(&[serial.as_str(), &peer_serial])
            .set(1);
        tracing::debug!(upstream = %self.addr, %serial, %peer_serial, "upstream connection open");
        Ok(Live {
            sender,
            config,
            closed,
        })
    }
}

/// A copy of a request head (method, target, version, headers) to send again.
fn copy_head(head: &http::request::Parts) -> http::request::Parts {
    let mut copy = http::Request::new(()).into_parts().0;
    copy.method = head.method.clone();
    copy.uri = head.uri.clone();
    copy.version = head.version;
    copy.headers = head.headers.clone();
    copy
}

/// Whether a failed request is known not to have been acted on: the upstream refused the
/// stream (RFC 9113 §8.7: REFUSED_STREAM, or a GOAWAY that did not cover it), or, for a
/// method that may be repeated anyway, the connection broke before any answer.
fn unprocessed(e: &h2::Error, method: &http::Method) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM)
        || (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR))
        || (e.is_io() && method.is_idempotent())
}

/// Pings the upstream every [`KEEP_ALIVE`] while the connection lives; one unanswered for
/// [`KEEP_ALIVE_TIMEOUT`] closes it, and the next request opens another.
async fn keep_alive(mut pings: h2::PingPong, closed: Arc<AtomicBool>, conn: AbortHandle) {
    loop {
        tokio::time::sleep(KEEP_ALIVE).await;
        if closed.load(Ordering::Relaxed) {
            return;
        }
        let pong = tokio::time::timeout(KEEP_ALIVE_TIMEOUT, pings.ping(h2::Ping::opaque()));
        if !matches!(pong.await, Ok(Ok(_))) {
            tracing::warn!("upstream connection did not answer a ping; closing it");
            closed.store(true, Ordering::Relaxed);
            conn.abort();
            return;
        }
    }
}
