//! The upstream side of outbound: the mTLS client config (rebuilt from each new identity,
//! like the inbound server configs) and one long-lived HTTP/2 connection to `--upstream`
//! that every outbound request is multiplexed onto.
//!
//! One connection rather than a pool of HTTP/1.1 ones: the upstream is always the same
//! mesh listener, HTTP/2 multiplexes freely, and each new connection costs an mTLS
//! handshake on both ends. A closed connection (GOAWAY, reset, failed keep-alive ping) is
//! replaced by the next request; a rotation reaches the upstream when that happens.

use crate::identity::{Identity, IdentityError};
use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntCounter;
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use weir_controller::spiffe::{Allow, ServerVerifier};

/// Time allowed to connect and complete the mTLS handshake with the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an idle upstream connection is pinged, so that a silently dead one (a
/// gateway pod gone without a FIN) is noticed before a request is queued on it.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The client TLS config for the upstream, swapped on each identity reload.
#[derive(Debug)]
pub struct UpstreamTls {
    allow: Allow,
    current: ArcSwapOption<ClientConfig>,
}

impl UpstreamTls {
    /// `allow`: the SPIFFE IDs the upstream may present (`--upstream-id`).
    pub fn new(allow: Allow) -> Self {
        Self {
            allow,
            current: ArcSwapOption::empty(),
        }
    }

    /// The config for new connections, or `None` before the first identity is loaded.
    pub fn current(&self) -> Option<Arc<ClientConfig>> {
        self.current.load_full()
    }

    pub fn install(&self, config: Arc<ClientConfig>) {
        self.current.store(Some(config));
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

/// The shared HTTP/2 connection to the upstream.
#[derive(Debug)]
pub struct Upstream {
    addr: String,
    name: ServerName<'static>,
    tls: Arc<UpstreamTls>,
    /// The live connection: requests read it without a lock.
    live: arc_swap::ArcSwapOption<SendRequest<Incoming>>,
    /// Held across a connect, so that a burst of requests on a cold sidecar opens one
    /// connection rather than one each; never taken while a connection is up.
    connecting: Mutex<()>,
    connections: IntCounter,
}

impl Upstream {
    /// `addr` is `HOST:PORT` as checked by the command line.
    pub fn new(addr: &str, tls: Arc<UpstreamTls>, connections: IntCounter) -> Self {
        // The server name is only SNI: the verifier checks the SPIFFE ID, not a name.
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .unwrap_or_else(|_| ServerName::try_from("weir-upstream.invalid").expect("valid"));
        Self {
            addr: addr.to_owned(),
            name,
            tls,
            live: arc_swap::ArcSwapOption::empty(),
            connecting: Mutex::new(()),
            connections,
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
        sender
            .ready()
            .await
            .map_err(|e| format!("upstream connection lost: {e}"))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("upstream request failed: {e}"))
    }

    async fn sender(&self) -> Result<SendRequest<Incoming>, String> {
        let up = || {
            let live = self.live.load();
            live.as_deref().filter(|s| !s.is_closed()).cloned()
        };
        if let Some(sender) = up() {
            return Ok(sender);
        }
        let _connecting = self.connecting.lock().await;
        // Another request may have connected while this one waited.
        if let Some(sender) = up() {
            return Ok(sender);
        }
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| "upstream connect timed out".to_string())??;
        self.live.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, String> {
        let config = self.tls.current().ok_or("no identity loaded yet")?;
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("cannot connect to upstream: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| format!("upstream TLS handshake failed: {e}"))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err("upstream did not negotiate h2".into());
        }
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
        self.connections.inc();
        tracing::debug!(upstream = %self.addr, "upstream connection open");
        Ok(sender)
    }
}
