//! The upstream side of outbound: the mTLS client config (rebuilt from each new identity,
//! like the inbound server configs) and one long-lived HTTP/2 connection to `--upstream`
//! that every outbound request is multiplexed onto.
//!
//! One connection rather than a pool of HTTP/1.1 ones: the upstream is always the same
//! mesh listener, HTTP/2 multiplexes freely, and each new connection costs an mTLS
//! handshake on both ends. A closed connection (GOAWAY, reset, failed keep-alive ping) is
//! replaced by the next request, and so is one made before the last identity rotation:
//! the new connection presents the new certificate, the old one finishes its requests and
//! closes. A request the closing connection hands back unsent goes out once more.

use crate::identity::{Identity, IdentityError};
use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounter, IntGaugeVec};
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use weir_controller::spiffe::{Allow, ServerVerifier};

/// Time allowed to connect and complete the mTLS handshake with the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed connect on a new identity, how long the previous connection is used
/// before the next attempt.
const RETRY: Duration = Duration::from_secs(1);

/// How often an idle upstream connection is pinged, so that a silently dead one (a
/// gateway pod gone without a FIN) is noticed before a request is queued on it.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

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
    sender: SendRequest<Incoming>,
    config: Arc<ClientConfig>,
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
    ) -> Result<http::Response<Incoming>, String> {
        let mut sender = self.sender().await?;
        let failed = match sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp),
            Err(failed) => failed,
        };
        // A request handed back unsent met a connection that was closing (the upstream's
        // GOAWAY as it drains, say): it is safe to send once more, on a new connection.
        let mut failed = failed;
        let Some(req) = failed.take_message() else {
            return Err(format!("upstream request failed: {}", failed.error()));
        };
        tracing::debug!(upstream = %self.addr, error = %failed.error(), "connection closing; resending");
        let mut sender = self.sender().await?;
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("upstream request failed: {e}"))
    }

    async fn sender(&self) -> Result<SendRequest<Incoming>, String> {
        // Up, and on the current identity. A rotation replaces the connection (below), so
        // that new handshakes present the new certificate and none outlives its own.
        let usable = |current: bool| {
            let live = self.live.load();
            live.as_deref()
                .filter(|l| !l.sender.is_closed() && (!current || self.tls.is_current(&l.config)))
                .map(|l| l.sender.clone())
        };
        if let Some(sender) = usable(true) {
            return Ok(sender);
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
        if let Some(sender) = usable(true) {
            return Ok(sender);
        }
        // Make before break: after a rotation, the connection on the previous identity
        // keeps serving until a new one can be made, tried at most once a RETRY.
        let previous = usable(false);
        if let (Some(sender), Some(at)) = (&previous, *failed_at)
            && at.elapsed() < RETRY
        {
            return Ok(sender.clone());
        }
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| "upstream connect timed out".to_string())
            .and_then(|r| r);
        match connected {
            Ok(live) => {
                *failed_at = None;
                let sender = live.sender.clone();
                // The old connection, if any, closes once its last request is answered.
                self.live.store(Some(Arc::new(live)));
                Ok(sender)
            }
            Err(why) => match previous {
                Some(sender) => {
                    tracing::warn!(upstream = %self.addr, error = %why,
                        "no connection on the new identity yet; keeping the previous one");
                    *failed_at = Some(Instant::now());
                    Ok(sender)
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
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("upstream HTTP/2 handshake failed: {e}"))?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
            }
        });
        self.metrics.connections.inc();
        self.metrics.tls.reset();
        self.metrics
            .tls
            .with_label_values(&[serial.as_str(), &peer_serial])
            .set(1);
        tracing::debug!(upstream = %self.addr, %serial, %peer_serial, "upstream connection open");
        Ok(Live { sender, config })
    }
}
